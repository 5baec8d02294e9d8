"""Loading a real (tiny) training run for evaluation, validation through the runner, and result files."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from helpers import copy_run
from lmlab.errors import LmlabError
from lmlab.evaluation.config import EvalConfig
from lmlab.evaluation.results import write_results
from lmlab.evaluation.runner import run_evaluation
from lmlab.models.transformer import Transformer



@pytest.fixture(scope="module")
def run_dir(trained_run, tmp_path_factory) -> Path:
    """A copy of the session's tiny quickstart run (12 steps, checkpoints 6 and 12; context 32, one
    validation batch of 2): writing results writes into it."""
    return copy_run(trained_run("quickstart"), tmp_path_factory.mktemp("evalrun") / "run")


def test_run_dir_loads_final_checkpoint(run_dir, load):
    loaded = load(run_dir)
    assert isinstance(loaded.model, Transformer) and not loaded.model.training
    assert loaded.checkpoint_dir == run_dir / "checkpoints" / "final"
    assert loaded.step == 12 and loaded.run_dir == run_dir
    assert loaded.model.max_seq_len == 32 and loaded.tokenizer.vocab_size == 258
    step_dir = run_dir / "checkpoints" / "0000000012"
    same = load(step_dir)
    assert same.run_dir == run_dir and same.checkpoint_dir == step_dir
    tokens = torch.tensor([[256, 72, 105]])
    with torch.no_grad():
        assert torch.equal(loaded.model(tokens), same.model(tokens))


def test_newest_step_checkpoint_without_final(run_dir, tmp_path, load):
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    shutil.rmtree(copy / "checkpoints" / "final")
    assert load(copy).checkpoint_dir.name == "0000000012"


def test_clear_errors_for_missing_pieces(run_dir, tmp_path, load):
    with pytest.raises(LmlabError, match="does not exist"):
        load(tmp_path / "nope")
    with pytest.raises(LmlabError, match="neither a run directory"):
        load(tmp_path)
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    (copy / "tokenizer.json").unlink()
    with pytest.raises(LmlabError, match="tokenizer.json is missing"):
        load(copy)
    shutil.rmtree(copy / "checkpoints")
    (copy / "checkpoints").mkdir()
    with pytest.raises(LmlabError, match="no complete checkpoint"):
        load(copy)
    moved = tmp_path / "moved"  # a checkpoint copied out of its run: its config.yaml is not beside it
    shutil.copytree(run_dir / "checkpoints" / "final", moved / "a" / "final")
    with pytest.raises(LmlabError, match="config.yaml is missing"):
        load(moved / "a" / "final")


def test_validation_rows_and_written_results(run_dir, load):
    loaded = load(run_dir)
    rows = run_evaluation(loaded, EvalConfig(), validation=True, progress=False)
    metrics = {r["metric"]: r for r in rows}
    assert set(metrics) == {"loss", "ppl", "bpb", "acc"} and {r["task"] for r in rows} == {"validation"}
    assert metrics["loss"]["value"] > 0 and metrics["loss"]["n"] == 2 * 32
    saved_train = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert metrics["loss"]["value"] == pytest.approx(saved_train["val/loss"], rel=1e-5)
    path = write_results(rows, loaded.checkpoint_dir, run_dir, loaded.step)
    assert json.loads(path.read_text())["results"][0]["task"] == "validation"
    write_results(rows[:1], loaded.checkpoint_dir, run_dir, loaded.step)  # replaces, never duplicates
    assert len(json.loads(path.read_text())["results"]) == 4
    lines = [json.loads(x) for x in (run_dir / "metrics.eval.jsonl").read_text().splitlines()]
    assert len(lines) == 5 and lines[0]["step"] == 12
    assert set(lines[0]) >= {"step", "task", "metric", "value", "stderr", "n", "seconds"}
