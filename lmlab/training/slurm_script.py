"""The SLURM batch script of ``lmlab slurm``: pure text, rendered from a ``SlurmJob``.

One task per node runs torchrun, which starts the node's processes and meets the other nodes at a
c10d rendezvous on the first node. Preemption: ``--signal=B:USR1@120`` warns only the batch script,
120 s before the time limit; its trap creates ``<run>/preempt.request``, which every rank on every
node sees on the shared filesystem, so the run saves a checkpoint at its next logging step and
exits 0; the script then requeues the job, and the requeued job (the same script) resumes.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from lmlab import rundir

WARNING_SIGNAL = "USR1"
WARNING_SECONDS = 120
DEFAULT_PORT = 29500
# the status `wait` returns when the trap for WARNING_SIGNAL (10) interrupted it
_INTERRUPTED = 128 + 10


@dataclass(frozen=True)
class SlurmJob:
    """Everything the script names; paths absolute (the job starts in another directory)."""

    name: str
    run_dir: Path
    code_dir: Path  # holds the lmlab snapshot and the resolved config
    python: str  # the interpreter that wrote the script (its environment has torch)
    torchrun: str  # torch's launcher script, run with ``python``
    nodes: int
    gpus_per_node: int
    cpus_per_task: int
    time: str
    partition: str | None = None
    account: str | None = None
    port: int = DEFAULT_PORT

    @property
    def config(self) -> Path:
        return self.code_dir / rundir.CONFIG_FILE

    @property
    def script(self) -> Path:
        return self.run_dir / rundir.SUBMIT_FILE


def job_name(name: str) -> str:
    """A run name as a SLURM job name: no spaces or shell characters in an ``#SBATCH`` line."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "lmlab"


def render(job: SlurmJob) -> str:
    """The batch script (``#!/bin/bash``; ``bash -n`` accepts it)."""
    q = shlex.quote
    output = str(job.run_dir).replace("%", "%%") + "/" + rundir.SLURM_OUTPUT  # %j: the job id
    directives = [f"--job-name={job_name(job.name)}", f"--nodes={job.nodes}", "--ntasks-per-node=1",
                  f"--gpus-per-node={job.gpus_per_node}", f"--cpus-per-task={job.cpus_per_task}",
                  f"--time={job.time}"]
    directives += [f"--partition={job.partition}"] if job.partition else []
    directives += [f"--account={job.account}"] if job.account else []
    directives += [f"--output={output}", f"--signal=B:{WARNING_SIGNAL}@{WARNING_SECONDS}",
                   "--requeue", "--open-mode=append"]
    sbatch = "\n".join(f"#SBATCH {d}" for d in directives)
    return f"""#!/bin/bash
# Written by `lmlab slurm` for run {job_name(job.name)}. Submit: sbatch {q(str(job.script))}
# One task per node: its torchrun starts the node's {job.gpus_per_node} processes (cpus-per-task is
# for all of them). --signal: SLURM warns this script (B:, not the ranks) {WARNING_SECONDS} s before
# the time limit; --requeue and --open-mode=append: a requeued job continues the same log.
{sbatch}
set -euo pipefail

RUN_DIR={q(str(job.run_dir))}
CODE_DIR={q(str(job.code_dir))}
PYTHON={q(job.python)}
TORCHRUN={q(job.torchrun)}

# Run the code snapshot taken at submission, not what the checkout holds when the job starts
# (from CODE_DIR, the snapshot is also first on the path of every `python -m lmlab`).
cd "$CODE_DIR"
export PYTHONPATH="$CODE_DIR"
# srun no longer inherits sbatch's --cpus-per-task (SLURM >= 22.05): give torchrun's task all of them
export SRUN_CPUS_PER_TASK="${{SLURM_CPUS_PER_TASK:-1}}"

# The first node hosts the rendezvous where every node's torchrun meets (sed, not head: it reads
# the whole list, so scontrol never gets SIGPIPE, which pipefail would turn into a failure).
HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p)

warned=0
interrupted=0
on_warning() {{
    # Only this script gets the warning: the ranks on every node poll this file (shared
    # filesystem) and stop at their next logging step with a checkpoint, exiting 0.
    warned=1
    interrupted=1
    touch "$RUN_DIR/{rundir.PREEMPT_FILE}"
}}
trap on_warning {WARNING_SIGNAL}

# In the background and waited for: bash runs a trap only between commands, so a foreground
# srun would hold the warning until training had ended anyway.
srun --kill-on-bad-exit=1 "$PYTHON" "$TORCHRUN" \\
    --nnodes="$SLURM_NNODES" --nproc_per_node={job.gpus_per_node} \\
    --rdzv_id="$SLURM_JOB_ID" --rdzv_backend=c10d --rdzv_endpoint="$HEAD:{job.port}" \\
    -m lmlab train "$CODE_DIR/{rundir.CONFIG_FILE}" &
step=$!

# `wait` returns {_INTERRUPTED} as soon as the trap has run; wait again for the step's own status
# (bash keeps it when the step ends meanwhile).
while :; do
    interrupted=0
    status=0
    wait "$step" || status=$?
    if [ "$interrupted" = 0 ] || [ "$status" -ne {_INTERRUPTED} ]; then
        break
    fi
done

if [ "$warned" = 1 ] && [ "$status" -eq 0 ]; then
    # Stopped with a checkpoint: back into the queue; the requeued job runs this script again,
    # which resumes from the newest checkpoint (a run that had just finished says so and exits).
    echo "lmlab: preemption warning: checkpoint saved, requeueing job $SLURM_JOB_ID"
    scontrol requeue "$SLURM_JOB_ID"
fi
exit "$status"
"""
