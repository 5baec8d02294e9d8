"""What a run trains, and its optimizer step: the model from its config (with the checkpoint's
weights when resuming), wrapped for several processes, compiled or CUDA-graphed, the optimizer,
the loss scaler, their size; ``TrainingParts.step`` is one optimizer step over a batch, and
``NonFiniteGuard`` judges its result: a run stops at its first non-finite step, naming it and its
last good checkpoint (or skips a few, ``training.skip_nonfinite_steps``), and nothing computed
from it is logged or saved.

The step never reads a value back from the device: loss and gradient norm stay tensors until the
loop needs them on the host (a logging, validation or checkpoint step), as in nanoGPT and
torchtitan, so a GPU is never stalled waiting for the host between steps.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lmlab import rundir
from lmlab.data.loader import IGNORE_INDEX, pad_rows, split_window
from lmlab.errors import LmlabError
from lmlab.models import hf_llama
from lmlab.models.registry import build_model, model_size, resolve_model_config
from lmlab.models.weights import load_model_weights
from lmlab.rng import seed_everything
from lmlab.runtime import Runtime
from lmlab.training import checkpoint as ckpt
from lmlab.training import distributed, graphs
from lmlab.training.distributed import SINGLE, Dist, accumulating, local, shard_rows, sum_
from lmlab.training.metrics import peak_flops
from lmlab.training.optim import build_optimizer


@dataclass
class StepResult:
    """Device tensors: reading them (``.item()``) waits for the step to finish."""

    loss: torch.Tensor  # mean over micro-batches, fp32
    grad_norm: torch.Tensor  # global norm before clipping
    applied: bool = True  # False: a non-finite step the guard skipped (skip_nonfinite_steps)

    def finite(self, scaled: bool) -> bool:
        """Host-side verdict (one sync). Under a GradScaler an infinite gradient is the scaler's to skip."""
        loss, norm = torch.stack([self.loss, self.grad_norm.float()]).tolist()
        return math.isfinite(loss) and (scaled or math.isfinite(norm))


class NonFiniteGuard:
    """Stops a run at its first non-finite step, naming it and the last good checkpoint.

    By default it remembers, on the device, the first step whose loss or gradient norm was not
    finite, and ``check`` (called before anything computed from the weights leaves the loop: a
    log line, a validation, a checkpoint) raises then, without reading every step back to the
    host. With ``training.skip_nonfinite_steps`` > 0 the step itself decides
    (``TrainingParts.step``'s ``skip_nonfinite``) and the guard counts the skips against that budget.
    """

    def __init__(self, device: torch.device, scaled: bool, skip_budget: int, run_dir: Path):
        self.scaled, self.skip_budget, self.run_dir = scaled, skip_budget, run_dir
        self.per_step = skip_budget > 0
        self._first_bad = torch.zeros((), dtype=torch.long, device=device)
        self._unchecked = False  # steps observed since the last check

    def observe(self, step: int, result: StepResult, skipped: int, say) -> int:
        """Judge step ``step``'s result; returns the run's count of skipped steps (``skipped`` so far,
        one more if this step was skipped)."""
        if not result.applied:
            return self._skip_or_stop(step, result, skipped, say)
        if not self.per_step:
            finite = torch.isfinite(result.loss)
            if not self.scaled:  # under a GradScaler an infinite gradient is the scaler's to skip
                finite = finite & torch.isfinite(result.grad_norm)
            self._first_bad = torch.where(~finite & (self._first_bad == 0), step, self._first_bad)
            self._unchecked = True
        return skipped

    def check(self) -> None:
        """Raise if a step since the start of this invocation was not finite (one host sync, and
        none when no step was observed since the last check)."""
        if not self._unchecked:
            return
        self._unchecked = False
        bad = int(self._first_bad.item())
        if bad:
            raise self._error(bad, "loss or gradient norm")

    def _skip_or_stop(self, step: int, result: StepResult, skipped: int, say) -> int:
        loss, grad_norm = torch.stack([result.loss, result.grad_norm.float()]).tolist()
        what = "loss" if not math.isfinite(loss) else "gradient norm"
        if skipped >= self.skip_budget:
            raise self._error(step, f"{what} (loss {loss}, grad norm {grad_norm})")
        say(f"step {step}: non-finite {what} (loss {loss}, grad norm {grad_norm}); step skipped "
            f"({skipped + 1}/{self.skip_budget})")
        return skipped + 1

    def _error(self, step: int, what: str) -> LmlabError:
        return LmlabError(
            f"non-finite {what} at step {step}; nothing computed from it was saved. Last good "
            f"checkpoint: {rundir.latest_checkpoint(self.run_dir) or 'none'} (kept intact). Fix: "
            "lower optim.lr, raise optim.warmup or enable clipping (optim.clip), then resume; or "
            "allow a few skips with training.skip_nonfinite_steps=N.")


