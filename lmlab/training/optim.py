"""Optimizer, learning-rate schedule (a pure function of the step) and the LR scaling rule."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from lmlab.errors import Problem


@dataclass
class OptimConfig:
    """AdamW/Adam with linear warmup then cosine (or linear / constant) decay."""

    name: str = field(default="adamw", metadata={
        "help": "adamw (decoupled weight decay) or adam (L2 weight decay).", "choices": ["adamw", "adam"]})
    lr: float = field(default=3e-4, metadata={
        "help": "Peak learning rate. With lr_scaling it is computed from base_lr and written here."})
    weight_decay: float = field(default=0.1, metadata={
        "help": "Weight decay on matrices and embeddings (never on norms or biases)."})
    beta1: float = field(default=0.9, metadata={"help": "Adam beta1."})
    beta2: float = field(default=0.95, metadata={"help": "Adam beta2."})
    eps: float = field(default=1e-8, metadata={"help": "Adam epsilon."})
    warmup: int = field(default=2000, metadata={"help": "Linear warmup steps from 0 to lr."})
    scheduler: str = field(default="cosine", metadata={
        "help": "Decay after warmup: cosine, linear or constant.",
        "choices": ["cosine", "linear", "constant"]})
    lr_min_ratio: float = field(default=0.1, metadata={
        "help": "The decay ends at lr * lr_min_ratio on the last step."})
    clip: float = field(default=1.0, metadata={"help": "Max global grad norm (0 disables clipping)."})
    lr_scaling: str = field(default="none", metadata={
        "help": "Scale base_lr by batch_size / base_batch_size: none, linear or sqrt.",
        "choices": ["none", "linear", "sqrt"]})
    base_lr: float = field(default=0.0, metadata={"help": "lr at base_batch_size (with lr_scaling)."})
    base_batch_size: int = field(default=0, metadata={
        "help": "Batch size at which base_lr was tuned (with lr_scaling)."})


def scaled_lr(cfg: OptimConfig, batch_size: int) -> float:
    """Effective peak lr: ``lr`` itself, or base_lr scaled linearly / by sqrt of the batch ratio."""
    if cfg.lr_scaling == "none":
        return cfg.lr
    ratio = batch_size / cfg.base_batch_size
    return cfg.base_lr * (ratio if cfg.lr_scaling == "linear" else math.sqrt(ratio))


def lr_at(step: int, cfg: OptimConfig, total_steps: int) -> float:
    """Learning rate for optimizer step ``step`` (1-based) of ``total_steps``."""
    if cfg.warmup > 0 and step <= cfg.warmup:
        return cfg.lr * step / cfg.warmup
    lr_min = cfg.lr * cfg.lr_min_ratio
    progress = min(1.0, (step - cfg.warmup) / max(1, total_steps - cfg.warmup))
    if cfg.scheduler == "cosine":
        return lr_min + (cfg.lr - lr_min) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if cfg.scheduler == "linear":
        return cfg.lr - (cfg.lr - lr_min) * progress
    return cfg.lr


def build_optimizer(model: nn.Module, cfg: OptimConfig, device: torch.device) -> torch.optim.Optimizer:
    """Two param groups: decayed matrices/embeddings and undecayed vectors (norm weights, biases)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    kwargs = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    if device.type == "cuda":
        kwargs["fused"] = True
    cls = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    return cls(groups, **kwargs)


def warmup_warnings(cfg: OptimConfig, total_steps: int, epochs: int = 0) -> list[Problem]:
    """Allowed but almost never meant: a warmup as long as the run (``total_steps``; in epoch mode,
    those of ``epochs`` epochs) or longer keeps the learning rate below its peak the whole run and
    the decay never starts. A warning (the command goes on), not a problem."""
    if cfg.warmup <= 0 or total_steps <= 0 or cfg.warmup < total_steps:
        return []
    planned = f"steps={total_steps}" if epochs <= 0 else f"{total_steps} steps for epochs={epochs}"
    share = total_steps / cfg.warmup
    reached = f"{share * 100:.2g}% of its peak" if share < 1 else "its peak only at the last step"
    if cfg.lr_scaling == "none" and share < 1:
        reached += f" (optim.lr={cfg.lr:g} -> {cfg.lr * share:.3g})"
    return [Problem("optim.warmup", f"warmup of {cfg.warmup} steps is "
                    f"{'as long as' if share == 1 else 'longer than'} the run ({planned}): the "
                    f"learning rate rises the whole run, reaches {reached}, and the "
                    f"{cfg.scheduler} schedule after the warmup never starts.",
                    f"set optim.warmup to a small part of the run, e.g. optim.warmup="
                    f"{total_steps // 10} (10%), or train longer")]


def check(cfg: OptimConfig, batch_size: int) -> list[Problem]:
    problems = []
    if cfg.lr_scaling == "none" and cfg.lr <= 0:
        problems.append(Problem("optim.lr", f"must be > 0, got {cfg.lr}.", "set optim.lr=3e-4"))
    if cfg.lr_scaling != "none":
        if cfg.base_lr <= 0:
            problems.append(Problem("optim.base_lr", f"must be > 0 with optim.lr_scaling="
                                    f"{cfg.lr_scaling}, got {cfg.base_lr}.", "set optim.base_lr=1e-4"))
        if cfg.base_batch_size <= 0:
            problems.append(Problem("optim.base_batch_size", "must be > 0 with optim.lr_scaling="
                                    f"{cfg.lr_scaling}, got {cfg.base_batch_size}.",
                                    "set optim.base_batch_size to the batch size base_lr was tuned at"))
    for key in ("warmup", "weight_decay", "clip", "lr_min_ratio", "eps"):
        if getattr(cfg, key) < 0:
            problems.append(Problem(f"optim.{key}", f"must be >= 0, got {getattr(cfg, key)}.",
                                    f"set optim.{key} to a non-negative value"))
    for key in ("beta1", "beta2"):
        if not 0 <= getattr(cfg, key) < 1:
            problems.append(Problem(f"optim.{key}", f"must be in [0, 1), got {getattr(cfg, key)}.",
                                    f"set optim.{key}=0.9"))
    return problems
