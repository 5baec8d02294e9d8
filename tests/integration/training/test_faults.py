"""Faults a long run meets: preemption signals and non-finite losses."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import torch
from safetensors.torch import load_file

from helpers import CONFIGS, REPO, TINY_TRANSFORMER, data_overrides, run_lmlab
from lmlab.reports.status import run_status


def tiny_args(root, run, *extra) -> list[str]:
    return ["train", str(CONFIGS / "debug.yaml"), *TINY_TRANSFORMER, *data_overrides(root),
            f"dump_dir={run}", *extra]


def wait_for_steps(metrics, n: int, proc, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.is_file() and sum(1 for line in metrics.read_text().splitlines() if '"loss"' in line) >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"training did not reach {n} steps")


def test_sigterm_saves_a_checkpoint_exits_0_and_resume_is_exact(tmp_path, jsonl_root):
    common = ["steps=60", "checkpoint.every=1000", "eval.validation.enabled=false"]
    straight = tmp_path / "straight"
    assert run_lmlab(*tiny_args(jsonl_root, straight, *common)).returncode == 0
    run = tmp_path / "preempted"
    proc = subprocess.Popen([sys.executable, "-m", "lmlab", *tiny_args(jsonl_root, run, *common)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_steps(run / "metrics.jsonl", 5, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "received SIGTERM: saved a checkpoint at step" in out and "resume with the same command" in out
    assert run_status(run)["status"] == "preempted"  # recorded in events.jsonl as such
    saved = [p.name for p in (run / "checkpoints").iterdir() if p.name.isdigit()]
    assert len(saved) == 1 and 5 <= int(saved[0]) < 60
    assert run_lmlab(*tiny_args(jsonl_root, run, *common)).returncode == 0
    a = load_file(str(straight / "checkpoints" / "final" / "model.safetensors"))
    b = load_file(str(run / "checkpoints" / "final" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_nonfinite_loss_stops_naming_step_and_last_good_checkpoint(tmp_path, jsonl_root):
    run = tmp_path / "run"
    # an absurd lr makes step 2's loss non-finite; step 1 is checkpointed first
    out = run_lmlab(*tiny_args(jsonl_root, run, "steps=10", "optim.lr=1e30", "optim.warmup=0",
                               "optim.clip=0", "checkpoint.every=1", "eval.validation.enabled=false"))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "non-finite" in out.stderr and "at step 2" in out.stderr
    assert "0000000001" in out.stderr and "skip_nonfinite_steps" in out.stderr
    state = json.loads((run / "checkpoints" / "0000000001" / "train_state.json").read_text())
    assert state["step"] == 1
    weights = load_file(str(run / "checkpoints" / "0000000001" / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_skip_nonfinite_steps_counts_skips_then_stops(tmp_path, jsonl_root):
    out = run_lmlab(*tiny_args(jsonl_root, tmp_path / "run", "steps=10", "optim.lr=1e30",
                               "optim.warmup=0", "optim.clip=0", "training.skip_nonfinite_steps=3",
                               "eval.validation.enabled=false"))
    assert out.returncode == 2
    assert out.stdout.count("step skipped") == 3 and "at step 5" in out.stderr
