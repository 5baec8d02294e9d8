"""The one training loop, for both model families (it sees models only through ``LanguageModel``).

Step mode (``steps``) streams packed windows; epoch mode (``epochs`` > 0) passes over a fixed set
of sequences, validating and checkpointing at each epoch's end (with early stopping). Everything
else a step may do is decided by the component that owns it: ``logging.due``, ``checkpoint.due``,
``eval.validation.due``, ``training.stops_at``. What happens at a checkpoint beyond saving it (the
harness tasks of ``eval.every``) is the application's business: it passes ``on_checkpoint``.

The host reads values back from the device only where it must (a logging, validation or
checkpoint step); ``NonFiniteGuard`` makes sure nothing computed from a non-finite step is logged
or saved.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import torch

from lmlab import rundir
from lmlab.evaluation.validation import validation_metrics
from lmlab.training import checkpoint as ckpt
from lmlab.training.batches import fetch_batch, share_bad_records
from lmlab.training.build import TrainingParts
from lmlab.training.distributed import SINGLE, Dist
from lmlab.training.console import Console, LogWindow, format_train_line, format_val_line
from lmlab.training.metrics import peak_memory_gib, throughput
from lmlab.training.optim import lr_at, set_lr
from lmlab.training.resume import saved_state
from lmlab.training.signals import PreemptionSignals
from lmlab.training.step import NonFiniteGuard, StepResult, TrainState, train_step

# (step, checkpoint folder, finished, state): called after every checkpoint is saved
CheckpointHook = Callable[[int, Path, bool, TrainState], None]


def epoch_of(step: int, steps_per_epoch: int) -> int:
    """The 1-based epoch that step ``step`` (1-based) belongs to."""
    return (step - 1) // steps_per_epoch + 1


class Trainer:
    """Trains ``parts`` on ``data`` from ``state`` to the end of the plan (or a stop/preemption)."""

    def __init__(self, cfg, data, parts: TrainingParts, runtime, state: TrainState, sink,
                 console: Console, events, resume_command: str, d: Dist = SINGLE,
                 on_checkpoint: CheckpointHook | None = None):
        self.cfg, self.data, self.parts, self.runtime, self.d = cfg, data, parts, runtime, d
        self.state, self.sink, self.console, self.events = state, sink, console, events
        self.on_checkpoint, self.resume_command = on_checkpoint, resume_command
        self.run_dir = Path(cfg.dump_dir)
        self.guard = NonFiniteGuard(runtime.device, parts.scaler is not None,
                                    cfg.training.skip_nonfinite_steps, self.run_dir)
        # epoch mode: this epoch's training losses, summed on the device in float64 (exactly what
        # summing the Python floats would give, without reading each one back)
        self.epoch_loss = torch.tensor(state.epoch_loss_sum, dtype=torch.float64, device=runtime.device)
        self.last_val: dict = {}

    @property
    def epoch_mode(self) -> bool:
        return self.cfg.epochs > 0

    def run(self) -> dict:
        """Train; returns the summary (status, step, failed evaluations, last validation)."""
        request = self.run_dir / rundir.PREEMPT_FILE
        with PreemptionSignals(request) as self.preemption, self.events.phase("train", step=self.state.step):
            return self._loop(self.data.total_steps)

    def _loop(self, total: int) -> dict:
        cfg, window = self.cfg, LogWindow()
        self.console.start_progress(total, self.state.step)
        step = self.state.step
        while step < total:
            step += 1
            started = time.perf_counter()
            batch = fetch_batch(self, step)  # stops here once bad data records ran over budget
            data_s = time.perf_counter() - started
            lr = lr_at(step, cfg.optim, total)
            set_lr(self.parts.optimizer, lr)
            result = train_step(self.parts.forward, batch, self.parts.optimizer, self.runtime,
                                self.parts.scaler, cfg.optim.clip, cfg.training.grad_accum,
                                self.data.pad_id, skip_nonfinite=self.guard.per_step, d=self.d,
                                static_rows=self.parts.static_rows)
            self._account(step, batch, result, window, data_s)
            if cfg.logging.due(step, total):
                self._log(step, total, result, lr, window)
            if self.epoch_mode and step % self.data.steps_per_epoch == 0:
                if self._end_epoch(step):  # validates and checkpoints itself
                    return self._finish(step, "stopped early")
            else:
                if not self.epoch_mode and cfg.eval.validation.due(step, total):
                    self._validate(step)
                if cfg.checkpoint.due(step, total) or step == cfg.training.stop_at:
                    self._save(step, finished=step == total)
            sync_point = cfg.logging.due(step, total) or cfg.checkpoint.due(step, total)
            if sync_point:
                share_bad_records(self.data, self.d)
            if step < total and self.preemption.agreed(self.d, sync_point):
                return self._preempt(step)
            if cfg.training.stops_at(step, total):
                return self._stop_early(step, total)
        return self._finish(step)

    def _account(self, step: int, batch: torch.Tensor, result: StepResult, window: LogWindow,
                 data_s: float) -> None:
        self.guard.observe(step, result, self.state, self.console.line)
        tokens = batch.shape[0] * (batch.shape[1] - 1)
        self.state.step, self.state.tokens = step, self.state.tokens + tokens
        if self.epoch_mode:
            self.epoch_loss += result.loss.double()
            self.state.epoch_steps += 1
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
        self.guard.check()
        self.state.epoch_loss_sum = self.epoch_loss.item()
        saved = saved_state(self.state, finished, self.parts, self.data, self.cfg.optim, self.d)
        with self.events.phase("checkpoint", step=step):
            path = ckpt.save_checkpoint(self.run_dir, rundir.step_name(step), self.parts.model,
                                        self.parts.optimizer, saved, self.d)
            if self.d.is_main:
                ckpt.prune_checkpoints(self.run_dir, self.cfg.checkpoint.keep)
        self.console.line(f"saved checkpoint {path}")
        if self.on_checkpoint and self.d.is_main:
            self.on_checkpoint(step, path, finished, self.state)
        return path

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
