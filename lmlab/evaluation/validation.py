"""Validation loss, perplexity, bits per byte and next-token accuracy: a pure function of (model,
batches), and ``eval.validation.*``, the settings of when and on how much of it. The training loop
calls it at its validation steps, ``lmlab eval`` on a saved checkpoint (``runner.validation_rows``).

Conventions (also in reports): ``val/loss`` is the mean cross-entropy in nats per predicted token;
``val/ppl = exp(val/loss)``; ``val/bpb`` is the summed cross-entropy in bits divided by the UTF-8
bytes the target tokens stand for (comparable across tokenizers); ``val/acc`` is the share of targets
whose argmax prediction is right. Ignored targets (padding, id -100) count in none of them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable

import torch
import torch.nn.functional as F

from lmlab.data.loader import IGNORE_INDEX, split_window
from lmlab.errors import Problem


@dataclass
class ValidationConfig:
    """Validation on held-out text during and after training."""

    enabled: bool = field(default=True, metadata={
        "help": "Compute validation metrics (jsonl sources need *.val.jsonl files)."})
    every: int = field(default=0, metadata={
        "help": "Validate every this many steps (0: only at the end; epoch mode: every epoch)."})
    max_steps: int = field(default=0, metadata={
        "help": "Use at most this many validation batches (0: the whole validation set)."})


def check(cfg: ValidationConfig) -> list[Problem]:
    problems = []
    for key in ("every", "max_steps"):
        if getattr(cfg, key) < 0:
            problems.append(Problem(f"eval.validation.{key}", f"must be >= 0, got {getattr(cfg, key)}.",
                                    f"set eval.validation.{key}=0"))
    return problems


@torch.no_grad()
def validation_metrics(model, batches: Iterable[torch.Tensor], byte_lengths: torch.Tensor,
                       device: torch.device, pad_id: int | None = None, autocast=None) -> dict:
    """Metrics over every batch; ``byte_lengths[v]`` is the UTF-8 byte count token v stands for.
    The sums stay on the device (float64) and are read back once, at the end: no host sync per batch."""
    was_training = model.training
    model.eval()
    byte_lengths = byte_lengths.to(device)
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # nll, correct, count, bytes
    for batch in batches:
        inputs, targets = split_window(batch.to(device, non_blocking=True), pad_id)
        with autocast() if autocast else torch.autocast(device.type, enabled=False):
            logits = model(inputs)
        logits = logits.float().flatten(0, 1)  # (B*T, V)
        flat = targets.flatten()
        mask = flat != IGNORE_INDEX
        nll = F.cross_entropy(logits, flat, ignore_index=IGNORE_INDEX, reduction="sum")
        correct = ((logits.argmax(-1) == flat) & mask).sum()
        n_bytes = torch.where(mask, byte_lengths[flat.clamp(min=0)], 0).sum()
        sums += torch.stack([nll.double(), correct.double(), mask.sum().double(), n_bytes.double()])
    model.train(was_training)
    nll, correct, count, n_bytes = sums.tolist()
    if count == 0:
        return {}
    loss = nll / count
    return {"val/loss": loss, "val/ppl": math.exp(min(loss, 700.0)),
            "val/bpb": nll / math.log(2) / n_bytes if n_bytes else float("nan"),
            "val/acc": correct / count, "val/tokens": int(count)}
