"""``lmlab slurm``: the batch script it writes (and submits), run for real with stub srun/scontrol.

The end-to-end tests run ``bash submit.slurm`` as SLURM would (SLURM_* variables set, srun and
scontrol stubs first on PATH, gloo on CPU with 2 processes): a short run finishes; a longer one
gets the scheduler's USR1 warning, stops with a checkpoint, requeues itself, and the requeued job
(the same script again) resumes and finishes; ``scancel``'s SIGTERM stops one with a checkpoint,
no torchrun traceback, status ``cancelled``. Stub sbatch / squeue / sinfo / scontrol stand for the
cluster's answers at submit time (queued runs, resubmission, node sizes). The same against a real
SLURM: tests/system/test_real_slurm.py.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import CONFIGS, TINY_TRANSFORMER, data_overrides
from lmlab import rundir, slurm_jobs
from lmlab.apps import slurm as slurm_app
from lmlab.apps.slurm import PACKAGE
from lmlab.config import PATH_KEYS, PREFIXED_PATH_KEYS, absolute_paths
from lmlab.cli import build_parser, main
from lmlab.config import describe_fields, load_config, load_config_collecting
from lmlab.errors import LmlabError
from lmlab.reports.runs import format_runs_table, list_runs
from lmlab.reports.status import run_status
from lmlab.runlog import EventLog, git_info, write_provenance

JOB_ID = "4242"


@pytest.fixture(autouse=True)
def no_cluster(tmp_path, monkeypatch):
    """No SLURM to ask unless a test puts stubs first on PATH: sinfo / squeue / scontrol answer
    "cannot contact the controller" at once (an installed client without a controller takes ~9 s)."""
    bin_dir = tmp_path / "no-cluster"
    for name in ("sinfo", "squeue", "scontrol"):
        stub(bin_dir, name, 'echo "cannot contact slurm controller" >&2; exit 1')
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    for name in ("SLURM_JOB_ID", "SLURM_RESTART_COUNT"):
        monkeypatch.delenv(name, raising=False)


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
    args = slurm_args(Path(relative_root), "runs/job", "steps=6", "name=my run", "device=auto")
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
    assert "--nproc_per_node=2" in text and '--rdzv_endpoint="$ENDPOINT"' in text
    assert "ENDPOINT=localhost:0" in text  # one node: torchrun picks a free port
    assert "scontrol requeue" in text and "trap on_warning USR1" in text
    code = run / rundir.CODE_DIR
    assert (code / "lmlab" / "cli.py").read_text() == (PACKAGE / "cli.py").read_text()
    assert (code / "lmlab" / "apps" / "slurm.py").is_file() and not list(code.rglob("__pycache__"))
    cfg = load_config(code / rundir.CONFIG_FILE)  # what the job trains: paths absolute
    assert cfg.dump_dir == str(run) and cfg.data.root_dir == str(jsonl_root) and cfg.steps == 6
    assert not (run / rundir.CONFIG_FILE).exists()  # training writes its own config.yaml


def test_partition_and_account_only_when_given(tmp_path, jsonl_root):
    run = tmp_path / "run"
    assert main([*slurm_args(jsonl_root, run, "device=auto", gpus=1), "--cpus-per-task", "3", "--dry-run"]) == 0
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


def write_script(tmp_path: Path, root: Path, run: Path, *extra: str, port: bool = True) -> Path:
    ports = ["--port", str(free_port())] if port else []  # without: torchrun picks one (one node)
    assert main([*slurm_args(root, run, *extra), *ports, "--dry-run"]) == 0
    return run / rundir.SUBMIT_FILE


@pytest.mark.slow
def test_the_script_trains_two_processes_to_the_end(tmp_path, jsonl_root):
    run = tmp_path / "run"
    script = write_script(tmp_path, jsonl_root, run, "steps=6", port=False)
    log = tmp_path / "job.out"
    code = finish(start_job(script, slurm_environment(tmp_path), log), timeout=120)
    assert code == 0, log.read_text()
    assert rundir.is_checkpoint(rundir.named_checkpoint(run, rundir.FINAL))
    assert [r["step"] for r in train_lines(run)] == [1, 2, 3, 4, 5, 6]
    provenance = rundir.read_json(run / rundir.PROVENANCE_FILE)
    assert provenance["distributed"]["world_size"] == 2
    assert provenance["slurm"] == {"job_id": JOB_ID, "restart_count": 0}
    assert provenance["git"]["sha"] == git_info()["sha"]  # the submitting checkout's, not None
    assert "Traceback" not in log.read_text()
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

    env["SLURM_RESTART_COUNT"] = "1"  # SLURM sets it in a requeued job
    code = finish(start_job(script, env, log), timeout=120)  # the requeued job: the same script
    text = log.read_text()
    assert code == 0, text
    assert f"resuming {run} from checkpoint {saved[0].name}" in text
    assert rundir.read_train_state(rundir.named_checkpoint(run, rundir.FINAL))["step"] == steps
    assert [r["step"] for r in train_lines(run)] == list(range(1, steps + 1))
    assert run_status(run)["status"] == "finished" and not (run / rundir.PREEMPT_FILE).exists()
    assert (tmp_path / "requeued").read_text().split() == [JOB_ID]  # finished: not requeued again
    assert rundir.read_json(run / rundir.PROVENANCE_FILE)["slurm"] == {"job_id": JOB_ID, "restart_count": 1}
    assert "Traceback" not in text


# --------------------------------------------------------------------------- CPU jobs, ports, CPUs


def test_a_cpu_job_requests_no_gpu(tmp_path, jsonl_root):
    """device=cpu: the G processes are CPU (gloo) processes and no GPU is requested (a CPU-only
    cluster refuses any --gpus-per-node line: "Invalid generic resource")."""
    run = tmp_path / "run"
    assert main([*slurm_args(jsonl_root, run, gpus=2), "--dry-run"]) == 0  # TINY_TRANSFORMER: device=cpu
    lines = sbatch_lines(run / rundir.SUBMIT_FILE)
    assert not [line for line in lines if "--gpus-per-node" in line]
    assert "#SBATCH --cpus-per-task=2" in lines  # one CPU per process
    assert "--nproc_per_node=2" in (run / rundir.SUBMIT_FILE).read_text()


def test_gpus_per_node_0_is_a_one_process_cpu_job(tmp_path, jsonl_root, capsys):
    run = tmp_path / "run"
    assert main([*slurm_args(jsonl_root, run, "device=auto", gpus=0), "--dry-run"]) == 0
    assert "a CPU job (device=cpu" in capsys.readouterr().out
    lines = sbatch_lines(run / rundir.SUBMIT_FILE)
    assert not [line for line in lines if "--gpus-per-node" in line] and "#SBATCH --cpus-per-task=1" in lines
    assert "--nproc_per_node=1" in (run / rundir.SUBMIT_FILE).read_text()
    assert load_config(run / rundir.CODE_DIR / rundir.CONFIG_FILE).device == "cpu"


@pytest.mark.parametrize("extra, gpus, message", [
    (["device=cuda"], 0, "device=cuda needs GPUs, and --gpus-per-node 0 requests none"),
    ([], -1, "--gpus-per-node must be >= 0, got -1"),
    ([], 2, "--port must be a TCP port (1-65535), got 70000"),
])
def test_impossible_shapes_are_refused_before_anything_is_written(tmp_path, jsonl_root, capsys, extra, gpus, message):
    run = tmp_path / "run"
    port = ["--port", "70000"] if "port" in message else []
    assert main([*slurm_args(jsonl_root, run, *extra, gpus=gpus), *port, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Fix:" in err and "Traceback" not in err
    assert not run.exists()


def test_the_rendezvous_port_is_per_job_unless_given(tmp_path, jsonl_root):
    """Two jobs on one node must not share a rendezvous: one node lets torchrun pick a free port,
    several nodes derive it from the job id; --port (even the old default 29500) fixes it."""
    run = tmp_path / "multi"
    assert main([*slurm_args(jsonl_root, run, nodes=2), "--dry-run"]) == 0
    script = (run / rundir.SUBMIT_FILE).read_text()
    endpoint = next(line for line in script.splitlines() if line.startswith("ENDPOINT="))
    ports = {job: subprocess.run(["bash", "-c", f"HEAD=node1; {endpoint}; echo $ENDPOINT"],
                                 env={"SLURM_JOB_ID": job, "PATH": os.environ["PATH"]},
                                 capture_output=True, text=True).stdout.strip() for job in ("4242", "4243")}
    assert ports == {"4242": "node1:24242", "4243": "node1:24243"}
    for port in ("29500", "31234"):
        run = tmp_path / f"fixed{port}"
        assert main([*slurm_args(jsonl_root, run), "--port", port, "--dry-run"]) == 0
        assert f'ENDPOINT="$HEAD:{port}"' in (run / rundir.SUBMIT_FILE).read_text()


def sinfo_stub(tmp_path: Path, monkeypatch, rows: str) -> None:
    bin_dir = stub(tmp_path / "cluster-bin", "sinfo", f"printf '{rows}'")
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")


def test_cpus_per_task_fits_the_largest_node(tmp_path, jsonl_root, monkeypatch, capsys):
    """The default (4 per GPU) is lowered to what the node has (else the job pends forever); a
    larger value given by hand is kept, with a warning and the fix."""
    sinfo_stub(tmp_path, monkeypatch, "2|debug*\\n64|big\\n")
    run = tmp_path / "default"
    assert main([*slurm_args(jsonl_root, run, "device=auto", gpus=2), "--dry-run"]) == 0
    assert "#SBATCH --cpus-per-task=2" in sbatch_lines(run / rundir.SUBMIT_FILE)
    assert "the default 8 is more than the 2 CPUs of the largest node" in capsys.readouterr().out
    run = tmp_path / "big"
    assert main([*slurm_args(jsonl_root, run, "device=auto", gpus=2), "--partition", "big", "--dry-run"]) == 0
    assert "#SBATCH --cpus-per-task=8" in sbatch_lines(run / rundir.SUBMIT_FILE)
    run = tmp_path / "given"
    assert main([*slurm_args(jsonl_root, run, gpus=2), "--cpus-per-task", "16", "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert "#SBATCH --cpus-per-task=16" in sbatch_lines(run / rundir.SUBMIT_FILE)
    assert "--cpus-per-task 16 is more than the 2 CPUs" in err and "fix: pass --cpus-per-task 2" in err


def test_preflight_warnings_are_shown_at_submit(tmp_path, jsonl_root, capsys):
    run = tmp_path / "run"
    assert main([*slurm_args(jsonl_root, run, "steps=6", "optim.warmup=100"), "--dry-run"]) == 0
    assert "lmlab slurm: warning: optim.warmup" in capsys.readouterr().err


def test_relative_paths_inside_values_are_made_absolute(tmp_path, monkeypatch):
    """model.init_from=hf:DIR: relative to where lmlab slurm ran, not to the job's folder."""
    monkeypatch.chdir(tmp_path)
    cfg, _ = load_config_collecting(CONFIGS / "debug.yaml", ["model.init_from=hf:exports/llama",
                                                             "data.root_dir=data", "dump_dir=runs/x"])
    cfg = absolute_paths(cfg)
    assert cfg.model.init_from == f"hf:{tmp_path}/exports/llama"
    assert cfg.data.root_dir == str(tmp_path / "data") and cfg.dump_dir == str(tmp_path / "runs" / "x")


