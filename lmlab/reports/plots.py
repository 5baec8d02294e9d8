"""Report plots as PNG files: one run's curves (``make_plots``) and several runs' loss on one axis
(``plot_comparison``). matplotlib is imported only when a figure is drawn, so listing runs or
importing the reports stays quick. Labels stay in English: matplotlib's default font has no
Japanese glyphs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from lmlab.reports.render import finite
from lmlab.reports.runs import Run

# file name -> (training metric, y-axis label) of the single-metric plots, after loss.png
SERIES = {"lr.png": ("lr", "learning rate"),
          "tokens_per_s.png": ("tokens_per_s", "throughput (tokens/s)"),
          "grad_norm.png": ("grad_norm", "grad norm (L2, before clipping)")}
LOSS_PLOT = "loss.png"


def _figure(width: float = 6.4):
    """A matplotlib Figure drawn by Agg; no pyplot, so no global state or GUI backend is touched."""
    from matplotlib.figure import Figure  # lazy: matplotlib

    fig = Figure(figsize=(width, 3.6), dpi=100, layout="constrained")
    return fig, fig.add_subplot()


def _x_axis(run: Run) -> tuple[Callable[[dict], float], str]:
    """x of a metrics line: the step, or in epoch mode the (fractional) epoch it ended."""
    if run.epoch_mode and run.epochs:
        first = run.epochs[0]
        per_epoch = first["step"] / max(1, int(first.get("epoch") or 1))
        return (lambda m: m["step"] / per_epoch), "epoch"
    return (lambda m: m["step"]), "step"


def _points(lines: list[dict], key: str, x_of) -> tuple[list, list]:
    pairs = [(x_of(m), m[key]) for m in lines if finite(m.get(key))]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _plot_loss(run: Run, path: Path, title: str) -> Path | None:
    x_of, xlabel = _x_axis(run)
    xs, ys = _points(run.train, "loss", x_of)
    vx, vy = _points(run.val, "val/loss", x_of)
    if not xs and not vx:
        return None
    fig, ax = _figure()
    if xs:
        ax.plot(xs, ys, label="train (logged step)", color="tab:blue", alpha=0.6 if run.epochs else 1)
    if run.epoch_mode and run.epochs:
        ex, ey = _points(run.epochs, "train/epoch_loss", lambda m: m["epoch"])
        ax.plot(ex, ey, "s-", label="train (epoch mean)", color="tab:blue")
    if vx:
        ax.plot(vx, vy, "o--", label="validation", color="tab:orange")
    ax.set(xlabel=xlabel, ylabel="loss (nats/token)", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(path)
    return path


def _plot_series(run: Run, key: str, ylabel: str, path: Path, title: str) -> Path | None:
    x_of, xlabel = _x_axis(run)
    xs, ys = _points(run.train, key, x_of)
    if not xs:
        return None
    fig, ax = _figure()
    ax.plot(xs, ys, ".-", color="tab:green")
    clip = run.get("optim.clip")
    if key == "grad_norm":
        if finite(clip) and clip > 0:
            ax.axhline(clip, color="tab:red", linestyle=":", label=f"optim.clip = {clip:g}")
            ax.legend()
        if min(ys) > 0 and max(ys) / min(ys) > 100:
            ax.set_yscale("log")  # early spikes would flatten the rest of the curve
    if key == "lr":
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    fig.savefig(path)
    return path


def make_plots(run: Run, out_dir: Path) -> list[Path]:
    """loss, learning rate, tokens/s and grad norm vs step (or epoch) as PNGs in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    name = run.get("name") or run.path.name
    made = [_plot_loss(run, out_dir / LOSS_PLOT, f"{name}: loss")]
    for file, (key, ylabel) in SERIES.items():
        made.append(_plot_series(run, key, ylabel, out_dir / file, f"{name}: {ylabel}"))
    return [p for p in made if p is not None]


def plot_comparison(runs: list[Run], path: Path) -> Path | None:
    """Every run's training (solid) and validation (dashed, dots) loss on one axis."""
    epoch_axis = all(r.epoch_mode and r.epochs for r in runs)  # mixed modes share the step axis
    fig, ax = _figure(width=8.4)
    drawn = False
    for i, run in enumerate(runs):
        x_of = _x_axis(run)[0] if epoch_axis else (lambda m: m["step"])
        color, label = f"C{i % 10}", run.path.name
        xs, ys = _points(run.train, "loss", x_of)
        vx, vy = _points(run.val, "val/loss", x_of)
        if xs:
            ax.plot(xs, ys, "-", color=color, alpha=0.8, label=f"{label} train")
        if vx:
            ax.plot(vx, vy, "o--", color=color, label=f"{label} val")
        drawn = drawn or bool(xs or vx)
    if not drawn:
        return None
    ax.set(xlabel="epoch" if epoch_axis else "step", ylabel="loss (nats/token)", title="loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))  # beside, not over, the curves
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
