"""The sweep-folder contract (``lmlab sweep``): every file name of a sweep folder and its trial table.

A sweep folder holds the resolved spec, the trial table and one ordinary run directory per trial::

    <sweep>/sweep.yaml     the resolved spec: base config, fixed overrides, axes, every trial's overrides
            trials.json    the trial table: status, exit code, crash line, rule of an early stop ...
            logs/<trial>.log          each trial's console output (every attempt appended)
            <trial>/                  a run directory (``rundir``), named from its overrides
            .lock                     held by the ``lmlab sweep`` running it (``runlock``)
            submit-array.slurm  slurm-array.json  tasks/<i> -> ../<trial>  code/lmlab/   (--slurm)
            report.md  report.html  plots/                                      (lmlab report)

The sweep writes it (``lmlab.sweeps``); ``lmlab runs`` and ``lmlab report`` read it through this
module (no torch, no config loading). The table is replaced atomically: a reader, or a sweep
restarted after ``kill -9``, sees the old table or the new one.
"""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from lmlab.atomic import write_text
from lmlab.rundir import read_json

SPEC_FILE = "sweep.yaml"
TRIALS_FILE = "trials.json"
LOGS_DIR = "logs"
ARRAY_SCRIPT = "submit-array.slurm"
ARRAY_JOBS_FILE = "slurm-array.json"  # the array jobs sbatch accepted (job id, trials, time)
TASKS_DIR = "tasks"  # tasks/<array index> -> ../<trial>: where each array task writes its log
CODE_DIR = "code"  # --slurm: one lmlab snapshot that every trial's code/ links to
LOCK_FILE = ".lock"

# trial statuses in the table
PENDING, RUNNING, FINISHED, FAILED = "pending", "running", "finished", "failed"
STOPPED_EARLY = "stopped early"  # by the sweep's early-stopping rule (the trial's ``stop_rule``)
STOPPED = "stopped"  # Ctrl-C of the sweep: a checkpoint was saved; the same command resumes it
PREEMPTED = "preempted"  # SIGTERM from outside the sweep: saved; the same command resumes it
SUBMITTED = "submitted"  # --slurm: part of an array job
DONE = (FINISHED, STOPPED_EARLY)  # never trained again


def is_sweep_dir(path: str | Path) -> bool:
    return (Path(path) / SPEC_FILE).is_file()


def read_spec(sweep_dir: str | Path) -> dict:
    """The resolved spec ({} if missing or unreadable)."""
    try:
        data = yaml.safe_load((Path(sweep_dir) / SPEC_FILE).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def write_spec(sweep_dir: str | Path, spec: dict) -> None:
    write_text(Path(sweep_dir) / SPEC_FILE, yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))


def read_trials(sweep_dir: str | Path) -> list[dict]:
    """The trial table's rows, in spec order ([] if missing or unreadable)."""
    rows = read_json(Path(sweep_dir) / TRIALS_FILE).get("trials")
    return [r for r in rows if isinstance(r, dict) and r.get("name")] if isinstance(rows, list) else []


def write_trials(sweep_dir: str | Path, rows: list[dict]) -> None:
    Path(sweep_dir).mkdir(parents=True, exist_ok=True)
    write_text(Path(sweep_dir) / TRIALS_FILE, json.dumps({"trials": rows}, indent=1) + "\n")


def trial_dir(sweep_dir: str | Path, name: str) -> Path:
    return Path(sweep_dir) / name


def log_file(sweep_dir: str | Path, name: str) -> Path:
    return Path(sweep_dir) / LOGS_DIR / f"{name}.log"
