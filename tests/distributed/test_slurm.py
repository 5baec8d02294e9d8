"""``lmlab slurm``: the batch script it writes (and submits), run for real with stub srun/scontrol.

The end-to-end tests run ``bash submit.slurm`` as SLURM would (SLURM_* variables set, srun and
scontrol stubs first on PATH, gloo on CPU with 2 processes): a short run finishes; a longer one
gets the scheduler's USR1 warning, stops with a checkpoint, requeues itself, and the requeued job
(the same script again) resumes and finishes.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import torch

from helpers import CONFIGS, TINY_TRANSFORMER, data_overrides
from lmlab import rundir
from lmlab.apps.slurm import PACKAGE, PATH_KEYS
from lmlab.cli import main
from lmlab.config import describe_fields, load_config
from lmlab.reports.status import run_status

JOB_ID = "4242"


def slurm_args(root: Path, run: Path | str, *extra: str, nodes: int = 1, gpus: int = 2) -> list[str]:
    return ["slurm", str(CONFIGS / "debug.yaml"), *TINY_TRANSFORMER, *data_overrides(root),
            "data.batch_size=8", "eval.validation.enabled=false", "logging.progress_bar=false",
            f"dump_dir={run}", *extra, "--nodes", str(nodes), "--gpus-per-node", str(gpus)]


def sbatch_lines(script: Path) -> list[str]:
    return [line for line in script.read_text().splitlines() if line.startswith("#SBATCH")]


def bash_syntax(script: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)


# --------------------------------------------------------------------------- writing, submitting


def test_dry_run_writes_script_code_snapshot_and_resolved_config(tmp_path, jsonl_root, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # relative paths: resolved here, where preflight checked them
    relative_root = os.path.relpath(jsonl_root, tmp_path)
    args = slurm_args(Path(relative_root), "runs/job", "steps=6", "name=my run")
    assert main([*args, "--partition", "gpu", "--account", "lab", "--time", "1:00:00", "--dry-run"]) == 0
    run = tmp_path / "runs" / "job"
    script = run / rundir.SUBMIT_FILE
    out = capsys.readouterr().out
    assert str(script) in out and f"sbatch {script}" in out
    assert bash_syntax(script).returncode == 0, bash_syntax(script).stderr
    assert script.read_text().startswith("#!/bin/bash\n") and os.access(script, os.X_OK)
    assert sbatch_lines(script) == [
        "#SBATCH --job-name=my_run", "#SBATCH --nodes=1", "#SBATCH --ntasks-per-node=1",
        "#SBATCH --gpus-per-node=2", "#SBATCH --cpus-per-task=8", "#SBATCH --time=1:00:00",
        "#SBATCH --partition=gpu", "#SBATCH --account=lab", f"#SBATCH --output={run}/slurm-%j.out",
        "#SBATCH --signal=B:USR1@120", "#SBATCH --requeue", "#SBATCH --open-mode=append"]
    text = script.read_text()
    assert "--nproc_per_node=2" in text and '--rdzv_endpoint="$HEAD:29500"' in text
    assert "scontrol requeue" in text and "trap on_warning USR1" in text
    code = run / rundir.CODE_DIR
    assert (code / "lmlab" / "cli.py").read_text() == (PACKAGE / "cli.py").read_text()
    assert (code / "lmlab" / "apps" / "slurm.py").is_file() and not list(code.rglob("__pycache__"))
    cfg = load_config(code / rundir.CONFIG_FILE)  # what the job trains: paths absolute
    assert cfg.dump_dir == str(run) and cfg.data.root_dir == str(jsonl_root) and cfg.steps == 6
    assert not (run / rundir.CONFIG_FILE).exists()  # training writes its own config.yaml


def test_partition_and_account_only_when_given(tmp_path, jsonl_root):
    run = tmp_path / "run"
    assert main([*slurm_args(jsonl_root, run, gpus=1), "--cpus-per-task", "3", "--dry-run"]) == 0
    lines = sbatch_lines(run / rundir.SUBMIT_FILE)
    assert "#SBATCH --cpus-per-task=3" in lines and "#SBATCH --time=24:00:00" in lines
    assert not [line for line in lines if "--partition" in line or "--account" in line]


def test_every_path_setting_is_made_absolute():
    """A new path-valued config key must be added to PATH_KEYS (the job starts elsewhere)."""
    paths = {key for key, default, _ in describe_fields() if key.endswith(("dir", "path"))}
    assert paths == set(PATH_KEYS)


def test_a_config_that_cannot_run_is_refused_and_nothing_written(tmp_path, jsonl_root, capsys):
    run = tmp_path / "run"
    # a global batch of 6 does not split over 2 nodes x 2 processes
    assert main([*slurm_args(jsonl_root, run, "data.batch_size=6", nodes=2), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "data.batch_size" in err and "4 processes" in err and "Traceback" not in err
    assert not run.exists()


def test_missing_sbatch_is_a_user_error(tmp_path, jsonl_root, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    run = tmp_path / "run"
    assert main(slurm_args(jsonl_root, run)) == 2
    assert "sbatch not found; use --dry-run to only write the script" in capsys.readouterr().err
    assert not run.exists()


def test_submits_with_sbatch_and_prints_the_job_id(tmp_path, jsonl_root, monkeypatch, capsys):
    bin_dir = stub(tmp_path / "bin", "sbatch", f'echo "$@" > {tmp_path}/sbatch.args\n'
                                               f'echo "Submitted batch job {JOB_ID}"')
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    run = tmp_path / "run"
    assert main(slurm_args(jsonl_root, run)) == 0
    out = capsys.readouterr().out
    script = run / rundir.SUBMIT_FILE
    assert f"submitted job {JOB_ID}: {script}" in out and f"slurm-{JOB_ID}.out" in out
    assert (tmp_path / "sbatch.args").read_text().split() == [str(script)]


def test_gpu_checks_are_left_to_the_nodes_on_a_machine_without_cuda(tmp_path, jsonl_root, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    run = tmp_path / "run"
    assert main([*slurm_args(jsonl_root, run, "device=cuda", "precision=fp16"), "--dry-run"]) == 0
    assert "no CUDA GPU" in capsys.readouterr().out
    assert load_config(run / rundir.CODE_DIR / rundir.CONFIG_FILE).device == "cuda"


# --------------------------------------------------------------------------- the job, end to end


def stub(bin_dir: Path, name: str, body: str) -> Path:
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / name
    path.write_text(f"#!/bin/bash\n{body}\n")
    path.chmod(0o755)
    return bin_dir


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def slurm_environment(tmp_path: Path) -> dict:
    """SLURM's variables for a one-node job, with stub srun (runs its command) and scontrol."""
    bin_dir = stub(tmp_path / "bin", "srun", 'while [[ $# -gt 0 && $1 == --* ]]; do shift; done\nexec "$@"')
    stub(bin_dir, "scontrol", 'if [ "$1 $2" = "show hostnames" ]; then echo localhost; fi\n'
                              f'if [ "$1" = requeue ]; then echo "$2" >> {tmp_path}/requeued; fi')
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update(PATH=f"{bin_dir}:{env['PATH']}", SLURM_JOB_ID=JOB_ID, SLURM_NNODES="1",
               SLURM_JOB_NODELIST="localhost", SLURM_CPUS_PER_TASK="2")
    return env


