"""Evaluation throughput: loglikelihood requests/s (lm-eval adapter) and generated tokens/s.

Model: the quickstart model (configs/quickstart.yaml, bytes tokenizer) with random weights, or a
trained run with ``--checkpoint``. Measured in one run:

* loglikelihood: PIQA-style requests -- context "Question: {goal}\\nAnswer:", continuation
  " {sol1}" / " {sol2}" from ../shared/data/piqa/valid.jsonl (synthetic text if it is missing) --
  scored by ``lmlab.evaluation.harness.LmlabLM.loglikelihood``, lm-eval ``Instance`` objects in;
* generation: greedy ``lmlab.evaluation.generation.generate`` on equal-length prompts, batched;
  then the same decoding one prompt at a time, cached (``generate``) against uncached
  (this script's ``greedy_reference``: a full forward over the growing sequence per token), and their
  ratio.

    python benchmarks/bench_eval.py [--device cpu --threads 2 --checkpoint runs/quickstart --json]

Random weights make the scores meaningless but not the speed. Generated tokens are the positions
actually decoded (one per row per ``model.step`` call), so rows that all stop early at EOS count less
than ``--prompts`` x ``--max-tokens``.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from lm_eval.api.instance import Instance  # noqa: E402

from lmlab.config import load_config  # noqa: E402
from lmlab.data.tokenizers import train_tokenizer  # noqa: E402
from lmlab.evaluation.generation import encode_prompt, generate, greedy_reference  # noqa: E402
from lmlab.evaluation.harness import LmlabLM  # noqa: E402
from lmlab.evaluation.loading import load_for_eval, saved_config_file  # noqa: E402
from lmlab.models.registry import build_model, resolve_model_config  # noqa: E402
from lmlab.rundir import resolve_checkpoint  # noqa: E402

QUICKSTART = ROOT / "configs" / "quickstart.yaml"
PIQA = ROOT.parent / "shared" / "data" / "piqa" / "valid.jsonl"


def load_model(checkpoint: str | None, device: torch.device):
    """(model in eval mode, tokenizer, description): a trained run, or the quickstart model at random init."""
    if checkpoint:
        checkpoint_dir, run_dir = resolve_checkpoint(checkpoint)
        run = load_for_eval(checkpoint_dir, run_dir, load_config(saved_config_file(checkpoint_dir, run_dir)),
                            device)
        return run.model, run.tokenizer, f"checkpoint {run.checkpoint_dir} (step {run.step})"
    cfg = load_config(QUICKSTART)
    torch.manual_seed(cfg.seed)
    tokenizer = train_tokenizer(cfg.data.tokenizer, [])  # bytes: needs no training text
    model_cfg = resolve_model_config(cfg.model, tokenizer.vocab_size, cfg.data.seq_len)
    model = build_model(model_cfg).to(device).eval()
    return model, tokenizer, f"{QUICKSTART.name} model, random init"


def piqa_pairs(n_items: int) -> tuple[list[tuple[str, str]], str]:
    """2 (context, continuation) pairs per PIQA item, the first ``n_items`` items; synthetic if no file."""
    if PIQA.is_file():
        with PIQA.open(encoding="utf-8") as f:
            items = [json.loads(line) for line, _ in zip(f, range(n_items))]
        source = str(PIQA)
    else:
        rng = random.Random(0)
        words = "the a cup of water pour into bowl heat stir until soft then cut with knife".split()
        items = [{k: " ".join(rng.choices(words, k=rng.randint(4, 25))) for k in ("goal", "sol1", "sol2")}
                 for _ in range(n_items)]
        source = "synthetic text (PIQA file not found)"
    pairs = [(f"Question: {it['goal']}\nAnswer:", f" {it[sol]}") for it in items for sol in ("sol1", "sol2")]
    return pairs, source


def time_loglikelihood(lm: LmlabLM, pairs: list[tuple[str, str]]) -> float:
    """Seconds for ``lm.loglikelihood`` on ``pairs`` as lm-eval Instances (after one small warm-up call)."""
    requests = [Instance(request_type="loglikelihood", doc={}, arguments=pair, idx=i)
                for i, pair in enumerate(pairs)]
    lm.loglikelihood(requests[: lm.batch_size])  # warm-up: allocator, thread pool, first kernels
    start = time.perf_counter()
    results = lm.loglikelihood(requests)
    elapsed = time.perf_counter() - start
    assert len(results) == len(requests) and all(lp <= 0 for lp, _ in results)
    return elapsed


def equal_length_prompts(tokenizer, texts: list[str], n: int, length: int) -> list[str]:
    """``n`` prompts that encode to exactly ``length`` tokens with BOS, so ``generate`` batches them all
    together (it groups prompts by token length)."""
    prompts = []
    for text in texts:
        ids = tokenizer.encode(text)[: length - 1]
        prompt = tokenizer.decode(ids)
        if len(ids) == length - 1 and tokenizer.encode(prompt) == ids:  # round-trips exactly
            prompts.append(prompt)
        if len(prompts) == n:
            return prompts
    raise SystemExit(f"only {len(prompts)} texts give {length}-token prompts; lower --prompt-len")


class StepCounter:
    """Counts the tokens ``generate`` decodes: every ``model.step`` call (prefill or one more token)
    yields the logits of exactly one sampled token per row. ``generate`` returns text, and re-encoding
    it does not count tokens (a random byte model emits invalid UTF-8, decoded as U+FFFD)."""

    def __init__(self, model):
        self.model, self.tokens = model, 0

    def __enter__(self) -> "StepCounter":
        inner = self.model.step

        def counting_step(tokens, state):
            self.tokens += tokens.shape[0]
            return inner(tokens, state)

        self.model.step = counting_step  # instance attribute shadows the method
        return self

    def __exit__(self, *exc) -> None:
        del self.model.step


def time_generate(model, tokenizer, prompts: list[str], max_tokens: int,
                  batch_size: int) -> tuple[float, int, list[str]]:
    """(seconds, decoded tokens, texts) for greedy ``generate`` over ``prompts`` in batches of ``batch_size``."""
    with StepCounter(model) as counter:
        start = time.perf_counter()
        texts = generate(model, tokenizer, prompts, max_tokens=max_tokens, seed=0, batch_size=batch_size)
        elapsed = time.perf_counter() - start
    return elapsed, counter.tokens, texts


def time_uncached(model, tokenizer, prompts: list[str], max_tokens: int) -> tuple[float, int, list[str]]:
    """(seconds, decoded tokens, texts) for ``greedy_reference`` on each prompt (batch 1); the texts
    are cut at EOS like ``generate``'s, the count is not (greedy_reference never stops early)."""
    start = time.perf_counter()
    outs = [greedy_reference(model, encode_prompt(tokenizer, p), max_tokens) for p in prompts]
    elapsed = time.perf_counter() - start
    eos = tokenizer.eos_id
    texts = [tokenizer.decode(ids[: ids.index(eos)] if eos in ids else ids) for ids in outs]
    return elapsed, sum(len(ids) for ids in outs), texts


