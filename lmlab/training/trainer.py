"""The ``Trainer``: one owner for a training run, for both model families (it sees models only
through ``LanguageModel``).

``Trainer.run`` prepares the run directory (what a kill left behind), builds the data, resumes from
the newest checkpoint or starts anew, builds the parts (``parts.build_parts``) and restores their
state (``state.restore``), reads ahead (``data.prefetch``), writes config.yaml and
provenance.json, then trains to the end of the plan, a stop or a preemption. Rank 0 alone writes
the run directory; the other ranks wait for it where they read what it wrote.

Step mode (``steps``) streams packed windows; epoch mode (``epochs`` > 0) passes over a fixed set
of sequences, validating and checkpointing at each epoch's end (with early stopping). When the loop
logs, validates, checkpoints and stops is its ``Schedule``, one place for ``logging.every``,
``eval.validation.every``, ``checkpoint.every`` and ``training.stop_at``; at a checkpoint the
harness tasks decide for themselves (``eval.due``, ``evaluation.at_checkpoints``). The host reads
values back from the device only where it must (a logging, validation or checkpoint step);
``NonFiniteGuard`` makes sure nothing computed from a non-finite step is logged or saved.

Bad data never fails a read: the loader skips a bad record and counts it (``data.max_bad_records``).
When the batch of step ``s`` took the count over the budget, step ``s`` still trains (its batch is
whole); before the batch of ``s + 1`` is read, step ``s`` is checkpointed (unless it just was) and
the run stops with the records and the fix. A data file changed under the run (``DataChanged``)
stops it the same way at step ``s - 1``, instead of training on torn records. After the fix the same
command resumes with the batches an uninterrupted run would have seen.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from lmlab import rundir
from lmlab.atomic import write_text
from lmlab.data.documents import DataChanged
from lmlab.data.pipeline import RunData, build_data
from lmlab.data.loader import Prefetcher, read_ahead, stop_reading
from lmlab.errors import LmlabError, Problem, show_warnings
from lmlab.evaluation.at_checkpoints import HarnessAtCheckpoints, Outcome
from lmlab.evaluation.validation import validation_metrics
from lmlab.runlog import EventLog, write_provenance
from lmlab.runtime import device_info, resolve_runtime
from lmlab.training import checkpoint as ckpt
from lmlab.training import distributed
from lmlab.training.distributed import SINGLE, Dist
from lmlab.training.metrics import (Console, LogWindow, format_train_line, format_val_line, model_line,
                                    peak_memory_gib, throughput)
from lmlab.training.optim import lr_at, warmup_warnings
from lmlab.training.parts import NonFiniteGuard, StepResult, TrainingParts, build_parts
from lmlab.training.signals import PreemptionSignals
from lmlab.training.sinks import MetricSinks, NullSink, build_sinks, truncate_metrics
from lmlab.training.state import (Resume, TrainState, prepare_resume, publish_interrupted, restore,
                                  saved_state)


@dataclass(frozen=True)
class Schedule:
    """When the loop logs, validates, checkpoints and stops: each every so many steps, and all of
    them at the run's last step ``total`` (a validation ``every`` of 0: only there)."""

    total: int
    log_every: int
    save_every: int
    validate_every: int | None  # None: no validation (eval.validation.enabled is false)
    stop_at: int = 0  # training.stop_at: this invocation ends after this step (0: at the end)

    @classmethod
    def of(cls, cfg, total: int) -> "Schedule":
        val = cfg.eval.validation
        return cls(total, cfg.logging.every, cfg.checkpoint.every, val.every if val.enabled else None,
                   cfg.training.stop_at)

    def _on(self, step: int, every: int) -> bool:
        return step == self.total or (every > 0 and step % every == 0)

    def logs(self, step: int) -> bool:
        return self._on(step, self.log_every)

    def validates(self, step: int) -> bool:
        return self.validate_every is not None and self._on(step, self.validate_every)

    def saves(self, step: int) -> bool:
        return self._on(step, self.save_every) or step == self.stop_at

    def stops(self, step: int) -> bool:
        """This invocation ends after ``step`` (``training.stop_at``) although the run is not done."""
        return 0 < self.stop_at <= step < self.total

    @property
    def last_step(self) -> int:
        """The step this invocation plans to end at (a resume past ``stop_at`` trains one more)."""
        return self.stop_at if 0 < self.stop_at < self.total else self.total


def epoch_of(step: int, steps_per_epoch: int) -> int:
    """The 1-based epoch that step ``step`` (1-based) belongs to."""
    return (step - 1) // steps_per_epoch + 1


