"""What a run trains: the model from its config, the optimizer, the loss scaler, and their size."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lmlab.models.registry import build_model, model_size, resolve_model_config
from lmlab.training.metrics import peak_flops
from lmlab.training.optim import build_optimizer
from lmlab.training.runtime import Runtime
from lmlab.training.step import seed_everything


@dataclass
class TrainingParts:
    model: torch.nn.Module  # a LanguageModel
    model_cfg: Any  # its resolved config dataclass (vocab_size, max_seq_len filled in)
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    forward: Any  # the model, or its torch.compile wrapper
    size: dict  # models.registry.model_size
    peak_flops: float | None  # the device's dense bf16 peak, for MFU (None on CPU)


def build_parts(cfg, vocab_size: int, runtime: Runtime) -> TrainingParts:
    """Seeded model init (the same weights for the same seed), then optimizer and scaler."""
    seed_everything(cfg.seed)
    model_cfg = resolve_model_config(cfg.model, vocab_size, cfg.data.seq_len)
    model = build_model(model_cfg).to(runtime.device)
    optimizer = build_optimizer(model, cfg.optim, runtime.device)
    size = model_size(model, model_cfg, cfg.data.seq_len, cfg.data.batch_size)
    forward = torch.compile(model) if cfg.compile else model
    return TrainingParts(model, model_cfg, optimizer, runtime.grad_scaler(), forward, size,
                         peak_flops(runtime.device))