def measure_generation(model, tokenizer, prompts: list[str], args) -> dict:
    """Batched cached tokens/s, then cached vs uncached at batch 1 on the first ``--uncached-prompts``."""
    generate(model, tokenizer, prompts[:2], max_tokens=4, seed=0, batch_size=2)  # warm-up
    secs, n, _ = time_generate(model, tokenizer, prompts, args.max_tokens, args.gen_batch)
    few = prompts[: args.uncached_prompts]
    secs_1, n_1, texts_1 = time_generate(model, tokenizer, few, args.max_tokens, 1)
    secs_u, n_u, texts_u = time_uncached(model, tokenizer, few, args.max_tokens)
    return {
        "gen_prompts": len(prompts), "gen_batch": args.gen_batch, "gen_tokens": n,
        "gen_tokens_per_s": n / secs,
        "cached_b1_tokens_per_s": n_1 / secs_1,
        "uncached_b1_tokens_per_s": n_u / secs_u,
        "cache_speedup": (n_1 / secs_1) / (n_u / secs_u) if n_1 and n_u else float("nan"),
        "cached_equals_uncached": texts_1 == texts_u,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--checkpoint", default=None,
                    help="run dir or checkpoint dir (default: the quickstart model, random init)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--items", type=int, default=500, help="PIQA items scored (2 requests each)")
    ap.add_argument("--ll-batch", type=int, default=32, help="requests per model call (the adapter's batch_size)")
    ap.add_argument("--prompts", type=int, default=64, help="prompts for batched generation")
    ap.add_argument("--gen-batch", type=int, default=32, help="prompts decoded together")
    ap.add_argument("--prompt-len", type=int, default=32, help="prompt tokens, BOS included")
    ap.add_argument("--max-tokens", type=int, default=64, help="tokens generated per prompt")
    ap.add_argument("--uncached-prompts", type=int, default=8,
                    help="prompts for the cached-vs-uncached comparison (batch 1)")
    ap.add_argument("--json", action="store_true", help="also print the figures as one JSON line")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer, what = load_model(args.checkpoint, device)
    pairs, source = piqa_pairs(args.items)
    print(f"{what}: {type(model).__name__}, {sum(p.numel() for p in model.parameters()):,} params, "
          f"tokenizer {tokenizer.name}; device {device}, {torch.get_num_threads()} threads", flush=True)
    load_before = os.getloadavg()[0]

    lm = LmlabLM(model, tokenizer, batch_size=args.ll_batch, progress=False)
    ll_secs = time_loglikelihood(lm, pairs)
    contexts = [context for context, _ in pairs[::2]]  # one per item
    prompts = equal_length_prompts(tokenizer, contexts, args.prompts, args.prompt_len)
    res = {"device": str(device), "threads": torch.get_num_threads(), "model": what,
           "ll_requests": len(pairs), "ll_batch": args.ll_batch, "ll_requests_per_s": len(pairs) / ll_secs}
    res.update(measure_generation(model, tokenizer, prompts, args))
    res["load_avg_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    print_table(res, source, args)
    if args.json:
        print(json.dumps(res))


def print_table(res: dict, source: str, args: argparse.Namespace) -> None:
    """The figures as a small aligned table."""
    rows = [
        (f"loglikelihood ({res['ll_requests']} requests, batch {res['ll_batch']})",
         f"{res['ll_requests_per_s']:,.1f} requests/s"),
        (f"generate greedy ({res['gen_prompts']} prompts x {args.max_tokens}, batch {res['gen_batch']})",
         f"{res['gen_tokens_per_s']:,.1f} tokens/s"),
        (f"generate greedy, batch 1 ({args.uncached_prompts} prompts)",
         f"{res['cached_b1_tokens_per_s']:,.1f} tokens/s"),
        (f"greedy_reference (no cache), batch 1 ({args.uncached_prompts} prompts)",
         f"{res['uncached_b1_tokens_per_s']:,.1f} tokens/s"),
        ("cache speedup (batch 1, cached / uncached)",
         f"{res['cache_speedup']:.2f}x (same text: {res['cached_equals_uncached']})"),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"requests from {source}; prompts of {args.prompt_len} tokens")
    for name, value in rows:
        print(f"{name:<{width}}  {value:>22}")
    print(f"1-min load average: {res['load_avg_1min'][0]} before, {res['load_avg_1min'][1]} after "
          f"({os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
