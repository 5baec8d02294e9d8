"""Evaluation throughput of one trained run, new paths against the ones they replaced, in one process:

1. **nq_open 5-shot generation** (lm-eval ``generate_until`` requests from lmlab's offline nq_open,
   few-shot seed 1234): items/s of ``LmlabLM.generate_until`` at ``--gen-batch`` (prompts of any
   length in one left-padded batch) against batch 1 (one prompt at a time, what the old
   equal-length grouping amounted to on few-shot prompts); the texts must be identical.
2. **hellaswag scoring** (``loglikelihood`` requests of the offline hellaswag): requests/s of
   ``scoring.SequenceScorer`` (token budget, shared contexts, vectorised) against
   ``scoring.score_reference`` (the old fixed-count batching), and the largest difference.
3. **piqa against lm-eval's HFLM**: requests/s of ``LmlabLM.loglikelihood`` on the checkpoint and of
   lm-eval's own ``HFLM`` on its Hugging Face export (``lmlab export RUN --format hf``), fp32, the
   same Instances; accuracy (lm-eval's acc: the argmax choice) of each.

Each timing is the best of ``--repeats`` rounds, the variants alternating within a round (a shared,
busy machine slows rounds, not variants); every ratio comes from this one run.

    python benchmarks/bench_eval.py --checkpoint /tmp/qa14 --threads 2 [--append benchmarks/RESULTS.md]

The run comes from ``lmlab train configs/quickstart.yaml dump_dir=/tmp/qa14 steps=100``.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import logging
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from lmlab.cli import main as lmlab_main  # noqa: E402
from lmlab.config import load_config  # noqa: E402
from lmlab.evaluation.harness import LmlabLM  # noqa: E402
from lmlab.evaluation.loading import load_for_eval, saved_config_file  # noqa: E402
from lmlab.evaluation.scoring import SequenceScorer, score_reference  # noqa: E402
from lmlab.evaluation.tasks import build_tasks  # noqa: E402
from lmlab.models.registry import build_model  # noqa: E402
from lmlab.rundir import resolve_checkpoint  # noqa: E402

DATA = ROOT.parent / "shared" / "data"


def requests(name: str, limit: int, shots: int = 0) -> list:
    """lm-eval Instances of lmlab's offline task ``name`` (first ``limit`` items, ``shots``-shot)."""
    task, = build_tasks([name], DATA)
    task.set_config("num_fewshot", shots)
    task.set_fewshot_seed(1234)
    task.build_all_requests(limit=limit)
    return task.instances


