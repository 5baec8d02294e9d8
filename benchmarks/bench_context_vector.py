"""Training throughput of the context-vector LM: fast path (``forward``) vs ``forward_reference``.

Both variants train the same model (same config, same initial weights) for the same batches:
forward + cross-entropy + backward + Adam step. One warm-up step each, then ``--steps`` timed
steps each; prints tokens/s of each and the ratio fast/reference.

    python benchmarks/bench_context_vector.py [--batch 2048 --seq 64 --steps 2 --device cpu]
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from lmlab.models.context_vector import ContextVectorConfig, ContextVectorLM  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_training(
    model: ContextVectorLM, use_reference: bool, batches: list[torch.Tensor], warmup: int
) -> tuple[float, float]:
    """Mean wall and CPU (user + system, all threads) seconds per timed step of
    forward + cross-entropy + backward + Adam on ``batches``; the first ``warmup`` are untimed."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    run = model.forward_reference if use_reference else model.forward
    model.train()
    device = batches[0].device
    wall = cpu = 0.0
    for n, batch in enumerate(batches):
        _sync(device)
        start, start_cpu = time.perf_counter(), _cpu_seconds()
        logits = run(batch[:, :-1])  # (B, T, V)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        del logits, loss
        _sync(device)
        if n >= warmup:
            wall += time.perf_counter() - start
            cpu += _cpu_seconds() - start_cpu
    timed = len(batches) - warmup
    return wall / timed, cpu / timed


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--seq", type=int, default=64, help="tokens per sequence that get a loss (T)")
    ap.add_argument("--steps", type=int, default=2, help="timed steps per variant (after 1 warm-up step)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--vocab", type=int, default=1000)
    ap.add_argument("--dropout", type=float, default=None, help="override the config's dropout (default 0.1)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = ContextVectorConfig(vocab_size=args.vocab)
    if args.dropout is not None:
        cfg.dropout = args.dropout
    base = ContextVectorLM(cfg).to(device)
    warmup = 1
    batches = [torch.randint(0, args.vocab, (args.batch, args.seq + 1), device=device) for _ in range(warmup + args.steps)]
    tokens_per_step = args.batch * args.seq
    print(
        f"context_vector: {base.num_params():,} params, {cfg}\n"
        f"batch {args.batch} x seq {args.seq} = {tokens_per_step:,} tokens/step, {args.steps} timed steps "
        f"(+{warmup} warm-up) each, device {device}, {torch.get_num_threads()} threads",
        flush=True,
    )
    load_before = os.getloadavg()[0]
    results = {}
    for name, use_reference in (("fast", False), ("reference", True)):
        model = copy.deepcopy(base)  # identical starting weights for both variants
        wall, cpu = time_training(model, use_reference, batches, warmup)
        results[name] = tokens_per_step / wall
        print(f"{name:>9}: {wall:8.2f} s/step  {results[name]:10,.0f} tokens/s  ({cpu:.2f} CPU s/step)", flush=True)
        del model
    print(f"fast/reference: {results['fast'] / results['reference']:.2f}x")
    # wall-clock ratios mean little when other jobs share the cores; say so
    print(f"1-min load average: {load_before:.2f} before, {os.getloadavg()[0]:.2f} after ({os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
