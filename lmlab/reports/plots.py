"""Report plots as PNG files: one run's curves (``make_plots``) and several runs' loss on one axis
(``plot_comparison``). matplotlib is imported only when a figure is drawn, so listing runs or
importing the reports stays quick. Labels stay in English: matplotlib's default font has no
Japanese glyphs.

Each PNG carries a digest of what it was drawn from (its data, labels and title, this module's
code and matplotlib's version) in a text chunk; a plot whose file already carries the digest of
the same inputs is kept, not drawn again: writing a run's report in another language or format,
or again with nothing new logged, costs no drawing.
"""
from __future__ import annotations

import functools
import hashlib
import struct
from pathlib import Path
from typing import Callable

from lmlab.reports.render import finite
from lmlab.reports.runs import Run

# file name -> (training metric, y-axis label) of the single-metric plots, after loss.png
SERIES = {"lr.png": ("lr", "learning rate"),
          "tokens_per_s.png": ("tokens_per_s", "throughput (tokens/s)"),
          "grad_norm.png": ("grad_norm", "grad norm (L2, before clipping)")}
LOSS_PLOT = "loss.png"
INPUTS_KEY = "lmlab inputs"  # the PNG text chunk holding the digest of what the plot was drawn from
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _figure(width: float = 6.4):
    """A matplotlib Figure drawn by Agg; no pyplot, so no global state or GUI backend is touched."""
    from matplotlib.figure import Figure  # lazy: matplotlib

    fig = Figure(figsize=(width, 3.6), dpi=100, layout="constrained")
    return fig, fig.add_subplot()


@functools.lru_cache(maxsize=None)
def _code_digest() -> str:
    import matplotlib  # lazy: matplotlib

    return hashlib.sha256(Path(__file__).read_bytes() + matplotlib.__version__.encode()).hexdigest()


def _digest(*inputs) -> str:
    """What a plot is drawn from, as a digest: ``inputs`` (data, labels, title) and the drawing code."""
    return hashlib.sha256(repr((_code_digest(), inputs)).encode()).hexdigest()


def _drawn_from(path: Path) -> str | None:
    """The digest ``_save`` wrote into the PNG at ``path``; None for a missing or foreign file."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    at = len(PNG_SIGNATURE)
    while data.startswith(PNG_SIGNATURE) and at + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[at:at + 8])
        if kind == b"IDAT":
            return None
        key, _, value = data[at + 8:at + 8 + length].partition(b"\0")
        if kind == b"tEXt" and key == INPUTS_KEY.encode():
            return value.decode("latin-1")
        at += 12 + length
    return None


def _save(fig, path: Path, digest: str) -> Path:
    fig.savefig(path, metadata={INPUTS_KEY: digest})
    return path


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
    epochs = _points(run.epochs, "train/epoch_loss", lambda m: m["epoch"]) if run.epoch_mode and run.epochs else None
    digest = _digest("loss", xs, ys, vx, vy, epochs, bool(run.epochs), xlabel, title)
    if _drawn_from(path) == digest:
        return path
    fig, ax = _figure()
    if xs:
        ax.plot(xs, ys, label="train (logged step)", color="tab:blue", alpha=0.6 if run.epochs else 1)
    if epochs is not None:
        ax.plot(*epochs, "s-", label="train (epoch mean)", color="tab:blue")
    if vx:
        ax.plot(vx, vy, "o--", label="validation", color="tab:orange")
    ax.set(xlabel=xlabel, ylabel="loss (nats/token)", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path, digest)


def _plot_series(run: Run, key: str, ylabel: str, path: Path, title: str) -> Path | None:
    x_of, xlabel = _x_axis(run)
    xs, ys = _points(run.train, key, x_of)
    if not xs:
        return None
    clip = run.get("optim.clip") if key == "grad_norm" else None
    digest = _digest(key, xs, ys, clip, xlabel, ylabel, title)
    if _drawn_from(path) == digest:
        return path
    fig, ax = _figure()
    ax.plot(xs, ys, ".-", color="tab:green")
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
    return _save(fig, path, digest)


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
    curves = []  # (label, train xs, ys, validation xs, ys) of each run
    for run in runs:
        x_of = _x_axis(run)[0] if epoch_axis else (lambda m: m["step"])
        curves.append((run.path.name, *_points(run.train, "loss", x_of), *_points(run.val, "val/loss", x_of)))
    if not any(xs or vx for _, xs, _, vx, _ in curves):
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = _digest("comparison", epoch_axis, curves)
    if _drawn_from(path) == digest:
        return path
    fig, ax = _figure(width=8.4)
    for i, (label, xs, ys, vx, vy) in enumerate(curves):
        color = f"C{i % 10}"
        if xs:
            ax.plot(xs, ys, "-", color=color, alpha=0.8, label=f"{label} train")
        if vx:
            ax.plot(vx, vy, "o--", color=color, label=f"{label} val")
    ax.set(xlabel="epoch" if epoch_axis else "step", ylabel="loss (nats/token)", title="loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))  # beside, not over, the curves
    return _save(fig, path, digest)
