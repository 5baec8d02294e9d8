"""Evaluate one checkpoint: validation metrics plus lm-eval harness tasks, as flat result rows.

A row is ``{"task", "metric", "value", "stderr", "n", "seconds", ...}``; harness rows add
``num_fewshot``, ``filter``, ``items_per_s`` and, with few-shot examples, ``fewshot_source``.
``write_results`` stores them beside the checkpoint (``eval_results.json``) and appends them to
``<run>/metrics.eval.jsonl``, one flat line per row.

Evaluation leaves every global RNG (python, numpy, torch) as it found it, so evaluating during
training does not change the training run's data order or dropout; few-shot sampling and text
sampling use their own seeded generators.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

from tqdm import tqdm

from lmlab.errors import ConfigError
from lmlab.evaluation.harness import HarnessConfig, LmlabLM, check, task_specs
from lmlab.evaluation.loading import LoadedRun
from lmlab.evaluation.validation import evaluate
from lmlab.training.checkpoint import rng_state, set_rng_state

RESULTS_FILE, METRICS_FILE = "eval_results.json", "metrics.eval.jsonl"
FEWSHOT_SEED = 1234  # lm-eval's default few-shot seed: the same examples as a stock lm-eval run
_FLAT_KEYS = ("task", "metric", "value", "stderr", "n", "seconds", "num_fewshot")


def run_evaluation(loaded: LoadedRun, harness_cfg: HarnessConfig, validation: bool = True,
                   progress: bool = True) -> list[dict]:
    """Validation metrics (when ``validation``) then every task of ``harness_cfg``, as rows."""
    problems = check(harness_cfg)
    if problems:
        raise ConfigError(problems, source="harness settings")
    saved = rng_state()
    try:
        rows = validation_rows(loaded, progress) if validation else []
        for name in harness_cfg.tasks:
            rows += task_rows(loaded, harness_cfg, name, progress)
    finally:
        set_rng_state(saved)
    return rows


def validation_rows(loaded: LoadedRun, progress: bool = True) -> list[dict]:
    """loss / ppl / bpb / acc on the run's own validation data (``eval.validation.max_steps`` applies)."""
    from lmlab.data.pipeline import build_data

    start = time.perf_counter()
    data = build_data(loaded.config, loaded.run_dir)
    batches = tqdm(data.val_batches(), desc="validation", unit="batch", disable=not progress)
    metrics = evaluate(loaded.model, batches, data.byte_lengths, loaded.device, pad_id=data.pad_id)
    seconds = time.perf_counter() - start
    n = metrics.pop("val/tokens", None)
    return [{"task": "validation", "metric": key.split("/", 1)[1], "value": value, "stderr": None,
             "n": n, "seconds": seconds} for key, value in metrics.items()]


def task_rows(loaded: LoadedRun, cfg: HarnessConfig, name: str, progress: bool = True) -> list[dict]:
    """One lm-eval task through ``lm_eval.simple_evaluate``: a row per metric it reports."""
    import lm_eval

    lm = LmlabLM(loaded.model, loaded.tokenizer, cfg.batch_size, cfg.max_gen_toks, progress)
    tasks, manager, fewshot_source = task_specs(cfg, [name])
    start = time.perf_counter()
    out = lm_eval.simple_evaluate(
        model=lm, tasks=tasks, num_fewshot=cfg.num_fewshot, limit=cfg.limit, task_manager=manager,
        batch_size=cfg.batch_size, log_samples=False, bootstrap_iters=1000,
        # None: leave the global RNGs alone (see the module docstring)
        random_seed=None, numpy_random_seed=None, torch_random_seed=None,
        fewshot_random_seed=FEWSHOT_SEED)
    seconds = time.perf_counter() - start
    return _rows_from_results(out, name, seconds, fewshot_source)


def _rows_from_results(out: dict, name: str, seconds: float, fewshot_source: str) -> list[dict]:
    results, n = out["results"][name], out["n-samples"][name]["effective"]
    shots = out.get("n-shot", {}).get(name, 0)
    rows = []
    for key, value in results.items():
        metric, _, filt = key.partition(",")
        # skip the alias, stderr entries (paired below) and unfiltered bookkeeping like sample_len
        if not filt or metric.endswith("_stderr") or not isinstance(value, (int, float)):
            continue
        row = {"task": name, "metric": metric, "value": float(value),
               "stderr": _number(results.get(f"{metric}_stderr,{filt}")), "n": n,
               "seconds": seconds, "items_per_s": n / seconds if seconds > 0 else None,
               "num_fewshot": shots, "filter": filt}
        if shots:
            row["fewshot_source"] = fewshot_source
        rows.append(row)
    return rows


def _number(value) -> float | None:
    """A JSON-safe number: lm-eval writes "N/A" for a missing stderr; NaN/inf are not JSON."""
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


def _clean(row: dict) -> dict:
    return {k: (_number(v) if isinstance(v, float) else v) for k, v in row.items()}


def write_results(rows: list[dict], checkpoint_dir: str | Path, run_dir: str | Path,
                  step: int | None) -> Path:
    """Merge ``rows`` into ``<checkpoint>/eval_results.json`` (replaced atomically) and append them to
    ``<run>/metrics.eval.jsonl``; returns the JSON file's path.

    The JSON file collects everything measured on that checkpoint: a new row replaces an earlier
    one of the same task, metric and shot count, so validation and harness tasks may be written by
    separate calls.
    """
    rows = [_clean(r) for r in rows]
    target = Path(checkpoint_dir) / RESULTS_FILE
    fresh = {_row_key(r) for r in rows}
    kept = [r for r in _read_results(target) if _row_key(r) not in fresh]
    tmp = target.with_name(f".{RESULTS_FILE}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps({"step": step, "results": kept + rows}, indent=2), encoding="utf-8")
    os.replace(tmp, target)  # never a half-written results file beside a complete checkpoint
    with open(Path(run_dir) / METRICS_FILE, "a", encoding="utf-8") as handle:
        for row in rows:
            flat = {"step": step, **{k: row.get(k) for k in _FLAT_KEYS}}
            handle.write(json.dumps(flat) + "\n")
    return target


def _row_key(row: dict) -> tuple:
    return row.get("task"), row.get("metric"), row.get("num_fewshot")


def _read_results(path: Path) -> list[dict]:
    try:
        return list(json.loads(path.read_text(encoding="utf-8")).get("results", []))
    except (OSError, ValueError, AttributeError):
        return []  # none yet, or unreadable: it is rewritten whole below
