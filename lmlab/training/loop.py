"""The one training loop: preflight -> build -> resume -> train -> validate -> checkpoint.

It reads models only through the ``LanguageModel`` protocol, so both model families train here.
Step mode (``steps``) streams packed windows; epoch mode (``epochs`` > 0) passes over a fixed set of
sequences. Both share ``train_step``, validation, logging and checkpointing.

On CPU a run is deterministic: resuming from a checkpoint restores the weights, optimizer, data
position and every RNG, so the steps after the resume log exactly the metrics (and end with exactly
the weights) of an uninterrupted run.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lmlab.errors import Problem
from lmlab.evaluation.validation import IGNORE_INDEX, split_window
from lmlab.training.optim import lr_at, set_lr


@dataclass
class TrainingConfig:
    """Training-loop behaviour beyond the optimizer."""

    grad_accum: int = field(default=1, metadata={
        "help": "Micro-batches per optimizer step; data.batch_size must be divisible by it."})
    stop_at: int = field(default=0, metadata={
        "help": "Stop this invocation after this step, saving a checkpoint (0: run to the end). "
                "Re-running the same command resumes; for time-sliced jobs and resume tests."})
    patience: int = field(default=0, metadata={
        "help": "Epoch mode: stop after this many validations without improvement (0: never)."})
    min_delta: float = field(default=0.0, metadata={
        "help": "Epoch mode: a validation loss must drop by more than this to count as better."})
    skip_nonfinite_steps: int = field(default=0, metadata={
        "help": "Skip up to this many steps with a non-finite loss / grad norm before stopping "
                "(fp16 overflow steps that the GradScaler skips itself do not count)."})


def check(cfg: TrainingConfig) -> list[Problem]:
    problems = []
    for key in ("stop_at", "patience", "min_delta", "skip_nonfinite_steps"):
        if getattr(cfg, key) < 0:
            problems.append(Problem(f"training.{key}", f"must be >= 0, got {getattr(cfg, key)}.",
                                    f"set training.{key}=0"))
    return problems


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train_step(model, batch: torch.Tensor, optimizer, runtime, scaler, clip: float, grad_accum: int,
               pad_id: int | None) -> tuple[float, float, bool]:
    """One optimizer step over ``batch`` (B, T+1) split into ``grad_accum`` micro-batches.

    Returns (mean loss, pre-clip global grad norm, finite). A non-finite step is not applied (the
    caller decides whether to skip it or stop); under fp16 the GradScaler skips overflowing
    gradients itself, so there only a non-finite loss counts as non-finite.
    """
    micro_batches = batch.chunk(grad_accum)
    total = torch.zeros((), device=runtime.device)
    for micro in micro_batches:
        inputs, targets = (t.to(runtime.device, non_blocking=True) for t in split_window(micro, pad_id))
        with runtime.autocast():
            logits = model(inputs)  # (b, T, V)
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)
        scaled = loss / len(micro_batches)
        (scaler.scale(scaled) if scaler else scaled).backward()
        total += loss.detach()
    if scaler:
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip if clip > 0 else math.inf).item()
    mean_loss = (total / len(micro_batches)).item()
    finite = math.isfinite(mean_loss) and (scaler is not None or math.isfinite(grad_norm))
    if scaler and finite:
        scaler.step(optimizer)
        scaler.update()
    elif finite:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return mean_loss, grad_norm, finite


class LogWindow:
    """Accumulates timing between two log lines (tokens/s, data-loading share, ETA)."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.start, self.data_s, self.steps, self.tokens = time.perf_counter(), 0.0, 0, 0

    def add(self, data_s: float, tokens: int) -> None:
        self.data_s += data_s
        self.steps += 1
        self.tokens += tokens

    def summary(self) -> dict:
        seconds = time.perf_counter() - self.start
        return {"seconds": seconds, "tokens": self.tokens, "step_s": seconds / max(1, self.steps),
                "data_time_frac": self.data_s / seconds if seconds > 0 else 0.0}


