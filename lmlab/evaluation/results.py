"""Evaluation result rows on disk and on screen.

A row is ``{"task", "metric", "value", "stderr", "n", "seconds", ...}`` (see ``runner``).
``write_results`` stores rows in a folder's ``eval_results.json`` and appends them to the run's
``metrics.eval.jsonl``, one flat line per row (both may be another folder: ``lmlab eval --out
DIR``); ``format_rows`` prints them as a table, ``results_json`` as the JSON file's text.

Which folder (``results_dir``): ``lmlab eval`` may run while the run still trains, and retention
(``checkpoint.keep``) deletes step checkpoints at any moment, so a step checkpoint's results go to
``<run>/evals/<step>/``, which nothing deletes; writing beside it would lose them, or re-create
the pruned folder holding only the results. ``best/`` and ``final/`` are never pruned: their
results stay beside them, unless the folder was republished with other weights meanwhile.
Results written beside step checkpoints before (and by training's ``eval.every``) are still read:
``checkpoint_results``. ``lmlab report`` reads ``metrics.eval.jsonl``, which does not move.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from lmlab.atomic import write_text
from lmlab.rundir import (EVAL_METRICS_FILE, EVAL_RESULTS_FILE, EVALS_DIR, checkpoints_root,
                          is_step_name, read_json, step_name)

_FLAT_KEYS = ("task", "metric", "value", "stderr", "n", "seconds", "num_fewshot")


def json_number(value) -> float | None:
    """A JSON-safe number: lm-eval writes "N/A" for a missing stderr; NaN/inf are not JSON."""
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


def results_dir(checkpoint_dir: str | Path, run_dir: str | Path, step: int | None,
                still_holds_it: bool = True) -> Path:
    """The folder for the ``eval_results.json`` of a checkpoint of ``run_dir`` (see the module
    docstring); ``still_holds_it``: whether the checkpoint folder still holds the weights evaluated."""
    ckpt, run_dir = Path(checkpoint_dir), Path(run_dir)
    if ckpt.parent != checkpoints_root(run_dir):
        return ckpt  # not laid out as a run's checkpoint: nothing prunes it
    if is_step_name(ckpt.name):
        return run_dir / EVALS_DIR / ckpt.name
    if still_holds_it or step is None:
        return ckpt
    return run_dir / EVALS_DIR / step_name(step)


def checkpoint_results(checkpoint_dir: str | Path, run_dir: str | Path) -> dict:
    """``eval_results.json`` of a checkpoint: where ``results_dir`` puts it, else beside the
    checkpoint, where results of step checkpoints were written before ({} when none)."""
    ckpt = Path(checkpoint_dir)
    return (read_json(results_dir(ckpt, run_dir, None) / EVAL_RESULTS_FILE)
            or read_json(ckpt / EVAL_RESULTS_FILE))


def write_results(rows: list[dict], checkpoint_dir: str | Path, run_dir: str | Path,
                  step: int | None, earlier: dict | None = None) -> Path:
    """Merge ``rows`` into ``<checkpoint_dir>/eval_results.json`` (replaced atomically) and append
    them to ``<run>/metrics.eval.jsonl``; returns the JSON file's path.

    The JSON file collects everything measured on that checkpoint: a new row replaces an earlier
    one of the same task, metric and shot count, so validation and harness tasks may be written by
    separate calls. ``earlier``: the results to merge with when the file is new (those written to
    the checkpoint's former place, ``checkpoint_results``).
    """
    rows = [_clean(r) for r in rows]
    target = Path(checkpoint_dir) / EVAL_RESULTS_FILE
    fresh = {_row_key(r) for r in rows}
    previous = (read_json(target) or earlier or {}).get("results")  # none, or unreadable: rewritten
    kept = [r for r in previous if isinstance(r, dict) and _row_key(r) not in fresh] \
        if isinstance(previous, list) else []
    # atomic: never a half-written results file beside a complete checkpoint
    write_text(target, json.dumps({"step": step, "results": kept + rows}, indent=2))
    with open(Path(run_dir) / EVAL_METRICS_FILE, "a", encoding="utf-8") as handle:
        for row in rows:
            flat = {"step": step, **{k: row.get(k) for k in _FLAT_KEYS}}
            handle.write(json.dumps(flat) + "\n")
    return target


def results_json(rows: list[dict], step: int | None) -> str:
    """``rows`` as JSON, as ``eval_results.json`` would hold them: what ``lmlab eval`` prints when
    it cannot write them, so that nothing it computed is lost."""
    return json.dumps({"step": step, "results": [_clean(r) for r in rows]}, indent=2)


def _clean(row: dict) -> dict:
    return {k: (json_number(v) if isinstance(v, float) else v) for k, v in row.items()}


def _row_key(row: dict) -> tuple:
    return row.get("task"), row.get("metric"), row.get("num_fewshot")


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
