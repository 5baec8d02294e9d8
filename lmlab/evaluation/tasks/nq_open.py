"""NQ-Open (open-domain QA), as lm-eval's ``nq_open`` task: "Answer these questions:\\n\\n" then
"Q: {question}?\\nA:", greedy generation until "\\n", "." or ","; the answer has surrounding
whitespace stripped, then exact match against any gold answer ignoring case, punctuation and the
articles a/an/the. Documents: upstream ``NQ-open.dev.jsonl``."""
from __future__ import annotations

from functools import partial
from pathlib import Path

from lmlab.evaluation.tasks.common import cached_validation_split, read_task_file

DOCS = "nq_open/NQ-open.dev.jsonl"


def load_docs(data_dir: Path) -> list[dict]:
    return [{"question": d["question"], "answer": list(d["answer"])}
            for d in read_task_file(data_dir / DOCS)]


def _dataset(data_dir: Path, **_metadata):
    return cached_validation_split([data_dir / DOCS], partial(load_docs, data_dir))


def config(data_dir: Path) -> dict:
    return {
        "task": "nq_open",
        "custom_dataset": partial(_dataset, data_dir),
        "output_type": "generate_until",
        # upstream draws few-shot examples from the train split, which is not available offline:
        # with no training split they come from this split, never the evaluated item
        "validation_split": "validation",
        "description": "Answer these questions:\n\n",
        "doc_to_text": "Q: {{question}}?\nA:",
        "doc_to_target": "{{answer}}",  # renders the list; lm-eval reads it back as all gold answers
        "fewshot_delimiter": "\n",
        "target_delimiter": " ",
        "generation_kwargs": {"until": ["\n", ".", ","], "do_sample": False, "temperature": 0.0},
        "filter_list": [{"name": "remove_whitespace",
                         "filter": [{"function": "remove_whitespace"}, {"function": "take_first"}]}],
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True,
                         "ignore_case": True, "ignore_punctuation": True,
                         "regexes_to_ignore": ["\\b(?:The |the |An |A |The |a |an )"]}],
        "metadata": {"version": 4.0},
    }