# Loop bookkeeping saved in train_state.json and restored on resume (besides loader, RNG, scaler).
TRAIN_STATE_KEYS = ("step", "tokens", "epoch_loss_sum", "epoch_steps", "best_val_loss", "bad_epochs",
                    "skipped_steps", "last_eval_step", "failed_evals", "best_step")


class TrainingSession:
    """One invocation of ``lmlab train``: sets up the run directory, model and data, then trains."""

    def __init__(self, cfg, argv: list[str], events=None):
        from lmlab.training.runtime import resolve_runtime

        self.cfg = finalize_config(cfg)
        self.argv = list(argv)
        self.events = events  # a reports.events.EventLog, or None: phases are then not recorded
        self.run_dir = Path(cfg.dump_dir)
        self.runtime = resolve_runtime(cfg.device, cfg.precision)
        self.console = Console(cfg.logging.progress_bar)
        self.state: dict = {"step": 0, "tokens": 0}

    # ----------------------------------------------------------------- set-up

    def run(self) -> dict:
        from lmlab.training import checkpoint as ckpt

        self.run_dir.mkdir(parents=True, exist_ok=True)
        for path in ckpt.remove_partial_checkpoints(self.run_dir):
            self.console.line(f"removed incomplete checkpoint {path.name} (a save was interrupted)")
        latest = ckpt.latest_checkpoint(self.run_dir)
        resume_state = ckpt.read_train_state(latest) if latest else None
        with self._phase("data"):
            self.data = build_data(self.cfg, self.run_dir)
        total = self.data.total_steps
        if resume_state:
            self._publish_interrupted(latest, resume_state)
        if resume_state and self._already_finished(resume_state, total):
            self.console.line(f"run {self.run_dir} already finished at step {resume_state['step']}/"
                              f"{total}; nothing to do. Raise steps/epochs to train longer, or use "
                              "a new dump_dir to start over.")
            return {"status": "finished", "step": resume_state["step"], "resumed": True}
        with self._phase("build"):
            self._build(resume_state, latest)
        self._write_run_files(resume_state)  # after _build: a refused resume leaves the run's files as they were
        if resume_state and self._harness_due(resume_state["step"], False):
            self._evaluate_missed(latest, resume_state["step"])
        try:
            with PreemptionSignals() as self.preemption, self._phase("train", step=self.state["step"]):
                return self._loop(total)
        finally:
            self.sink.close()  # also on a crash: TensorBoard buffers its last scalars

    @staticmethod
    def _already_finished(state: dict, total: int) -> bool:
        """Reached ``total``, or ended (early stopping) with the same plan. Raising steps/epochs
        changes the plan, so a finished run then trains on."""
        planned = state.get("scheduler", {}).get("total_steps")
        return state["step"] >= total or (bool(state.get("finished")) and planned == total)

    def _publish_interrupted(self, latest: Path, state: dict) -> None:
        """A kill between saving a checkpoint and publishing it as best/ or final/ left that undone."""
        from lmlab.training import checkpoint as ckpt

        def published_step(name: str) -> int | None:
            path = ckpt.checkpoints_root(self.run_dir) / name
            return ckpt.read_train_state(path)["step"] if (path / ckpt.STATE_FILE).is_file() else None

        if state.get("best_step") == state["step"] and published_step("best") != state["step"]:
            ckpt.link_checkpoint(self.run_dir, latest, "best")
        if state.get("finished") and published_step("final") != state["step"]:
            ckpt.link_checkpoint(self.run_dir, latest, "final")

    def _evaluate_missed(self, latest: Path, step: int) -> None:
        """The previous attempt was killed after saving ``latest`` but before evaluating it."""
        from lmlab.evaluation.runner import RESULTS_FILE

        if not (latest / RESULTS_FILE).exists():
            self._evaluate_checkpoint(step, latest)

    def _phase(self, name: str, **info):
        """Record phase ``name`` in the run's event log (start, end, and the exception if it fails)."""
        return self.events.phase(name, **info) if self.events else contextlib.nullcontext()

    def _write_run_files(self, resume_state: dict | None) -> None:
        from lmlab.atomic import write_text
        from lmlab.config import dump_config
        from lmlab.reports.provenance import collect

        dump_config(self.cfg, self.run_dir / "config.yaml")
        provenance = collect(self.argv, self.runtime.device)
        provenance["resumed_from_step"] = resume_state["step"] if resume_state else None
        provenance["earlier_invocations"] = self._earlier_provenance()
        write_text(self.run_dir / "provenance.json", json.dumps(provenance, indent=2))

    def _earlier_provenance(self) -> list[dict]:
        """Provenance of the invocations before this one (a resume must not erase how a run began)."""
        try:
            old = json.loads((self.run_dir / "provenance.json").read_text("utf-8"))
        except (OSError, ValueError):
            return []
        earlier = old.pop("earlier_invocations", [])
        return [*earlier, old] if isinstance(earlier, list) else [old]

    def _build(self, resume_state: dict | None, latest: Path | None) -> None:
        from lmlab.models.registry import build_model, resolve_model_config
        from lmlab.training import checkpoint as ckpt
        from lmlab.config import config_to_dict
        from lmlab.training.metrics import peak_flops, truncate_metrics
        from lmlab.training.sinks import build_sinks
        from lmlab.training.optim import build_optimizer

        seed_everything(self.cfg.seed)
        model_cfg = resolve_model_config(self.cfg.model, self.data.tokenizer.vocab_size,
                                         self.cfg.data.seq_len)
        self.model_cfg = model_cfg
        self.model = build_model(model_cfg).to(self.runtime.device)
        self.optimizer = build_optimizer(self.model, self.cfg.optim, self.runtime.device)
        self.scaler = self.runtime.grad_scaler()
        self.flops_per_token, self.flops_formula = self.model.flops_per_token(self.cfg.data.seq_len)
        self.peak = peak_flops(self.runtime.device)
        self.step_fn = torch.compile(self.model) if self.cfg.compile else self.model
        if resume_state:
            ckpt.load_model_weights(self.model, latest)
            ckpt.load_optimizer(self.optimizer, latest)
            self.data.train.load_state_dict(resume_state["loader"])
            if self.scaler and resume_state.get("scaler"):
                self.scaler.load_state_dict(resume_state["scaler"])
            ckpt.set_rng_state(resume_state["rng"])
            self.state = {k: v for k, v in resume_state.items() if k in TRAIN_STATE_KEYS}
            self.console.line(f"resuming {self.run_dir} from checkpoint {latest.name}")
        # drop what a killed attempt logged after its last checkpoint (everything if it saved none)
        truncate_metrics(self.run_dir / "metrics.jsonl", self.state["step"])
        # metrics.jsonl always, plus W&B / TensorBoard when selected (logging.wandb, logging.tensorboard)
        self.sink = build_sinks(self.cfg.logging, self.run_dir, self.cfg.name, config_to_dict(self.cfg),
                                resume_step=self.state["step"])
        for note in self.sink.notes:
            self.console.line(note)
        n_params = self.model.num_params()
        self.console.line(f"model {model_cfg.name}: {n_params:,} parameters | {self.flops_per_token:,} "
                          f"FLOPs/token ({self.flops_formula}) | device {self.runtime.device} "
                          f"{self.runtime.precision}")

    # ----------------------------------------------------------------- the loop

    def _loop(self, total: int) -> dict:
        cfg, window = self.cfg, LogWindow()
        self.console.start_progress(total, self.state["step"])
        self.last_val: dict = {}
        step = self.state["step"]
        while step < total:
            step += 1
            started = time.perf_counter()
            batch = self.data.train.next_batch()
            data_s = time.perf_counter() - started
            lr = lr_at(step, cfg.optim, total)
            set_lr(self.optimizer, lr)
            loss, grad_norm, finite = train_step(self.step_fn, batch, self.optimizer, self.runtime,
                                                 self.scaler, cfg.optim.clip, cfg.training.grad_accum,
                                                 self.data.pad_id)
            if not finite:
                self._skip_or_stop(step, loss, grad_norm)
            self._account(step, batch, loss, window, data_s)
            if step % cfg.logging.every == 0 or step == total:
                self._log_train(step, total, loss, grad_norm, lr, window)
            if self.epoch_mode and step % self.data.steps_per_epoch == 0:
                if self._end_epoch(step):  # validates and checkpoints itself
                    return self._finish(step, "stopped early")
            else:
                if self._validation_due(step, total):
                    self._validate(step)
                if step % cfg.checkpoint.every == 0 or step == total or step == cfg.training.stop_at:
                    self._save(step, finished=step == total)
            if self.preemption.received and step < total:
                return self._preempt(step)
            if cfg.training.stop_at and step >= cfg.training.stop_at and step < total:
                return self._stop_early(step, total)
        return self._finish(step)

    @property
    def epoch_mode(self) -> bool:
        return self.cfg.epochs > 0

    def _epoch_of(self, step: int) -> int:
        return (step - 1) // self.data.steps_per_epoch + 1

    def _account(self, step: int, batch: torch.Tensor, loss: float, window: LogWindow, data_s: float):
        tokens = batch.shape[0] * (batch.shape[1] - 1)
        self.state.update(step=step, tokens=self.state["tokens"] + tokens,
                          epoch_loss_sum=self.state.get("epoch_loss_sum", 0.0) + loss,
                          epoch_steps=self.state.get("epoch_steps", 0) + 1)
        window.add(data_s, tokens)
        self.console.advance()

    def _end_epoch(self, step: int) -> bool:
        """Validate, track the best model, checkpoint; True when early stopping ends the run."""
        epoch, cfg = self._epoch_of(step), self.cfg.training
        train_loss = self.state.pop("epoch_loss_sum") / self.state.pop("epoch_steps")
        self.sink.log({"epoch": epoch, "train/epoch_loss": train_loss}, step)
        metrics = self._validate(step, epoch) if self.cfg.eval.validation.enabled else {}
        val_loss = metrics.get("val/loss", train_loss)
        best = self.state.get("best_val_loss")
        improved = best is None or val_loss < best - cfg.min_delta
        self.state["best_val_loss"] = val_loss if improved else best
        if improved:
            self.state["best_step"] = step
        self.state["bad_epochs"] = 0 if improved else self.state.get("bad_epochs", 0) + 1
        stop = (cfg.patience > 0 and self.state["bad_epochs"] >= cfg.patience) or \
            epoch == self.cfg.epochs
        path = self._save(step, finished=stop)
        if improved:
            from lmlab.training.checkpoint import link_checkpoint

            link_checkpoint(self.run_dir, path, "best")
        progress = "new best" if improved else f"{self.state['bad_epochs']} epoch(s) without improvement"
        self.console.line(f"epoch {epoch}/{self.cfg.epochs} | train loss {train_loss:.4f} | best val "
                          f"loss {self.state['best_val_loss']:.4f} ({progress})")
        if cfg.patience > 0 and self.state["bad_epochs"] >= cfg.patience and epoch < self.cfg.epochs:
            self.console.line(f"early stopping: no improvement > {cfg.min_delta} for {cfg.patience} epochs")
            return True
        return False

    def _skip_or_stop(self, step: int, loss: float, grad_norm: float) -> None:
        """A non-finite step was not applied: skip it (up to training.skip_nonfinite_steps) or stop."""
        from lmlab.errors import LmlabError
        from lmlab.training.checkpoint import latest_checkpoint

        what = "loss" if not math.isfinite(loss) else "gradient norm"
        skipped = self.state.get("skipped_steps", 0)
        if skipped < self.cfg.training.skip_nonfinite_steps:
            self.state["skipped_steps"] = skipped + 1
            self.console.line(f"step {step}: non-finite {what} (loss {loss}, grad norm {grad_norm}); "
                              f"step skipped ({skipped + 1}/{self.cfg.training.skip_nonfinite_steps})")
            return
        last = latest_checkpoint(self.run_dir)
        raise LmlabError(f"non-finite {what} at step {step} (loss {loss}, grad norm {grad_norm}); "
                         f"the step was not applied. Last good checkpoint: {last or 'none'} (kept "
                         "intact). Fix: lower optim.lr, raise optim.warmup or enable clipping "
                         "(optim.clip), then resume; or allow a few skips with "
                         "training.skip_nonfinite_steps=N.")

    def _log_train(self, step, total, loss, grad_norm, lr, window: LogWindow) -> None:
        from lmlab.training.metrics import format_train_line, peak_memory_gib, throughput

        summary = window.summary()
        epoch = {"epoch": self._epoch_of(step)} if self.epoch_mode else {}
        metrics = {**epoch, "loss": loss, "grad_norm": grad_norm, "lr": lr, "tokens": self.state["tokens"],
                   **throughput(summary["tokens"], summary["seconds"], self.flops_per_token, self.peak),
                   "data_time_frac": summary["data_time_frac"],
                   "mem_peak_gib": peak_memory_gib(self.runtime.device)}
        self.sink.log(metrics, step)
        eta = summary["step_s"] * (total - step)
        self.console.line(format_train_line({"step": step, **metrics}, total, eta))
        window.reset()

    def _validation_due(self, step: int, total: int) -> bool:
        every = self.cfg.eval.validation.every
        if not self.cfg.eval.validation.enabled or self.epoch_mode:  # epoch mode: at each epoch end
            return False
        return step == total or (every > 0 and step % every == 0)

    def _validate(self, step: int, epoch: int | None = None) -> dict:
        from lmlab.evaluation.validation import evaluate
        from lmlab.training.metrics import format_val_line

        with self._phase("validate", step=step):
            metrics = evaluate(self.model, self.data.val_batches(), self.data.byte_lengths,
                               self.runtime.device, self.data.pad_id, autocast=self.runtime.autocast)
        if metrics:
            self.sink.log({"epoch": epoch, **metrics} if epoch else metrics, step)
            self.console.line(format_val_line(step, metrics, epoch))
            self.last_val = metrics
        return metrics

    def _save(self, step: int, finished: bool = False) -> Path:
        from lmlab.training import checkpoint as ckpt

        state = {**self.state, "finished": finished, "loader": self.data.train.state_dict(), "rng": ckpt.rng_state(),
                 "scheduler": {"name": self.cfg.optim.scheduler, "lr": self.optimizer.param_groups[0]["lr"],
                               "warmup": self.cfg.optim.warmup, "total_steps": self.data.total_steps},
                 "scaler": self.scaler.state_dict() if self.scaler else None,
                 "model": dataclasses.asdict(self.model_cfg)}
        with self._phase("checkpoint", step=step):
            path = ckpt.save_checkpoint(self.run_dir, ckpt.step_name(step), self.model, self.optimizer,
                                        state)
            ckpt.prune_checkpoints(self.run_dir, self.cfg.checkpoint.keep)
        self.console.line(f"saved checkpoint {path}")
        if self._harness_due(step, finished):
            self._evaluate_checkpoint(step, path)
        return path

    def _harness_due(self, step: int, finished: bool) -> bool:
        """eval.every: the first checkpoint at or after each multiple of it, and the last one."""
        every, last = self.cfg.eval.every, self.state.get("last_eval_step", 0)
        if not every or not self.cfg.eval.tasks or step == last:
            return False
        return finished or step // every > last // every

    def _evaluate_checkpoint(self, step: int, path: Path) -> None:
        """Harness tasks on the checkpoint just saved. A failure is recorded (events.jsonl, errors/)
        and training goes on: an evaluation must never cost the run."""
        from lmlab.evaluation.loading import LoadedRun
        from lmlab.evaluation.runner import format_rows, run_evaluation, write_results

        self.state["last_eval_step"] = step
        loaded = LoadedRun(self.model, self.data.tokenizer, self.cfg, path, self.run_dir, step)
        try:
            with self._phase("eval", step=step, tasks=list(self.cfg.eval.tasks)):
                # validation is logged by the loop itself; here only the harness tasks
                rows = run_evaluation(loaded, self.cfg.eval, validation=False, progress=False)
                write_results(rows, path, self.run_dir, step)
        except Exception as err:  # noqa: BLE001 -- by design: any evaluation error is survivable
            self._record_failed_eval(step, err)
            return
        self.console.line(f"evaluation at step {step}:\n{format_rows(rows)}")

    def _record_failed_eval(self, step: int, err: Exception) -> None:
        from lmlab.reports.events import exception_location, redact_text

        where, _ = exception_location(err)
        failure = {"step": step, "phase": "eval", "exception": type(err).__name__,
                   "message": redact_text(str(err)), "where": where}
        self.state["failed_evals"] = [*self.state.get("failed_evals", []), failure]
        self.console.line(f"evaluation at step {step} failed ({failure['exception']}: "
                          f"{failure['message']} at {where}); "
                          f"training continues. Details: {self.run_dir / 'events.jsonl'}")

    def _preempt(self, step: int) -> dict:
        """Checkpoint at this step boundary (unless just saved) and exit cleanly for the scheduler."""
        from lmlab.training.checkpoint import latest_checkpoint, step_name

        latest = latest_checkpoint(self.run_dir)
        if latest is None or latest.name != step_name(step):
            self._save(step)
        self.console.close()
        command = " ".join(["lmlab"] + self.argv)
        self.console.line(f"received {self.preemption.received}: saved a checkpoint at step {step} in "
                          f"{self.run_dir}; resume with the same command: {command}")
        return {"status": "preempted", "step": step, **self.last_val}

    def _stop_early(self, step: int, total: int) -> dict:
        self.console.close()
        self.console.line(f"stopped at step {step}/{total} (training.stop_at); run the same command "
                          "again to resume.")
        return {"status": "stopped", "step": step, **self.last_val}  # resumable

    def _finish(self, step: int, status: str = "finished") -> dict:
        from lmlab.training import checkpoint as ckpt

        latest = ckpt.latest_checkpoint(self.run_dir)
        if latest is not None:
            ckpt.link_checkpoint(self.run_dir, latest, "final")
        self.console.close()
        self.console.line(f"{status} after {step} steps; run directory {self.run_dir}")
        failed = self.state.get("failed_evals", [])
        if failed:
            self.console.line(f"{len(failed)} evaluation(s) failed, at step(s) "
                              f"{', '.join(str(f['step']) for f in failed)}; see events.jsonl and errors/")
        return {"status": status, "step": step, "failed_evals": failed, **self.last_val}


