"""``lmlab sweep SPEC --slurm``: one SLURM job array, one task per trial.

Each trial gets what ``lmlab slurm`` writes for a run (``slurm_script.render``): its
resolved config (every path absolute) under ``<trial>/code/`` and ``<trial>/submit.slurm``, the
batch script with the same requeue behaviour (``--signal=B:USR1@120``: checkpoint, ``scontrol
requeue``, the requeued task resumes; SIGTERM: checkpoint). The lmlab code snapshot is taken once,
``<sweep>/code/lmlab``, and each trial's ``code/lmlab`` links to it.

``<sweep>/submit-array.slurm`` is the array: ``--array=0-(n-1)%K`` (K: ``--parallel``, trials at
once), and task i ``exec``s trial i's ``submit.slurm``, so that script *is* the task's batch shell
(SLURM's USR1 warning and SIGTERM reach its traps; ``scontrol requeue $SLURM_JOB_ID`` requeues that
task). The task's log is ``<trial>/slurm-<job id>.out``, written through ``<sweep>/tasks/<i>``, a
link to the trial's folder (one ``--output`` pattern for every task).

Only trials that have not finished are in the array: submitting the same sweep again (after a
task failed or was cancelled) resumes the rest; refused while an array job of the sweep is still in
SLURM's queue.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import lmlab
from lmlab import slurm_jobs, sweepdir
from lmlab.atomic import write_text
from lmlab.config import RunConfig, absolute_paths, dump_config, finalize_config
from lmlab.errors import LmlabError
from lmlab.rundir import read_json
from lmlab.runlock import mark_run_dir
from lmlab.runlog import git_info
from lmlab.slurm_script import SlurmJob, directives, job_name, render
from lmlab.sweeps.table import now_iso
from lmlab.sweeps.trials import Trial

CPUS_PER_GPU = 4
PACKAGE = Path(lmlab.__file__).resolve().parent
_SUBMITTED = re.compile(r"Submitted batch job (\d+)")


@dataclass(frozen=True)
class ArrayOptions:
    gpus_per_trial: int
    parallel: int | None = None
    partition: str | None = None
    account: str | None = None
    time: str = "24:00:00"
    cpus_per_task: int | None = None


def write_array(name: str, sweep_dir: Path, trials: list[Trial], configs: dict[str, RunConfig],
                opts: ArrayOptions) -> Path:
    """Every trial's config and script, the shared code snapshot, ``tasks/`` and the array script."""
    sweep_dir = Path(os.path.abspath(sweep_dir))
    if any(c.isspace() for c in str(sweep_dir)):
        raise LmlabError(f"the sweep folder {sweep_dir} contains whitespace, which #SBATCH lines cannot "
                         "hold. Fix: set out: (or --out) to a path without spaces.")
    code = _snapshot(sweep_dir / sweepdir.CODE_DIR)
    jobs = [_trial_job(name, t, configs[t.name], sweep_dir, code, opts) for t in trials]
    tasks = sweep_dir / sweepdir.TASKS_DIR
    shutil.rmtree(tasks, ignore_errors=True)
    tasks.mkdir(parents=True)
    for i, t in enumerate(trials):
        os.symlink(os.path.join("..", t.name), tasks / str(i))
    script = sweep_dir / sweepdir.ARRAY_SCRIPT
    write_text(script, render_array(name, jobs, sweep_dir, opts.parallel or len(jobs)))
    script.chmod(0o755)
    return script


