"""``lmlab train CONFIG [KEY=VALUE ...]``: preflight, then data -> build -> train, resuming when the
run directory holds checkpoints.

Preflight comes first: a config that cannot run leaves no trace (not even a run directory). Then
the run directory's lock (``runlock``: one training per run directory, held until the process
ends), taken before anything is written there. After that every phase is recorded in
``<dump_dir>/events.jsonl``; a crash is reported in one line that points at the traceback file,
and ``lmlab report`` explains it. This module composes the parts; the
loop itself is ``training.loop.Trainer``, and what runs at a checkpoint besides saving it (the
harness tasks of ``eval.every``) is handed to the loop as ``HarnessAtCheckpoints``.
"""
from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import torch

from lmlab import rundir
from lmlab.config import config_to_dict, dump_config, finalize_config
from lmlab.data.pipeline import build_data
from lmlab.data.prefetch import read_ahead, stop_reading
from lmlab.errors import LmlabError
from lmlab.evaluation.at_checkpoints import HarnessAtCheckpoints
from lmlab.preflight import load_and_check, preflight_warnings, show_warnings
from lmlab.runlock import RunLock, mark_run_dir
from lmlab.runlog import EventLog, write_provenance
from lmlab.runtime import Runtime, device_info, resolve_runtime
from lmlab.training import distributed, launcher
from lmlab.training.build import TrainingParts, build_parts, compile_now
from lmlab.training.console import Console
from lmlab.training.distributed import SINGLE, Dist
from lmlab.training.loop import Trainer
from lmlab.training.metrics import truncate_metrics
from lmlab.training.resume import Resume, find_resume, publish_interrupted, restore
from lmlab.training.signals import PreemptionSignals
from lmlab.training.slurm_script import RESUME_COMMAND_ENV
from lmlab.training.sinks import NullSink, build_sinks
from lmlab.training.step import TrainState

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
        load_and_check(args.config, args.overrides, world_size=args.nproc)  # refuse before launching
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
    returns the loop's summary. Rank 0 alone writes the run directory; the ranks wait for it
    where they read what it wrote (the tokenizer, the cleaned-up checkpoints)."""
    cfg = finalize_config(cfg)
    run_dir = Path(cfg.dump_dir)
    runtime = resolve_runtime(cfg.device, cfg.precision, d.local_rank)
    console = Console(cfg.logging.progress_bar, enabled=d.is_main)
    resume = _main_first(d, lambda: _prepare_run_dir(run_dir, console, d))
    with events.phase("data"):
        # bad records are reported as they are met, also when their count stops the preparation
        data = _main_first(d, lambda: build_data(cfg, run_dir, _bad_record_reporter(events, console),
                                                  d.rank, d.world_size))
        for found in data.yields:  # tokens / windows per source (none is zero: refused above)
            console.line(found.line())
            events.emit("data_yield", **found.record())
    if resume:
        if d.is_main:
            publish_interrupted(run_dir, resume)
        if resume.finished(data.total_steps):
            console.line(f"run {run_dir} already finished at step {resume.step}/{data.total_steps}; "
                         "nothing to do. Raise steps/epochs to train longer, or use a new dump_dir "
                         "to start over.")
            return {"status": "finished", "step": resume.step, "resumed": True}
    _warn(preflight_warnings(cfg, data.total_steps), events, d)  # epoch mode: steps known only now
    with events.phase("build"):
        parts = build_parts(cfg, data.tokenizer.vocab_size, runtime, d, resume and resume.checkpoint)
        state = restore(parts, data.train, resume, d) if resume else TrainState()
        data.train = read_ahead(data.train, cfg.data.prefetch, runtime.device, data.bad_records,
                                limit=max(cfg.training.last_step(data.total_steps) - state.step, 0))
        if d.rank > 0 and not resume:
            torch.manual_seed(cfg.seed + d.rank)  # each rank its own dropout draws (rank 0 as alone)
        if resume:
            console.line(f"resuming {run_dir} from checkpoint {resume.checkpoint.name}")
        sink = _open_sink(cfg, run_dir, state, d)
        for note in sink.notes:
            console.line(note)
        _print_model_line(console, parts, runtime, d)
    if parts.compiled:
        with events.phase("compile"):
            started = time.perf_counter()
            micro = cfg.data.batch_size // cfg.training.grad_accum
            compile_now(parts, -(-micro // d.world_size), cfg.data.seq_len, runtime)  # rank 0's rows
            console.line(f"compiled the model (torch.compile) in {time.perf_counter() - started:.1f} s")
    _write_run_files(cfg, argv, runtime, parts, resume, d)  # after build: a refused resume changes nothing
    harness = HarnessAtCheckpoints(cfg, parts.model, data.tokenizer, console.line, events)
    if resume and d.is_main:
        _record(state, harness.catch_up(resume.step, resume.checkpoint, state.last_eval_step))

    def on_checkpoint(step: int, path: Path, finished: bool, state: TrainState) -> None:
        _record(state, harness.after_save(step, path, finished, state.last_eval_step))

    trainer = Trainer(cfg, data, parts, runtime, state, sink, console, events,
                      resume_command=_resume_command(argv), d=d,
                      on_checkpoint=on_checkpoint if harness.enabled else None)
    try:
        summary = trainer.run()
    finally:
        sink.close()  # also on a crash: TensorBoard buffers its last scalars
        stop_reading(data.train)
    _bad_records_summary(data.bad_records, console, events)
    harness.report_failures(state.failed_evals)
    return {**summary, "failed_evals": state.failed_evals}


def _record(state: TrainState, outcome) -> None:
    if outcome is not None:
        state.last_eval_step = outcome.step
        if outcome.failure:
            state.failed_evals.append(outcome.failure)


def _warn(warnings: list, events: EventLog, d: Dist) -> None:
    """Preflight's warnings (training goes on): on stderr and in events.jsonl, once (rank 0)."""
    if d.is_main:
        show_warnings("train", warnings)
        for w in warnings:
            events.warning(f"{w.key}: {w.message} Fix: {w.fix}", "ConfigWarning")


