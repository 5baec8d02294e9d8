"""``lmlab train CONFIG [KEY=VALUE ...]``: the command around a ``training.trainer.Trainer``, which
owns the run itself (data, build, resume, the loop, checkpoints, validation, evaluation).

Preflight comes first: a config that cannot run leaves no trace (not even a run directory). Then
the run directory's lock (``runlock``: one training per run directory, held until the process
ends), taken before anything is written there. After that every phase is recorded in
``<dump_dir>/events.jsonl``; a crash is reported in one line that points at the traceback file,
and ``lmlab report`` explains it. ``--nproc N`` starts N processes of this same command
(``training.launcher``), and the exit code says how the run ended (130 for Ctrl-C).
"""
from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from lmlab.config import config_yaml, finalize_config
from lmlab.errors import LmlabError
from lmlab.preflight import load_and_check
from lmlab.runlock import RunLock, mark_run_dir
from lmlab.runlog import EventLog
from lmlab.slurm_script import RESUME_COMMAND_ENV
from lmlab.training import distributed, launcher
from lmlab.training.distributed import SINGLE, Dist
from lmlab.training.signals import PreemptionSignals
from lmlab.training.trainer import Trainer

INTERRUPTED_EXIT = 130  # a command stopped by Ctrl-C (128 + SIGINT), as shells report it


def run(args) -> int:
    if launcher.reporting():  # a worker of `--nproc`: its launcher says once how the job ended
        args.argv = launcher.launch_command() or args.argv  # the command the user typed, --nproc too
        return distributed.exit_rank(launcher.report_exit(lambda: _run(args), "train"))
    return distributed.exit_rank(_run(args))


def _run(args) -> int:
    started = time.perf_counter()
    if args.nproc is not None and args.nproc < 1:
        raise LmlabError(f"--nproc must be >= 1, got {args.nproc}. Fix: --nproc 1 or more (one per GPU).")
    if args.nproc is not None and not distributed.launched_by_torchrun():
        cfg = load_and_check(args.config, args.overrides, world_size=args.nproc)  # refuse before launching
        RunLock(cfg.dump_dir).refuse_if_held()
        return launcher.launch_local(args.nproc, _without_nproc(args.argv), args.argv)
    cfg = load_and_check(args.config, args.overrides)
    d = distributed.setup(cfg.distributed, cfg.device)
    try:
        lock = _lock_run_dir(Path(cfg.dump_dir), d)  # before anything is written to the run dir
    except LmlabError:
        distributed.teardown(d)
        raise
    events = EventLog(cfg.dump_dir, write=d.is_main)
    try:
        with lock, events.run(command=" ".join(["lmlab", *args.argv]), world_size=d.world_size):
            if getattr(lock, "taken_over", None):
                events.warning(lock.taken_over, "RunLockTakeover")
            # preflight ran before the run directory may exist; recorded now that it does
            events.emit("phase_start", phase="preflight")
            events.emit("phase_end", phase="preflight", status="ok", seconds=time.perf_counter() - started)
            summary = train(cfg, args.argv, events, d)
            reason = {"reason": summary["reason"]} if summary.get("reason") else {}
            events.set_result(summary["status"], step=summary.get("step"), **reason,
                              failed_evals=summary.get("failed_evals", []))
    except LmlabError:
        raise
    except Exception as err:  # noqa: BLE001 -- recorded above; say where to look instead of a bare crash
        return _report_crash(err, events, d)
    finally:
        distributed.teardown(d)
    # Ctrl-C: saved and stopped (resumable), but the shell must see an interrupted command
    return INTERRUPTED_EXIT if summary.get("reason") == PreemptionSignals.INTERRUPT else 0


def _lock_run_dir(run_dir: Path, d: Dist):
    """Rank 0 takes the run directory's lock (``runlock``) and marks the folder as a run; every
    rank of a several-process job learns whether it could (and raises the same error if not)."""
    lock, refusal = contextlib.nullcontext(), None
    if d.is_main:
        try:
            lock = RunLock(run_dir).acquire()
        except LmlabError as err:
            refusal = str(err)
    refusal = distributed.broadcast_object(refusal, d)
    if refusal:
        raise LmlabError(refusal)
    if d.is_main:
        if lock.taken_over:
            print(f"lmlab train: {lock.taken_over}", flush=True)
        mark_run_dir(run_dir, "lmlab train")
    return lock


def _without_nproc(argv: list[str]) -> list[str]:
    """The command line to repeat in every process: ``--nproc N`` / ``--nproc=N`` removed."""
    out, skip = [], False
    for word in argv:
        if skip or word.startswith("--nproc="):
            skip = False
            continue
        skip = word == "--nproc"
        if not skip:
            out.append(word)
    return out


def _report_crash(err: Exception, events: EventLog, d: Dist) -> int:
    summary, phase = events.record_exception(err, "run")  # already recorded: returns that (redacted) record
    traceback_file = summary.get("traceback_file")
    who = f" (rank {d.rank} of {d.world_size})" if d.enabled else ""
    launcher.tell(f"lmlab train{who}: failed in phase {phase}: {summary['type']}: {summary['message']} "
                  f"(at {summary['where']})\n"
                  f"  traceback: {events.run_dir / traceback_file if traceback_file else 'not written'}\n"
                  f"  explanation and fix: lmlab report {events.run_dir}")  # printed (by the launcher)
    return 1


def train(cfg, argv: list[str], events: EventLog, d: Dist = SINGLE) -> dict:
    """Run (or resume) training for a preflighted config on this process's share of the job;
    returns the ``Trainer``'s summary. The config is finalized here (the lr a scaling rule gives),
    and the Trainer is handed what only the command knows."""
    cfg = finalize_config(cfg)
    trainer = Trainer(cfg, events, d, argv=argv, resume_command=_resume_command(argv),
                      config_yaml=config_yaml(cfg))
    return trainer.run()


def _resume_command(argv: list[str]) -> str:
    """What to run to resume: the same command, or what the launcher says (a SLURM batch script
    sets LMLAB_RESUME_COMMAND to ``sbatch <run>/submit.slurm``: its ranks run a code snapshot)."""
    return os.environ.get(RESUME_COMMAND_ENV) or " ".join(["lmlab", *argv])