def best_of(variants: dict, repeats: int) -> tuple[dict, dict]:
    """(best seconds, last result) per variant; the variants alternate within each round."""
    best, out = {k: float("inf") for k in variants}, {}
    for _ in range(repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            out[name] = fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best, out


def generation_row(model, tok, args) -> dict:
    reqs = requests("nq_open", args.nq_items, shots=5)
    batched = LmlabLM(model, tok, batch_size=args.gen_batch, progress=False)
    single = LmlabLM(model, tok, batch_size=1, progress=False)
    quiet = {"disable_tqdm": True}
    batched.generate_until(reqs[:4], **quiet)  # warm-up
    secs, out = best_of({"batched": lambda: batched.generate_until(reqs, **quiet),
                         "one_at_a_time": lambda: single.generate_until(reqs, **quiet)}, args.repeats)
    return {"nq_items": len(reqs), "gen_batch": args.gen_batch,
            "nq_batched_items_per_s": len(reqs) / secs["batched"],
            "nq_one_at_a_time_items_per_s": len(reqs) / secs["one_at_a_time"],
            "nq_speedup": secs["one_at_a_time"] / secs["batched"],
            "nq_same_text": out["batched"] == out["one_at_a_time"]}


def scoring_row(model, tok, args, key: str = "hs") -> dict:
    reqs = requests("hellaswag", args.hellaswag_items)
    seqs = LmlabLM(model, tok, progress=False).encode_pairs(reqs)
    scorer = SequenceScorer(model, args.batch_size, args.max_batch_tokens, progress=False)
    secs, out = best_of({"new": lambda: scorer.score(seqs),
                         "old": lambda: score_reference(model, seqs, args.batch_size)}, args.repeats)
    diff = max(abs(a[0] - b[0]) for a, b in zip(out["new"], out["old"]))
    fit = sum(model.max_seq_len is None or len(seq) - 1 <= model.max_seq_len for seq, _ in seqs)
    return {f"{key}_requests": len(seqs), f"{key}_fit": fit, f"{key}_context": model.max_seq_len,
            f"{key}_token_ceiling": token_ceiling(seqs, model.max_seq_len),
            f"{key}_new_requests_per_s": len(seqs) / secs["new"],
            f"{key}_old_requests_per_s": len(seqs) / secs["old"], f"{key}_speedup": secs["old"] / secs["new"],
            f"{key}_max_abs_diff": diff}


def token_ceiling(seqs, limit: int | None) -> float:
    """Tokens the old path runs over tokens left once every shared context runs once: the most
    that sharing contexts can save (attention saves less), whatever the implementation."""
    old = sum(len(seq) - 1 for seq, _ in seqs)
    contexts: dict[tuple, int] = {}
    new = 0
    for seq, start in seqs:
        if limit is not None and len(seq) - 1 > limit:
            new += len(seq) - 1  # overflows: scored in its own windows either way
            continue
        contexts[tuple(seq[:start])] = start
        new += len(seq) - start
    return old / (new + sum(contexts.values()))


def with_context(model, length: int):
    """The same weights with a longer context (RoPE tables and KV cache are sized from it, the
    weights are not): the requests the trained context truncates then fit whole."""
    longer = build_model(dataclasses.replace(model.config, max_seq_len=length))
    longer.load_state_dict(model.state_dict())
    return longer.to(next(model.parameters()).device).eval()


def accuracy(reqs: list, lls: list) -> float:
    """lm-eval's acc: the share of documents whose highest-loglikelihood choice is the gold one."""
    docs: dict[int, tuple[int, list]] = {}
    for req, (ll, _) in zip(reqs, lls):
        docs.setdefault(req.doc_id, (int(req.doc["label"]), []))[1].append((req.idx, ll))
    hits = [max(sorted(choices), key=lambda c: c[1])[0] == label for label, choices in docs.values()]
    return sum(hits) / len(hits)


def hflm_row(model, tok, run: str, args) -> dict:
    from lm_eval.models.huggingface import HFLM  # lazy: transformers takes seconds to import

    export = args.hf_export or tempfile.mkdtemp(prefix="lmlab-hf-")
    if not (Path(export) / "config.json").is_file():
        assert lmlab_main(["export", run, "--format", "hf", "--out", export]) == 0
    reqs = requests("piqa", args.piqa_items)
    ours = LmlabLM(model, tok, batch_size=args.batch_size, progress=False)
    # HFLM refuses a continuation longer than the context (lmlab scores it in windows): such items
    # are left out of this comparison, for both
    too_long = {r.doc_id for r, (seq, start) in zip(reqs, ours.encode_pairs(reqs))
                if model.max_seq_len is not None and len(seq) - start > model.max_seq_len}
    reqs = [r for r in reqs if r.doc_id not in too_long]
    theirs = HFLM(pretrained=export, add_bos_token=True, batch_size=args.batch_size, device=args.device,
                  dtype="float32")
    theirs.loglikelihood(reqs[:8], disable_tqdm=True)  # warm-up
    secs, out = best_of({"lmlab": lambda: ours.loglikelihood(reqs, disable_tqdm=True),
                         "hflm": lambda: theirs.loglikelihood(reqs, disable_tqdm=True)}, args.repeats)
    return {"piqa_items": args.piqa_items, "piqa_left_out": len(too_long), "piqa_requests": len(reqs),
            "piqa_lmlab_requests_per_s": len(reqs) / secs["lmlab"],
            "piqa_hflm_requests_per_s": len(reqs) / secs["hflm"], "piqa_vs_hflm": secs["hflm"] / secs["lmlab"],
            "piqa_lmlab_acc": accuracy(reqs, out["lmlab"]), "piqa_hflm_acc": accuracy(reqs, out["hflm"]),
            "piqa_max_abs_diff": max(abs(a[0] - b[0]) for a, b in zip(out["lmlab"], out["hflm"]))}


def table(res: dict) -> list[tuple[str, str, str, str]]:
    """(measurement, new, baseline, ratio) rows of whatever was measured."""
    rows = [(f"nq_open 5-shot generate_until ({res['nq_items']} items, greedy)",
             f"{res['nq_batched_items_per_s']:.2f} items/s (batch {res['gen_batch']})",
             f"{res['nq_one_at_a_time_items_per_s']:.2f} items/s (one at a time)",
             f"{res['nq_speedup']:.2f}x; same text: {res['nq_same_text']}")]
    for k in ("hs", "hs_long"):
        if f"{k}_requests" in res:
            same = ", same weights" if k == "hs_long" else ""
            rows.append((f"hellaswag loglikelihood ({res[k + '_requests']} requests, context "
                         f"{res[k + '_context']}{same}: {res[k + '_fit']} fit whole)",
                         f"{res[k + '_new_requests_per_s']:.1f} requests/s (SequenceScorer)",
                         f"{res[k + '_old_requests_per_s']:.1f} requests/s (old fixed batching)",
                         f"{res[k + '_speedup']:.2f}x (token ceiling {res[k + '_token_ceiling']:.2f}x); "
                         f"max abs diff {res[k + '_max_abs_diff']:.1e}"))
    if "piqa_requests" in res:
        rows.append((f"piqa loglikelihood, limit {res['piqa_items']} ({res['piqa_requests']} requests; "
                     f"{res['piqa_left_out']} items with a continuation longer than the context left out)",
                     f"{res['piqa_lmlab_requests_per_s']:.1f} requests/s, acc {res['piqa_lmlab_acc']:.4f} (lmlab)",
                     f"{res['piqa_hflm_requests_per_s']:.1f} requests/s, acc {res['piqa_hflm_acc']:.4f} "
                     "(lm-eval HFLM on the HF export)",
                     f"{res['piqa_vs_hflm']:.2f}x; max abs diff {res['piqa_max_abs_diff']:.1e}"))
    return rows


def markdown(res: dict, command: str) -> str:
    head = (f"\n## bench_eval.py, {res['date']}\n\n{res['model']}; device {res['device']}, {res['threads']} "
            f"threads, best of {res['repeats']} alternating rounds; 1-min load average "
            f"{res['load_avg_1min'][0]} before, {res['load_avg_1min'][1]} after ({os.cpu_count()} CPUs).\n"
            f"`{command}`\n\n| measurement | new | baseline | ratio |\n|---|---|---|---|\n")
    return head + "".join(f"| {a} | {b} | {c} | {d} |\n" for a, b, c, d in table(res))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="run dir or checkpoint dir (e.g. /tmp/qa14)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--repeats", type=int, default=3, help="rounds per measurement (best is kept)")
    ap.add_argument("--nq-items", type=int, default=96)
    ap.add_argument("--gen-batch", type=int, default=32, help="prompts decoded together (new path)")
    ap.add_argument("--hellaswag-items", type=int, default=100, help="items (4 requests each)")
    ap.add_argument("--piqa-items", type=int, default=200, help="items (2 requests each)")
    ap.add_argument("--batch-size", type=int, default=32, help="eval.batch_size (old: requests per forward)")
    ap.add_argument("--max-batch-tokens", type=int, default=16384, help="eval.max_batch_tokens")
    ap.add_argument("--long-context", type=int, default=512,
                    help="also score hellaswag with the same weights and this context (0: no)")
    ap.add_argument("--hf-export", default=None, help="an existing export of the run (default: export now)")
    ap.add_argument("--skip-hflm", action="store_true")
    ap.add_argument("--json", action="store_true", help="also print the figures as one JSON line")
    ap.add_argument("--append", default=None, metavar="RESULTS.md", help="append a dated Markdown section")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("lm_eval").setLevel(logging.ERROR)  # HFLM warns once per truncated request
    checkpoint_dir, run_dir = resolve_checkpoint(args.checkpoint)
    run = load_for_eval(checkpoint_dir, run_dir, load_config(saved_config_file(checkpoint_dir, run_dir)),
                        args.device)
    model, tok = run.model, run.tokenizer
    what = (f"{run_dir} step {run.step}: {type(model).__name__}, {model.num_params():,} params, "
            f"context {model.max_seq_len}, tokenizer {tok.name}")
    print(what, flush=True)
    load_before = os.getloadavg()[0]
    res = {"date": datetime.date.today().isoformat(), "model": what, "device": args.device,
           "threads": torch.get_num_threads(), "repeats": args.repeats}
    res.update(generation_row(model, tok, args))
    res.update(scoring_row(model, tok, args))
    if args.long_context and model.max_seq_len:
        res.update(scoring_row(with_context(model, args.long_context), tok, args, key="hs_long"))
    if not args.skip_hflm:
        res.update(hflm_row(model, tok, str(run_dir), args))
    res["load_avg_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    command = "python benchmarks/bench_eval.py " + " ".join(argv if argv is not None else sys.argv[1:])
    rows = table(res)
    for row in rows:
        print(" | ".join(row))
    if args.json:
        print(json.dumps(res))
    if args.append:
        with open(args.append, "a", encoding="utf-8") as handle:
            handle.write(markdown(res, command))


if __name__ == "__main__":
    main()
