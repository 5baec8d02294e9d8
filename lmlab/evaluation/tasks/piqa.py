"""PIQA (physical commonsense, 2 choices), as lm-eval's ``piqa`` task: "Question: {goal}\\nAnswer:"
followed by " {sol1}" or " {sol2}"; acc and acc_norm. Documents: upstream ``valid.jsonl`` paired
line by line with ``valid-labels.lst`` (0 = sol1, 1 = sol2)."""
from __future__ import annotations

from functools import partial
from pathlib import Path

from lmlab.errors import LmlabError
from lmlab.evaluation.tasks.common import cached_validation_split, read_task_file

DOCS, LABELS = "piqa/valid.jsonl", "piqa/valid-labels.lst"


def load_docs(data_dir: Path) -> list[dict]:
    rows = read_task_file(data_dir / DOCS)
    labels = [int(x) for x in (data_dir / LABELS).read_text(encoding="utf-8").split()]
    if len(labels) != len(rows):
        raise LmlabError(f"{data_dir / LABELS} has {len(labels)} labels for {len(rows)} items in "
                         f"{data_dir / DOCS}. Fix: restore both upstream files.")
    # the fields (and their names) of the hub copy lm-eval's piqa task reads
    return [{"goal": r["goal"], "sol1": r["sol1"], "sol2": r["sol2"], "label": y}
            for r, y in zip(rows, labels)]


def _dataset(data_dir: Path, **_metadata):
    return cached_validation_split([data_dir / DOCS, data_dir / LABELS], partial(load_docs, data_dir))


def config(data_dir: Path) -> dict:
    return {
        "task": "piqa",
        "custom_dataset": partial(_dataset, data_dir),
        "output_type": "multiple_choice",
        "validation_split": "validation",  # upstream also has a train split; not available offline
        "doc_to_text": "Question: {{goal}}\nAnswer:",
        "doc_to_target": "label",
        "doc_to_choice": "{{[sol1, sol2]}}",
        "should_decontaminate": True,
        "doc_to_decontamination_query": "goal",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                        {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0},
    }
