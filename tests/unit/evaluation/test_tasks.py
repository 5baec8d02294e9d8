"""Offline piqa / hellaswag / nq_open: same prompts and metrics as lm-eval's, run end to end."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import lm_eval
import pytest
from lm_eval.tasks._yaml_loader import load_yaml

from helpers import SHARED_DATA
from lmlab.config import RunConfig
from lmlab.errors import ConfigError
from lmlab.evaluation import tasks as offline
from lmlab.evaluation.config import EvalConfig, check
from lmlab.evaluation.loading import LoadedRun
from lmlab.evaluation.runner import run_evaluation
from lmlab.evaluation.tasks import hellaswag

UPSTREAM = Path(lm_eval.__file__).parent / "tasks"
needs_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"{SHARED_DATA} is missing")
SAME_KEYS = ("output_type", "doc_to_text", "doc_to_target", "doc_to_choice", "description",
             "fewshot_delimiter", "target_delimiter", "generation_kwargs", "filter_list",
             "metric_list", "should_decontaminate", "doc_to_decontamination_query", "metadata")


@pytest.mark.parametrize("name", offline.KNOWN_TASKS)
def test_prompts_and_metrics_match_upstream(name, tmp_path):
    upstream = load_yaml(UPSTREAM / name / f"{name}.yaml", resolve_func=False)
    ours = offline.task_config(name, tmp_path)
    for key in SAME_KEYS:
        if key in upstream or key in ours:
            assert ours.get(key) == upstream.get(key), key


def test_hellaswag_preprocessing_matches_upstream():
    spec = importlib.util.spec_from_file_location("upstream_hellaswag", UPSTREAM / "hellaswag" / "utils.py")
    upstream = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(upstream)
    samples = ["Roof shingle removal: A man is sitting on a roof. he", "  x [title] How to  y [step] z ",
               "[header] Making tea [title] Boil water.", "a  b [sub] c"]
    for text in samples:
        assert hellaswag.clean(text) == upstream.preprocess(text)
    doc = {"activity_label": "Cooking", "ctx_a": "She [step] stirs.", "ctx_b": "then she",
           "endings": [" adds salt [title] Done", "leaves."], "label": "1"}
    mine = hellaswag.process_doc(doc)
    assert mine["query"] == upstream.preprocess("Cooking: She [step] stirs. Then she")
    assert mine["choices"] == [upstream.preprocess(e) for e in doc["endings"]] and mine["gold"] == 1


def test_check_names_unknown_tasks_and_missing_files(tmp_path, monkeypatch):
    problems = check(EvalConfig(tasks=["hellaswg", "piqa"], data_dir=str(tmp_path / "nowhere")))
    assert any("'hellaswg'" in p.message and "Did you mean 'hellaswag'" in p.message for p in problems)
    assert any(p.key == "eval.data_dir" and "not a directory" in p.message for p in problems)
    (tmp_path / "piqa").mkdir()
    (tmp_path / "piqa" / "valid.jsonl").write_text("{}\n")
    problems = check(EvalConfig(tasks=["piqa", "nq_open"], data_dir=str(tmp_path)))
    messages = " ".join(p.message for p in problems)
    assert "valid-labels.lst" in messages and "NQ-open.dev.jsonl" in messages
    assert "valid.jsonl," not in messages  # the file that is there is not reported
    assert check(EvalConfig(limit=0, batch_size=0))[0].key == "eval.limit"
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")  # no data_dir: the hub must be usable
    hub = check(EvalConfig(tasks=list(offline.KNOWN_TASKS)))
    assert [p.key for p in hub] == ["eval.data_dir"] and "HF_DATASETS_OFFLINE" in hub[0].message
    assert "../shared/data" in hub[0].fix


def test_run_evaluation_refuses_bad_settings(transformer, byte_tok):
    loaded = LoadedRun(transformer, byte_tok, RunConfig(), Path("."), Path("."))
    with pytest.raises(ConfigError, match="unknown task 'pica'"):
        run_evaluation(loaded, EvalConfig(tasks=["pica"]), validation=False)


@needs_data
def test_offline_tasks_through_simple_evaluate(transformer, byte_tok):
    loaded = LoadedRun(transformer, byte_tok, RunConfig(), Path("."), Path("."))
    cfg = EvalConfig(tasks=list(offline.KNOWN_TASKS), limit=8, data_dir=str(SHARED_DATA),
                        batch_size=16, max_gen_toks=8)
    rows = run_evaluation(loaded, cfg, validation=False, progress=False)
    got = {(r["task"], r["metric"]): r for r in rows}
    assert set(got) == {("piqa", "acc"), ("piqa", "acc_norm"), ("hellaswag", "acc"),
                        ("hellaswag", "acc_norm"), ("nq_open", "exact_match")}
    for row in rows:
        assert 0.0 <= row["value"] <= 1.0 and row["n"] == 8 and row["num_fewshot"] == 0
        assert row["seconds"] > 0 and row["stderr"] is not None and "fewshot_source" not in row
    assert got[("nq_open", "exact_match")]["filter"] == "remove_whitespace"


@needs_data
def test_nq_open_few_shot_from_dev_excluding_the_item(byte_context_vector, byte_tok):
    loaded = LoadedRun(byte_context_vector, byte_tok, RunConfig(), Path("."), Path("."))
    cfg = EvalConfig(tasks=["nq_open"], num_fewshot=2, limit=3, data_dir=str(SHARED_DATA),
                        max_gen_toks=4)
    row, = run_evaluation(loaded, cfg, validation=False, progress=False)
    assert row["num_fewshot"] == 2 and row["fewshot_source"] == "dev (excluding the item)"
    task, = offline.build_tasks(["nq_open"], SHARED_DATA)
    task.set_config("num_fewshot", 5)
    task.set_fewshot_seed(1234)
    task.build_all_requests(limit=4)
    for inst in task.instances:
        question = inst.doc["question"]
        prompt = inst.args[0]
        assert prompt.startswith("Answer these questions:\n\nQ: ") and prompt.endswith(f"Q: {question}?\nA:")
        assert prompt.count("\nA: ") == 5 and prompt.count(f"Q: {question}?") == 1
