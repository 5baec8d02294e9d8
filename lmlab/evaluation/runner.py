"""Evaluate one checkpoint: validation metrics plus lm-eval harness tasks, as flat result rows.

A row is ``{"task", "metric", "value", "stderr", "n", "seconds", ...}``; harness rows add
``num_fewshot``, ``filter``, ``items_per_s`` and, with few-shot examples, ``fewshot_source``.
``results.write_results`` stores them (in the folder ``results.results_dir`` names for the
checkpoint) and appends them to the run's eval metrics; the ``lmlab eval`` command itself is an app
(``apps/evaluate.py``) above this layer.

Evaluation leaves every global RNG (python, numpy, torch) as it found it, so evaluating during
training does not change the training run's data order or dropout; few-shot sampling and text
sampling use their own seeded generators.

The settings are checked once per command: ``lmlab eval`` checks them with the rest of the config
before the model is loaded and says so (``checked``); any other caller has them checked here, first
(an evaluation during training runs long after preflight, and its task files may be gone by then).
"""
from __future__ import annotations

import contextlib
import time

from tqdm import tqdm

from lmlab.data.pipeline import build_validation
from lmlab.errors import ConfigError
from lmlab.evaluation.config import EvalConfig, TaskSetting, check, task_settings
from lmlab.evaluation.harness import LmlabLM, task_specs
from lmlab.evaluation.loading import LoadedRun
from lmlab.evaluation.results import json_number
from lmlab.evaluation.tasks import FEWSHOT_SOURCE
from lmlab.evaluation.validation import validation_metrics
from lmlab.rng import rng_state, set_rng_state

FEWSHOT_SEED = 1234  # lm-eval's default few-shot seed: the same examples as a stock lm-eval run


def run_evaluation(loaded: LoadedRun, eval_cfg: EvalConfig, validation: bool = True,
                   progress: bool = True, checked: bool = False) -> list[dict]:
    """Validation metrics (when ``validation``) then every task of ``eval_cfg``, as rows.
    ``checked``: the caller has checked ``eval_cfg`` already (see the module docstring)."""
    problems = [] if checked else check(eval_cfg)
    if problems:
        raise ConfigError(problems, source="harness settings")
    saved = rng_state()
    try:
        rows = validation_rows(loaded, progress) if validation else []
        for setting in task_settings(eval_cfg):
            rows += task_rows(loaded, eval_cfg, setting, progress)
    finally:
        set_rng_state(saved)
    return rows


def validation_rows(loaded: LoadedRun, progress: bool = True) -> list[dict]:
    """loss / ppl / bpb / acc on the run's own validation data (``eval.validation.max_steps`` applies),
    encoded with the run's saved tokenizer: no training text is read or tokenized."""
    start = time.perf_counter()
    cfg = loaded.config
    data = build_validation(cfg.data, cfg.eval.validation.max_steps, loaded.tokenizer)
    batches = tqdm(data.batches(), desc="validation", unit="batch", disable=not progress)
    metrics = validation_metrics(loaded.model, batches, data.byte_lengths, loaded.device,
                                 pad_id=data.pad_id)
    seconds = time.perf_counter() - start
    n = metrics.pop("val/tokens", None)
    return [{"task": "validation", "metric": key.split("/", 1)[1], "value": value, "stderr": None,
             "n": n, "seconds": seconds} for key, value in metrics.items()]


def task_rows(loaded: LoadedRun, cfg: EvalConfig, task: TaskSetting | str,
              progress: bool = True) -> list[dict]:
    """One ``eval.tasks`` entry (a task, group or tag) through ``lm_eval.simple_evaluate``: a row per
    metric of every task it ran. ``task``: a setting of ``task_settings``, or a name (eval.* values)."""
    import lm_eval  # lazy: lm-eval

    if isinstance(task, str):
        task = TaskSetting(task, cfg.num_fewshot, cfg.limit, cfg.batch_size)
    lm = LmlabLM(loaded.model, loaded.tokenizer, task.batch_size, cfg.max_gen_toks, progress,
                 max_batch_tokens=cfg.max_batch_tokens, precision=loaded.config.precision)
    tasks, manager, offline = task_specs(cfg, [task.task])
    start = time.perf_counter()
    with _without_environment_dump():
        out = lm_eval.simple_evaluate(
            model=lm, tasks=tasks, num_fewshot=task.num_fewshot, limit=task.limit, task_manager=manager,
            batch_size=task.batch_size, log_samples=False, bootstrap_iters=1000,
            # None: leave the global RNGs alone (see the module docstring)
            random_seed=None, numpy_random_seed=None, torch_random_seed=None,
            fewshot_random_seed=FEWSHOT_SEED)
    seconds = time.perf_counter() - start
    return _rows_from_results(out, seconds, offline)


@contextlib.contextmanager
def _without_environment_dump():
    """lm-eval ends every ``simple_evaluate`` by collecting the machine's environment (torch's
    collect_env: pip, nvidia-smi, ...; seconds per task, and counted in our items/s) and calling
    ``git describe`` in the working directory (which prints "fatal: not a git repository" outside
    one). lmlab writes its own provenance, so both are skipped while our tasks run."""
    import lm_eval.evaluator as evaluator  # lazy: lm-eval

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


def _rows_from_results(out: dict, seconds: float, offline: set[str]) -> list[dict]:
    """A row per (task, metric) in lm-eval's results: one task, or a group's aggregate and members."""
    rows = []
    for name, results in out["results"].items():
        n = (out.get("n-samples", {}).get(name) or {}).get("effective")  # None for a group's aggregate
        shots = (out.get("n-shot") or {}).get(name, 0)
        for key, value in results.items():
            metric, _, filt = key.partition(",")
            # skip the alias, stderr entries (paired below) and unfiltered bookkeeping like sample_len
            if not filt or metric.endswith("_stderr") or not isinstance(value, (int, float)):
                continue
            row = {"task": name, "metric": metric, "value": float(value),
                   "stderr": json_number(results.get(f"{metric}_stderr,{filt}")), "n": n,
                   "seconds": seconds, "items_per_s": n / seconds if n and seconds > 0 else None,
                   "num_fewshot": shots, "filter": filt}
            if shots:
                row["fewshot_source"] = FEWSHOT_SOURCE if name in offline else \
                    fewshot_source((out.get("configs") or {}).get(name) or {})
            rows.append(row)
    return rows


def fewshot_source(config: dict) -> str:
    """Where lm-eval drew a task's few-shot examples (its rule: ``fewshot_split``, else the training,
    validation or test split), and whether that is the evaluated split (then never the item itself)."""
    evaluated = config.get("test_split") or config.get("validation_split")
    split = (config.get("fewshot_split") or config.get("training_split") or config.get("validation_split")
             or config.get("test_split"))
    return f"{split} (excluding the item)" if split == evaluated else str(split)
