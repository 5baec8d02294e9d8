"""``lmlab eval``, ``lmlab generate`` and ``eval.every`` end to end on tiny real runs."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from helpers import CONFIGS, SHARED_DATA, TINY_TRANSFORMER, data_overrides, write_piqa
from lmlab.cli import main
from lmlab.evaluation.generation import generate
from lmlab.reports.status import read_events, run_status
from lmlab.reports.report import write_report

TINY = [*TINY_TRANSFORMER, "data.seq_len=64", "steps=6", "checkpoint.every=3", "eval.validation.every=3"]


def train(run: Path, root: Path, *extra: str) -> int:
    return main(["train", str(CONFIGS / "debug.yaml"), *TINY, *data_overrides(root), f"dump_dir={run}", *extra])


@pytest.fixture(scope="module")
def trained(tmp_path_factory, request) -> Path:
    jsonl_root = request.getfixturevalue("jsonl_root_module")
    run = tmp_path_factory.mktemp("eval_cmd") / "run"
    assert train(run, jsonl_root) == 0
    return run


@pytest.fixture(scope="module")
def jsonl_root_module(tmp_path_factory) -> Path:
    from helpers import make_jsonl_root

    return make_jsonl_root(tmp_path_factory.mktemp("jsonl"))


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="needs ../shared/data (piqa, hellaswag, nq_open)")
def test_eval_command_runs_the_three_offline_tasks_through_simple_evaluate(trained, monkeypatch, capsys):
    import lm_eval

    calls = []
    real = lm_eval.simple_evaluate
    monkeypatch.setattr(lm_eval, "simple_evaluate", lambda **kw: calls.append(kw["tasks"]) or real(**kw))
    code = main(["eval", str(trained), "eval.tasks=[piqa,hellaswag,nq_open]", "eval.limit=4",
                 f"eval.data_dir={SHARED_DATA}", "--quiet"])
    assert code == 0 and len(calls) == 3
    out = capsys.readouterr().out
    assert "validation" in out and "exact_match" in out
    results = json.loads((trained / "checkpoints" / "final" / "eval_results.json").read_text())
    got = {(r["task"], r["metric"]): r for r in results["results"]}
    assert {("piqa", "acc"), ("hellaswag", "acc_norm"), ("nq_open", "exact_match"), ("validation", "loss")} <= set(got)
    assert got[("piqa", "acc")]["n"] == 4 and 0.0 <= got[("piqa", "acc")]["value"] <= 1.0
    lines = [json.loads(x) for x in (trained / "metrics.eval.jsonl").read_text().splitlines()]
    assert {line["task"] for line in lines} == {"validation", "piqa", "hellaswag", "nq_open"}
    assert all(line["step"] == 6 for line in lines)
    evals = [e for e in read_events(trained) if e.get("phase") == "eval" and e["event"] == "phase_end"]
    assert evals[-1]["status"] == "ok"
    assert run_status(trained)["status"] == "finished"  # evaluating afterwards does not change it


def test_eval_command_refuses_unknown_task_before_loading(trained, capsys):
    assert main(["eval", str(trained), "eval.tasks=[pica]"]) == 2
    err = capsys.readouterr().err
    assert "eval.tasks" in err and "Did you mean 'piqa'" in err and "Traceback" not in err


def test_generate_streams_the_same_text_as_generate(trained, capsys, load):
    args = ["generate", str(trained), "--prompt", "the cat", "--max-tokens", "12", "--seed", "3"]
    assert main(args) == 0
    greedy = capsys.readouterr().out
    loaded = load(trained)
    assert greedy == "the cat" + generate(loaded.model, loaded.tokenizer, ["the cat"], 12)[0] + "\n"
    assert main([*args, "--temperature", "0.9", "--top-p", "0.8"]) == 0
    sampled = capsys.readouterr().out
    assert main([*args, "--temperature", "0.9", "--top-p", "0.8"]) == 0
    assert capsys.readouterr().out == sampled  # same seed, same text


def test_failing_evaluation_during_training_is_recorded_and_training_finishes(tmp_path, jsonl_root,
                                                                              monkeypatch, capsys):
    import lmlab.apps.train

    data_dir = write_piqa(tmp_path / "evaldata")
    real_check = lmlab.apps.train.load_and_check

    def check_then_delete(*args, **kwargs):  # the task file disappears after preflight passed
        cfg = real_check(*args, **kwargs)
        (data_dir / "piqa" / "valid-labels.lst").unlink()
        return cfg

    monkeypatch.setattr(lmlab.apps.train, "load_and_check", check_then_delete)  # the name train uses
    run = tmp_path / "run"
    code = train(run, jsonl_root, "eval.every=3", "eval.tasks=[piqa]", f"eval.data_dir={data_dir}",
                 "checkpoint.keep=0")
    out = capsys.readouterr().out
    assert code == 0
    assert "evaluation at step 3 failed" in out and "2 evaluation(s) failed, at step(s) 3, 6" in out
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == ["0000000003", "0000000006", "final"]
    failed = [e for e in read_events(run) if e.get("phase") == "eval" and e["event"] == "phase_end"]
    assert [e["status"] for e in failed] == ["failed", "failed"]
    exc = failed[0]["exception"]
    assert exc["type"] == "ConfigError" and "valid-labels.lst" in exc["message"]  # re-checked at eval time
    assert (run / exc["traceback_file"]).is_file()
    end = read_events(run)[-1]
    assert end["event"] == "run_end" and end["status"] == "finished" and len(end["failed_evals"]) == 2
    report = write_report(run).read_text()
    assert "2 evaluation(s) failed" in report and "ConfigError" in report
    assert exc["where"] in report and f"lmlab eval {run}" in report


def test_nonfinite_run_report_names_phase_exception_location_and_fix(tmp_path, jsonl_root, capsys):
    run = tmp_path / "run"
    code = train(run, jsonl_root, "optim.lr=1e30", "optim.warmup=0", "optim.clip=0", "checkpoint.every=1")
    assert code == 2
    status = run_status(run)
    assert (status["status"], status["phase"]) == ("failed", "train")
    where = status["exception"]["where"]
    assert where.startswith("lmlab/training/")  # the training line that raised, not torch
    report = write_report(run).read_text()
    assert "`train`" in report and "LmlabError" in report and where in report
    assert "optim.lr" in report and "diverged" in report
    shutil.rmtree(run)
