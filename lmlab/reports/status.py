"""A run's status, read from its event log (``events.jsonl``) and, for runs without one, its
checkpoints: ``run_status``. The log itself is written by ``lmlab.runlog.EventLog``; a SLURM run's
jobs are ``lmlab.slurm_jobs``'s."""
from __future__ import annotations

import os
import socket
import time
from datetime import datetime, timezone
from pathlib import Path

from lmlab import slurm_jobs
from lmlab.rundir import (EVENTS_FILE, METRICS_FILE, last_update, newest_train_state, read_config,
                          read_jsonl)

# A run whose log and metrics have not changed for this long, and whose process cannot be seen,
# is no longer running. Generous, because a training phase logs only every `logging.every` steps.
STALE_AFTER_S = 900.0


def read_events(run_dir: str | Path) -> list[dict]:
    return read_jsonl(Path(run_dir) / EVENTS_FILE)


def run_status(run_dir: str | Path, now: float | None = None,
               stale_after: float = STALE_AFTER_S) -> dict:
    """Status of a run directory, from ``events.jsonl`` and (without events) its checkpoints.

    Rules, applied to the events after the last ``run_start`` (one invocation of the command):

    1. a ``run_end`` event: its ``status`` (finished | stopped early | stopped | preempted |
       failed, the last with ``phase`` and ``exception``);
    2. no ``run_end``, and the process is alive (same host, pid exists) or -- when that cannot
       be checked (another host) -- some run file changed within ``stale_after`` seconds:
       ``running`` (``phase`` = the phase still open);
    3. no ``run_end`` and not running: ``failed`` if a phase failed, ``stopped``
       if a phase ended by Ctrl-C, ``finished`` if the last checkpoint is marked
       finished, else ``interrupted`` (killed without a trace: ``kill -9``, the OOM killer, a
       lost node);
    4. no events at all (a run from before the log existed): ``running`` if files changed within
       ``stale_after``; ``finished`` / ``stopped early`` from a finished checkpoint; ``stopped``
       at ``training.stop_at``; otherwise ``interrupted``.

    SLURM (``lmlab slurm``): before them, a submitted job whose training has not started (no
    ``run_start`` of that job) is ``queued`` (with ``job_id``) while SLURM lists it as pending or
    cannot be asked; ``running`` (phase ``starting``) once its log exists; ``cancelled`` or
    ``failed`` if it left the queue first. And a run stopped by the SIGTERM of ``scancel`` (the
    batch script's ``slurm_signal`` event gives the cause ``CANCELLED``) is ``cancelled``, not
    ``preempted``.

    Returns ``{status, rule, reason, phase, exception, attempts, started, ended, last_update}``:
    ``rule`` names the rule that decided (run_end, alive, recent_files, failed_phase,
    interrupted_phase, ckpt_finished, vanished, no_events_recent, no_events_finished,
    no_events_stop_at, no_events_unknown, slurm_queued, slurm_starting, slurm_not_started,
    slurm_cancelled); ``reason`` says it in English.
    """
    run_dir = Path(run_dir)
    now = time.time() if now is None else now
    updated = last_update(run_dir)
    fresh = updated is not None and now - updated < stale_after
    events = read_events(run_dir)
    # Phase events written without run()/run_start still form one invocation.
    starts = [i for i, e in enumerate(events) if e.get("event") == "run_start"] or ([0] if events else [])
    base = {"phase": None, "exception": None, "attempts": len(starts), "started": None,
            "ended": None, "last_update": _iso(updated)}
    waiting = _slurm_not_started(run_dir, events, now, stale_after)
    if waiting is not None:
        return {**base, **waiting}
    if not starts:
        return {**base, **_status_without_events(run_dir, fresh, stale_after)}
    attempt = events[starts[-1]:]
    base["started"] = attempt[0].get("time")
    end = next((e for e in reversed(attempt) if e.get("event") == "run_end"), None)
    cancel = next((e for e in attempt if e.get("event") == slurm_jobs.SIGNAL_EVENT
                   and e.get("cause") == "CANCELLED"), None)
    if end is not None:
        status = end.get("status") or "finished"
        if cancel is not None and status == "preempted":  # the SIGTERM that scancel sent
            return {**base, "status": "cancelled", "ended": end.get("time"), "rule": "slurm_cancelled",
                    "job_id": cancel.get("slurm_job_id"),
                    "reason": f"SLURM job {cancel.get('slurm_job_id')} was cancelled (scancel); the run "
                              f"saved a checkpoint at step {end.get('step')} and stopped"}
        extra = {"phase": end.get("phase"), "exception": end.get("exception")} if status == "failed" else {}
        return {**base, **extra, "status": status, "ended": end.get("time"), "rule": "run_end",
                "reason": f"run_end event with status '{status}'"}
    alive = _process_alive(attempt[0])
    if alive or (alive is None and fresh):
        why = "its process is alive" if alive else f"files changed in the last {stale_after:.0f} s"
        return {**base, "status": "running", "phase": _open_phase(attempt),
                "rule": "alive" if alive else "recent_files",
                "reason": f"no run_end event yet and {why}"}
    if cancel is not None:
        return {**base, "status": "cancelled", "phase": _open_phase(attempt), "rule": "slurm_cancelled",
                "job_id": cancel.get("slurm_job_id"),
                "reason": f"SLURM job {cancel.get('slurm_job_id')} was cancelled (scancel) and the run "
                          "ended without a run_end event (killed before it could save?)"}
    return {**base, **_status_after_death(run_dir, attempt, alive, stale_after)}


