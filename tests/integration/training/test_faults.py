"""Faults a long run meets: non-finite losses, in-process (``lmlab.cli.main``: an exit code and what
it prints are all these need). Preemption signals need a real process: tests/system/training/test_faults.py."""
from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from helpers import tiny_args
from lmlab.cli import main

# an absurd lr makes step 2's loss non-finite
DIVERGING = ["steps=10", "optim.lr=1e30", "optim.warmup=0", "optim.clip=0", "eval.validation.enabled=false"]


def test_nonfinite_loss_stops_naming_step_and_last_good_checkpoint(tmp_path, jsonl_root, capsys):
    run = tmp_path / "run"
    code = main(tiny_args(jsonl_root, run, *DIVERGING, "checkpoint.every=1"))  # step 1 is checkpointed first
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "non-finite" in err and "at step 2" in err
    assert "0000000001" in err and "skip_nonfinite_steps" in err
    state = json.loads((run / "checkpoints" / "0000000001" / "train_state.json").read_text())
    assert state["step"] == 1
    weights = load_file(str(run / "checkpoints" / "0000000001" / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_skip_nonfinite_steps_counts_skips_then_stops(tmp_path, jsonl_root, capsys):
    code = main(tiny_args(jsonl_root, tmp_path / "run", *DIVERGING, "training.skip_nonfinite_steps=3"))
    out, err = capsys.readouterr()
    assert code == 2
    assert out.count("step skipped") == 3 and "at step 5" in err
