"""Reading run directories: one run's files and summary (``load_run``, ``summarize``), and every
run under a folder (``list_runs``, ``format_runs_table``, behind ``lmlab runs``).

What counts as a run directory, and every file name in it, is ``lmlab.rundir``'s: a run that
failed before writing its config (e.g. in preflight) has an event log, so it is still listed, and
so is a run submitted to SLURM that has not started (``queued (job N)``, see ``slurm_jobs``).
"""
from __future__ import annotations

import math
import os
import statistics
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from lmlab import humanize, rundir, slurm_jobs
from lmlab.reports.status import run_status


@dataclass
class Run:
    """Everything a report reads from one run directory; missing files read as empty."""

    path: Path
    config: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    metrics: list[dict] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)
    status: dict = field(default_factory=dict)

    @property
    def epoch_mode(self) -> bool:
        return bool(self.config.get("epochs"))

    @property
    def train(self) -> list[dict]:
        """Training log lines (one per ``logging.every`` steps)."""
        return [m for m in self.metrics if "loss" in m]

    @property
    def val(self) -> list[dict]:
        return [m for m in self.metrics if "val/loss" in m]

    @property
    def epochs(self) -> list[dict]:
        """Epoch mode: one ``train/epoch_loss`` line per finished epoch."""
        return [m for m in self.metrics if "train/epoch_loss" in m]

    @property
    def model_size(self) -> dict | None:
        """Parameters, FLOPs per token (and its formula), vocabulary, sequence length and tokens
        per step, as training recorded them in its provenance; None for a run that did not."""
        size = self.provenance.get(rundir.MODEL_SIZE_KEY)
        return size if isinstance(size, dict) and size else None

    def get(self, dotted: str, default=None):
        """A config value by dotted key (``optim.lr``)."""
        node = self.config
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node


def load_run(run_dir: str | Path, now: float | None = None) -> Run:
    run_dir = Path(run_dir)
    # a SLURM job that has not started yet: the resolved config it will train
    config = rundir.read_config(run_dir) or rundir.read_config(run_dir / rundir.CODE_DIR)
    return Run(path=run_dir, config=config,
               provenance=rundir.read_json(run_dir / rundir.PROVENANCE_FILE),
               metrics=rundir.read_jsonl(run_dir / rundir.METRICS_FILE),
               events=rundir.read_jsonl(run_dir / rundir.EVENTS_FILE),
               evals=rundir.read_jsonl(run_dir / rundir.EVAL_METRICS_FILE),
               status=run_status(run_dir, now=now))


# --------------------------------------------------------------------------- summary


def best_validation(run: Run) -> dict | None:
    """The validation line with the lowest ``val/loss`` (finite values only), or None."""
    finite = [m for m in run.val if isinstance(m["val/loss"], (int, float)) and math.isfinite(m["val/loss"])]
    return min(finite, key=lambda m: m["val/loss"]) if finite else None


def progress(run: Run) -> tuple[int, int, str]:
    """(done, planned, unit): epochs in epoch mode, optimizer steps otherwise."""
    if run.epoch_mode:
        done = max((int(m.get("epoch") or 0) for m in run.epochs), default=0)
        return done, int(run.config.get("epochs") or 0), "epochs"
    done = max((int(m.get("step") or 0) for m in run.metrics), default=0)
    return done, int(run.config.get("steps") or 0), "steps"


def steady_median(run: Run, key: str) -> float | None:
    """Median of a training metric over logging windows (finite values); the first window
    (start-up, allocator and kernel warm-up) is left out when there are others, since it
    understates the steady rate."""
    values = [m[key] for m in run.train if isinstance(m.get(key), (int, float))
              and not isinstance(m.get(key), bool) and math.isfinite(m[key])]
    values = values[1:] if len(values) > 1 else values
    return statistics.median(values) if values else None


