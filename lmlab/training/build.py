"""What a run trains: the model from its config (with the checkpoint's weights when resuming),
wrapped for several processes, the optimizer, the loss scaler, and their size."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lmlab.models import hf_llama
from lmlab.models.registry import build_model, model_size, resolve_model_config
from lmlab.training import checkpoint as ckpt
from lmlab.training import distributed
from lmlab.training.distributed import Dist
from lmlab.training.metrics import peak_flops
from lmlab.training.optim import build_optimizer
from lmlab.training.runtime import Runtime
from lmlab.training.step import seed_everything


@dataclass
class TrainingParts:
    model: torch.nn.Module  # a LanguageModel (FSDP: sharded in place)
    model_cfg: Any  # its resolved config dataclass (vocab_size, max_seq_len filled in)
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    forward: Any  # what the step calls: the model, its DDP wrapper, or their torch.compile
    size: dict  # models.registry.model_size
    peak_flops: float | None  # the device's dense bf16 peak, for MFU (None on CPU)


def build_parts(cfg, vocab_size: int, runtime: Runtime, d: Dist, checkpoint: Path | None) -> TrainingParts:
    """Seeded model init (the same weights for the same seed on every rank), then the weights of
    ``checkpoint`` when resuming or of ``model.init_from`` when starting from a Hugging Face model
    (loaded whole, before any sharding), the parallel wrapper, then the optimizer over the
    (possibly sharded) parameters and its saved state."""
    seed_everything(cfg.seed)
    model_cfg = resolve_model_config(cfg.model, vocab_size, cfg.data.seq_len)
    model = build_model(model_cfg).to(runtime.device)
    size = model_size(model, model_cfg, cfg.data.seq_len, cfg.data.batch_size)
    if checkpoint:
        ckpt.load_model_weights(model, checkpoint)
    elif hf_llama.init_dir(cfg.model):  # model.init_from=hf:DIR, shapes checked by preflight
        model.load_state_dict(hf_llama.load_state(hf_llama.init_dir(cfg.model), model))
    wrapped = distributed.wrap(model, cfg.distributed.strategy, d)
    optimizer = build_optimizer(model, cfg.optim, runtime.device)
    if checkpoint:
        ckpt.load_optimizer(model, optimizer, checkpoint)
    compiled = cfg.compile if cfg.compile is not None else runtime.device.type == "cuda"
    forward = torch.compile(wrapped) if compiled else wrapped
    return TrainingParts(model, model_cfg, optimizer, runtime.grad_scaler(), forward, size,
                         peak_flops(runtime.device))
