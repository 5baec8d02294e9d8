"""What a run directory and SLURM say about the run's batch jobs; read by every command that needs it.

``lmlab slurm`` records each job that ``sbatch`` accepted in ``<run>/slurm-jobs.json`` (job id,
time, the submitting checkout's git commit) and, beside the code snapshot, ``code/lmlab-source.json``
(the checkout the snapshot was copied from: the snapshot has no ``.git``). With them:

* ``lmlab runs`` / ``lmlab report`` show a run whose job has not started training as ``queued (job N)``
  (``reports.status``);
* ``lmlab slurm`` refuses a dump_dir whose job is still queued, running or waiting to be requeued;
* the job's provenance names the job, its restart count and the submitting commit (``runlog``).

SLURM is asked with ``squeue`` (a few seconds at most); where it cannot be asked (no SLURM client
on this machine, the controller unreachable) the answer is None and callers say so. Nothing here
imports torch.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

from lmlab.atomic import write_text
from lmlab.rundir import CODE_DIR, EVENTS_FILE, SLURM_OUTPUT, SUBMIT_FILE, read_json, read_jsonl

JOBS_FILE = "slurm-jobs.json"  # in the run directory: every job lmlab slurm submitted for it
SOURCE_FILE = "lmlab-source.json"  # beside the code snapshot: where it was copied from
# The batch script appends this event to events.jsonl when SLURM sends it SIGTERM, with the cause
# slurmstepd gave: CANCELLED (scancel), TIME LIMIT, PREEMPTION, JOB REQUEUE, NODE FAILURE, ...
SIGNAL_EVENT = "slurm_signal"
# squeue's states of a job that may still start (or is running): its run directory is in use
ACTIVE_STATES = frozenset({"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED",
                           "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT",
                           "STOPPED", "SPECIAL_EXIT", "RESV_DEL_HOLD", "POWER_UP_NODE"})
_QUERY_TIMEOUT_S = 15


# --------------------------------------------------------------------------- the run directory


def is_job_dir(run_dir: str | Path) -> bool:
    """A folder ``lmlab slurm`` wrote: its batch script and code snapshot."""
    run_dir = Path(run_dir)
    return (run_dir / SUBMIT_FILE).is_file() and (run_dir / CODE_DIR).is_dir()


def submissions(run_dir: str | Path) -> list[dict]:
    """The jobs submitted for this run, oldest first (``job_id`` as text, ``unix``, ``time``, ...)."""
    jobs = read_json(Path(run_dir) / JOBS_FILE).get("jobs")
    return [j for j in jobs if isinstance(j, dict) and j.get("job_id")] if isinstance(jobs, list) else []


def record_submission(run_dir: str | Path, job_id: str, **facts) -> dict:
    """Append job ``job_id`` (just accepted by sbatch) to ``slurm-jobs.json``."""
    path = Path(run_dir) / JOBS_FILE
    unix = time.time()
    entry = {"job_id": str(job_id), "time": _iso(unix), "unix": unix, **facts}
    write_text(path, json.dumps({"jobs": [*submissions(run_dir), entry]}, indent=2) + "\n")
    return entry


def log_path(run_dir: str | Path, job_id: str) -> Path:
    return Path(run_dir) / SLURM_OUTPUT.replace("%j", str(job_id))


def write_source(code_dir: str | Path, git: dict, copied_from: str) -> None:
    """``code/lmlab-source.json``: the checkout (and its git commit) the snapshot was copied from."""
    record = {"git": git, "copied_from": copied_from, "time": _iso(time.time())}
    write_text(Path(code_dir) / SOURCE_FILE, json.dumps(record, indent=2) + "\n")


def snapshot_source(package_parent: str | Path) -> dict:
    """What ``write_source`` recorded beside the package at ``package_parent`` ({} if nothing)."""
    return read_json(Path(package_parent) / SOURCE_FILE)


def started_jobs(run_dir: str | Path) -> set[str]:
    """Job ids named by the run's ``run_start`` events (a job's training started)."""
    return {str(e["slurm_job_id"]) for e in read_jsonl(Path(run_dir) / EVENTS_FILE)
            if e.get("event") == "run_start" and e.get("slurm_job_id")}


# --------------------------------------------------------------------------- this process's job


def environment_job() -> dict:
    """The SLURM job this process runs in ({} outside one): job id and restart count (how often
    it was requeued), from SLURM's variables."""
    job_id = os.environ.get("SLURM_JOB_ID")
    if not job_id:
        return {}
    try:
        restarts = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    except ValueError:
        restarts = 0
    return {"job_id": job_id, "restart_count": restarts}


# --------------------------------------------------------------------------- asking SLURM


def job_states(job_ids: list[str] | None = None, script: str | Path | None = None) -> dict[str, str] | None:
    """{job id: state} of the jobs still in SLURM's queue (pending, running, completing, ...) among
    ``job_ids``, and of every queued job whose batch script is ``script``; None when SLURM cannot be
    asked. A job that ended has left this list (squeue lists jobs that are not yet done)."""
    squeue = shutil.which("squeue")
    if squeue is None:
        return None
    try:
        out = subprocess.run([squeue, "--noheader", "--format=%i|%T|%o"], capture_output=True,
                             text=True, timeout=_QUERY_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    wanted, found = {str(j) for j in job_ids or []}, {}
    for line in out.stdout.splitlines():
        job_id, _, rest = line.strip().partition("|")
        state, _, command = rest.partition("|")
        if job_id in wanted or (script is not None and command.strip() == str(script)):
            found[job_id] = state.strip()
    return found


def ended_state(job_id: str) -> str | None:
    """How a job that left the queue ended (COMPLETED, CANCELLED, FAILED, ...), while SLURM still
    knows it (``MinJobAge``, 5 minutes by default); None when it cannot tell."""
    scontrol = shutil.which("scontrol")
    if scontrol is None:
        return None
    try:
        out = subprocess.run([scontrol, "show", "job", str(job_id), "--oneliner"], capture_output=True,
                             text=True, timeout=_QUERY_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return None
    for word in out.stdout.split() if out.returncode == 0 else []:
        if word.startswith("JobState="):
            return word.split("=", 1)[1]
    return None


def _iso(unix: float) -> str:
    return datetime.fromtimestamp(unix, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
