"""One optimizer step, the loop's saved bookkeeping (``TrainState``) and the non-finite guard.

The step never reads a value back from the device: loss and gradient norm stay tensors until the
loop needs them on the host (a logging, validation or checkpoint step), as in nanoGPT and
torchtitan, so a GPU is never stalled waiting for the host between steps.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from lmlab import rundir
from lmlab.data.loader import IGNORE_INDEX, pad_rows, split_window
from lmlab.errors import LmlabError, Problem
from lmlab.training.distributed import SINGLE, Dist, accumulating, local, shard_rows, sum_


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
    cuda_graph: bool | None = field(default=None, metadata={
        "help": "Capture the model's forward and backward in a CUDA graph (training/graphs.py): "
                "one replay instead of thousands of kernel launches per step; an epoch's last "
                "batch is padded with ignored rows to the captured shape. null: auto (on for the "
                "launch-bound context_vector model on one CUDA device with grad_accum 1; never "
                "on CPU)."})
    skip_nonfinite_steps: int = field(default=0, metadata={
        "help": "Skip up to this many steps with a non-finite loss / grad norm before stopping "
                "(fp16 overflow steps that the GradScaler skips itself do not count). Skipping "
                "decides at every step, so it reads the loss back from the device at every step; "
                "with 0 a non-finite step is found at the next logging or checkpoint step."})

    def stops_at(self, step: int, total: int) -> bool:
        """This invocation ends after ``step`` (``stop_at``) although the run is not done."""
        return 0 < self.stop_at <= step < total

    def last_step(self, total: int) -> int:
        """The step this invocation plans to end at (a resume past ``stop_at`` trains one more)."""
        return self.stop_at if 0 < self.stop_at < total else total


def check(cfg: TrainingConfig) -> list[Problem]:
    problems = []
    for key in ("stop_at", "patience", "min_delta", "skip_nonfinite_steps"):
        if getattr(cfg, key) < 0:
            problems.append(Problem(f"training.{key}", f"must be >= 0, got {getattr(cfg, key)}.",
                                    f"set training.{key}=0"))
    return problems


@dataclass
class TrainState:
    """The loop's bookkeeping, saved in every checkpoint's train_state.json and restored on resume
    (beside the data position, RNG, scheduler and scaler states the checkpoint also holds)."""

    step: int = 0
    tokens: int = 0
    epoch_loss_sum: float = 0.0  # epoch mode: training losses summed since the epoch began
    epoch_steps: int = 0
    best_val_loss: float | None = None
    best_step: int | None = None
    bad_epochs: int = 0  # validations in a row without improvement (early stopping)
    skipped_steps: int = 0  # non-finite steps skipped (training.skip_nonfinite_steps)
    last_eval_step: int = 0  # the last checkpoint the harness tasks ran on (eval.every)
    failed_evals: list[dict] = field(default_factory=list)

    @classmethod
    def from_saved(cls, saved: dict) -> "TrainState":
        """From a train_state.json; keys this version does not keep (loader, rng ...) are ignored
        and keys older checkpoints lack keep their defaults."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in saved.items() if k in names})

    def to_saved(self) -> dict:
        return dataclasses.asdict(self)

    def record_validation(self, loss: float, min_delta: float) -> bool:
        """Track the best validation loss; True when ``loss`` improves on it by more than min_delta."""
        improved = self.best_val_loss is None or loss < self.best_val_loss - min_delta
        if improved:
            self.best_val_loss, self.best_step, self.bad_epochs = loss, self.step, 0
        else:
            self.bad_epochs += 1
        return improved


@dataclass
class StepResult:
    """Device tensors: reading them (``.item()``) waits for the step to finish."""

    loss: torch.Tensor  # mean over micro-batches, fp32
    grad_norm: torch.Tensor  # global norm before clipping
    applied: bool = True  # False: a non-finite step the guard skipped (skip_nonfinite_steps)


