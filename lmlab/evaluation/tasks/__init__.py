"""Offline lm-eval task definitions for piqa, hellaswag and nq_open, read from local upstream files.

Each task module holds the same prompt, target, choices, filters and metrics as the standard
lm-eval 0.4 task of that name (``lm_eval/tasks/<name>/*.yaml``); only where the documents come from
differs: ``data_dir/<file>`` instead of the Hugging Face hub (see /work/shared/data/README.md for
the files). The tasks are built as ``lm_eval.api.task.ConfigurableTask`` objects whose
``custom_dataset`` reads the local file, and are handed to ``lm_eval.simple_evaluate`` directly, so
no hub access and no scan of lm-eval's 14,000 task configs (about 18 s) is needed.

Only the dev/validation splits are available offline, so few-shot examples (``num_fewshot > 0``)
are drawn from the same split, seeded, never the item being evaluated (lm-eval excludes the evaluated
document when the few-shot split equals the evaluation split); results record this as
``fewshot_source``.

This package imports lm-eval and ``datasets`` only when tasks are built, so preflight checks
(``KNOWN_TASKS``, ``missing_files``) stay instant.
"""
from __future__ import annotations

import importlib
import logging
from pathlib import Path

KNOWN_TASKS = ("piqa", "hellaswag", "nq_open")
#: files each task reads, relative to data_dir
TASK_FILES: dict[str, tuple[str, ...]] = {
    "piqa": ("piqa/valid.jsonl", "piqa/valid-labels.lst"),
    "hellaswag": ("hellaswag/hellaswag_val.jsonl.gz",),
    "nq_open": ("nq_open/NQ-open.dev.jsonl",),
}
FEWSHOT_SOURCE = "dev (excluding the item)"


def missing_files(name: str, data_dir: str | Path) -> list[Path]:
    """The files task ``name`` needs that are not under ``data_dir``."""
    return [Path(data_dir) / f for f in TASK_FILES[name] if not (Path(data_dir) / f).is_file()]


def task_config(name: str, data_dir: str | Path) -> dict:
    """The lm-eval task config (a dict for ``ConfigurableTask``) of offline task ``name``."""
    if name not in KNOWN_TASKS:
        raise KeyError(f"no offline definition of task {name!r}; known: {list(KNOWN_TASKS)}")
    module = importlib.import_module(f"{__name__}.{name}")
    return module.config(Path(data_dir))


def build_tasks(names: list[str], data_dir: str | Path) -> list:
    """``ConfigurableTask`` objects for ``names``, reading their documents from ``data_dir``."""
    from lm_eval.api.task import ConfigurableTask  # lazy: lm-eval

    task_logger = logging.getLogger("lm_eval.api.task")
    task_logger.addFilter(_drop_custom_dataset_hint)
    try:
        return [ConfigurableTask(config=task_config(name, data_dir)) for name in names]
    finally:
        task_logger.removeFilter(_drop_custom_dataset_hint)


def _drop_custom_dataset_hint(record: logging.LogRecord) -> bool:
    # lm-eval warns on every custom_dataset task that kwargs "can be passed to --metadata":
    # advice for its own command line, noise here
    return "Custom kwargs can be passed" not in record.getMessage()
