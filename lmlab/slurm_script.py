"""The SLURM batch script of ``lmlab slurm``: pure text, rendered from a ``SlurmJob``.

One task per node runs torchrun, which starts the node's processes (one per GPU, or CPU processes
with gloo when the job asks for no GPU) and meets the other nodes at a c10d rendezvous. Its port:
one node lets torchrun pick a free one (``localhost:0``), several nodes use the first node's port
``20000 + job id % 20000``; ``--port`` fixes it. So jobs sharing a node never share a rendezvous.

Preemption: ``--signal=B:USR1@120`` warns only the batch script, 120 s before the time limit; its
trap creates ``<run>/preempt.request``, which every rank on every node sees on the shared
filesystem, so the run saves a checkpoint at its next logging step and exits 0; the script then
requeues the job, and the requeued job (the same script) resumes.

SIGTERM (``scancel``, the time limit itself, a preemption by SLURM) reaches every process of the
job: the ranks save a checkpoint and exit 0, while torchrun ignores it (it would otherwise stop its
workers and print a traceback) and the script waits for them, then appends a ``slurm_signal``
event with the state SLURM gave the job (``CANCELLED`` for ``scancel``: ``lmlab runs`` says
cancelled, not preempted) and prints how to resume: ``sbatch <run>/submit.slurm``.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from lmlab import rundir
from lmlab.slurm_jobs import SIGNAL_EVENT

# the script exports it for its ranks: their resume hint (``sbatch <run>/submit.slurm``)
RESUME_COMMAND_ENV = "LMLAB_RESUME_COMMAND"
WARNING_SIGNAL = "USR1"
WARNING_SECONDS = 120
PORT_BASE, PORT_SPAN = 20000, 20000  # several nodes: the rendezvous port is PORT_BASE + job id % PORT_SPAN
# torchrun's own signal handling, without SIGTERM: the script makes torchrun ignore SIGTERM
_TORCHRUN_SIGNALS = "SIGINT,SIGHUP,SIGQUIT"


@dataclass(frozen=True)
class SlurmJob:
    """Everything the script names; paths absolute (the job starts in another directory)."""

    name: str
    run_dir: Path
    code_dir: Path  # holds the lmlab snapshot and the resolved config
    python: str  # the interpreter that wrote the script (its environment has torch)
    nodes: int
    gpus_per_node: int  # 0: a CPU job (no GPU requested)
    cpus_per_task: int
    time: str
    partition: str | None = None
    account: str | None = None
    port: int | None = None  # None: picked by torchrun (one node) or derived from the job id
    procs_per_node: int | None = None  # None: one per GPU (one for a CPU job without GPUs)

    @property
    def processes(self) -> int:
        """Processes per node (torchrun's --nproc_per_node)."""
        return self.procs_per_node or self.gpus_per_node or 1

    @property
    def config(self) -> Path:
        return self.code_dir / rundir.CONFIG_FILE

    @property
    def script(self) -> Path:
        return self.run_dir / rundir.SUBMIT_FILE


def job_name(name: str) -> str:
    """A run name as a SLURM job name: no spaces or shell characters in an ``#SBATCH`` line."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "lmlab"


def directives(job: SlurmJob) -> list[str]:
    """The ``#SBATCH`` options (without the prefix)."""
    output = str(job.run_dir).replace("%", "%%") + "/" + rundir.SLURM_OUTPUT  # %j: the job id
    out = [f"--job-name={job_name(job.name)}", f"--nodes={job.nodes}", "--ntasks-per-node=1"]
    out += [f"--gpus-per-node={job.gpus_per_node}"] if job.gpus_per_node else []
    out += [f"--cpus-per-task={job.cpus_per_task}", f"--time={job.time}"]
    out += [f"--partition={job.partition}"] if job.partition else []
    out += [f"--account={job.account}"] if job.account else []
    return out + [f"--output={output}", f"--signal=B:{WARNING_SIGNAL}@{WARNING_SECONDS}",
                  "--requeue", "--open-mode=append"]


def _rendezvous(job: SlurmJob) -> str:
    """Shell lines setting ENDPOINT, the c10d rendezvous address every node's torchrun meets at."""
    if job.port is not None:
        where = "its first node, at the port given to lmlab slurm (--port)"
        endpoint = f'"$HEAD:{job.port}"'
    elif job.nodes == 1:
        return ("# One node: torchrun picks a free port, so jobs sharing a node never meet\n"
                "ENDPOINT=localhost:0")
    else:
        where = "its first node, at a port derived from the job id (jobs sharing a node differ)"
        endpoint = f'"$HEAD:$(({PORT_BASE} + SLURM_JOB_ID % {PORT_SPAN}))"'
    return (f"# Every node's torchrun meets at {where}\n"
            "# (sed, not head: it reads the whole list, so scontrol never gets SIGPIPE, which pipefail\n"
            "# would turn into a failure).\n"
            'HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p)\n'
            f"ENDPOINT={endpoint}")


def render(job: SlurmJob) -> str:
    """The batch script (``#!/bin/bash``; ``bash -n`` accepts it)."""
    q = shlex.quote
    values = {
        "NAME": job_name(job.name), "SBATCH": "\n".join(f"#SBATCH {d}" for d in directives(job)),
        "WHAT": (f"{job.processes} processes, one per GPU" if job.gpus_per_node
                 else f"{job.processes} CPU process(es) (gloo; no GPU requested)"),
        "RESUME": q(f"sbatch {q(str(job.script))}"), "SCRIPT": q(str(job.script)),
        "RUN_DIR": q(str(job.run_dir)), "CODE_DIR": q(str(job.code_dir)), "PYTHON": q(job.python),
        "RENDEZVOUS": _rendezvous(job), "NPROC": str(job.processes),
        "SIGNALS": _TORCHRUN_SIGNALS, "WARNING": WARNING_SIGNAL, "SECONDS": str(WARNING_SECONDS),
        "PREEMPT_FILE": rundir.PREEMPT_FILE, "EVENTS_FILE": rundir.EVENTS_FILE,
        "CONFIG_FILE": rundir.CONFIG_FILE, "SIGNAL_EVENT": SIGNAL_EVENT,
    }
    return re.sub(r"@([A-Z_]+)@", lambda m: values[m.group(1)], _TEMPLATE)


# The script; @NAME@ are the values of ``render``. Plain text otherwise: what bash reads.
_TEMPLATE = r"""#!/bin/bash
# Written by `lmlab slurm` for run @NAME@. Submit: sbatch @SCRIPT@
# One task per node: its torchrun starts the node's @WHAT@; cpus-per-task is for all of them.
# --signal: SLURM warns this script (B:, not the ranks) @SECONDS@ s before the time limit;
# --requeue and --open-mode=append: a requeued job continues the same log.
@SBATCH@
set -euo pipefail

RUN_DIR=@RUN_DIR@
CODE_DIR=@CODE_DIR@
PYTHON=@PYTHON@
LOG="$RUN_DIR/slurm-$SLURM_JOB_ID.out"

# Run the code snapshot taken at submission, not what the checkout holds when the job starts
# (from CODE_DIR, the snapshot is also first on the path of every `python -m lmlab`).
cd "$CODE_DIR"
export PYTHONPATH="$CODE_DIR"
# srun no longer inherits sbatch's --cpus-per-task (SLURM >= 22.05): give torchrun's task all of them
export SRUN_CPUS_PER_TASK="${SLURM_CPUS_PER_TASK:-1}"
# What a stopped run tells the user to run to resume it: this script, not the snapshot's config
export LMLAB_RESUME_COMMAND=@RESUME@
# torchrun handles these signals itself (--signals-to-handle), but not SIGTERM, which it ignores
export PET_SIGNALS_TO_HANDLE=@SIGNALS@ TORCHELASTIC_SIGNALS_TO_HANDLE=@SIGNALS@

@RENDEZVOUS@

# slurmstepd writes why it stops the job into this log just before its SIGTERM:
# "*** JOB <id> ON <node> CANCELLED AT <time> [DUE TO TIME LIMIT|PREEMPTION|JOB REQUEUE|...] ***".
# A requeued job appends to the same log: only the lines after this point are this attempt's.
stepd_lines() {
    grep -a "\*\*\* JOB $SLURM_JOB_ID ON .* CANCELLED AT " "$LOG" 2>/dev/null || true
}
stepd_before=$(stepd_lines | wc -l)

warned=0
terminated=0
interrupted=0
cause=""
on_warning() {
    # Only this script gets the warning: the ranks on every node poll this file (shared
    # filesystem) and stop at their next logging step with a checkpoint, exiting 0.
    warned=1
    interrupted=1
    touch "$RUN_DIR/@PREEMPT_FILE@"
}
on_term() {
    # scancel, the time limit, a preemption or a requeue: SLURM sends SIGTERM to every process of
    # the job. The ranks save a checkpoint and exit 0; this script waits for them (SLURM kills what
    # is left after its KillWait) and records why for `lmlab runs` / `lmlab report` (the cause
    # CANCELLED, with no "DUE TO": scancel, so the run is cancelled, not preempted).
    terminated=1
    interrupted=1
    local line="" tries=0
    while [ -z "$line" ] && [ "$tries" -lt 25 ]; do
        line=$(stepd_lines | tail -n +"$((stepd_before + 1))" | tail -n 1)
        tries=$((tries + 1))
        if [ -z "$line" ]; then sleep 0.2; fi
    done
    case "$line" in
        *" DUE TO "*) cause=$(printf '%s' "${line##* DUE TO }" | tr -cd 'A-Z _' | sed 's/ *$//') ;;
        *CANCELLED*) cause=CANCELLED ;;
        *) cause=UNKNOWN ;;
    esac
    printf '{"event": "@SIGNAL_EVENT@", "time": "%s", "unix": %s, "signal": "SIGTERM", "slurm_job_id": "%s", "cause": "%s"}\n' \
        "$(date -u +%Y-%m-%dT%H:%M:%S.%3NZ)" "$(date +%s.%N)" "$SLURM_JOB_ID" "$cause" \
        >> "$RUN_DIR/@EVENTS_FILE@" || true
}
trap on_warning @WARNING@
trap on_term TERM

# In the background and waited for: bash runs a trap only between commands, so a foreground
# srun would hold the warning until training had ended anyway. torchrun runs with SIGTERM ignored
# (`trap "" TERM` is inherited through exec): the ranks, which handle it, decide when to stop.
# lmlab's torchrun agent (lmlab.training.launcher): a user error in any rank is one message and
# exit 2, an orderly stop 0 or 130, without torchrun's traceback.
srun --kill-on-bad-exit=1 bash -c 'trap "" TERM; exec "$@"' torchrun "$PYTHON" -m lmlab.training.launcher \
    --nnodes="$SLURM_NNODES" --nproc_per_node=@NPROC@ \
    --rdzv_id="$SLURM_JOB_ID" --rdzv_backend=c10d --rdzv_endpoint="$ENDPOINT" \
    -m lmlab train "$CODE_DIR/@CONFIG_FILE@" &
step=$!

# `wait` returns (128 + the signal's number) as soon as a trap has run; wait again for the step's
# own status (bash keeps it when the step ends meanwhile).
while :; do
    interrupted=0
    status=0
    wait "$step" || status=$?
    if [ "$interrupted" = 0 ] || [ "$status" -le 128 ]; then
        break
    fi
done

if [ "$terminated" = 1 ] && [ "$cause" = "JOB REQUEUE" ]; then
    echo "lmlab: SLURM requeued job $SLURM_JOB_ID; when it starts again it resumes from the last checkpoint"
elif [ "$terminated" = 1 ]; then
    echo "lmlab: SLURM stopped job $SLURM_JOB_ID (${cause:-UNKNOWN}); the run saved a checkpoint unless" \
         "SLURM killed it first. Resume it with: $LMLAB_RESUME_COMMAND"
elif [ "$warned" = 1 ] && [ "$status" -eq 0 ]; then
    # Stopped with a checkpoint: back into the queue; the requeued job runs this script again,
    # which resumes from the newest checkpoint (a run that had just finished says so and exits).
    echo "lmlab: preemption warning: checkpoint saved, requeueing job $SLURM_JOB_ID"
    scontrol requeue "$SLURM_JOB_ID"
fi
exit "$status"
"""
