"""CUDA graphs for training steps that are bound by kernel launches, not math.

The context-vector model runs its 64 positions one after another, each a handful of small kernels
(a (B, H) @ (H, H) matmul per layer, the gates, a LayerNorm): at batch 2048 on an H100/H200 the
GPU finishes each kernel faster than Python can launch the next. A CUDA graph records the launches
of the whole forward and backward once and replays them with one call.

``torch.cuda.make_graphed_callables`` graphs the model's forward and backward as one autograd
function: the loss (one cross-entropy), the GradScaler, clipping and the fused AdamW step stay
eager (a few launches per step). Its rules, which ``use_cuda_graph`` and the step follow:

* static shapes: every call has the captured (rows, seq_len), so an epoch's last, smaller batch is
  padded with ignored rows (``data.loader.pad_rows``; same loss and gradients, tested on CPU);
* one process and one micro-batch per step: the graph's gradient buffers are reused by the next
  replay, which accumulation would read back, and DDP's hooks cannot be captured this way;
* captured under autocast without its weight cache: the casts are recorded in the graph;
* the graph serves training mode only: validation (``model.eval()``) calls the plain forward.

The warm-up and capture run a few forward/backward passes; they run under ``fork_rng`` and never
touch ``.grad``, so the run's random stream and weights are those of the plain path.
"""
from __future__ import annotations

import torch

from lmlab.errors import LmlabError, Problem

GRAPHED_FAMILIES = ("context_vector",)  # launch-bound; the transformer is compiled instead


def check(cfg) -> list[Problem]:
    """Settings a CUDA-graphed step cannot honour (``training.cuda_graph: true``)."""
    if cfg.training.cuda_graph is not True:
        return []
    problems = []
    if cfg.device == "cpu":
        problems.append(Problem("training.cuda_graph", "CUDA graphs need a CUDA device; device is cpu.",
                                "set training.cuda_graph=null (auto) or device=cuda"))
    if cfg.training.grad_accum > 1:
        problems.append(Problem("training.cuda_graph", f"a graphed step takes one micro-batch; "
                                f"training.grad_accum is {cfg.training.grad_accum}.",
                                "set training.grad_accum=1 or training.cuda_graph=false"))
    return problems


def use_cuda_graph(setting: bool | None, family: str, device: torch.device, world_size: int,
                   grad_accum: int) -> bool:
    """``training.cuda_graph``: None (auto) graphs a launch-bound model family on one CUDA device
    with one micro-batch per step, and never anything on CPU; True where that is impossible is
    refused (preflight refuses the cases it can see; the device and world size are known here)."""
    possible = device.type == "cuda" and world_size == 1 and grad_accum == 1
    if setting is None:
        return possible and family in GRAPHED_FAMILIES
    if setting and not possible:
        raise LmlabError(f"training.cuda_graph=true needs one process on a CUDA device with "
                         f"training.grad_accum=1; this run has device {device}, {world_size} "
                         f"process(es), grad_accum {grad_accum}. Fix: set training.cuda_graph=null.")
    return bool(setting)


def graph_model(model: torch.nn.Module, rows: int, seq_len: int, dtype: torch.dtype | None) -> torch.nn.Module:
    """``model`` with its training-mode forward and backward captured for (rows, seq_len) inputs,
    under autocast to ``dtype`` (the run's; None: fp32). The module is changed in place."""
    weight = next(model.parameters())
    sample = torch.zeros(rows, seq_len, dtype=torch.long, device=weight.device)
    was_training = model.training
    model.train()
    autocast = torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None,
                              cache_enabled=False)
    with torch.random.fork_rng(devices=[weight.device]), autocast:
        graphed = torch.cuda.make_graphed_callables(model, (sample,), num_warmup_iters=3)
    model.train(was_training)
    return graphed