def train_step(model, batch: torch.Tensor, optimizer, runtime, scaler, clip: float, grad_accum: int,
               pad_id: int | None, skip_nonfinite: bool = False, d: Dist = SINGLE,
               static_rows: int | None = None) -> StepResult:
    """One optimizer step over the global ``batch`` (B, T+1), split into ``grad_accum``
    micro-batches, of which this rank trains on its rows (all of them in a single process).

    Each micro-batch's loss is its summed cross-entropy over the valid targets of the whole
    (global) micro-batch, so that the gradients the ranks average are exactly those of one
    process training on the whole batch, whatever the padding on each rank.
    ``static_rows`` (a CUDA-graphed model, whose shapes never change): a smaller batch (an
    epoch's last) is padded to that many rows whose targets are all ignored, which adds nothing
    to the summed loss or its gradients.
    With ``skip_nonfinite`` the loss and gradient norm are read back (one host sync) and a
    non-finite step is not applied; otherwise the step is always applied and ``NonFiniteGuard``
    judges it later. Under fp16 the GradScaler skips overflowing gradients itself.
    """
    # one copy, then everything on the device: from pinned memory (data.prefetch) it overlaps
    inputs, targets = split_window(batch.to(runtime.device, non_blocking=True), pad_id)
    if static_rows is not None:
        inputs, targets = pad_rows(inputs, targets, static_rows)
    total = torch.zeros((), device=runtime.device)
    micro_batches = list(zip(inputs.chunk(grad_accum), targets.chunk(grad_accum)))
    for i, (micro_inputs, micro_targets) in enumerate(micro_batches):
        valid = (micro_targets != IGNORE_INDEX).sum()  # over the global micro-batch
        micro_inputs, micro_targets = shard_rows(micro_inputs, d), shard_rows(micro_targets, d)
        with accumulating(model, last=i == len(micro_batches) - 1):  # DDP/FSDP: sync at the last
            with runtime.autocast():
                logits = model(micro_inputs)  # (b, T, V)
            loss = F.cross_entropy(logits.float().flatten(0, 1), micro_targets.flatten(),
                                   ignore_index=IGNORE_INDEX, reduction="sum") / valid
            # ranks average gradients: scaled by world_size, the average is the global sum
            scaled = (loss * d.world_size if d.enabled else loss) / len(micro_batches)
            (scaler.scale(scaled) if scaler else scaled).backward()
        total += loss.detach()
    sum_(total, d)  # this rank's share of the loss -> the whole batch's
    if scaler:
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip if clip > 0 else math.inf)
    result = StepResult(total / len(micro_batches), local(grad_norm))
    if skip_nonfinite and not _finite(result, scaler is not None):
        result.applied = False
    elif scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return result


def _finite(result: StepResult, scaled: bool) -> bool:
    """Host-side verdict (one sync). Under a GradScaler an infinite gradient is the scaler's to skip."""
    loss, norm = torch.stack([result.loss, result.grad_norm.float()]).tolist()
    return math.isfinite(loss) and (scaled or math.isfinite(norm))


class NonFiniteGuard:
    """Stops a run at its first non-finite step, naming it and the last good checkpoint.

    By default it remembers, on the device, the first step whose loss or gradient norm was not
    finite, and ``check`` (called before anything computed from the weights leaves the loop: a
    log line, a validation, a checkpoint) raises then, without reading every step back to the
    host. With ``training.skip_nonfinite_steps`` > 0 the step itself decides (``train_step``'s
    ``skip_nonfinite``) and the guard counts the skips against that budget.
    """

    def __init__(self, device: torch.device, scaled: bool, skip_budget: int, run_dir: Path):
        self.scaled, self.skip_budget, self.run_dir = scaled, skip_budget, run_dir
        self.per_step = skip_budget > 0
        self._first_bad = torch.zeros((), dtype=torch.long, device=device)
        self._unchecked = False  # steps observed since the last check

    def observe(self, step: int, result: StepResult, state: TrainState, say) -> None:
        if not result.applied:
            self._skip_or_stop(step, result, state, say)
        elif not self.per_step:
            finite = torch.isfinite(result.loss)
            if not self.scaled:  # under a GradScaler an infinite gradient is the scaler's to skip
                finite = finite & torch.isfinite(result.grad_norm)
            self._first_bad = torch.where(~finite & (self._first_bad == 0), step, self._first_bad)
            self._unchecked = True

    def check(self) -> None:
        """Raise if a step since the start of this invocation was not finite (one host sync, and
        none when no step was observed since the last check)."""
        if not self._unchecked:
            return
        self._unchecked = False
        bad = int(self._first_bad.item())
        if bad:
            raise self._error(bad, "loss or gradient norm")

    def _skip_or_stop(self, step: int, result: StepResult, state: TrainState, say) -> None:
        loss, grad_norm = torch.stack([result.loss, result.grad_norm.float()]).tolist()
        what = "loss" if not math.isfinite(loss) else "gradient norm"
        if state.skipped_steps >= self.skip_budget:
            raise self._error(step, f"{what} (loss {loss}, grad norm {grad_norm})")
        state.skipped_steps += 1
        say(f"step {step}: non-finite {what} (loss {loss}, grad norm {grad_norm}); step skipped "
            f"({state.skipped_steps}/{self.skip_budget})")

    def _error(self, step: int, what: str) -> LmlabError:
        return LmlabError(
            f"non-finite {what} at step {step}; nothing computed from it was saved. Last good "
            f"checkpoint: {rundir.latest_checkpoint(self.run_dir) or 'none'} (kept intact). Fix: "
            "lower optim.lr, raise optim.warmup or enable clipping (optim.clip), then resume; or "
            "allow a few skips with training.skip_nonfinite_steps=N.")