def _slurm_not_started(run_dir: Path, events: list[dict], now: float, stale_after: float) -> dict | None:
    """The status of a run whose last submitted SLURM job has not started training; None when
    there is no such job (no job submitted, or a ``run_start`` of it or after it)."""
    jobs = slurm_jobs.submissions(run_dir)
    if not jobs:
        return None
    last = jobs[-1]
    job, submitted = last["job_id"], float(last.get("unix") or 0)
    if any(e.get("event") == "run_start" and (str(e.get("slurm_job_id")) == job or
                                              float(e.get("unix") or 0) >= submitted) for e in events):
        return None
    states = slurm_jobs.job_states([job])
    state = None if states is None else states.get(job)
    facts = {"job_id": job, "last_update": last.get("time")}
    log = slurm_jobs.log_path(run_dir, job)
    if states is not None and state is None:  # it left the queue before training started
        ended = slurm_jobs.ended_state(job)
        started = f"its log {log} says why" if log.exists() else "it never started"
        return {**facts, "status": "cancelled" if (ended or "").startswith("CANCELLED") else "failed",
                "rule": "slurm_not_started",
                "reason": f"SLURM job {job} ended ({ended or 'it left the queue'}) before training "
                          f"started; {started}"}
    asked = f"squeue: {state}" if state else "SLURM not asked: no squeue here"
    if not log.exists():
        return {**facts, "status": "queued", "rule": "slurm_queued",
                "reason": f"submitted to SLURM as job {job} at {last.get('time')}; not started yet ({asked})"}
    if state is None and now - log.stat().st_mtime >= stale_after:
        return {**facts, "status": "failed", "rule": "slurm_not_started",
                "reason": f"SLURM job {job} started but training never did, and its log {log} has not "
                          f"changed for {stale_after:.0f} s ({asked})"}
    return {**facts, "status": "running", "phase": "starting", "rule": "slurm_starting",
            "reason": f"SLURM job {job} started (its log exists); training has not started yet ({asked})"}


def _status_after_death(run_dir: Path, attempt: list[dict], alive: bool | None,
                        stale_after: float) -> dict:
    gone = "its process is gone" if alive is False else f"nothing changed for {stale_after:.0f} s"
    ends = [e for e in attempt if e.get("event") == "phase_end"]
    failed = next((e for e in reversed(ends) if e.get("status") == "failed"), None)
    if failed is not None:
        return {"status": "failed", "phase": failed.get("failed_in") or failed.get("phase"),
                "exception": failed.get("exception"), "rule": "failed_phase",
                "reason": f"phase '{failed.get('phase')}' failed and {gone} without a run_end event"}
    hit = next((e for e in reversed(ends) if e.get("status") == "interrupted"), None)
    if hit is not None:
        return {"status": "stopped", "phase": hit.get("phase"), "rule": "interrupted_phase",
                "reason": f"phase '{hit.get('phase')}' was interrupted (Ctrl-C); no run_end event"}
    if newest_train_state(run_dir).get("finished"):  # killed after training ended (e.g. in a report)
        return {"status": "finished", "rule": "ckpt_finished",
                "reason": "no run_end event, but the last checkpoint is marked finished"}
    return {"status": "interrupted", "phase": _open_phase(attempt), "rule": "vanished",
            "reason": f"started, no run_end event, and {gone} (killed?)"}


def _status_without_events(run_dir: Path, fresh: bool, stale_after: float) -> dict:
    state = newest_train_state(run_dir)
    config = read_config(run_dir)
    epochs = int(config.get("epochs") or 0)
    # Runs from before train_state.json had "finished": a step-mode run that reached its steps.
    reached = not epochs and state.get("step", 0) >= int(config.get("steps") or 0) > 0
    if state.get("finished") or reached:
        done = max((int(m.get("epoch") or 0) for m in read_jsonl(run_dir / METRICS_FILE)
                    if "train/epoch_loss" in m), default=0)
        status = "stopped early" if epochs and done < epochs else "finished"
        return {"status": status, "rule": "no_events_finished",
                "reason": "no events.jsonl; the last checkpoint is marked finished"}
    if fresh:  # after the finished check: a run that ended seconds ago is not running
        return {"status": "running", "rule": "no_events_recent",
                "reason": f"no events.jsonl; files changed in the last {stale_after:.0f} s"}
    stop_at = int((config.get("training") or {}).get("stop_at") or 0)
    if state and stop_at and state.get("step") == stop_at:
        return {"status": "stopped", "rule": "no_events_stop_at",
                "reason": f"no events.jsonl; last checkpoint at training.stop_at={stop_at}"}
    return {"status": "interrupted", "rule": "no_events_unknown",
            "reason": f"no events.jsonl, no finished checkpoint and no change for {stale_after:.0f} s"}


def _process_alive(start: dict) -> bool | None:
    """Whether the pid recorded at run_start still exists; None when it cannot be checked here."""
    pid, host = start.get("pid"), start.get("host")
    if not isinstance(pid, int) or host != socket.gethostname():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    except OSError:
        return None
    return True


def _open_phase(attempt: list[dict]) -> str | None:
    """The most recently started phase that has not ended."""
    open_phases: list[str] = []
    for e in attempt:
        if e.get("event") == "phase_start":
            open_phases.append(e.get("phase"))
        elif e.get("event") == "phase_end" and e.get("phase") in open_phases:
            open_phases.remove(e.get("phase"))
    return open_phases[-1] if open_phases else None


def _iso(unix: float | None) -> str | None:
    if unix is None:
        return None
    return datetime.fromtimestamp(unix, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
