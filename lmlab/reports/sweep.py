"""Reading a sweep folder (``lmlab.sweepdir``): its trials with their runs and metric
(``load_sweep``), ranked, grouped across seeds, and the scaling fit's points; the trial list of
``lmlab runs SWEEP_DIR`` (``format_sweep_trials``). Reads files only: no torch, no config loading.

The metric of a trial (the spec's ``metric``): ``val/loss``, ``val/bpb``, ``val/ppl``, ``val/acc``
are the best value of its validation lines (lowest, or highest with ``mode: max``), as ``lmlab
runs`` shows the best validation loss; ``loss`` the last logged training loss;
``eval:TASK/METRIC`` the newest ``lmlab eval`` result of that task and metric.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from lmlab import rundir, sweepdir
from lmlab.reports.runs import Run, load_run, progress

EVAL_PREFIX = "eval:"


@dataclass
class TrialView:
    row: dict  # the trial table's row
    run: Run | None  # None before the trial wrote anything
    value: float | None = None  # the spec's metric

    @property
    def name(self) -> str:
        return self.row["name"]

    @property
    def values(self) -> dict:
        return self.row.get("values") or {}

    @property
    def status(self) -> str:
        """The table's word, unless the run says more: a trial submitted to SLURM (or one the table
        last saw running) is what its run directory says now (finished, running, failed ...)."""
        row = self.row.get("status") or "-"
        if self.run is None or row in (sweepdir.FINISHED, sweepdir.FAILED, sweepdir.STOPPED_EARLY):
            return row
        return self.run.status.get("status") or row


@dataclass
class SweepView:
    path: Path
    spec: dict
    trials: list[TrialView] = field(default_factory=list)

    @property
    def metric(self) -> str:
        return self.spec.get("metric") or "val/loss"

    @property
    def mode(self) -> str:
        return self.spec.get("mode") or "min"

    @property
    def axes(self) -> list[dict]:
        return [a for a in self.spec.get("axes") or [] if isinstance(a, dict) and a.get("key")]

    def ranked(self) -> list[TrialView]:
        """Trials with a metric, best first; then the others in table order."""
        scored = [t for t in self.trials if t.value is not None]
        scored.sort(key=lambda t: t.value, reverse=self.mode == "max")
        return scored + [t for t in self.trials if t.value is None]

    def points(self) -> list[dict]:
        """One entry per point (a trial's values without the seed): mean and sample standard
        deviation of the metric across its seeds, best first."""
        groups: dict[str, list[TrialView]] = {}
        for t in self.trials:
            groups.setdefault(t.row.get("point") or t.name, []).append(t)
        out = []
        for point, members in groups.items():
            values = [t.value for t in members if t.value is not None]
            out.append({"point": point, "values": {k: v for k, v in members[0].values.items() if k != "seed"},
                        "n": len(values), "trials": len(members),
                        "mean": statistics.fmean(values) if values else None,
                        "std": statistics.stdev(values) if len(values) > 1 else None})
        scored = sorted((p for p in out if p["mean"] is not None), key=lambda p: p["mean"],
                        reverse=self.mode == "max")
        return scored + [p for p in out if p["mean"] is None]


def load_sweep(sweep_dir: str | Path) -> SweepView:
    sweep_dir = Path(sweep_dir)
    view = SweepView(path=sweep_dir, spec=sweepdir.read_spec(sweep_dir))
    for row in sweepdir.read_trials(sweep_dir):
        if row.get("in_spec") is False:
            continue
        folder = sweepdir.trial_dir(sweep_dir, row["name"])
        run = load_run(folder) if rundir.is_run_dir(folder) else None
        view.trials.append(TrialView(row=row, run=run,
                                     value=metric_value(run, view.metric, view.mode) if run else None))
    return view


def metric_value(run: Run, metric: str, mode: str = "min") -> float | None:
    if metric.startswith(EVAL_PREFIX):
        task, _, name = metric[len(EVAL_PREFIX):].rpartition("/")
        rows = [r for r in run.evals if r.get("task") == task and r.get("metric") == name and _finite(r.get("value"))]
        return float(rows[-1]["value"]) if rows else None
    if metric == "loss":
        lines = [m["loss"] for m in run.train if _finite(m.get("loss"))]
        return float(lines[-1]) if lines else None
    values = [m[metric] for m in run.val if _finite(m.get(metric))]
    if not values:
        return None
    return float(max(values) if mode == "max" else min(values))


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def scaling_x(run: Run, x: str) -> float | None:
    """The size a trial puts on the scaling fit's x axis: parameters (as training counted them,
    provenance.json), tokens trained, training FLOPs (FLOPs per token x tokens), or steps."""
    size = run.model_size or {}
    tokens = next((m["tokens"] for m in reversed(run.train) if _finite(m.get("tokens"))), None)
    if x == "params":
        return _positive(size.get("params"))
    if x == "tokens":
        return _positive(tokens)
    if x == "flops":
        per_token = size.get("flops_per_token")
        return _positive(per_token * tokens) if _finite(per_token) and tokens else None
    done, _, _ = progress(run)
    return _positive(done)


def _positive(v) -> float | None:
    return float(v) if _finite(v) and v > 0 else None


def scaling_points(view: SweepView) -> tuple[list[float], list[float], list[str]]:
    """(x, metric, trial name) of every finished trial that has both (``scaling.x`` of the spec)."""
    x_name = (view.spec.get("scaling") or {}).get("x", "params")
    xs, ys, names = [], [], []
    for t in view.trials:
        if t.run is None or t.value is None or t.status != sweepdir.FINISHED:
            continue
        x = scaling_x(t.run, x_name)
        if x is not None:
            xs.append(x)
            ys.append(t.value)
            names.append(t.name)
    return xs, ys, names


# --------------------------------------------------------------------------- lmlab runs SWEEP_DIR


def note(t: TrialView) -> str:
    row = t.row
    if row.get("status") == sweepdir.FAILED:
        return f"exit {row.get('exit_code')}: {row.get('crash') or '?'}"
    if row.get("status") == sweepdir.STOPPED_EARLY:
        return row.get("stop_rule") or ""
    if row.get("status") in (sweepdir.STOPPED, sweepdir.PREEMPTED):
        return "resumes from its checkpoint when the sweep runs again"
    return ""


def trial_progress(t: TrialView) -> str:
    if t.run is None:
        return "-"
    done, planned, unit = progress(t.run)
    return f"{done}/{planned} {unit}" if planned else f"{done} {unit}"


def format_sweep_trials(sweep_dir: str | Path) -> str:
    """The sweep's trials as an aligned table: status, progress, metric (ranked), and why a
    trial failed or was stopped early."""
    view = load_sweep(sweep_dir)
    if not view.trials:
        return f"{sweep_dir}: a sweep folder without trials yet"
    header = ("rank", "trial", "status", "progress", view.metric, "note")
    ranked = view.ranked()
    lines = [header] + [(str(i + 1) if t.value is not None else "-", t.name, t.status, trial_progress(t),
                         f"{t.value:.4f}" if t.value is not None else "-", note(t))
                        for i, t in enumerate(ranked)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    counts: dict[str, int] = {}
    for t in view.trials:
        counts[t.status] = counts.get(t.status, 0) + 1
    said = ", ".join(f"{n} {s}" for s, n in counts.items())
    head = f"sweep {view.spec.get('name', Path(sweep_dir).name)}: {len(view.trials)} trials ({said}); " \
           f"ranked by {view.metric} ({'lower' if view.mode == 'min' else 'higher'} is better)"
    return "\n".join([head] + ["  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip() for line in lines])