class Trainer:
    """Trains (or resumes) the run of ``cfg``, a preflighted and finalized ``lmlab.config.RunConfig``,
    on this process's share ``d`` of the job, recording its phases in ``events``. What only the
    command knows (the config layer sits above training): ``argv`` for provenance.json, the
    ``resume_command`` the messages name, and the config as ``config_yaml`` writes it."""

    # built by run(), in this order: what the loop trains on and with
    data: RunData
    parts: TrainingParts
    state: TrainState
    sink: MetricSinks | NullSink
    guard: NonFiniteGuard
    epoch_loss: torch.Tensor  # epoch mode: this epoch's training losses, summed on the device
    harness: HarnessAtCheckpoints
    preemption: PreemptionSignals  # while the loop runs

    def __init__(self, cfg, events: EventLog, d: Dist = SINGLE, *, argv: list[str],
                 resume_command: str, config_yaml: str):
        self.cfg, self.events, self.d = cfg, events, d
        self.argv, self.resume_command, self.config_yaml = argv, resume_command, config_yaml
        self.run_dir = Path(cfg.dump_dir)
        self.runtime = resolve_runtime(cfg.device, cfg.precision, d.local_rank)
        self.console = Console(cfg.logging.progress_bar, enabled=d.is_main)
        self.last_val: dict = {}

    @property
    def epoch_mode(self) -> bool:
        return self.cfg.epochs > 0

    # ----------------------------------------------------------------- building the run

    def run(self) -> dict:
        """Train; returns the summary (status, step, failed evaluations, last validation)."""
        resume = distributed.main_first(self.d, lambda: prepare_resume(self.run_dir, self.d.is_main,
                                                                       self.console.line))
        self._build_data()
        if resume and self._already_finished(resume):
            return {"status": "finished", "step": resume.step, "resumed": True}
        # epoch mode: the planned steps are known only now
        self._warn(warmup_warnings(self.cfg.optim, self.data.total_steps, self.cfg.epochs))
        with self.events.phase("build"):
            self._build(resume)
        if self.parts.compiled:
            self._compile()
        self._write_run_files(resume)  # after build: a refused resume changes nothing
        self.harness = HarnessAtCheckpoints(self.cfg, self.parts.model, self.data.tokenizer,
                                            self.console.line, self.events)
        if resume and self.d.is_main:
            self._record(self.harness.catch_up(resume.step, resume.checkpoint, self.state.last_eval_step))
        try:
            summary = self._train()
        finally:
            self.sink.close()  # also on a crash: TensorBoard buffers its last scalars
            stop_reading(self.data.train)
        self._say_bad_records()
        self.harness.report_failures(self.state.failed_evals)
        return {**summary, "failed_evals": self.state.failed_evals}

    def _build_data(self) -> None:
        """Tokenizer, training loader, validation batches; rank 0 first (it writes the tokenizer)."""
        d = self.d
        with self.events.phase("data"):
            # bad records are reported as they are met, also when their count stops the preparation
            self.data = distributed.main_first(d, lambda: build_data(
                self.cfg, self.run_dir, self._report_bad_record, d.rank, d.world_size))
            for found in self.data.yields:  # tokens / windows per source (none is zero: refused above)
                self.console.line(found.line())
                self.events.emit("data_yield", **found.record())

    def _already_finished(self, resume: Resume) -> bool:
        if self.d.is_main:
            publish_interrupted(self.run_dir, resume)
        if not resume.finished(self.data.total_steps):
            return False
        self.console.line(f"run {self.run_dir} already finished at step {resume.step}/"
                          f"{self.data.total_steps}; nothing to do. Raise steps/epochs to train longer, "
                          "or use a new dump_dir to start over.")
        return True

    def _build(self, resume: Resume | None) -> None:
        """The parts (with the checkpoint's weights), the state, read-ahead and the sinks."""
        cfg, d, data = self.cfg, self.d, self.data
        self.parts = build_parts(cfg, data.tokenizer.vocab_size, self.runtime, d,
                                 resume and resume.checkpoint, pad_id=data.pad_id)
        self.state = restore(self.parts, data.train, resume, d) if resume else TrainState()
        data.train = read_ahead(data.train, cfg.data.prefetch, self.runtime.device, data.bad_records,
                                limit=max(Schedule.of(cfg, data.total_steps).last_step - self.state.step, 0))
        if d.rank > 0 and not resume:
            torch.manual_seed(cfg.seed + d.rank)  # each rank its own dropout draws (rank 0 as alone)
        if resume:
            self.console.line(f"resuming {self.run_dir} from checkpoint {resume.checkpoint.name}")
        self.sink = self._open_sink()
        for note in self.sink.notes:
            self.console.line(note)
        self.guard = NonFiniteGuard(self.runtime.device, self.parts.scaler is not None,
                                    cfg.training.skip_nonfinite_steps, self.run_dir)
        # epoch mode: this epoch's training losses, summed on the device in float64 (exactly what
        # summing the Python floats would give, without reading each one back)
        self.epoch_loss = torch.tensor(self.state.epoch_loss_sum, dtype=torch.float64,
                                       device=self.runtime.device)
        self.console.line(model_line(self.parts.size, self.runtime, self.d))

    def _open_sink(self) -> MetricSinks | NullSink:
        """metrics.jsonl (+ W&B / TensorBoard) on rank 0; the other ranks log nowhere."""
        if not self.d.is_main:
            return NullSink()
        # drop what a killed attempt logged after its last checkpoint (everything if it saved none)
        truncate_metrics(self.run_dir / rundir.METRICS_FILE, self.state.step)
        return build_sinks(self.cfg.logging, self.run_dir, self.cfg.name, dataclasses.asdict(self.cfg),
                           resume_step=self.state.step)

    def _compile(self) -> None:
        cfg = self.cfg
        with self.events.phase("compile"):
            started = time.perf_counter()
            micro = cfg.data.batch_size // cfg.training.grad_accum
            self.parts.compile_now(-(-micro // self.d.world_size), cfg.data.seq_len)  # rank 0's rows
            self.console.line(f"compiled the model (torch.compile) in {time.perf_counter() - started:.1f} s")

    def _write_run_files(self, resume: Resume | None) -> None:
        """config.yaml and provenance.json (rank 0; every rank says where it runs)."""
        d = self.d
        hosts = distributed.hostnames(d)  # every rank takes part
        if not d.is_main:
            return
        write_text(self.run_dir / rundir.CONFIG_FILE, self.config_yaml)
        facts = {rundir.MODEL_SIZE_KEY: self.parts.size,
                 "resumed_from_step": resume.step if resume else None,
                 "distributed": {"world_size": d.world_size, "backend": d.backend,
                                 "strategy": self.cfg.distributed.strategy if d.enabled else None,
                                 "hostnames": sorted(set(hosts))}}
        write_provenance(self.run_dir, self.argv, device_info(self.runtime.device), **facts)

    # ----------------------------------------------------------------- the loop

    def _train(self) -> dict:
        request = self.run_dir / rundir.PREEMPT_FILE
        with PreemptionSignals(request) as self.preemption, self.events.phase("train", step=self.state.step):
            return self._loop(self.data.total_steps)

    def _loop(self, total: int) -> dict:
        cfg, window, plan = self.cfg, LogWindow(), Schedule.of(self.cfg, total)
        self.console.start_progress(total, self.state.step)
        step = self.state.step
        while step < total:
            step += 1
            started = time.perf_counter()
            batch = self._next_batch(step)  # stops here once bad data records ran over budget
            data_s = time.perf_counter() - started
            lr = lr_at(step, cfg.optim, total)
            result = self.parts.step(batch, lr, skip_nonfinite=self.guard.per_step)
            self._account(step, batch, result, window, data_s)
            if plan.logs(step):
                self._log(step, total, result, lr, window)
            if self.epoch_mode and step % self.data.steps_per_epoch == 0:
                if self._end_epoch(step):  # validates and checkpoints itself
                    return self._finish(step, "stopped early")
            else:
                if not self.epoch_mode and plan.validates(step):
                    self._validate(step)
                if plan.saves(step):
                    self._save(step, finished=step == total)
            sync_point = plan.logs(step) or plan.saves(step)  # N processes agree on what they met
            if sync_point:
                self._share_bad_records()
            if step < total and self._stop_requested(sync_point):
                return self._preempt(step)
            if plan.stops(step):
                return self._stop_early(step, total)
        return self._finish(step)

    def _stop_requested(self, sync_point: bool) -> bool:
        """One process stops after the step a signal or request came in; several agree (an
        all-reduce) only at sync points: no collective, and no host sync, at every step."""
        if not self.d.enabled:
            return self.preemption.pending
        return sync_point and distributed.any_rank(self.preemption.pending, self.d)

    def _next_batch(self, step: int) -> torch.Tensor:
        """The batch of ``step``, unless bad records ran over budget or a data file changed."""
        bad, train = self.data.bad_records, self.data.train
        if isinstance(train, Prefetcher):  # read ahead, the count may include later batches
            over = train.over_budget
        else:  # the count first: a field read at every step; the budget rule once a record was skipped
            over = bad is not None and bad.count > 0 and bad.exceeded
        if over:
            raise bad.error(self._stop_for_data(step))
        try:
            return train.next_batch()
        except DataChanged as err:
            if getattr(getattr(train, "loader", train), "disjoint", False):
                # only this process met it: a checkpoint needs them all (the others stop with it)
                raise LmlabError(f"{err}\nStopped at step {step}; the run resumes from its last "
                                 f"checkpoint: {self.resume_command}.") from None
            raise LmlabError(f"{err}\n{self._stop_for_data(step)}") from None

    def _stop_for_data(self, step: int) -> str:
        """Checkpoint the last step trained (unless it just was); what to say about it."""
        done = step - 1
        latest = rundir.latest_checkpoint(self.run_dir)
        if done > 0 and (latest is None or latest.name != rundir.step_name(done)):
            self._save(done)  # the checkpoint the loop itself would write (collective on N ranks)
        self.console.close()
        return (f"Stopped after step {done}, checkpointed in {self.run_dir}: once the data is fixed "
                f"the command resumes from there: {self.resume_command}.") if done > 0 else ""

    def _share_bad_records(self) -> None:
        """At a sync point: processes reading different documents tell each other the bad records
        they met, so that all count the same and stop at the same step when over the budget."""
        bad = self.data.bad_records
        if bad is not None and bad.shared:
            news = distributed.gather_objects(bad.news(), self.d)
            bad.absorb([record for rank_news in news for record in rank_news])

    def _account(self, step: int, batch: torch.Tensor, result: StepResult, window: LogWindow,
                 data_s: float) -> None:
        state = self.state
        state.skipped_steps = self.guard.observe(step, result, state.skipped_steps, self.console.line)
        tokens = batch.shape[0] * (batch.shape[1] - 1)
        state.step, state.tokens = step, state.tokens + tokens
        if self.epoch_mode:
            self.epoch_loss += result.loss.double()
            state.epoch_steps += 1
        window.add(data_s, tokens)
        self.console.advance()

    def _log(self, step: int, total: int, result: StepResult, lr: float, window: LogWindow) -> None:
        self.guard.check()
        loss, grad_norm = torch.stack([result.loss, result.grad_norm.float()]).tolist()  # one sync
        summary = window.summary()
        epoch = {"epoch": epoch_of(step, self.data.steps_per_epoch)} if self.epoch_mode else {}
        metrics = {**epoch, "loss": loss, "grad_norm": grad_norm, "lr": lr, "tokens": self.state.tokens,
                   **throughput(summary["tokens"], summary["seconds"], self.parts.size["flops_per_token"],
                                self.parts.peak_flops, self.d.world_size),
                   "data_time_frac": summary["data_time_frac"],
                   "mem_peak_gib": peak_memory_gib(self.runtime.device)}
        self.sink.log(metrics, step)
        self.console.line(format_train_line({"step": step, **metrics}, total,
                                            summary["step_s"] * (total - step)))
        window.reset()

    # ----------------------------------------------------------------- validating, saving, stopping

    def _validate(self, step: int, epoch: int | None = None) -> dict:
        self.guard.check()
        with self.events.phase("validate", step=step):
            metrics = validation_metrics(self.parts.model, self.data.val_batches(), self.data.byte_lengths,
                                         self.runtime.device, self.data.pad_id, autocast=self.runtime.autocast)
        if metrics:
            self.sink.log({"epoch": epoch, **metrics} if epoch else metrics, step)
            self.console.line(format_val_line(step, metrics, epoch))
            self.last_val = metrics
        return metrics

    def _end_epoch(self, step: int) -> bool:
        """Validate, track the best model, checkpoint; True when early stopping ends the run."""
        epoch, cfg, state = epoch_of(step, self.data.steps_per_epoch), self.cfg.training, self.state
        train_loss = (self.epoch_loss / state.epoch_steps).item()
        self.epoch_loss.zero_()
        state.epoch_steps = 0
        self.sink.log({"epoch": epoch, "train/epoch_loss": train_loss}, step)
        metrics = self._validate(step, epoch) if self.cfg.eval.validation.enabled else {}
        improved = state.record_validation(metrics.get("val/loss", train_loss), cfg.min_delta)
        patience_out = cfg.patience > 0 and state.bad_epochs >= cfg.patience
        path = self._save(step, finished=patience_out or epoch == self.cfg.epochs)
        if improved and self.d.is_main:
            ckpt.link_checkpoint(self.run_dir, path, rundir.BEST)
        progress = "new best" if improved else f"{state.bad_epochs} epoch(s) without improvement"
        self.console.line(f"epoch {epoch}/{self.cfg.epochs} | train loss {train_loss:.4f} | best val "
                          f"loss {state.best_val_loss:.4f} ({progress})")
        if patience_out and epoch < self.cfg.epochs:
            self.console.line(f"early stopping: no improvement > {cfg.min_delta} for {cfg.patience} epochs")
            return True
        return False

    def _save(self, step: int, finished: bool = False) -> Path:
        """Checkpoint ``step`` (every rank takes part), then the harness tasks when they are due."""
        self.guard.check()
        self.state.epoch_loss_sum = self.epoch_loss.item()
        saved = saved_state(self.state, finished, self.parts, self.data, self.cfg.optim, self.d)
        with self.events.phase("checkpoint", step=step):
            path = ckpt.save_checkpoint(self.run_dir, rundir.step_name(step), self.parts.model,
                                        self.parts.optimizer, saved, self.d)
            if self.d.is_main:
                ckpt.prune_checkpoints(self.run_dir, self.cfg.checkpoint.keep)
        self.console.line(f"saved checkpoint {path}")
        if self.harness.enabled and self.d.is_main:
            self._record(self.harness.after_save(step, path, finished, self.state.last_eval_step))
        return path

    def _record(self, outcome: Outcome | None) -> None:
        """An evaluation of a checkpoint in the state the next checkpoint saves."""
        if outcome is not None:
            self.state.last_eval_step = outcome.step
            if outcome.failure:
                self.state.failed_evals.append(outcome.failure)

    def _preempt(self, step: int) -> dict:
        """Checkpoint at this step boundary (unless just saved) and exit cleanly (Ctrl-C: stopped)."""
        latest = rundir.latest_checkpoint(self.run_dir)
        if latest is None or latest.name != rundir.step_name(step):
            self._save(step)
        reason = self.preemption.requested
        self.console.close()
        self.console.line(f"received {reason or 'a request on another rank'}: saved a checkpoint at "
                          f"step {step} in {self.run_dir}; resume with the same command (it continues "
                          f"at step {step + 1}): {self.resume_command}")
        return {"status": "stopped" if reason == PreemptionSignals.INTERRUPT else "preempted",
                "step": step, "reason": reason, **self.last_val}

    def _stop_early(self, step: int, total: int) -> dict:
        self.console.close()
        self.console.line(f"stopped at step {step}/{total} (training.stop_at); run the same command "
                          "again to resume.")
        return {"status": "stopped", "step": step, **self.last_val}  # resumable

    def _finish(self, step: int, status: str = "finished") -> dict:
        latest = rundir.latest_checkpoint(self.run_dir)
        if latest is not None and self.d.is_main:
            ckpt.link_checkpoint(self.run_dir, latest, rundir.FINAL)
        self.console.close()
        self.console.line(f"{status} after {step} steps; run directory {self.run_dir}")
        return {"status": status, "step": step, **self.last_val}

    # ----------------------------------------------------------------- what the run says

    def _warn(self, warnings: list[Problem]) -> None:
        """The config's warnings (training goes on): on stderr and in events.jsonl, once (rank 0)."""
        if self.d.is_main:
            show_warnings("train", warnings)
            for w in warnings:
                self.events.warning(f"{w.key}: {w.message} Fix: {w.fix}", "ConfigWarning")

    def _report_bad_record(self, record, message: str | None) -> None:
        """``data.max_bad_records``: every skipped bad record is a ``bad_record`` event (file, line,
        reason); the first of each file is also a console line."""
        self.events.emit("bad_record", file=record.file, line=record.line, reason=record.reason)
        if message is not None:
            self.console.line(f"warning: {message}")

    def _say_bad_records(self) -> None:
        """The run skipped bad records: said once more at the end (and as a ``bad_records`` event)."""
        bad = self.data.bad_records
        if bad is None or not bad.count:
            return
        note = (" The count went over the budget in the last step's batch, so the run could not stop "
                "before its end." if bad.exceeded else "")
        self.console.line(bad.summary() + note)
        self.events.emit("bad_records", count=bad.count, budget=bad.budget, files=len(bad.per_file))
