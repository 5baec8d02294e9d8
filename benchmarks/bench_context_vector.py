"""Training throughput of the context-vector LM: fast path (``forward``) vs ``forward_reference``.

Both variants train the same model (same config, same initial weights) for the same batches:
forward + cross-entropy + backward + Adam step. One warm-up step each, then ``--steps`` timed
steps each; prints tokens/s of each and the ratio fast/reference.

    python benchmarks/bench_context_vector.py [--batch 2048 --seq 64 --steps 2 --device cpu]
"""
from __future__ import annotations

import argparse
import copy
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


def time_training(model: ContextVectorLM, use_reference: bool, batches: list[torch.Tensor], warmup: int) -> float:
    """Seconds per step (mean over the timed steps) of forward + CE + backward + Adam on ``batches``."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    run = model.forward_reference if use_reference else model.forward
    model.train()
    device = batches[0].device
    elapsed = 0.0
    for n, batch in enumerate(batches):
        _sync(device)
        start = time.perf_counter()
        logits = run(batch[:, :-1])  # (B, T, V)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        del logits, loss
        _sync(device)
        if n >= warmup:
            elapsed += time.perf_counter() - start
    return elapsed / (len(batches) - warmup)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--seq", type=int, default=64, help="tokens per sequence that get a loss (T)")
    ap.add_argument("--steps", type=int, default=2, help="timed steps per variant (after 1 warm-up step)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--vocab", type=int, default=1000)
    ap.add_argument("--dropout", type=float, default=None, help="override the config's dropout (default 0.1)")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
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
    results = {}
    for name, use_reference in (("fast", False), ("reference", True)):
        model = copy.deepcopy(base)  # identical starting weights for both variants
        sec = time_training(model, use_reference, batches, warmup)
        results[name] = tokens_per_step / sec
        print(f"{name:>9}: {sec:8.2f} s/step  {results[name]:10,.0f} tokens/s", flush=True)
        del model
    print(f"fast/reference: {results['fast'] / results['reference']:.2f}x")


if __name__ == "__main__":
    main()
