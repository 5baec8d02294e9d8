"""What a run trains: the model from its config (with the checkpoint's weights when resuming),
wrapped for several processes, the optimizer, the loss scaler, and their size."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lmlab.models import hf_llama
from lmlab.models.registry import build_model, model_size, resolve_model_config
from lmlab.models.weights import load_model_weights
from lmlab.rng import seed_everything
from lmlab.runtime import Runtime
from lmlab.training import checkpoint as ckpt
from lmlab.training import distributed, graphs
from lmlab.training.distributed import Dist
from lmlab.training.metrics import peak_flops
from lmlab.training.optim import build_optimizer


@dataclass
class TrainingParts:
    model: torch.nn.Module  # a LanguageModel (FSDP: sharded in place)
    model_cfg: Any  # its resolved config dataclass (vocab_size, max_seq_len filled in)
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    forward: Any  # what the step calls: the model, its DDP wrapper, their torch.compile, or its CUDA graph
    size: dict  # models.registry.model_size
    peak_flops: float | None  # the device's dense bf16 peak, for MFU (None on CPU)
    static_rows: int | None = None  # a CUDA-graphed step: every batch is padded to this many rows
    compiled: bool = False  # forward is a torch.compile (compiled lazily: see compile_now)


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
        load_model_weights(model, checkpoint)
    elif hf_llama.init_dir(cfg.model):  # model.init_from=hf:DIR, shapes checked by preflight
        model.load_state_dict(hf_llama.load_state(hf_llama.init_dir(cfg.model), model))
    wrapped = distributed.wrap(model, cfg.distributed.strategy, d)
    optimizer = build_optimizer(model, cfg.optim, runtime.device)
    if checkpoint:
        ckpt.load_optimizer(model, optimizer, checkpoint)
    if graphs.use_cuda_graph(cfg.training.cuda_graph, model_cfg.name, runtime.device, d.world_size,
                             cfg.training.grad_accum):
        forward = graphs.graph_model(model, cfg.data.batch_size, cfg.data.seq_len, runtime.autocast_dtype)
        return TrainingParts(model, model_cfg, optimizer, runtime.grad_scaler(), forward, size,
                             peak_flops(runtime.device), static_rows=cfg.data.batch_size)
    compiled = cfg.compile if cfg.compile is not None else runtime.device.type == "cuda"
    forward = torch.compile(wrapped) if compiled else wrapped
    return TrainingParts(model, model_cfg, optimizer, runtime.grad_scaler(), forward, size,
                         peak_flops(runtime.device), compiled=compiled)


def compile_now(parts: TrainingParts, rows: int, seq_len: int, runtime: Runtime) -> None:
    """Compile before the first step (one forward and backward of a (rows, seq_len) dummy batch,
    the step's own shape), so that the compile's seconds are a phase of their own rather than
    the first step's. Nothing of it stays: the random stream is forked, the gradients dropped."""
    sample = torch.zeros(rows, seq_len, dtype=torch.long, device=runtime.device)
    devices = [runtime.device] if runtime.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        with runtime.autocast():
            logits = parts.forward(sample)
        logits.float().mean().backward()
    parts.model.zero_grad(set_to_none=True)