def start_job(script: Path, env: dict, log: Path) -> subprocess.Popen:
    with open(log, "a") as out:  # the job's output, as in slurm-<id>.out
        return subprocess.Popen(["bash", str(script)], env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float) -> int:
    try:
        return proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def train_lines(run: Path) -> list[dict]:
    return [r for r in rundir.read_jsonl(run / rundir.METRICS_FILE) if "loss" in r]


def write_script(tmp_path: Path, root: Path, run: Path, *extra: str) -> Path:
    assert main([*slurm_args(root, run, *extra), "--port", str(free_port()), "--dry-run"]) == 0
    return run / rundir.SUBMIT_FILE


@pytest.mark.slow
def test_the_script_trains_two_processes_to_the_end(tmp_path, jsonl_root):
    run = tmp_path / "run"
    script = write_script(tmp_path, jsonl_root, run, "steps=6")
    log = tmp_path / "job.out"
    code = finish(start_job(script, slurm_environment(tmp_path), log), timeout=120)
    assert code == 0, log.read_text()
    assert rundir.is_checkpoint(rundir.named_checkpoint(run, rundir.FINAL))
    assert [r["step"] for r in train_lines(run)] == [1, 2, 3, 4, 5, 6]
    assert rundir.read_json(run / rundir.PROVENANCE_FILE)["distributed"]["world_size"] == 2
    assert not (tmp_path / "requeued").exists()


@pytest.mark.slow
def test_the_preemption_warning_checkpoints_requeues_and_the_requeued_job_resumes(tmp_path, jsonl_root):
    run, steps = tmp_path / "run", 60
    script = write_script(tmp_path, jsonl_root, run, f"steps={steps}", "checkpoint.every=1000")
    env, log = slurm_environment(tmp_path), tmp_path / "job.out"
    proc = start_job(script, env, log)
    try:
        deadline = time.monotonic() + 90
        while len(train_lines(run)) < 3 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, log.read_text()
        proc.send_signal(signal.SIGUSR1)  # SLURM's --signal=B:USR1@120 reaches the batch script only
    finally:
        code = finish(proc, timeout=60)
    assert code == 0, log.read_text()
    saved = rundir.step_checkpoints(run)
    assert len(saved) == 1 and 3 <= int(saved[0].name) < steps
    assert run_status(run)["status"] == "preempted"
    assert (tmp_path / "requeued").read_text().split() == [JOB_ID]
    assert "requeueing job" in log.read_text()

    code = finish(start_job(script, env, log), timeout=120)  # the requeued job: the same script
    text = log.read_text()
    assert code == 0, text
    assert f"resuming {run} from checkpoint {saved[0].name}" in text
    assert rundir.read_train_state(rundir.named_checkpoint(run, rundir.FINAL))["step"] == steps
    assert [r["step"] for r in train_lines(run)] == list(range(1, steps + 1))
    assert run_status(run)["status"] == "finished" and not (run / rundir.PREEMPT_FILE).exists()
    assert (tmp_path / "requeued").read_text().split() == [JOB_ID]  # finished: not requeued again
