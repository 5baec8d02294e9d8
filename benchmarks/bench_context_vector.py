"""Training throughput of the context-vector LM: fast path (``forward``) vs ``forward_reference``.

Both variants train the same model (same config, same initial weights, own Adam state) on the
same batches: forward + cross-entropy + backward + Adam step. One warm-up step each, then
``--steps`` rounds; each round times one step of each variant, alternating which goes first, so
that a change in machine load hits both alike. Prints tokens/s of each (median over rounds), the
ratio fast/reference of the medians and the spread of the per-round ratios.

    python benchmarks/bench_context_vector.py [--batch 2048 --seq 64 --steps 3 --device cpu --json]

On a shared machine the wall-clock figures move with other jobs: compare the per-round ratios,
and see the load average printed at the end.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from lmlab.models.context_vector import ContextVectorConfig, ContextVectorLM  # noqa: E402

VARIANTS = ("fast", "reference")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


class Trainer:
    """One variant: its own copy of the model and its own Adam; ``step`` times one training step."""

    def __init__(self, base: ContextVectorLM, use_reference: bool) -> None:
        self.model = copy.deepcopy(base).train()  # identical starting weights for both variants
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.run = self.model.forward_reference if use_reference else self.model.forward

    def step(self, batch: torch.Tensor) -> tuple[float, float]:
        """(wall s, CPU s of all threads) for forward + cross-entropy + backward + Adam on ``batch`` (B, T+1)."""
        _sync(batch.device)
        start, start_cpu = time.perf_counter(), _cpu_seconds()
        logits = self.run(batch[:, :-1])  # (B, T, V)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        del logits, loss
        _sync(batch.device)
        return time.perf_counter() - start, _cpu_seconds() - start_cpu


def time_rounds(trainers: dict[str, Trainer], batches: list[torch.Tensor]) -> dict[str, list[tuple[float, float]]]:
    """Warm up each variant on batches[0], then one timed step of each per remaining batch,
    alternating the order round by round. Returns each variant's (wall, CPU) per round."""
    for trainer in trainers.values():
        trainer.step(batches[0])
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in trainers}
    for n, batch in enumerate(batches[1:]):
        order = VARIANTS if n % 2 == 0 else VARIANTS[::-1]
        for name in order:
            times[name].append(trainers[name].step(batch))
        fast, ref = times["fast"][-1][0], times["reference"][-1][0]
        print(f"  round {n + 1}: fast {fast:6.2f} s, reference {ref:6.2f} s, ratio {ref / fast:.2f}x", flush=True)
    return times


def summarize(times: dict[str, list[tuple[float, float]]], tokens_per_step: int) -> dict:
    """Median tokens/s per variant, the ratio of the medians and the per-round ratios."""
    out: dict = {}
    for name, rows in times.items():
        wall = statistics.median(w for w, _ in rows)
        out[name] = {"s_per_step": wall, "tokens_per_s": tokens_per_step / wall,
                     "cpu_s_per_step": statistics.median(c for _, c in rows)}
    out["ratio"] = out["fast"]["tokens_per_s"] / out["reference"]["tokens_per_s"]
    out["round_ratios"] = [r / f for (f, _), (r, _) in zip(times["fast"], times["reference"])]
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--seq", type=int, default=64, help="tokens per sequence that get a loss (T)")
    ap.add_argument("--steps", type=int, default=3, help="timed rounds (one step of each variant per round)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--vocab", type=int, default=1000)
    ap.add_argument("--dropout", type=float, default=None, help="override the config's dropout (default 0.1)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--json", action="store_true", help="also print the figures as one JSON line")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = ContextVectorConfig(vocab_size=args.vocab)
    if args.dropout is not None:
        cfg.dropout = args.dropout
    base = ContextVectorLM(cfg).to(device)
    batches = [torch.randint(0, args.vocab, (args.batch, args.seq + 1), device=device) for _ in range(1 + args.steps)]
    tokens_per_step = args.batch * args.seq
    print(f"context_vector: {base.num_params():,} params, {cfg}\n"
          f"batch {args.batch} x seq {args.seq} = {tokens_per_step:,} tokens/step, {args.steps} timed rounds "
          f"(+1 warm-up step each), device {device}, {torch.get_num_threads()} threads", flush=True)
    load_before = os.getloadavg()[0]
    trainers = {name: Trainer(base, use_reference=name == "reference") for name in VARIANTS}
    res = summarize(time_rounds(trainers, batches), tokens_per_step)
    for name in VARIANTS:
        r = res[name]
        print(f"{name:>9}: {r['s_per_step']:8.2f} s/step  {r['tokens_per_s']:10,.0f} tokens/s  "
              f"({r['cpu_s_per_step']:.2f} CPU s/step)")
    ratios = res["round_ratios"]
    print(f"fast/reference: {res['ratio']:.2f}x (per round: min {min(ratios):.2f}x, max {max(ratios):.2f}x)")
    # wall-clock ratios mean little when other jobs share the cores; say so
    res["load_avg_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    print(f"1-min load average: {res['load_avg_1min'][0]} before, {res['load_avg_1min'][1]} after "
          f"({os.cpu_count()} CPUs)")
    if args.json:
        print(json.dumps({"batch": args.batch, "seq": args.seq, "threads": torch.get_num_threads(), **res}))


if __name__ == "__main__":
    main()