def duration(run: Run, now: float | None = None) -> tuple[float | None, bool]:
    """(wall seconds over all invocations, approximate?).

    From the event log: the sum over invocations of run_start -> run_end (or the last event, or
    now for a running run). Without it: provenance time (the last invocation's start) -> the
    last file change, flagged approximate.
    """
    now = time.time() if now is None else now
    starts = [i for i, e in enumerate(run.events) if e.get("event") == "run_start"]
    if starts:
        total = 0.0
        for n, i in enumerate(starts):
            attempt = run.events[i:starts[n + 1]] if n + 1 < len(starts) else run.events[i:]
            # run_end when there is one: later events (lmlab eval / report) are not training time
            last = next((e for e in attempt if e.get("event") == "run_end"), attempt[-1])
            end = last.get("unix", attempt[0].get("unix", 0))
            if n + 1 == len(starts) and run.status.get("status") == "running":
                end = now
            total += max(0.0, end - attempt[0].get("unix", end))
        return total, False
    started = _parse_time(run.provenance.get("time"))
    updated = rundir.last_update(run.path)
    if started is None or updated is None:
        return None, True
    return max(0.0, updated - started), True


def _parse_time(text) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def summarize(run: Run, root: Path | None = None) -> dict:
    """The row ``lmlab runs`` prints (and the comparison table starts from)."""
    done, planned, unit = progress(run)
    best = best_validation(run)
    seconds, approx = duration(run)
    name = run.path.relative_to(root).as_posix() if root and run.path != root else run.path.name
    return {"name": name or run.path.name, "path": str(run.path), "model": run.get("model.name"),
            "status": run.status.get("status"), "phase": run.status.get("phase"),
            "done": done, "planned": planned, "unit": unit,
            "best_val_loss": best["val/loss"] if best else None, "best": best,
            "tokens_per_s": steady_median(run, "tokens_per_s"), "duration_s": seconds,
            "duration_approx": approx, "last_update": run.status.get("last_update"),
            "job_id": run.status.get("job_id")}


# --------------------------------------------------------------------------- listing


def list_runs(root: str | Path, now: float | None = None) -> list[dict]:
    """Every run directory under ``root`` (``root`` itself included), newest update first."""
    root = Path(root)
    rows = []
    for folder, subdirs, _ in os.walk(root):
        path = Path(folder)
        if is_run(path):
            rows.append(summarize(load_run(path, now=now), root))
            subdirs[:] = [d for d in subdirs if d not in rundir.RUN_SUBDIRS]
        subdirs.sort()
    return sorted(rows, key=lambda r: r["last_update"] or "", reverse=True)


def is_run(path: Path) -> bool:
    """A run directory, or one submitted to SLURM whose job has not written anything yet."""
    return rundir.is_run_dir(path) or bool(slurm_jobs.submissions(path))


def status_text(status: str | None, phase: str | None = None, job_id: str | None = None) -> str:
    """A status as ``lmlab runs`` shows it: ``failed (train)``, ``queued (job 42)``."""
    if status == "failed" and phase:
        return f"{status} ({phase})"
    if status in ("queued", "cancelled") and job_id:
        return f"{status} (job {job_id})"
    return status or "-"


def format_runs_table(rows: list[dict]) -> str:
    """An aligned plain-text table of ``list_runs`` rows (``~`` marks an approximate duration)."""
    if not rows:
        return "no runs found"
    header = ("run", "model", "status", "progress", "best val loss", "duration", "last update")
    lines = [header]
    for r in rows:
        status = status_text(r["status"], r["phase"], r.get("job_id"))
        planned = f"/{r['planned']}" if r["planned"] else ""
        best = f"{r['best_val_loss']:.4f}" if r["best_val_loss"] is not None else "-"
        took = ("~" if r["duration_approx"] and r["duration_s"] is not None else "") + \
            humanize.duration(r["duration_s"])
        lines.append((r["name"], r["model"] or "-", status, f"{r['done']}{planned} {r['unit']}",
                      best, took, (r["last_update"] or "-").replace("T", " ")))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    out = ["  ".join(str(v).ljust(w) for v, w in zip(line, widths)).rstrip() for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)
