"""``lmlab slurm`` under a real one-node SLURM (Debian's 22.05 packages; ``slurm_cluster.py``).

Runs only with ``LMLAB_REAL_SLURM=1`` (``.ci/run`` runs it as a step of its own: about 4-5 minutes,
most of it SLURM holding a requeued job), as root, where the packages are installed or apt-get can
install them; skipped otherwise. The node has no GPU and no GRES: every job is a CPU job.

1. a 2-rank CPU (gloo) job runs to completion; resubmitting its dump_dir while it runs is refused;
   provenance names the job and the submitting commit; no traceback in the log;
2. ``scancel --signal=USR1 --batch`` mid-run (SLURM's time-limit warning): checkpoint, the script
   requeues the job, the requeued job resumes and finishes at the last step, no duplicate metrics;
3. two jobs on the node at once both complete (a rendezvous port each); a third one waits in the
   queue, shown ``queued (job N)``, its resubmission refused, and once cancelled ``cancelled``;
4. plain ``scancel`` mid-run: ``cancelled`` (not preempted), a checkpoint, no torchrun traceback,
   the hint ``sbatch <run>/submit.slurm``.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import REPO
from lmlab import rundir, slurm_jobs
from lmlab.reports.status import run_status
from lmlab.runlog import git_info
from system.slurm_cluster import SlurmCluster, running_cluster

pytestmark = [pytest.mark.slurm, pytest.mark.skipif(
    os.environ.get("LMLAB_REAL_SLURM") != "1", reason="a real SLURM cluster: set LMLAB_REAL_SLURM=1 (root)")]

CONFIG = REPO / "configs" / "quickstart.yaml"  # tinyshakespeare, bundled: no data to fetch
QUICK = ["device=cpu", "eval.validation.enabled=false", "logging.progress_bar=false"]
SUBMITTED = re.compile(r"^submitted job (\d+):", re.MULTILINE)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    yield from running_cluster(tmp_path_factory.mktemp("slurm"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("runs")


def lmlab(cluster: SlurmCluster, *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {k: v for k, v in cluster.env.items() if not k.startswith("PYTEST")}
    return subprocess.run([sys.executable, "-m", "lmlab", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def submit(cluster: SlurmCluster, run: Path, *args: str) -> str:
    out = lmlab(cluster, "slurm", str(CONFIG), *QUICK, f"dump_dir={run}", *args, "--nodes", "1")
    assert out.returncode == 0, out.stdout + out.stderr
    match = SUBMITTED.search(out.stdout)
    assert match, out.stdout
    return match.group(1)


def log_of(run: Path, job: str) -> Path:
    return slurm_jobs.log_path(run, job)


def wait_for(what: str, ready, seconds: float, *, about: Path | None = None):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = ready()
        if value:
            return value
        time.sleep(1)
    detail = about.read_text(errors="replace")[-3000:] if about is not None and about.exists() else ""
    raise AssertionError(f"timed out after {seconds:.0f} s waiting for {what}\n{detail}")


def reached_step(run: Path, job: str, step: int) -> bool:
    return any(int(m) >= step for m in re.findall(r"^step +(\d+)/", _text(log_of(run, job)), re.MULTILINE))


def _text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def train_steps(run: Path) -> list[int]:
    return [r["step"] for r in rundir.read_jsonl(run / rundir.METRICS_FILE) if "loss" in r]


def ended(cluster: SlurmCluster, job: str, seconds: float, run: Path) -> str:
    done = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")
    state = cluster.wait_state(job, done, seconds)
    assert state in done, f"job {job} still {state}\n{_text(log_of(run, job))[-3000:]}"
    return state


def test_a_two_rank_cpu_job_runs_to_completion(cluster, runs):
    run = runs / "basic"
    job = submit(cluster, run, "steps=60", "checkpoint.every=30", "--gpus-per-node", "2")
    script = (run / rundir.SUBMIT_FILE).read_text()
    assert "--gpus-per-node" not in script and "--nproc_per_node=2" in script  # CPU: no GRES asked
    wait_for("the first step line", lambda: reached_step(run, job, 10), 180, about=log_of(run, job))
    again = lmlab(cluster, "slurm", str(CONFIG), *QUICK, f"dump_dir={run}", "--nodes", "1", "--gpus-per-node", "2")
    assert again.returncode == 2 and f"belongs to SLURM job {job}, which is RUNNING" in again.stderr
    assert ended(cluster, job, 600, run) == "COMPLETED"
    log = _text(log_of(run, job))
    assert "finished after 60 steps" in log and "x 2 processes (gloo)" in log
    assert "Traceback" not in log
    provenance = rundir.read_json(run / rundir.PROVENANCE_FILE)
    assert provenance["distributed"]["world_size"] == 2 and provenance["distributed"]["backend"] == "gloo"
    assert provenance["slurm"] == {"job_id": job, "restart_count": 0}
    assert provenance["git"]["sha"] == git_info()["sha"] and provenance["git"]["snapshot_of"]
    listing = lmlab(cluster, "runs", str(runs))
    assert re.search(r"^basic .* finished +60/60 steps", listing.stdout, re.MULTILINE), listing.stdout
    report = lmlab(cluster, "report", str(run))
    assert report.returncode == 0 and "Status: **finished**" in (run / "report.md").read_text()


def test_the_time_limit_warning_checkpoints_requeues_and_resumes(cluster, runs):
    run, steps = runs / "preempt", 400
    job = submit(cluster, run, f"steps={steps}", "checkpoint.every=200", "--gpus-per-node", "2")
    wait_for("step 40", lambda: reached_step(run, job, 40), 300, about=log_of(run, job))
    cluster.run("scancel", "--signal=USR1", "--batch", job)  # as SLURM does 120 s before --time
    wait_for("the requeue", lambda: f"requeueing job {job}" in _text(log_of(run, job)), 180,
             about=log_of(run, job))
    saved = re.findall(r"saved a checkpoint at step (\d+)", _text(log_of(run, job)))
    assert saved and 40 <= int(saved[-1]) < steps
    assert run_status(run)["status"] == "preempted"
    assert rundir.is_checkpoint(rundir.checkpoints_root(run) / rundir.step_name(int(saved[-1])))
    wait_for("the restart count", lambda: int(cluster.job(job).get("Restarts", 0)) >= 1, 60)
    # SLURM holds a requeued job for AuthInfo=cred_expire (slurm_cluster.CRED_EXPIRE_S), then it runs
    assert ended(cluster, job, 900, run) == "COMPLETED"
    log = _text(log_of(run, job))
    assert f"resuming {run} from checkpoint {rundir.step_name(int(saved[-1]))}" in log
    assert f"finished after {steps} steps" in log and "Traceback" not in log
    logged = train_steps(run)
    assert len(logged) == len(set(logged)) and logged[-1] == steps  # no step logged twice
    assert rundir.read_json(run / rundir.PROVENANCE_FILE)["slurm"] == {"job_id": job, "restart_count": 1}
    assert not (run / rundir.PREEMPT_FILE).exists() and run_status(run)["status"] == "finished"


def test_two_jobs_share_the_node_and_a_third_waits_queued(cluster, runs):
    one_cpu = ["--gpus-per-node", "0"]  # one CPU process each: two fill the node's 2 CPUs
    a = submit(cluster, runs / "pa", "steps=60", *one_cpu)
    b = submit(cluster, runs / "pb", "steps=80", *one_cpu)
    wait_for("both running at once", lambda: {cluster.state(a), cluster.state(b)} == {"RUNNING"}, 120)
    c_run = runs / "pc"
    c = submit(cluster, c_run, "steps=20", *one_cpu)
    assert cluster.state(c) == "PENDING"
    listing = lmlab(cluster, "runs", str(runs)).stdout
    assert re.search(rf"^pc .* queued \(job {c}\)", listing, re.MULTILINE), listing
    report = lmlab(cluster, "report", str(c_run))
    assert report.returncode == 0 and f"queued (job {c})" in report.stdout
    again = lmlab(cluster, "slurm", str(CONFIG), *QUICK, f"dump_dir={c_run}", "--nodes", "1", *one_cpu)
    assert again.returncode == 2 and f"belongs to SLURM job {c}, which is PENDING" in again.stderr
    cluster.run("scancel", c)
    wait_for("the cancel", lambda: cluster.state(c) == "CANCELLED", 60)
    assert (run_status(c_run)["status"], run_status(c_run)["job_id"]) == ("cancelled", c)
    assert ended(cluster, a, 600, runs / "pa") == "COMPLETED"
    assert ended(cluster, b, 600, runs / "pb") == "COMPLETED"
    assert "finished after 60 steps" in _text(log_of(runs / "pa", a))
    assert "finished after 80 steps" in _text(log_of(runs / "pb", b))


def test_scancel_is_cancelled_with_a_checkpoint_and_no_traceback(cluster, runs):
    run = runs / "cancel"
    job = submit(cluster, run, "steps=400", "checkpoint.every=1000", "--gpus-per-node", "2")
    wait_for("step 40", lambda: reached_step(run, job, 40), 300, about=log_of(run, job))
    cluster.run("scancel", job)
    assert ended(cluster, job, 120, run) == "CANCELLED"
    log = _text(log_of(run, job))
    assert "Traceback" not in log and "SignalException" not in log, log
    assert f"Resume it with: sbatch {run / rundir.SUBMIT_FILE}" in log
    status = run_status(run)
    assert (status["status"], status["job_id"]) == ("cancelled", job), status
    assert rundir.step_checkpoints(run), log
    events = [json.loads(line) for line in (run / rundir.EVENTS_FILE).read_text().splitlines()]
    assert [e["cause"] for e in events if e["event"] == slurm_jobs.SIGNAL_EVENT] == ["CANCELLED"]
