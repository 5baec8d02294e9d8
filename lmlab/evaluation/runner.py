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

import contextlib
import json
import math
import os
import time
from pathlib import Path

from tqdm import tqdm

from lmlab.errors import ConfigError
from lmlab.evaluation.config import EvalConfig, check
from lmlab.evaluation.harness import LmlabLM, task_specs
from lmlab.evaluation.loading import LoadedRun
from lmlab.training.validation import evaluate
from lmlab.training.checkpoint import rng_state, set_rng_state

RESULTS_FILE, METRICS_FILE = "eval_results.json", "metrics.eval.jsonl"
FEWSHOT_SEED = 1234  # lm-eval's default few-shot seed: the same examples as a stock lm-eval run
_FLAT_KEYS = ("task", "metric", "value", "stderr", "n", "seconds", "num_fewshot")


def run_evaluation(loaded: LoadedRun, eval_cfg: EvalConfig, validation: bool = True,
                   progress: bool = True) -> list[dict]:
    """Validation metrics (when ``validation``) then every task of ``eval_cfg``, as rows."""
    problems = check(eval_cfg)
    if problems:
        raise ConfigError(problems, source="harness settings")
    saved = rng_state()
    try:
        rows = validation_rows(loaded, progress) if validation else []
        for name in eval_cfg.tasks:
            rows += task_rows(loaded, eval_cfg, name, progress)
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


def task_rows(loaded: LoadedRun, cfg: EvalConfig, name: str, progress: bool = True) -> list[dict]:
    """One lm-eval task through ``lm_eval.simple_evaluate``: a row per metric it reports."""
    import lm_eval

    lm = LmlabLM(loaded.model, loaded.tokenizer, cfg.batch_size, cfg.max_gen_toks, progress)
    tasks, manager, fewshot_source = task_specs(cfg, [name])
    start = time.perf_counter()
    with _without_environment_dump():
        out = lm_eval.simple_evaluate(
            model=lm, tasks=tasks, num_fewshot=cfg.num_fewshot, limit=cfg.limit, task_manager=manager,
            batch_size=cfg.batch_size, log_samples=False, bootstrap_iters=1000,
            # None: leave the global RNGs alone (see the module docstring)
            random_seed=None, numpy_random_seed=None, torch_random_seed=None,
            fewshot_random_seed=FEWSHOT_SEED)
    seconds = time.perf_counter() - start
    return _rows_from_results(out, name, seconds, fewshot_source)


@contextlib.contextmanager
def _without_environment_dump():
    """lm-eval ends every ``simple_evaluate`` by collecting the machine's environment (torch's
    collect_env: pip, nvidia-smi, ...; seconds per task, and counted in our items/s) and calling
    ``git describe`` in the working directory (which prints "fatal: not a git repository" outside
    one). lmlab writes its own provenance, so both are skipped while our tasks run."""
    import lm_eval.evaluator as evaluator

    saved = {name: getattr(evaluator, name) for name in ("add_env_info", "get_git_commit_hash")
             if hasattr(evaluator, name)}
    replacements = {"add_env_info": lambda storage: None, "get_git_commit_hash": lambda: None}
    for name in saved:
        setattr(evaluator, name, replacements[name])
    try:
        yield
    finally:
        for name, original in saved.items():
            setattr(evaluator, name, original)


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


def evaluate_run(path: str | Path, overrides: list[str] = (), progress: bool = True) -> tuple[list[dict], Path]:
    """``lmlab eval``: validation + ``eval.tasks`` on a run's (or one checkpoint's) model, with the
    run's config plus ``overrides``; results are written beside the checkpoint and appended to the
    run's ``metrics.eval.jsonl``, and the phase is recorded in its ``events.jsonl``.
    Returns (rows, results file)."""
    from lmlab.evaluation.loading import load_for_eval, resolve_checkpoint
    from lmlab.reports.events import EventLog

    checkpoint_dir, run_dir = resolve_checkpoint(path)
    cfg = _checked_eval_config(run_dir, overrides)
    loaded = load_for_eval(checkpoint_dir, device=cfg.device, overrides=overrides)
    events = EventLog(run_dir)
    with events.phase("eval", step=loaded.step, tasks=list(cfg.eval.tasks), command="lmlab eval"):
        rows = run_evaluation(loaded, cfg.eval, validation=cfg.eval.validation.enabled, progress=progress)
        target = write_results(rows, checkpoint_dir, run_dir, loaded.step)
    return rows, target


def _checked_eval_config(run_dir: Path, overrides: list[str]):
    """The run's saved config with ``overrides``, preflighted for what evaluation needs."""
    from lmlab.config import load_config_collecting
    from lmlab.data import sources
    from lmlab.preflight import device_problems

    cfg, problems = load_config_collecting(run_dir / "config.yaml", overrides)
    problems += check(cfg.eval) + device_problems(cfg)
    if cfg.eval.validation.enabled:
        problems += sources.check(cfg.data, True)
    if not cfg.eval.tasks and not cfg.eval.validation.enabled:
        from lmlab.errors import Problem

        problems.append(Problem("eval.tasks", "nothing to evaluate: no tasks and validation is off.",
                                "set eval.tasks=[piqa,hellaswag,nq_open] eval.data_dir=../shared/data"))
    if problems:
        raise ConfigError(problems, source=f"{run_dir / 'config.yaml'} + overrides")
    return cfg


def format_rows(rows: list[dict]) -> str:
    """Result rows as an aligned text table (task, metric, value ± stderr, items, seconds, items/s)."""
    lines = [f"{'task':<12} {'metric':<14} {'value':>10} {'stderr':>8} {'n':>7} {'seconds':>8} {'items/s':>8}"]
    for row in rows:
        stderr = f"{row['stderr']:.4f}" if row.get("stderr") is not None else "-"
        rate = f"{row['items_per_s']:.1f}" if row.get("items_per_s") else "-"
        n = f"{row['n']}" if row.get("n") is not None else "-"
        lines.append(f"{row['task']:<12} {row['metric']:<14} {row['value']:>10.4f} {stderr:>8} {n:>7} "
                     f"{row['seconds']:>8.1f} {rate:>8}")
    sources = {(r["task"], r["num_fewshot"], r["fewshot_source"]) for r in rows if r.get("fewshot_source")}
    for task, shots, source in sorted(sources):
        lines.append(f"note: {task} {shots}-shot examples come from the {source} split")
    return "\n".join(lines)
