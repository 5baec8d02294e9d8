"""``lmlab sweep`` for real: a 2 x 2 grid (learning rate x width) of tiny quickstart runs, 2 at a
time on this machine's cores. Each trial's metrics equal the same config trained alone with
``lmlab train``; a sweep killed with ``kill -9`` mid-way and run again finishes every trial, none
duplicated or restarted from zero, with the final weights of the uninterrupted sweep."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import CONFIGS, REPO, final_weights, untimed_metrics
from lmlab import rundir, sweepdir
from lmlab.cli import main
from lmlab.sweeps.runner import cpu_cores, lock_holder
from lmlab.sweeps.spec import load_spec
from lmlab.sweeps.trials import expand

pytestmark = pytest.mark.slow

STEPS = 60
SPEC = f"""
name: lr-width
base: {CONFIGS / 'quickstart.yaml'}
overrides:
  device: cpu
  steps: {STEPS}
  model.n_layers: 1
  data.batch_size: 4
  data.seq_len: 32
  optim.warmup: 5
  logging.every: 10
  checkpoint.every: 10
  eval.validation.every: 20
  eval.validation.max_steps: 1
grid:
  optim.lr: [1.0e-3, 3.0e-3]
  model.dim: [32, 64]
"""


def sweep_command(spec: Path, out: Path) -> list[str]:
    return ["sweep", str(spec), "--parallel", "2", "--out", str(out)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, Path]:
    """The spec, and the folder of its uninterrupted sweep."""
    root = tmp_path_factory.mktemp("sweep")
    spec = root / "lr-width.yaml"
    spec.write_text(SPEC)
    assert main(sweep_command(spec, root / "reference")) == 0  # the sweep here; its trials: processes
    return spec, root / "reference"


def test_a_parallel_grid_equals_its_runs_trained_alone(reference, tmp_path):
    spec_file, sweep = reference
    spec = load_spec(spec_file)
    trials = expand(spec)
    assert [t.name for t in trials] == ["lr=0.001_dim=32", "lr=0.001_dim=64", "lr=0.003_dim=32", "lr=0.003_dim=64"]
    rows = {r["name"]: r for r in sweepdir.read_trials(sweep)}
    assert all(rows[t.name]["status"] == "finished" and rows[t.name]["attempts"] == 1 for t in trials)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, cpu_cores() // 2))  # each trial's share, as the sweep gave it
    try:
        for t in trials:
            alone = tmp_path / t.name
            assert main(["train", spec.base, *t.overrides(spec), f"dump_dir={alone}"]) == 0
            assert len(untimed_metrics(alone)) == STEPS // 10 + STEPS // 20
            assert untimed_metrics(t.run_dir(sweep)) == untimed_metrics(alone), t.name
    finally:
        torch.set_num_threads(threads)
    # the trials differ, as their overrides say
    assert len({str(untimed_metrics(t.run_dir(sweep))[-1]) for t in trials}) == 4


def test_kill_9_mid_way_then_the_same_command_finishes_every_trial_exactly_once(reference, tmp_path):
    spec_file, ref = reference
    trials = expand(load_spec(spec_file))
    sweep = tmp_path / "killed"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    proc = subprocess.Popen([sys.executable, "-m", "lmlab", *sweep_command(spec_file, sweep)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline and \
            not any(rundir.step_checkpoints(t.run_dir(sweep)) for t in trials):
        time.sleep(0.02)
    assert proc.poll() is None, "the sweep ended before it could be killed mid-way"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    # its trials get SIGTERM from the kernel (the sweep died): each saves a checkpoint and ends
    deadline = time.monotonic() + 60
    while any(lock_holder(t.run_dir(sweep)) for t in trials) and time.monotonic() < deadline:
        time.sleep(0.1)
    saved = {t.name: rundir.step_checkpoints(t.run_dir(sweep)) for t in trials}
    interrupted = [n for n, s in saved.items() if s and rundir.read_train_state(s[-1]).get("step") != STEPS]
    assert interrupted, saved

    assert main(sweep_command(spec_file, sweep)) == 0  # the same command again
    rows = {r["name"]: r for r in sweepdir.read_trials(sweep)}
    for t in trials:
        run = t.run_dir(sweep)
        assert rows[t.name]["status"] == "finished"
        # every step trained once: each logged step appears once, and the weights are the same
        train_steps = [m["step"] for m in untimed_metrics(run) if "loss" in m]
        assert train_steps == list(range(10, STEPS + 1, 10)), t.name
        got, want = final_weights(run), final_weights(t.run_dir(ref))
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want), t.name
    for name in interrupted:  # resumed from its checkpoint, not from zero
        log = sweepdir.log_file(sweep, name).read_text()
        assert f"from checkpoint {saved[name][-1].name}" in log, log[-2000:]
        assert rows[name]["attempts"] == 2