def test_every_path_inside_a_value_is_made_absolute():
    """A setting whose help shows a path placeholder (hf:DIR) must be in PREFIXED_PATH_KEYS."""
    placeholders = {key for key, _, text in describe_fields() if "DIR" in text or "FILE" in text}
    assert placeholders == set(PREFIXED_PATH_KEYS)


# --------------------------------------------------------------------------- queued runs, resubmission


def cluster_stubs(tmp_path: Path, monkeypatch, squeue: str = "", job_state: str = "PENDING") -> Path:
    """sbatch (job JOB_ID), squeue (prints ``squeue``'s lines) and scontrol (``job_state``)."""
    bin_dir = stub(tmp_path / "cluster-bin", "sbatch", f'echo "Submitted batch job {JOB_ID}"')
    stub(bin_dir, "squeue", f"printf '{squeue}'")
    stub(bin_dir, "scontrol", f'echo "JobId={JOB_ID} JobName=x JobState={job_state} Reason=None"')
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return bin_dir


def test_a_queued_run_is_shown_queued_and_cannot_be_resubmitted(tmp_path, jsonl_root, monkeypatch, capsys):
    run = tmp_path / "runs" / "job"
    script = run / rundir.SUBMIT_FILE
    cluster_stubs(tmp_path, monkeypatch)
    assert main(slurm_args(jsonl_root, run, "steps=6")) == 0
    assert f"queued (job {JOB_ID})" in capsys.readouterr().out
    cluster_stubs(tmp_path, monkeypatch, squeue=f"{JOB_ID}|PENDING|{script}\\n")  # now in the queue
    assert [j["job_id"] for j in slurm_jobs.submissions(run)] == [JOB_ID]
    rows = list_runs(tmp_path / "runs")
    assert [(r["name"], r["status"], r["job_id"], r["planned"]) for r in rows] == [("job", "queued", JOB_ID, 6)]
    assert f"queued (job {JOB_ID})" in format_runs_table(rows)
    assert main(["report", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"queued (job {JOB_ID})" in out and "no report written" in out
    assert not (run / rundir.EVENTS_FILE).exists() and not list(run.glob("report*"))
    before = (run / rundir.CODE_DIR / rundir.CONFIG_FILE).read_text()
    assert main(slurm_args(jsonl_root, run, "steps=8")) == 2  # queued: code and config stay
    err = capsys.readouterr().err
    assert f"belongs to SLURM job {JOB_ID}, which is PENDING" in err and f"scancel {JOB_ID}" in err
    assert (run / rundir.CODE_DIR / rundir.CONFIG_FILE).read_text() == before


def test_a_job_submitted_by_hand_is_found_by_its_script(tmp_path, jsonl_root, monkeypatch, capsys):
    """`sbatch <run>/submit.slurm` (the resume hint) leaves no record: squeue still names the script."""
    run = tmp_path / "run"
    assert main([*slurm_args(jsonl_root, run), "--dry-run"]) == 0
    cluster_stubs(tmp_path, monkeypatch, squeue=f"77|RUNNING|{run / rundir.SUBMIT_FILE}\\n")
    assert main([*slurm_args(jsonl_root, run), "--dry-run"]) == 2
    assert "belongs to SLURM job 77, which is RUNNING" in capsys.readouterr().err


def test_a_job_that_left_the_queue_unstarted_is_cancelled_and_may_be_resubmitted(tmp_path, jsonl_root,
                                                                                monkeypatch, capsys):
    run = tmp_path / "run"
    cluster_stubs(tmp_path, monkeypatch, squeue="", job_state="CANCELLED")
    assert main(slurm_args(jsonl_root, run, "steps=6")) == 0
    status = run_status(run)
    assert (status["status"], status["job_id"], status["rule"]) == ("cancelled", JOB_ID, "slurm_not_started")
    assert main(slurm_args(jsonl_root, run, "steps=6")) == 0  # nothing runs it: a new job
    assert len(slurm_jobs.submissions(run)) == 2


def test_without_squeue_a_recorded_job_is_queued_and_resubmission_is_refused(tmp_path, jsonl_root,
                                                                               monkeypatch, capsys):
    run = tmp_path / "run"
    cluster_stubs(tmp_path, monkeypatch)
    assert main(slurm_args(jsonl_root, run)) == 0
    (tmp_path / "cluster-bin" / "squeue").unlink()  # e.g. a machine without the SLURM client
    assert run_status(run)["status"] == "queued"
    assert main([*slurm_args(jsonl_root, run), "--dry-run"]) == 2
    assert f"remove {run / slurm_jobs.JOBS_FILE}" in capsys.readouterr().err


def test_a_run_training_here_is_not_resubmitted(tmp_path, jsonl_root, capsys):
    run = tmp_path / "run"
    EventLog(run).run_start(command="lmlab train")  # this (live) process trains it
    assert main([*slurm_args(jsonl_root, run), "--dry-run"]) == 2
    assert "is training now" in capsys.readouterr().err and not (run / rundir.CODE_DIR).exists()


def test_report_on_a_live_run_records_nothing_in_its_event_log(tmp_path, jsonl_root):
    run = tmp_path / "run"
    EventLog(run).run_start(command="lmlab train")  # alive: this process
    before = (run / rundir.EVENTS_FILE).read_text()
    assert main(["report", str(run)]) == 0
    assert (run / rundir.EVENTS_FILE).read_text() == before


# --------------------------------------------------------------------------- provenance


def test_provenance_names_the_job_and_the_submitting_commit(tmp_path, jsonl_root, monkeypatch):
    run = tmp_path / "run"
    assert main([*slurm_args(jsonl_root, run), "--dry-run"]) == 0
    code = run / rundir.CODE_DIR
    source = rundir.read_json(code / slurm_jobs.SOURCE_FILE)
    assert source["git"] == git_info() and source["copied_from"] == str(PACKAGE)
    # the snapshot has no .git: its git_info is the checkout's it was copied from
    out = subprocess.run([sys.executable, "-c", "from lmlab.runlog import git_info; print(git_info())"],
                         cwd=code, env={**os.environ, "PYTHONPATH": str(code)}, capture_output=True,
                         text=True, timeout=60)
    assert repr(git_info()["sha"]) in out.stdout and "snapshot_of" in out.stdout
    monkeypatch.setenv("SLURM_JOB_ID", "99")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    assert write_provenance(run, ["train"], {})["slurm"] == {"job_id": "99", "restart_count": 2}
    start = EventLog(run).run_start(command="lmlab train")
    assert (start["slurm_job_id"], start["slurm_restart_count"]) == ("99", 2)


# --------------------------------------------------------------------------- scancel, end to end


def scancel_mid_run(script: Path, run: Path, tmp_path: Path, after_lines: int = 3) -> tuple[int, str]:
    """SLURM's scancel: slurmstepd writes "*** JOB N ON node CANCELLED AT ... ***" to the job's log,
    then SIGTERM reaches every process of the job (here: the script's process group)."""
    log = slurm_jobs.log_path(run, JOB_ID)
    proc = start_job(script, slurm_environment(tmp_path), log)
    try:
        deadline = time.monotonic() + 90
        while len(train_lines(run)) < after_lines and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, log.read_text()
        with open(log, "a") as out:
            out.write(f"slurmstepd-node: error: *** JOB {JOB_ID} ON node CANCELLED AT 2026-01-01T00:00:00 ***\n")
        for pid in [proc.pid, *descendants(proc.pid)]:  # as proctrack/linuxproc: the whole tree
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
    finally:
        code = finish(proc, timeout=60)
    return code, log.read_text()


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (torchrun starts its workers in sessions of their own)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        children = [p for p, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


@pytest.mark.slow
def test_scancel_stops_with_a_checkpoint_as_cancelled_without_a_torchrun_traceback(tmp_path, jsonl_root):
    run = tmp_path / "run"
    script = write_script(tmp_path, jsonl_root, run, "steps=400", "checkpoint.every=1000", port=False)
    code, text = scancel_mid_run(script, run, tmp_path)
    assert code == 0, text
    assert "Traceback" not in text and "SignalException" not in text
    assert f"SLURM stopped job {JOB_ID} (CANCELLED)" in text and f"Resume it with: sbatch {script}" in text
    saved = rundir.step_checkpoints(run)
    assert len(saved) == 1 and 3 <= int(saved[0].name) < 400
    status = run_status(run)
    assert (status["status"], status["job_id"]) == ("cancelled", JOB_ID)
    assert f"cancelled (job {JOB_ID})" in format_runs_table(list_runs(run))
    assert not (tmp_path / "requeued").exists()
    # the ranks' own hint: the batch script, not `lmlab train <run>/code/config.yaml`
    hint = next(line for line in text.splitlines() if line.startswith("received SIGTERM"))
    assert f"sbatch {script}" in hint, hint


def test_procs_per_node_sets_the_cpu_processes(tmp_path, jsonl_root):
    """``--procs-per-node P``: P CPU processes per node."""
    run = tmp_path / "run"
    argv = [*slurm_args(jsonl_root, run, gpus=0), "--procs-per-node", "2", "--dry-run"]
    args = build_parser().parse_args(argv)
    args.argv = argv
    assert slurm_app.run(args) == 0
    assert "--nproc_per_node=2" in (run / rundir.SUBMIT_FILE).read_text()
    assert "#SBATCH --cpus-per-task=2" in sbatch_lines(run / rundir.SUBMIT_FILE)
    args.procs_per_node, args.argv = 2, [*slurm_args(jsonl_root, run, "device=auto", gpus=1), "--dry-run"]
    args.gpus_per_node, args.overrides = 1, [*args.overrides, "device=auto"]
    with pytest.raises(LmlabError, match="2 processes per node on 1 GPUs"):
        slurm_app.run(args)
