"""``lmlab slurm CONFIG [KEY=VALUE ...] --nodes N --gpus-per-node G``: a SLURM job for a run.

Preflight first (for the job's processes), so a config that cannot run is refused before anything
is written or submitted; so is a dump_dir whose earlier job is still queued, running or waiting to
be requeued (``slurm_jobs``): its code and config must not change under it. Then, in the run
directory: a snapshot of the lmlab code and the resolved config under ``code/`` (the job trains
exactly what was checked, whatever the checkout holds by the time it starts; every path in it
absolute), and ``submit.slurm`` (``lmlab/slurm_script.py``), which ``sbatch`` gets unless
``--dry-run``; the job id it returns goes to ``slurm-jobs.json``. The job requeues itself after a
preemption warning and resumes.

GPUs or not: ``--gpus-per-node G`` processes per node, one per GPU; with ``device=cpu`` they are CPU
processes (gloo) and no GPU is requested, and ``--gpus-per-node 0`` is a CPU job of one process
per node. ``--cpus-per-task`` defaults to 4 per GPU (1 per CPU process), lowered to what the
partition's largest node has when ``sinfo`` says it has fewer.
"""
from __future__ import annotations

import dataclasses
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from lmlab import rundir, slurm_jobs
from lmlab.atomic import write_text
from lmlab.config import RunConfig, absolute_paths, dump_config, finalize_config, load_config_collecting
from lmlab.errors import ConfigError, LmlabError, show_warnings
from lmlab.preflight import device_problems, load_and_check, preflight_warnings
from lmlab.reports.status import run_status
from lmlab.runlock import mark_run_dir
from lmlab.runlog import git_info
from lmlab.slurm_script import SlurmJob, render
from lmlab.training import distributed

CPUS_PER_GPU = 4  # --cpus-per-task default: per GPU process of a node (1 per CPU process)
PACKAGE = Path(__file__).resolve().parents[1]  # the lmlab source this process runs
_SUBMITTED = re.compile(r"Submitted batch job (\d+)")


def run(args) -> int:
    _check_arguments(args)
    sbatch = None if args.dry_run else shutil.which("sbatch")
    if not args.dry_run and sbatch is None:
        raise LmlabError("sbatch not found; use --dry-run to only write the script")
    procs = _procs_per_node(args)
    cfg = _preflight(args.config, args.overrides, args.nodes * procs)
    cfg, gpus = _device(finalize_config(absolute_paths(cfg)), args.gpus_per_node, procs)
    run_dir = Path(cfg.dump_dir)
    _refuse_busy(run_dir)
    show_warnings("slurm", preflight_warnings(cfg))
    job = SlurmJob(name=cfg.name, run_dir=run_dir, code_dir=run_dir / rundir.CODE_DIR,
                   python=os.path.abspath(sys.executable), nodes=args.nodes,
                   gpus_per_node=gpus, cpus_per_task=_cpus_per_task(args, procs, gpus),
                   time=args.time, partition=args.partition, account=args.account,
                   port=_port(args), procs_per_node=procs)
    write_job(cfg, job)
    print(f"wrote {job.script}\n  code snapshot and resolved config: {job.code_dir}")
    if args.dry_run:
        print(f"submit it with: sbatch {job.script}")
        return 0
    return _submit(sbatch, job, args)


def _check_arguments(args) -> None:
    given = {"--nodes": (args.nodes, 1), "--gpus-per-node": (args.gpus_per_node, 0),
             "--cpus-per-task": (args.cpus_per_task, 1),
             "--procs-per-node": (args.procs_per_node, 1)}
    for option, (value, least) in given.items():
        if value is not None and value < least:
            raise LmlabError(f"{option} must be >= {least}, got {value}. Fix: pass {option} {least} or more"
                             + (" (0: a CPU job, no GPU requested)." if option == "--gpus-per-node" else "."))
    if args.port is not None and not 1 <= args.port <= 65535:
        raise LmlabError(f"--port must be a TCP port (1-65535), got {args.port}. Fix: leave it out (each "
                         "job then gets its own port) or pass e.g. --port 29500.")


def _procs_per_node(args) -> int:
    """Processes per node: --procs-per-node, else one per GPU (one when 0)."""
    return args.procs_per_node or args.gpus_per_node or 1


