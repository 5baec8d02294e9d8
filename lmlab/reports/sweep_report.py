"""``lmlab report SWEEP_DIR``: one report for a whole sweep (``write_sweep_report``), in Markdown or
HTML (``render``), with its plots in ``plots/``: every trial ranked by the spec's metric, the best
trial and the command that reproduces it, mean +- std across seeds, the metric against each axis,
the loss curves of the best ``top_k``, failed and stopped trials with their reasons, and (a spec
with ``scaling:``) the fit ``L = E + A x^-alpha`` with its interval and predictions. English only."""
from __future__ import annotations

import shlex
from pathlib import Path

from lmlab import rundir, sweepdir
from lmlab.reports.render import Block, fmt_num, render
from lmlab.reports.scaling import PowerLawFit, describe, describe_prediction, fit_power_law
from lmlab.reports.sweep import SweepView, load_sweep, note, scaling_points, trial_progress
from lmlab.reports.sweep_plots import axis_file, plot_axis, plot_scaling, plot_top_k

TOP_K_PLOT, SCALING_PLOT = "top-k-loss.png", "scaling.png"


def _show(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if v is None or isinstance(v, bool):
        return {None: "null", True: "true", False: "false"}[v]
    return str(v)


def _overrides(values: dict) -> str:
    return " ".join(f"{k}={_show(v)}" for k, v in values.items())


def scaling_fit(view: SweepView) -> tuple[PowerLawFit | None, str]:
    """The fit of the spec's ``scaling:`` and one paragraph about it (or why there is none)."""
    spec = view.spec.get("scaling")
    if not spec:
        return None, ""
    xs, ys, _ = scaling_points(view)
    x_name = spec.get("x", "params")
    try:
        fit = fit_power_law(xs, ys)
    except ValueError as err:
        return None, f"No scaling fit: {err}."
    lines = [describe(fit, x_name)] + [describe_prediction(fit, x, x_name) for x in spec.get("predict") or []]
    return fit, "; ".join(lines) + "."


def _trial_table(view: SweepView) -> Block:
    keys = [a["key"] for a in view.axes]
    header = ["rank", "trial", *[f"`{k}`" for k in keys], "status", "progress", view.metric, "note"]
    rows = []
    for i, t in enumerate(view.ranked()):
        rows.append((str(i + 1) if t.value is not None else "-", t.name,
                     *[_show(t.values.get(k, "-")) for k in keys], t.status, trial_progress(t),
                     fmt_num(t.value), note(t)))
    return ("table", header, rows)


def _seed_table(view: SweepView) -> Block:
    keys = [a["key"] for a in view.axes if a.get("kind") != "seed"]
    rows = [(p["point"], *[_show(p["values"].get(k, "-")) for k in keys], f"{p['n']}/{p['trials']}",
             fmt_num(p["mean"]) + (f" ± {p['std']:.4f}" if p["std"] is not None else ""))
            for p in view.points()]
    return ("table", ["point", *[f"`{k}`" for k in keys], "seeds with a value", f"{view.metric} mean ± std"], rows)


def _best(view: SweepView) -> list[Block]:
    ranked = [t for t in view.ranked() if t.value is not None]
    if not ranked:
        return [("p", "No trial has a value of the metric yet.")]
    best = ranked[0]
    base = view.spec.get("base", "BASE")
    fixed = view.spec.get("overrides") or {}
    command = " ".join(["lmlab train", shlex.quote(str(base)), *(shlex.quote(f"{k}={_show(v)}")
                                                                  for k, v in {**fixed, **best.values}.items())])
    blocks = [("p", f"Best trial: **{best.name}** with {view.metric} = {best.value:.4f} "
                    f"(overrides `{_overrides(best.values) or 'none'}`)."),
              ("p", "The same run alone:"), ("code", command)]
    points = view.points()
    if any(p["trials"] > 1 for p in points) and points[0]["mean"] is not None:
        p = points[0]
        spread = f" ± {p['std']:.4f}" if p["std"] is not None else ""
        blocks.append(("p", f"Best point across seeds: **{p['point']}**, mean {p['mean']:.4f}{spread} "
                            f"over {p['n']} seed(s)."))
    return blocks


def sweep_blocks(view: SweepView, plots_dir: Path, rel: str) -> list[Block]:
    counts: dict[str, int] = {}
    for t in view.trials:
        counts[t.status] = counts.get(t.status, 0) + 1
    said = ", ".join(f"{n} {s}" for s, n in counts.items())
    better = "lower" if view.mode == "min" else "higher"
    blocks: list[Block] = [
        ("p", f"{len(view.trials)} trials ({said}) of base config `{view.spec.get('base')}`; ranked by "
              f"`{view.metric}` ({better} is better). Sweep folder: `{view.path}`."),
        ("h", 2, "Best"), *_best(view), ("h", 2, "Trials"), _trial_table(view)]
    if any(t.row.get("point") and t.row.get("point") != t.name for t in view.trials):
        blocks += [("h", 2, "Across seeds"), _seed_table(view)]
    plots_dir.mkdir(parents=True, exist_ok=True)
    images = []
    for axis in view.axes:
        if axis.get("kind") == "seed":
            continue
        made = plot_axis(view, axis, plots_dir / axis_file(axis["key"]))
        if made is not None:
            images.append(("img", f"{rel}/{made.name}", f"{view.metric} vs {axis['key']}"))
    if images:
        blocks += [("h", 2, "Metric per axis"), *images]
    top = [t for t in view.ranked() if t.value is not None][:int(view.spec.get("top_k") or 3)]
    made = plot_top_k(top, plots_dir / TOP_K_PLOT)
    if made is not None:
        blocks += [("h", 2, f"Loss curves of the best {len(top)}"), ("img", f"{rel}/{made.name}", "loss")]
    fit, text = scaling_fit(view)
    if text:
        blocks += [("h", 2, "Scaling fit"), ("p", text)]
    if fit is not None:
        xs, ys, _ = scaling_points(view)
        spec = view.spec.get("scaling") or {}
        made = plot_scaling(fit, xs, ys, spec.get("x", "params"), view.metric, spec.get("predict") or [],
                            plots_dir / SCALING_PLOT)
        blocks.append(("img", f"{rel}/{made.name}", "scaling fit"))
    failed = [t for t in view.trials if t.status == sweepdir.FAILED]
    if failed:
        blocks += [("h", 2, "Failed trials"),
                   ("ul", [f"{t.name}: {note(t)} (log `{sweepdir.LOGS_DIR}/{t.name}.log`; "
                           f"`lmlab report {view.path / t.name}` explains it)" for t in failed])]
    stopped = [t for t in view.trials if t.status == sweepdir.STOPPED_EARLY]
    if stopped:
        blocks += [("h", 2, "Stopped early"), ("ul", [f"{t.name}: {note(t)}" for t in stopped])]
    return blocks


def write_sweep_report(sweep_dir: str | Path, fmt: str = "md", out_dir: str | Path | None = None) -> Path:
    """``report.md`` / ``report.html`` and ``plots/`` in the sweep folder (or ``out_dir``)."""
    view = load_sweep(sweep_dir)
    out = Path(out_dir) if out_dir else Path(sweep_dir)
    out.mkdir(parents=True, exist_ok=True)
    blocks = sweep_blocks(view, out / rundir.PLOTS_DIR, rundir.PLOTS_DIR)
    path = out / f"{rundir.REPORT_STEM}.{'html' if fmt == 'html' else 'md'}"
    path.write_text(render(f"Sweep {view.spec.get('name', Path(sweep_dir).name)}", blocks, fmt), encoding="utf-8")
    return path
