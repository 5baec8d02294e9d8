"""``lmlab sweep --slurm`` under a real one-node SLURM (tests/system/slurm_cluster.py): a 4-trial
array with ``%2`` runs to completion, never more than 2 tasks at once, and the time-limit warning
(USR1 to one task's batch shell) checkpoints that trial, requeues that task only, and the requeued
task resumes it to the end. Runs only with ``LMLAB_REAL_SLURM=1`` (root), like the other real-SLURM
tests; about 2-3 minutes (SLURM holds a requeued task ``slurm_cluster.CRED_EXPIRE_S`` seconds)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import CONFIGS, REPO
from lmlab import rundir, sweepdir
from system.slurm_cluster import SlurmCluster, running_cluster

pytestmark = [pytest.mark.slurm, pytest.mark.skipif(
    os.environ.get("LMLAB_REAL_SLURM") != "1", reason="a real SLURM cluster: set LMLAB_REAL_SLURM=1 (root)")]

STEPS = 300
SPEC = f"""
name: array
base: {CONFIGS / 'quickstart.yaml'}
overrides: {{device: cpu, steps: {STEPS}, model.n_layers: 1, data.batch_size: 4, data.seq_len: 32,
            optim.warmup: 5, logging.every: 10, checkpoint.every: 1000, eval.validation.every: 100,
            eval.validation.max_steps: 1, logging.progress_bar: false}}
grid: {{optim.lr: [1.0e-3, 3.0e-3], model.dim: [32, 64]}}
"""
DONE = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    yield from running_cluster(tmp_path_factory.mktemp("slurm"))


def tasks(cluster: SlurmCluster, array: str) -> dict[str, tuple[str, str]]:
    """{task id (ARRAY_i): (state, the task's own job id)} of the array's tasks SLURM still lists,
    one per line (-r)."""
    out = cluster.run("squeue", "--noheader", "-r", "-j", array, "--format=%i|%T|%A", check=False).stdout
    rows = [line.strip().split("|") for line in out.splitlines() if line.count("|") == 2]
    return {task: (state, job) for task, state, job in rows}


def text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def logs(trial: Path) -> str:
    return "".join(text(p) for p in sorted(trial.glob("slurm-*.out")))


def test_a_4_trial_array_runs_2_at_a_time_and_a_warned_task_requeues_and_resumes(cluster, tmp_path):
    spec = tmp_path / "array.yaml"
    spec.write_text(SPEC)
    sweep = tmp_path / "sweep"
    env = {k: v for k, v in cluster.env.items() if not k.startswith("PYTEST")}
    out = subprocess.run([sys.executable, "-m", "lmlab", "sweep", str(spec), "--out", str(sweep), "--slurm",
                          "--gpus-per-trial", "0", "--parallel", "2"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    array = re.search(r"submitted array job (\d+)", out.stdout).group(1)
    trials = {str(i): (sweep / sweepdir.TASKS_DIR / str(i)).resolve() for i in range(4)}

    # one running task gets SLURM's time-limit warning once it has trained a little
    warned, most, deadline = None, 0, time.monotonic() + 300
    while warned is None and time.monotonic() < deadline:
        states = tasks(cluster, array)
        running = [t for t, (s, _) in states.items() if s == "RUNNING"]
        most = max(most, len(running))
        for task in running:
            if re.search(r"^step +[4-9]\d/", logs(trials[task.split("_")[1]]), re.MULTILINE):
                # The task stops and requeues within a second, and scancel keeps retrying ("Job can
                # not be altered now, try again later") for up to a minute: a late retry would warn
                # the requeued task again. Ten seconds are enough for the one signal we mean.
                cluster.run("timeout", "10", "scancel", "--signal=USR1", "--batch", states[task][1], check=False)
                warned = task
                break
        time.sleep(0.5)
    assert warned, f"no task reached step 40: {tasks(cluster, array)}"
    trial = trials[warned.split("_")[1]]

    deadline = time.monotonic() + 900
    while tasks(cluster, array) and time.monotonic() < deadline:
        most = max(most, sum(s == "RUNNING" for s, _ in tasks(cluster, array).values()))
        time.sleep(1)
    assert not tasks(cluster, array), tasks(cluster, array)
    assert most <= 2  # %2
    for i, folder in trials.items():
        log = logs(folder)
        assert f"finished after {STEPS} steps" in log, (i, log[-3000:])
        steps = [r["step"] for r in rundir.read_jsonl(folder / rundir.METRICS_FILE) if "loss" in r]
        assert steps == list(range(10, STEPS + 1, 10)), i  # each step once: nothing trained twice
        assert "Traceback" not in log
    log = logs(trial)
    saved = re.findall(r"saved a checkpoint at step (\d+)", log)
    assert "requeueing job" in log and saved
    assert f"resuming {trial} from checkpoint {rundir.step_name(int(saved[0]))}" in log
    assert rundir.read_json(trial / rundir.PROVENANCE_FILE)["slurm"]["restart_count"] == 1
    listing = subprocess.run([sys.executable, "-m", "lmlab", "runs", str(sweep)], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=120).stdout
    assert listing.count(f"{STEPS}/{STEPS} steps") == 4, listing
