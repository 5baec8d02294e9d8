"""HellaSwag (4 endings), as lm-eval's ``hellaswag`` task, including its document preprocessing:
the query is "{activity_label}: {ctx_a} {Ctx_b}", the choices are the endings, both cleaned of
WikiHow's bracketed markup; acc and acc_norm. Documents: upstream ``hellaswag_val.jsonl(.gz)``."""
from __future__ import annotations

import re
from functools import partial
from pathlib import Path

from lmlab.evaluation.tasks.common import cached_validation_split, read_task_file

DOCS = "hellaswag/hellaswag_val.jsonl.gz"
_BRACKETED = re.compile(r"\[.*?\]")


def clean(text: str) -> str:
    """WikiHow rows carry markup like "[title]" and "[step]": a title becomes a sentence end, any
    other bracketed tag is dropped, and the double space that leaves is closed."""
    text = text.strip().replace(" [title]", ". ")
    return _BRACKETED.sub("", text).replace("  ", " ")


def process_doc(doc: dict) -> dict:
    """Adds query / choices / gold exactly as lm-eval's hellaswag ``process_docs`` does."""
    context = f"{doc['ctx_a']} {doc['ctx_b'].capitalize()}"
    return {**doc, "query": clean(f"{doc['activity_label']}: {context}"),
            "choices": [clean(e) for e in doc["endings"]], "gold": int(doc["label"])}


def load_docs(data_dir: Path) -> list[dict]:
    # processed once at load time rather than through the task's process_docs, which lm-eval would
    # re-run over all 10,042 documents every time it asks for the split
    return [process_doc(d) for d in read_task_file(data_dir / DOCS)]


def _dataset(data_dir: Path, **_metadata):
    return cached_validation_split([data_dir / DOCS], partial(load_docs, data_dir))


def config(data_dir: Path) -> dict:
    return {
        "task": "hellaswag",
        "custom_dataset": partial(_dataset, data_dir),
        "output_type": "multiple_choice",
        "validation_split": "validation",
        "doc_to_text": "{{query}}",
        "doc_to_target": "{{label}}",
        "doc_to_choice": "choices",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                        {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0},
    }
