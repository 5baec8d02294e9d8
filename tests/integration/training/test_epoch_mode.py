"""Epoch mode (the context-vector reference run): per-epoch validation, best/final, early stopping,
exact resume with dropout, and no deprecated AMP API."""
from __future__ import annotations

import warnings

import pytest

from helpers import CONFIGS, TINY_CONTEXT_VECTOR, assert_same_run
from lmlab.cli import main
from lmlab.rundir import read_jsonl

EPOCH_RUN = [*TINY_CONTEXT_VECTOR, "model.dropout=0.1", "logging.every=5", "checkpoint.every=7",
             "checkpoint.keep=1"]


def train(*args) -> int:
    return main(["train", str(CONFIGS / "newllm_wikitext2_baseline.yaml"), *EPOCH_RUN, *args])


def test_epochs_validate_each_epoch_and_keep_best_and_final(tmp_path, wikitext_dir):
    run = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # e.g. torch.cuda.amp deprecations
        assert train(f"data.path={wikitext_dir}", "epochs=3", f"dump_dir={run}") == 0
    metrics = read_jsonl(run / "metrics.jsonl")
    val = [m for m in metrics if "val/loss" in m]
    assert [m["epoch"] for m in val] == [1, 2, 3]
    assert {"val/ppl", "val/acc", "val/bpb"} <= set(val[0]) and val[-1]["val/loss"] < val[0]["val/loss"]
    assert all("epoch" in m for m in metrics)
    for name in ("best", "final"):
        assert (run / "checkpoints" / name / "model.safetensors").is_file()


def test_early_stopping_stops_and_a_rerun_does_not_continue(tmp_path, wikitext_dir, capsys):
    run = tmp_path / "run"
    # min_delta so large that no epoch counts as an improvement after the first
    args = [f"data.path={wikitext_dir}", "epochs=10", "training.patience=2",
            "training.min_delta=100.0", f"dump_dir={run}"]
    assert train(*args) == 0
    out = capsys.readouterr().out
    assert "early stopping" in out and "stopped early after 24 steps" in out  # 8 steps/epoch x 3
    assert train(*args) == 0
    assert "already finished" in capsys.readouterr().out


def test_epoch_mode_resume_mid_epoch_equals_uninterrupted(tmp_path, wikitext_dir):
    common = [f"data.path={wikitext_dir}", "epochs=2"]
    straight, resumed = tmp_path / "a", tmp_path / "b"
    assert train(*common, f"dump_dir={straight}") == 0
    assert train(*common, f"dump_dir={resumed}", "training.stop_at=7") == 0  # mid-epoch (8/epoch)
    assert train(*common, f"dump_dir={resumed}") == 0
    assert_same_run(straight, resumed)


def test_lr_scaling_is_written_to_the_resolved_config(tmp_path, wikitext_dir):
    import yaml
    run = tmp_path / "run"
    assert train(f"data.path={wikitext_dir}", "epochs=1", "optim.lr_scaling=sqrt", "optim.base_lr=1e-4",
                 "optim.base_batch_size=4", f"dump_dir={run}") == 0
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["optim"]["lr"] == pytest.approx(2e-4)  # 1e-4 * sqrt(16 / 4)
    assert read_jsonl(run / "metrics.jsonl")[0]["lr"] == pytest.approx(2e-4)