def _port(args) -> int | None:
    """The rendezvous port the user asked for; None (each job its own) when --port was not given."""
    return args.port


def _preflight(config, overrides: list[str], world_size: int) -> RunConfig:
    """Preflight for ``world_size`` processes. Login nodes often have no GPU: what only says that
    this machine lacks CUDA is left to the job's nodes (whose ``lmlab train`` checks it again)."""
    try:
        return load_and_check(config, overrides, world_size=world_size)
    except ConfigError as err:
        problems = err.problems
    cfg, _ = load_config_collecting(config, overrides)
    host = set(device_problems(cfg)) | {p for p in distributed.check(
        cfg.distributed, world_size, cfg.data.batch_size, cfg.training.grad_accum, cfg.model.name,
        cfg.device) if p.key == "distributed.backend"}
    left = [p for p in problems if p not in host]
    if left:
        raise ConfigError(left, source=str(config))
    print("note: this machine has no CUDA GPU; the GPU checks are left to the job's nodes")
    return cfg


def _device(cfg: RunConfig, gpus: int, procs: int) -> tuple[RunConfig, int]:
    """(config, GPUs to request per node): a CPU job requests none and trains on device=cpu."""
    if gpus == 0:
        if cfg.device == "cuda":
            raise LmlabError("device=cuda needs GPUs, and --gpus-per-node 0 requests none. Fix: pass "
                             "--gpus-per-node G (G >= 1), or set device=cpu for a CPU job.")
        if cfg.device != "cpu":  # auto: the nodes' GPUs are not the job's
            print("note: --gpus-per-node 0: a CPU job (device=cpu in the resolved config)")
            cfg = dataclasses.replace(cfg, device="cpu")
        return cfg, 0
    if cfg.device == "cpu":
        print(f"note: device=cpu: the job requests no GPU; {procs} CPU (gloo) process(es) per node")
        return cfg, 0
    if procs != gpus:
        raise LmlabError(f"{procs} processes per node on {gpus} GPUs: a GPU job runs one process per "
                         f"GPU. Fix: leave --procs-per-node out, or set device=cpu for CPU processes.")
    return cfg, gpus


def _cpus_per_task(args, procs: int, gpus: int) -> int:
    """--cpus-per-task, by default 4 per GPU or 1 per CPU process, lowered to the largest node's
    CPUs when sinfo says that node has fewer (a job asking for more pends forever)."""
    wanted = args.cpus_per_task or (CPUS_PER_GPU * gpus if gpus else procs)
    most = node_cpus(args.partition)
    where = f"partition {args.partition}" if args.partition else "the default partition"
    if most is not None and wanted > most:
        if args.cpus_per_task is None:
            print(f"note: --cpus-per-task {most} (the default {wanted} is more than the {most} CPUs "
                  f"of the largest node of {where})")
            wanted = most
        else:
            print(f"lmlab slurm: warning: --cpus-per-task {wanted} is more than the {most} CPUs of the "
                  f"largest node of {where}: the job would wait in the queue forever.\n  fix: pass "
                  f"--cpus-per-task {most} or less, or another --partition", file=sys.stderr)
    if not gpus and procs > wanted:
        print(f"lmlab slurm: warning: {procs} CPU processes per node share {wanted} CPU(s): each step "
              f"waits for the slowest.\n  fix: --cpus-per-task {procs}, or fewer processes",
              file=sys.stderr)
    return wanted


def node_cpus(partition: str | None) -> int | None:
    """CPUs of the largest node of ``partition`` (else the default one), from sinfo; None when
    SLURM cannot be asked."""
    sinfo = shutil.which("sinfo")
    if sinfo is None:
        return None
    try:
        out = subprocess.run([sinfo, "--noheader", "--Node", "--format=%c|%P"], capture_output=True,
                             text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired):
        return None
    rows = [line.split("|", 1) for line in out.stdout.splitlines() if "|" in line] if out.returncode == 0 else []
    if partition:
        rows = [r for r in rows if r[1].strip().rstrip("*") == partition]
    else:
        rows = [r for r in rows if r[1].strip().endswith("*")] or rows
    counts = [int(r[0]) for r in rows if r[0].strip().isdigit()]
    return max(counts) if counts else None