@dataclass
class TrainingParts:
    """The model and everything its optimizer step needs."""

    model: torch.nn.Module  # a LanguageModel (FSDP: sharded in place)
    optimizer: torch.optim.Optimizer
    runtime: Runtime
    # what the step calls: the model (None: itself), its DDP wrapper, their torch.compile, or its CUDA graph
    forward: Any = None
    scaler: torch.amp.GradScaler | None = None
    d: Dist = SINGLE
    clip: float = 0.0  # optim.clip: the largest gradient norm (0: no clipping)
    grad_accum: int = 1  # micro-batches per step
    pad_id: int | None = None  # the tokenizer's padding id: its targets are ignored
    static_rows: int | None = None  # a CUDA-graphed step: every batch is padded to this many rows
    model_cfg: Any = None  # the model's resolved config dataclass (vocab_size, max_seq_len filled in)
    size: dict = field(default_factory=dict)  # models.registry.model_size
    peak_flops: float | None = None  # the device's dense bf16 peak, for MFU (None on CPU)
    compiled: bool = False  # forward is a torch.compile (compiled lazily: see compile_now)

    def __post_init__(self):
        if self.forward is None:
            self.forward = self.model
        # one autocast context, entered at every step (torchtitan's way): no per-step lookups
        self.amp = self.runtime.autocast()

    def step(self, batch: torch.Tensor, lr: float | None = None, skip_nonfinite: bool = False) -> StepResult:
        """One optimizer step at learning rate ``lr`` (None: the optimizer's own) over the global
        ``batch`` (B, T+1), split into ``grad_accum``
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
        runtime, scaler, optimizer, d = self.runtime, self.scaler, self.optimizer, self.d
        if lr is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr
        # one copy, then everything on the device: from pinned memory (data.prefetch) it overlaps
        inputs, targets = split_window(batch.to(runtime.device, non_blocking=True), self.pad_id)
        if self.static_rows is not None:
            inputs, targets = pad_rows(inputs, targets, self.static_rows)
        total = torch.zeros((), device=runtime.device)
        micro_batches = list(zip(inputs.chunk(self.grad_accum), targets.chunk(self.grad_accum)))
        for i, (micro_inputs, micro_targets) in enumerate(micro_batches):
            valid = (micro_targets != IGNORE_INDEX).sum()  # over the global micro-batch
            micro_inputs, micro_targets = shard_rows(micro_inputs, d), shard_rows(micro_targets, d)
            with accumulating(self.forward, last=i == len(micro_batches) - 1):  # DDP/FSDP: sync at the last
                with self.amp:
                    logits = self.forward(micro_inputs)  # (b, T, V)
                loss = F.cross_entropy(logits.float().flatten(0, 1), micro_targets.flatten(),
                                       ignore_index=IGNORE_INDEX, reduction="sum") / valid
                # ranks average gradients: scaled by world_size, the average is the global sum
                scaled = (loss * d.world_size if d.enabled else loss) / len(micro_batches)
                (scaler.scale(scaled) if scaler else scaled).backward()
            total += loss.detach()
        sum_(total, d)  # this rank's share of the loss -> the whole batch's
        if scaler:
            scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        clip = self.clip if self.clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.forward.parameters(), clip)
        result = StepResult(total / len(micro_batches), local(grad_norm))
        if skip_nonfinite and not result.finite(scaler is not None):
            result.applied = False
        elif scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return result

    def compile_now(self, rows: int, seq_len: int) -> None:
        """Compile before the first step (one forward and backward of a (rows, seq_len) dummy batch,
        the step's own shape), so that the compile's seconds are a phase of their own rather than
        the first step's. Nothing of it stays: the random stream is forked, the gradients dropped."""
        sample = torch.zeros(rows, seq_len, dtype=torch.long, device=self.runtime.device)
        devices = [self.runtime.device] if self.runtime.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            with self.runtime.autocast():
                logits = self.forward(sample)
            logits.float().mean().backward()
        self.model.zero_grad(set_to_none=True)


def build_parts(cfg, vocab_size: int, runtime: Runtime, d: Dist, checkpoint: Path | None,
                pad_id: int | None = None) -> TrainingParts:
    """Seeded model init (the same weights for the same seed on every rank), then the weights of
    ``checkpoint`` when resuming or of ``model.init_from`` when starting from a Hugging Face model
    (loaded whole, before any sharding), the parallel wrapper, then the optimizer over the
    (possibly sharded) parameters and its saved state."""
    seed_everything(cfg.seed)
    model_cfg = resolve_model_config(cfg.model, vocab_size, cfg.data.seq_len)
    model = build_model(model_cfg).to(runtime.device)
    size = model_size(model, model_cfg, cfg.data.seq_len, cfg.data.batch_size)
    if checkpoint:
        load_model_weights(model, checkpoint)
    elif hf_llama.init_dir(cfg.model):  # model.init_from=hf:DIR, shapes checked by preflight
        model.load_state_dict(hf_llama.load_state(hf_llama.init_dir(cfg.model), model))
    wrapped = distributed.wrap(model, cfg.distributed.strategy, d)
    optimizer = build_optimizer(model, cfg.optim, runtime.device)
    if checkpoint:
        ckpt.load_optimizer(model, optimizer, checkpoint)
    parts = TrainingParts(model, optimizer, runtime, wrapped, runtime.grad_scaler(), d, cfg.optim.clip,
                          cfg.training.grad_accum, pad_id, model_cfg=model_cfg, size=size,
                          peak_flops=peak_flops(runtime.device))
    if graphs.use_cuda_graph(cfg.training.cuda_graph, model_cfg.name, runtime.device, d.world_size,
                             cfg.training.grad_accum):
        parts.forward = graphs.graph_model(model, cfg.data.batch_size, cfg.data.seq_len,
                                           runtime.autocast_dtype)
        parts.static_rows = cfg.data.batch_size
    elif cfg.compile if cfg.compile is not None else runtime.device.type == "cuda":
        parts.forward, parts.compiled = torch.compile(wrapped), True
    return parts