def _resume_command(argv: list[str]) -> str:
    """What to run to resume: the same command, or what the launcher says (a SLURM batch script
    sets LMLAB_RESUME_COMMAND to ``sbatch <run>/submit.slurm``: its ranks run a code snapshot)."""
    return os.environ.get(RESUME_COMMAND_ENV) or " ".join(["lmlab", *argv])


def _bad_record_reporter(events: EventLog, console: Console):
    """``data.max_bad_records``: every skipped bad record is a ``bad_record`` event (file, line,
    reason); the first of each file is also a console line."""
    def report(record, message: str | None) -> None:
        events.emit("bad_record", file=record.file, line=record.line, reason=record.reason)
        if message is not None:
            console.line(f"warning: {message}")
    return report


def _bad_records_summary(bad, console: Console, events: EventLog) -> None:
    """The run skipped bad records: said once more at the end (and as a ``bad_records`` event)."""
    if bad is None or not bad.count:
        return
    note = (" The count went over the budget in the last step's batch, so the run could not stop "
            "before its end." if bad.exceeded else "")
    console.line(bad.summary() + note)
    events.emit("bad_records", count=bad.count, budget=bad.budget, files=len(bad.per_file))


def _main_first(d: Dist, action):
    """``action`` on rank 0, then (once it is done: it may write what they read) on the others."""
    result = action() if d.is_main else None
    distributed.barrier(d)
    return result if d.is_main else action()


def _prepare_run_dir(run_dir: Path, console: Console, d: Dist) -> Resume | None:
    """The checkpoint to resume from; rank 0 first removes what interrupted saves left behind and
    a preemption request the previous attempt already obeyed."""
    if d.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / rundir.PREEMPT_FILE).unlink(missing_ok=True)
    return find_resume(run_dir, console.line)


def _open_sink(cfg, run_dir: Path, state: TrainState, d: Dist):
    """metrics.jsonl (+ W&B / TensorBoard) on rank 0; the other ranks log nowhere."""
    if not d.is_main:
        return NullSink()
    # drop what a killed attempt logged after its last checkpoint (everything if it saved none)
    truncate_metrics(run_dir / rundir.METRICS_FILE, state.step)
    return build_sinks(cfg.logging, run_dir, cfg.name, config_to_dict(cfg), resume_step=state.step)


def _print_model_line(console: Console, parts: TrainingParts, runtime: Runtime, d: Dist) -> None:
    size = parts.size
    where = f" x {d.world_size} processes ({d.backend})" if d.enabled else ""
    console.line(f"model {size['model']}: {size['params']:,} parameters | {size['flops_per_token']:,} "
                 f"FLOPs/token ({size['formula']}) | device {runtime.device}{where} {runtime.precision}")


def _write_run_files(cfg, argv: list[str], runtime: Runtime, parts: TrainingParts,
                     resume: Resume | None, d: Dist) -> None:
    hosts = distributed.hostnames(d)  # every rank takes part
    if not d.is_main:
        return
    run_dir = Path(cfg.dump_dir)
    dump_config(cfg, run_dir / rundir.CONFIG_FILE)
    facts = {rundir.MODEL_SIZE_KEY: parts.size, "resumed_from_step": resume.step if resume else None,
             "distributed": {"world_size": d.world_size, "backend": d.backend,
                             "strategy": cfg.distributed.strategy if d.enabled else None,
                             "hostnames": sorted(set(hosts))}}
    write_provenance(run_dir, argv, device_info(runtime.device), **facts)