def _refuse_busy(run_dir: Path) -> None:
    """A job of this dump_dir that may still run it (queued, running, completing, waiting to be
    requeued) would train code and a config rewritten under it: refused, with the fix."""
    recorded = [j["job_id"] for j in slurm_jobs.submissions(run_dir)]
    states = slurm_jobs.job_states(recorded, run_dir / rundir.SUBMIT_FILE)
    busy = {job: state for job, state in (states or {}).items() if state in slurm_jobs.ACTIVE_STATES}
    if busy:
        job, state = sorted(busy.items(), key=lambda kv: int(kv[0]) if kv[0].isdigit() else 0)[-1]
        raise LmlabError(f"{run_dir} belongs to SLURM job {job}, which is {state}: submitting it again "
                         "would rewrite the code and config that job runs. Fix: wait for job "
                         f"{job} to end, or cancel it first (scancel {job}; the next job resumes from "
                         "its last checkpoint), or set dump_dir to another folder.")
    status = run_status(run_dir)
    if status["status"] == "running":
        raise LmlabError(f"{run_dir} is training now ({status['reason']}): submitting it again would "
                         "rewrite its code and config. Fix: wait for it to end, or stop it first (its "
                         "checkpoint is resumed by the next job), or set dump_dir to another folder.")
    if status["status"] == "queued":  # SLURM could not be asked here; the record says submitted
        job = status.get("job_id")
        raise LmlabError(f"{run_dir} was submitted as SLURM job {job}, which has not started, and SLURM "
                         "cannot be asked here (squeue) whether it is still queued. Fix: run lmlab "
                         f"slurm where squeue works; if job {job} is gone (squeue -j {job}), remove "
                         f"{run_dir / slurm_jobs.JOBS_FILE} and submit again.")


def write_job(cfg: RunConfig, job: SlurmJob) -> None:
    """The code snapshot (with where it came from), the resolved config and the script."""
    if any(c.isspace() for c in str(job.run_dir)):
        raise LmlabError(f"dump_dir {job.run_dir} contains whitespace, which #SBATCH lines cannot "
                         "hold. Fix: set dump_dir to a path without spaces.")
    job.code_dir.mkdir(parents=True, exist_ok=True)
    mark_run_dir(job.run_dir, "lmlab slurm")  # the job's `lmlab train` finds a run of ours
    source = git_info()  # before the copy: from a snapshot, this reads its own record
    if snapshot_code(job.code_dir).resolve() != PACKAGE:
        slurm_jobs.write_source(job.code_dir, source, str(PACKAGE))
    dump_config(cfg, job.config)
    write_text(job.script, render(job))
    job.script.chmod(0o755)


def snapshot_code(code_dir: Path) -> Path:
    """A copy of the lmlab package at ``code_dir/lmlab`` (replacing an older one; no caches)."""
    target = code_dir / PACKAGE.name
    if target.resolve() == PACKAGE:  # already running from this snapshot
        return target
    staging = code_dir / f"{rundir.TMP_PREFIX}{PACKAGE.name}"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(PACKAGE, staging, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


def _submit(sbatch: str, job: SlurmJob, args) -> int:
    out = subprocess.run([sbatch, str(job.script)], capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise LmlabError(f"sbatch refused {job.script}: {(out.stderr or out.stdout).strip()}. Fix: "
                         "adjust --partition/--account/--time/--gpus-per-node/--cpus-per-task for this "
                         "cluster (or edit the script) and submit again.")
    match = _SUBMITTED.search(out.stdout)
    if match is None:
        print(out.stdout.strip())
        return 0
    job_id = match.group(1)
    slurm_jobs.record_submission(job.run_dir, job_id, script=str(job.script), host=socket.gethostname(),
                                 git=git_info(), command=" ".join(["lmlab", *getattr(args, "argv", [])]))
    print(f"submitted job {job_id}: {job.script}\n  log: {slurm_jobs.log_path(job.run_dir, job_id)}\n"
          f"  run: {job.run_dir} (lmlab runs shows it as queued (job {job_id}) until it starts; "
          "lmlab runs / lmlab report read it while it trains)")
    return 0
