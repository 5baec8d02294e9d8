"""``lmlab eval``, ``lmlab generate`` and ``eval.every`` end to end on tiny real runs."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from helpers import CONFIGS, SHARED_DATA, TINY_TRANSFORMER, copy_run, data_overrides, write_piqa
from lmlab.cli import main
from lmlab.evaluation.generation import generate
from lmlab.reports.status import read_events, run_status
from lmlab.reports.report import write_report

TINY = [*TINY_TRANSFORMER, "data.seq_len=64", "steps=6", "checkpoint.every=3", "eval.validation.every=3"]


def train(run: Path, root: Path, *extra: str) -> int:
    return main(["train", str(CONFIGS / "debug.yaml"), *TINY, *data_overrides(root), f"dump_dir={run}", *extra])


@pytest.fixture(scope="module")
def trained(trained_run, tmp_path_factory) -> Path:
    """A copy of the session's tiny transformer run (6 steps, checkpoints 3 and 6): evaluating it
    writes its results into it."""
    return copy_run(trained_run("transformer"), tmp_path_factory.mktemp("eval_cmd") / "run")


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


# --------------------------------------------------------------------------- eval while the run trains


def _live_copy(trained: Path, tmp_path: Path) -> Path:
    """A copy of the trained run as it looks while it still trains: step checkpoints, no final/."""
    run = tmp_path / "live"
    shutil.copytree(trained, run)
    shutil.rmtree(run / "checkpoints" / "final")
    return run


def _save_and_prune(run: Path, step: int) -> None:
    """What the training process does: publish checkpoint ``step`` (here a copy of its newest), then
    retention (checkpoint.keep=1) renames and deletes the older step checkpoints."""
    from lmlab.rundir import STATE_FILE, checkpoints_root, latest_checkpoint, step_name
    from lmlab.training.checkpoint import prune_checkpoints

    tmp = checkpoints_root(run) / f".tmp-{step_name(step)}-1"
    shutil.copytree(latest_checkpoint(run), tmp)
    state = json.loads((tmp / STATE_FILE).read_text())
    (tmp / STATE_FILE).write_text(json.dumps({**state, "step": step}))
    os.replace(tmp, checkpoints_root(run) / step_name(step))
    prune_checkpoints(run, 1)


def _eval_lines(run: Path) -> list[dict]:
    path = run / "metrics.eval.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _eval_results(run: Path, step: int) -> dict:
    return json.loads((run / "evals" / f"{step:010d}" / "eval_results.json").read_text())


def test_eval_of_a_run_whose_checkpoint_is_pruned_before_it_is_read_takes_the_newest(
        trained, tmp_path, monkeypatch, capsys):
    import lmlab.apps.evaluate

    run = _live_copy(trained, tmp_path)
    real_resolve = lmlab.apps.evaluate.resolve_checkpoint

    def resolve_then_prune(path):  # training saves step 9 and prunes step 6 right after eval chose 6
        chosen = real_resolve(path)
        _save_and_prune(run, 9)
        return chosen

    monkeypatch.setattr(lmlab.apps.evaluate, "resolve_checkpoint", resolve_then_prune)
    before = _eval_lines(run)
    assert main(["eval", str(run), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "0000000006 was deleted by the run's checkpoint retention" in err and "0000000009" in err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["0000000009"]  # none re-created
    assert _eval_results(run, 9)["step"] == 9
    assert {r["step"] for r in _eval_lines(run)[len(before):]} == {9}


@pytest.mark.parametrize("when", ["reading_the_weights", "evaluating"])
def test_eval_of_a_checkpoint_pruned_mid_read_reads_it_whole_and_recreates_no_folder(
        trained, tmp_path, monkeypatch, capsys, when):
    import lmlab.apps.evaluate
    import lmlab.evaluation.loading as loading

    run = _live_copy(trained, tmp_path)
    chosen = run / "checkpoints" / "0000000006"
    module, name = (loading, "load_model_weights") if when == "reading_the_weights" else \
        (lmlab.apps.evaluate, "run_evaluation")
    real = getattr(module, name)

    def prune_then_go_on(*args, **kwargs):  # the folder is renamed and deleted meanwhile
        if chosen.exists():
            _save_and_prune(run, 9)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, prune_then_go_on)
    assert main(["eval", str(chosen), "--quiet"]) == 0
    assert "Traceback" not in capsys.readouterr().err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["0000000009"]  # none re-created
    assert _eval_results(run, 6)["step"] == 6


def test_eval_of_a_step_checkpoint_writes_beside_the_run_and_keeps_earlier_results(trained, tmp_path):
    from lmlab.evaluation.results import checkpoint_results

    run = _live_copy(trained, tmp_path)
    chosen = run / "checkpoints" / "0000000006"
    earlier = {"step": 6, "results": [{"task": "piqa", "metric": "acc", "value": 0.5}]}
    (chosen / "eval_results.json").write_text(json.dumps(earlier))  # by training's eval.every
    assert checkpoint_results(chosen, run) == earlier  # the former place is still read
    assert main(["eval", str(chosen), "--quiet"]) == 0
    assert json.loads((chosen / "eval_results.json").read_text()) == earlier  # untouched
    results = _eval_results(run, 6)
    assert {r["task"] for r in results["results"]} == {"piqa", "validation"}
    assert checkpoint_results(chosen, run) == results


def test_eval_of_a_named_checkpoint_deleted_before_it_is_read_says_so(trained, tmp_path, monkeypatch,
                                                                      capsys):
    import lmlab.apps.evaluate

    run = _live_copy(trained, tmp_path)
    real_resolve = lmlab.apps.evaluate.resolve_checkpoint

    def resolve_then_prune(path):
        chosen = real_resolve(path)
        _save_and_prune(run, 9)
        return chosen

    monkeypatch.setattr(lmlab.apps.evaluate, "resolve_checkpoint", resolve_then_prune)
    assert main(["eval", str(run / "checkpoints" / "0000000006"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "0000000006 was deleted before it could be read" in err
    assert f"Fix: pass the run directory ({run})" in err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["0000000009"]
    assert not (run / "evals").exists()


def test_eval_results_of_a_final_republished_meanwhile_go_by_step(trained, tmp_path, monkeypatch):
    import lmlab.apps.evaluate
    from lmlab.training.checkpoint import link_checkpoint

    run = tmp_path / "finished"
    shutil.copytree(trained, run)
    real_evaluation = lmlab.apps.evaluate.run_evaluation

    def evaluate_then_republish(*args, **kwargs):  # a resumed run finishes at step 9 meanwhile
        rows = real_evaluation(*args, **kwargs)
        _save_and_prune(run, 9)
        link_checkpoint(run, run / "checkpoints" / "0000000009", "final")
        return rows

    monkeypatch.setattr(lmlab.apps.evaluate, "run_evaluation", evaluate_then_republish)
    assert main(["eval", str(run), "--quiet"]) == 0
    assert not (run / "checkpoints" / "final" / "eval_results.json").exists()  # step 9's final
    assert _eval_results(run, 6)["step"] == 6