def finalize_config(cfg):
    """Derived settings written back into the resolved config (the effective lr of a scaling rule)."""
    from lmlab.training.optim import scaled_lr

    lr = scaled_lr(cfg.optim, cfg.data.batch_size)
    if lr == cfg.optim.lr:
        return cfg
    return dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, lr=lr))


def build_data(cfg, run_dir: Path):
    from lmlab.data.pipeline import build_data as build

    return build(cfg, run_dir)


class PreemptionSignals:
    """Turns SIGTERM / SIGUSR1 (SLURM's warning before a time limit) into a flag the loop checks at
    each step boundary, so the run saves a checkpoint and exits 0 instead of dying mid-step."""

    SIGNALS = ("SIGTERM", "SIGUSR1")

    def __init__(self):
        self.received: str | None = None
        self._previous: dict = {}

    def _handle(self, signum, _frame) -> None:
        self.received = signal.Signals(signum).name

    def __enter__(self) -> "PreemptionSignals":
        if threading.current_thread() is threading.main_thread():  # handlers only work there
            for name in self.SIGNALS:
                sig = getattr(signal, name)
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Console:
    """Log lines on stdout and, on an interactive terminal, a progress bar with ETA on stderr."""

    def __init__(self, progress_bar: bool):
        self.want_bar = progress_bar and sys.stderr.isatty()
        self.bar = None

    def start_progress(self, total: int, initial: int) -> None:
        if self.want_bar:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, leave=False)

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def line(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stdout)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def train(cfg, argv: list[str], events=None) -> dict:
    """Run (or resume) training for a preflighted ``RunConfig``; returns the final summary.
    ``events`` (a ``reports.events.EventLog``) records each phase when given."""
    return TrainingSession(cfg, argv, events).run()