def _snapshot(code_dir: Path) -> Path:
    """``<sweep>/code/lmlab``: a copy of the lmlab package (replacing an older one), and where it
    came from (``lmlab-source.json``, read by the trials' provenance)."""
    target = code_dir / PACKAGE.name
    if target.resolve() == PACKAGE:  # running from this snapshot already
        return target
    source = git_info()
    staging = code_dir / f".tmp-{PACKAGE.name}"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(PACKAGE, staging, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    slurm_jobs.write_source(code_dir, source, str(PACKAGE))
    return target


def _trial_job(name: str, trial: Trial, cfg: RunConfig, sweep_dir: Path, code: Path,
               opts: ArrayOptions) -> SlurmJob:
    cfg, gpus = _device(finalize_config(absolute_paths(cfg)), opts.gpus_per_trial)
    run_dir = Path(cfg.dump_dir)
    code_dir = run_dir / "code"
    code_dir.mkdir(parents=True, exist_ok=True)
    mark_run_dir(run_dir, "lmlab sweep --slurm")
    link = code_dir / PACKAGE.name
    if link.is_dir() and not link.is_symlink():
        shutil.rmtree(link)
    elif link.is_symlink() or link.exists():
        link.unlink()
    os.symlink(os.path.relpath(code, code_dir), link)
    procs = opts.gpus_per_trial or 1
    job = SlurmJob(name=f"{name}.{trial.name}", run_dir=run_dir, code_dir=code_dir,
                   python=os.path.abspath(sys.executable), nodes=1,
                   gpus_per_node=gpus, cpus_per_task=opts.cpus_per_task or (CPUS_PER_GPU * gpus if gpus else procs),
                   time=opts.time, partition=opts.partition, account=opts.account, port=None,
                   procs_per_node=procs)
    dump_config(cfg, job.config)
    write_text(job.script, render(job))
    job.script.chmod(0o755)
    return job


def _device(cfg: RunConfig, gpus: int) -> tuple[RunConfig, int]:
    """As ``lmlab slurm``: ``--gpus-per-trial 0`` is a CPU task; ``device=cpu`` requests no GPU."""
    if gpus == 0:
        if cfg.device == "cuda":
            raise LmlabError("device=cuda needs GPUs, and --gpus-per-trial 0 requests none. Fix: pass "
                             "--gpus-per-trial G (G >= 1), or set device=cpu for CPU tasks.")
        return dataclasses.replace(cfg, device="cpu"), 0
    return cfg, 0 if cfg.device == "cpu" else gpus


def render_array(name: str, jobs: list[SlurmJob], sweep_dir: Path, parallel: int) -> str:
    """The array's batch script: the first trial's ``#SBATCH`` options (all trials ask for the
    same), ``--array`` with the concurrency limit, one ``--output`` through ``tasks/<i>``."""
    kept = [d for d in directives(jobs[0]) if not d.startswith(("--job-name=", "--output="))]
    output = str(sweep_dir).replace("%", "%%") + f"/{sweepdir.TASKS_DIR}/%a/slurm-%j.out"
    sbatch = [f"--job-name={job_name(name)}", f"--array=0-{len(jobs) - 1}%{max(1, parallel)}", *kept,
              f"--output={output}"]
    trials = "\n".join(f"    {shlex.quote(str(j.run_dir))}" for j in jobs)
    return f"""#!/bin/bash
# Written by `lmlab sweep --slurm` for sweep {job_name(name)}: {len(jobs)} trial(s), at most {parallel} at once.
# Task i runs trial i's own submit.slurm (the batch script of `lmlab slurm`: code snapshot, resolved
# config, requeue after the USR1 warning, checkpoint on SIGTERM). Submit: sbatch {shlex.quote(str(sweep_dir / sweepdir.ARRAY_SCRIPT))}
# One trial alone: sbatch <trial>/submit.slurm
{chr(10).join(f"#SBATCH {d}" for d in sbatch)}
set -euo pipefail

TRIALS=(
{trials}
)
TRIAL="${{TRIALS[$SLURM_ARRAY_TASK_ID]}}"
echo "lmlab sweep: array task $SLURM_ARRAY_TASK_ID (job $SLURM_JOB_ID): trial $TRIAL"
# exec: the trial's script becomes this task's batch shell, so that SLURM's warning (B:USR1) and
# SIGTERM reach its traps, and its `scontrol requeue $SLURM_JOB_ID` requeues this task only.
exec bash "$TRIAL/submit.slurm"
"""


# --------------------------------------------------------------------------- submitting


def active_arrays(sweep_dir: Path) -> dict[str, str] | None:
    """{task id: state} of this sweep's array jobs still in SLURM's queue; None when SLURM cannot
    be asked (a pending array shows as ``ID_[2-5%2]``, a running task as ``ID_1``)."""
    recorded = [j["job_id"] for j in _records(sweep_dir)]
    squeue = shutil.which("squeue")
    if not recorded or squeue is None:
        return {} if not recorded else None
    try:
        out = subprocess.run([squeue, "--noheader", "--format=%i|%T"], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    found = {}
    for line in out.stdout.splitlines():
        task, _, state = line.strip().partition("|")
        if any(task == j or task.startswith(f"{j}_") for j in recorded) and state.strip() in slurm_jobs.ACTIVE_STATES:
            found[task] = state.strip()
    return found


def submit(script: Path, sweep_dir: Path, trials: list[Trial]) -> str:
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise LmlabError("sbatch not found; use --dry-run to only write the scripts")
    out = subprocess.run([sbatch, str(script)], capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise LmlabError(f"sbatch refused {script}: {(out.stderr or out.stdout).strip()}. Fix: adjust "
                         "--partition/--account/--time/--gpus-per-trial/--cpus-per-task for this cluster "
                         "(or edit the script) and submit again.")
    match = _SUBMITTED.search(out.stdout)
    job_id = match.group(1) if match else out.stdout.strip()
    records = [*_records(sweep_dir), {"job_id": job_id, "time": now_iso(), "unix": time.time(),
                                      "script": str(script), "trials": [t.name for t in trials]}]
    write_text(Path(sweep_dir) / sweepdir.ARRAY_JOBS_FILE, json.dumps({"jobs": records}, indent=2) + "\n")
    return job_id


def _records(sweep_dir: Path) -> list[dict]:
    jobs = read_json(Path(sweep_dir) / sweepdir.ARRAY_JOBS_FILE).get("jobs")
    return [j for j in jobs if isinstance(j, dict) and j.get("job_id")] if isinstance(jobs, list) else []
