"""The training loop end to end on tiny configs: runs, resumes exactly, refuses bad configs early."""
from __future__ import annotations

import json

from helpers import CONFIGS, TINY_TRANSFORMER, data_overrides, same_weights, untimed_metrics
from lmlab.cli import main
from lmlab.rundir import read_jsonl

def train(*args) -> int:
    return main(["train", str(CONFIGS / "debug.yaml"), *TINY_TRANSFORMER, *args])


def test_debug_config_trains_on_cpu_and_writes_a_complete_run_dir(tmp_path, jsonl_root, capsys):
    run = tmp_path / "run"
    assert train(*data_overrides(jsonl_root), "steps=20", "checkpoint.every=10",
                 "eval.validation.every=10", f"dump_dir={run}") == 0
    for name in ("config.yaml", "provenance.json", "metrics.jsonl", "tokenizer.json"):
        assert (run / name).is_file(), name
    for name in ("model.safetensors", "optimizer.pt", "train_state.json"):
        assert (run / "checkpoints" / "0000000020" / name).is_file()
    assert not (run / "checkpoints" / "0000000010").exists()  # keep: 1
    assert (run / "checkpoints" / "final" / "model.safetensors").is_file()
    metrics = read_jsonl(run / "metrics.jsonl")
    train_lines = [m for m in metrics if "loss" in m]
    assert [m["step"] for m in train_lines] == list(range(1, 21))
    assert {"loss", "grad_norm", "lr", "tokens_per_s", "flops_per_s", "mfu", "data_time_frac",
            "mem_peak_gib"} <= set(train_lines[0])
    assert train_lines[-1]["loss"] < train_lines[0]["loss"]
    val = [m for m in metrics if "val/loss" in m]
    assert [m["step"] for m in val] == [10, 20] and {"val/ppl", "val/bpb", "val/acc"} <= set(val[0])
    provenance = json.loads((run / "provenance.json").read_text())
    assert {"git", "versions", "machine", "command"} <= set(provenance)
    assert "step     20/20 | loss" in capsys.readouterr().out


def test_resume_equals_uninterrupted_run(tmp_path, jsonl_root):
    common = [*data_overrides(jsonl_root), "steps=20", "checkpoint.every=5", "checkpoint.keep=2",
              "eval.validation.every=10", "optim.warmup=3"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert train(*common, f"dump_dir={straight}") == 0
    assert train(*common, f"dump_dir={resumed}", "training.stop_at=10") == 0
    assert (resumed / "checkpoints" / "0000000010").is_dir()
    assert not (resumed / "checkpoints" / "0000000015").exists()
    assert train(*common, f"dump_dir={resumed}") == 0  # same command without stop_at: resumes

    want, got = untimed_metrics(straight), untimed_metrics(resumed)
    assert got == want  # steps 1-20 incl. validation, exactly (steps 11-20 came from the resume)
    assert [m["step"] for m in got if "loss" in m][10:] == list(range(11, 21))
    assert same_weights(straight, resumed)


def test_rerunning_a_finished_run_does_nothing(tmp_path, jsonl_root, capsys):
    args = [*data_overrides(jsonl_root), "steps=3", f"dump_dir={tmp_path / 'r'}"]
    assert train(*args) == 0
    before = (tmp_path / "r" / "metrics.jsonl").read_text()
    assert train(*args) == 0
    assert "already finished at step 3/3" in capsys.readouterr().out
    assert (tmp_path / "r" / "metrics.jsonl").read_text() == before


def test_quickstart_learns(tmp_path):
    run = tmp_path / "qs"
    # the quickstart's model, batch and optimizer; 12 steps validated every 4 on the same 2 batches
    # (its loss falls by about 0.79 from the first validation to the third; 60 steps validated every
    # 20 on 8 batches, by about 0.3)
    assert main(["train", str(CONFIGS / "quickstart.yaml"), f"dump_dir={run}", "steps=12",
                 "eval.validation.every=4", "eval.validation.max_steps=2", "optim.warmup=3"]) == 0
    val = [m["val/loss"] for m in read_jsonl(run / "metrics.jsonl") if "val/loss" in m]
    assert len(val) == 3 and val[-1] < val[0] - 0.2
