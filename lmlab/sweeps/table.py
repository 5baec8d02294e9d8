"""The trial table (``trials.json``, ``lmlab.sweepdir``): one row per trial, rewritten atomically at
every change, and the rule that decides, when a sweep starts again, which trials still need to run.

The run directory is the truth about training (``reports.status.run_status``): a trial whose run
finished is done whatever the table says (the sweep may have been killed before it wrote that).
The table is the truth about what the sweep decided: ``stopped early`` (its rule) and ``failed``
(exit code and crash line; run again only with ``--retry-failed``)."""
from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path

from lmlab import sweepdir
from lmlab.reports.status import run_status
from lmlab.sweeps.trials import Trial

RUN_DONE = ("finished", "stopped early")  # run_end statuses of a run that trained to its end


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


class TrialTable:
    def __init__(self, sweep_dir: Path, trials: list[Trial]):
        self.sweep_dir = Path(sweep_dir)
        old = {r["name"]: r for r in sweepdir.read_trials(self.sweep_dir)}
        self.rows: dict[str, dict] = {}
        for t in trials:
            row = old.pop(t.name, {})
            self.rows[t.name] = {"name": t.name, "index": t.index, "point": t.point, "values": t.values,
                                 "status": row.get("status", sweepdir.PENDING),
                                 **{k: v for k, v in row.items() if k not in ("name", "index", "point",
                                                                               "values", "status")}}
        # trials of an earlier spec that this one no longer has: kept (their runs are still there)
        for name, row in old.items():
            self.rows[name] = {**row, "index": len(self.rows), "in_spec": False}

    def __getitem__(self, name: str) -> dict:
        return self.rows[name]

    def update(self, name: str, **fields) -> None:
        self.rows[name].update(fields)
        self.save()

    def save(self) -> None:
        sweepdir.write_trials(self.sweep_dir, list(self.rows.values()))

    def reconcile(self, trials: list[Trial], retry_failed: bool = False) -> list[Trial]:
        """After a restart: each row's status from its run directory; returns the trials still to
        run (everything but finished, stopped early and, unless ``retry_failed``, failed)."""
        todo = []
        for t in trials:
            row = self.rows[t.name]
            run = t.run_dir(self.sweep_dir)
            status = run_status(run)["status"] if run.is_dir() else None
            if status in RUN_DONE:
                row["status"] = sweepdir.FINISHED
            elif row["status"] == sweepdir.STOPPED_EARLY or (row["status"] == sweepdir.FAILED and not retry_failed):
                continue
            else:
                row["status"] = sweepdir.PENDING if status is None else _resumable(status)
            if row["status"] != sweepdir.FINISHED:
                todo.append(t)
        self.save()
        return todo

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for row in self.rows.values():
            if row.get("in_spec", True):
                out[row["status"]] = out.get(row["status"], 0) + 1
        return out


def _resumable(run_status_text: str) -> str:
    """A run that started and did not finish: it resumes from its newest checkpoint."""
    return {"preempted": sweepdir.PREEMPTED, "stopped": sweepdir.STOPPED}.get(run_status_text, sweepdir.PENDING)


def started_row(row: dict, device: str | None, log: Path, sweep_dir: Path) -> dict:
    return {"status": sweepdir.RUNNING, "attempts": int(row.get("attempts") or 0) + 1, "started": now_iso(),
            "started_unix": time.time(), "ended": None, "exit_code": None, "crash": None,
            "device": device, "log": str(log.relative_to(sweep_dir))}
