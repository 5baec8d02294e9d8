"""Greedy samples from fixed prompts (``report.samples``) at one checkpoint, written for the report.

``lmlab eval`` calls these (it has the model); ``lmlab report`` only reads ``rundir.SAMPLES_FILE``:
one JSON line per prompt, ``{"step", "checkpoint", "prompt", "text", "max_tokens"}``, replaced whole
(atomically) by each evaluation that has prompts, so the report shows the latest checkpoint's.
"""
from __future__ import annotations

import json
from pathlib import Path

from lmlab.atomic import write_text
from lmlab.evaluation.generation import generate
from lmlab.evaluation.loading import LoadedRun
from lmlab.rundir import SAMPLES_FILE


def greedy_samples(loaded: LoadedRun, prompts: list[str], max_tokens: int) -> list[dict]:
    """One row per prompt: its greedy continuation (batched, exactly as each alone)."""
    texts = generate(loaded.model, loaded.tokenizer, list(prompts), max_tokens=max_tokens, seed=0)
    return [{"step": loaded.step, "checkpoint": str(loaded.checkpoint_dir), "prompt": p, "text": t,
             "max_tokens": max_tokens} for p, t in zip(prompts, texts)]


def write_samples(rows: list[dict], folder: str | Path) -> Path:
    """``<folder>/samples.jsonl`` with ``rows`` (replacing any earlier samples)."""
    target = Path(folder) / SAMPLES_FILE
    write_text(target, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return target
