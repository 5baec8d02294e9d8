"""``lmlab slurm CONFIG [KEY=VALUE ...] --nodes N --gpus-per-node G``: a SLURM job for a run.

Preflight first (for N x G processes), so a config that cannot run is refused before anything is
written or submitted. Then, in the run directory: a snapshot of the lmlab code and the resolved
config under ``code/`` (the job trains exactly what was checked, whatever the checkout holds by
the time it starts), and ``submit.slurm`` (``training/slurm_script.py``), which ``sbatch`` gets
unless ``--dry-run``. The job requeues itself after a preemption warning and resumes.
"""
from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from lmlab import rundir
from lmlab.atomic import write_text
from lmlab.config import RunConfig, dump_config, finalize_config, load_config_collecting
from lmlab.errors import ConfigError, LmlabError
from lmlab.preflight import device_problems, load_and_check
from lmlab.runlock import mark_run_dir
from lmlab.training import distributed
from lmlab.training.slurm_script import SlurmJob, render

# Config values that are paths: made absolute, as preflight resolved them here (the job starts in
# the code snapshot's folder, where a relative path would mean something else).
PATH_KEYS = ("dump_dir", "data.root_dir", "data.path", "data.val_path", "data.tokenizer.path",
             "eval.data_dir", "eval.include_path", "logging.wandb.dir", "logging.tensorboard.log_dir")
CPUS_PER_GPU = 4  # --cpus-per-task default: per process of a node
PACKAGE = Path(__file__).resolve().parents[1]  # the lmlab source this process runs
_SUBMITTED = re.compile(r"Submitted batch job (\d+)")


def run(args) -> int:
    _check_arguments(args)
    sbatch = None if args.dry_run else shutil.which("sbatch")
    if not args.dry_run and sbatch is None:
        raise LmlabError("sbatch not found; use --dry-run to only write the script")
    cfg = _preflight(args.config, args.overrides, args.nodes * args.gpus_per_node)
    cfg = finalize_config(_absolute_paths(cfg))
    job = SlurmJob(name=cfg.name, run_dir=Path(cfg.dump_dir), code_dir=Path(cfg.dump_dir) / rundir.CODE_DIR,
                   python=os.path.abspath(sys.executable), torchrun=_torchrun(), nodes=args.nodes,
                   gpus_per_node=args.gpus_per_node,
                   cpus_per_task=args.cpus_per_task or CPUS_PER_GPU * args.gpus_per_node,
                   time=args.time, partition=args.partition, account=args.account, port=args.port)
    write_job(cfg, job)
    print(f"wrote {job.script}\n  code snapshot and resolved config: {job.code_dir}")
    if args.dry_run:
        print(f"submit it with: sbatch {job.script}")
        return 0
    return _submit(sbatch, job)


def _check_arguments(args) -> None:
    given = {"--nodes": args.nodes, "--gpus-per-node": args.gpus_per_node, "--cpus-per-task": args.cpus_per_task}
    for option, value in given.items():
        if value is not None and value < 1:
            raise LmlabError(f"{option} must be >= 1, got {value}. Fix: pass {option} 1 or more.")
    if not 1 <= args.port <= 65535:
        raise LmlabError(f"--port must be a TCP port (1-65535), got {args.port}. Fix: e.g. --port 29500.")


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


def _absolute_paths(cfg: RunConfig) -> RunConfig:
    for key in PATH_KEYS:
        cfg = _absolute(cfg, key.split("."))
    return cfg


def _absolute(obj, keys: list[str]):
    value = getattr(obj, keys[0])
    if len(keys) > 1:
        return dataclasses.replace(obj, **{keys[0]: _absolute(value, keys[1:])})
    if not value or os.path.isabs(value):
        return obj
    return dataclasses.replace(obj, **{keys[0]: os.path.abspath(value)})


def _torchrun() -> str:
    """torch's launcher script beside this interpreter (else on PATH); the job runs it with
    this interpreter, so it uses this environment's torch either way."""
    beside = Path(sys.executable).with_name("torchrun")
    found = str(beside) if beside.is_file() else shutil.which("torchrun")
    if not found:
        raise LmlabError(f"torchrun not found beside {sys.executable} nor on PATH. Fix: install torch "
                         "in this environment (it provides torchrun) and run lmlab slurm from it.")
    return os.path.abspath(found)


def write_job(cfg: RunConfig, job: SlurmJob) -> None:
    """The code snapshot, the resolved config and the script, in the run directory."""
    if any(c.isspace() for c in str(job.run_dir)):
        raise LmlabError(f"dump_dir {job.run_dir} contains whitespace, which #SBATCH lines cannot "
                         "hold. Fix: set dump_dir to a path without spaces.")
    job.code_dir.mkdir(parents=True, exist_ok=True)
    mark_run_dir(job.run_dir, "lmlab slurm")  # the job's `lmlab train` finds a run of ours
    snapshot_code(job.code_dir)
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


def _submit(sbatch: str, job: SlurmJob) -> int:
    out = subprocess.run([sbatch, str(job.script)], capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise LmlabError(f"sbatch refused {job.script}: {(out.stderr or out.stdout).strip()}. Fix: "
                         "adjust --partition/--account/--time/--gpus-per-node for this cluster "
                         "(or edit the script) and submit again.")
    match = _SUBMITTED.search(out.stdout)
    if match is None:
        print(out.stdout.strip())
        return 0
    job_id = match.group(1)
    log = job.run_dir / rundir.SLURM_OUTPUT.replace("%j", job_id)
    print(f"submitted job {job_id}: {job.script}\n  log: {log}\n  run: {job.run_dir} "
          f"(lmlab runs / lmlab report read it while it trains)")
    return 0
