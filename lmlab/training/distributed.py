"""Several processes, one job: the only module that touches ``torch.distributed``.

``torchrun`` (or ``lmlab train --nproc N``, or a SLURM script) starts one process per device and
sets RANK / LOCAL_RANK / WORLD_SIZE; ``setup`` joins the process group (NCCL on CUDA, gloo on CPU),
``wrap`` applies the parallelism (DDP, or FSDP2 ``fully_shard`` per transformer block and the
root), and the helpers below are every collective the rest of lmlab uses. With one process every
helper is a no-op, so the single-process path is exactly what it was.

``data.batch_size`` is the global batch: every rank draws the same global batch from the same
seeded loader and trains on its own rows of it (``shard_rows``), so the data order, the loader
position saved in a checkpoint and the math do not depend on the number of processes.
"""
from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from lmlab.errors import LmlabError, Problem

STRATEGIES = ["ddp", "fsdp"]
BACKENDS = ["auto", "nccl", "gloo"]


@dataclass
class DistributedConfig:
    """How a run launched with several processes (torchrun, ``--nproc``, SLURM) trains."""

    strategy: str = field(default="ddp", metadata={
        "help": "ddp (every rank holds the whole model; gradients all-reduced) or fsdp (FSDP2: "
                "parameters, gradients and optimizer state sharded per transformer block; "
                "transformer only).", "choices": STRATEGIES})
    backend: str = field(default="auto", metadata={
        "help": "auto (nccl on CUDA, gloo on CPU), nccl or gloo.", "choices": BACKENDS})
    timeout_s: int = field(default=600, metadata={
        "help": "How long a collective waits for the other ranks before the job fails (a rank "
                "that died or hangs ends the job within this time)."})


@dataclass(frozen=True)
class Dist:
    """This process's place in the job."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    backend: str | None = None  # None: a single process, no process group
    tag: str = ""  # the same on every rank (rank 0's pid): names shared temporary folders

    @property
    def is_main(self) -> bool:
        """Rank 0 prints and writes the run directory; the others only train."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


SINGLE = Dist()  # a plain process


# what torchrun sets for every worker it starts (TORCHELASTIC_RUN_ID names its job): a shell that
# exports WORLD_SIZE & co. by hand has no torchrun agent, and its rendezvous would wait for ranks that
# never come (distributed.timeout_s, 600 s by default)
TORCHRUN_ENV = ("TORCHELASTIC_RUN_ID", "LOCAL_RANK", "RANK", "WORLD_SIZE")
JOB_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
           "TORCHELASTIC_RUN_ID")


def launched_by_torchrun() -> bool:
    """This process is one of a job's workers, started by torchrun (or ``--nproc``, or SLURM's)."""
    return all(name in os.environ for name in TORCHRUN_ENV)


def launched_world_size() -> int:
    """WORLD_SIZE as set by torchrun (1 for a plain process). A job environment that torchrun did
    not set (exported by hand, or left over from another job) is refused at once, with the fix."""
    raw = os.environ.get("WORLD_SIZE")
    if raw is None:
        return 1
    exported = " ".join(name for name in JOB_ENV if name in os.environ)
    fix = (f"Fix: unset {exported} to train on one process, or start several processes with "
           "`lmlab train ... --nproc N` (this machine), torchrun or `lmlab slurm`.")
    try:
        world = int(raw)
    except ValueError:
        raise LmlabError(f"WORLD_SIZE={raw!r} is not a number of processes. {fix}") from None
    if world < 1:
        raise LmlabError(f"WORLD_SIZE={raw} is not a number of processes (>= 1). {fix}")
    if world > 1 and not launched_by_torchrun():
        missing = " ".join(name for name in TORCHRUN_ENV if name not in os.environ)
        raise LmlabError(f"WORLD_SIZE={raw} is set but this process was not started by torchrun "
                         f"(no {missing}): it would wait for {world - 1} other process(es) that "
                         f"nobody starts. {fix}")
    return world


def check(cfg: DistributedConfig, world_size: int, batch_size: int, grad_accum: int, model_name: str,
          device: str) -> list[Problem]:
    """What cannot work with ``world_size`` processes, found before anything starts."""
    problems = []
    if cfg.timeout_s <= 0:
        problems.append(Problem("distributed.timeout_s", f"must be > 0, got {cfg.timeout_s}.",
                                "set distributed.timeout_s=600"))
    if world_size <= 1:
        return problems
    share = world_size * max(grad_accum, 1)
    if batch_size > 0 and batch_size % share:
        problems.append(Problem("data.batch_size", f"the global batch {batch_size} does not split "
                                f"over {world_size} processes x training.grad_accum={grad_accum} "
                                f"micro-batches ({share}).", f"make data.batch_size a multiple of {share}"))
    if cfg.strategy == "fsdp" and model_name != "transformer":
        problems.append(Problem("distributed.strategy", f"fsdp shards transformer blocks; the "
                                f"{model_name} model has none.", "set distributed.strategy=ddp"))
    if _backend(cfg, device) == "nccl" and not torch.cuda.is_available():
        problems.append(Problem("distributed.backend", "nccl needs CUDA GPUs and none is available.",
                                "set distributed.backend=gloo (CPU) or run on GPUs"))
    return problems


def _backend(cfg: DistributedConfig, device: str) -> str:
    if cfg.backend != "auto":
        return cfg.backend
    on_gpu = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    return "nccl" if on_gpu else "gloo"


def setup(cfg: DistributedConfig, device: str) -> Dist:
    """Join the job's process group (when launched with several processes) and bind this rank's GPU."""
    world = launched_world_size()
    if world <= 1:
        return SINGLE
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    backend = _backend(cfg, device)
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=timedelta(seconds=cfg.timeout_s))
    _Joined.group = True
    d = Dist(rank, local_rank, world, backend)
    return Dist(rank, local_rank, world, backend, tag=str(broadcast_object(os.getpid(), d)))


def teardown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()


class _Joined:
    group = False  # this process joined a process group (``setup``): ``exit_rank`` ends it at once


def exit_rank(code: int) -> int:
    """End this rank of a several-process job now, with ``code``, skipping the interpreter's
    finalization; a process that joined no group just gets ``code`` back.

    Why: with a DDP model, torch 2.13 keeps the gloo process group alive after
    ``destroy_process_group`` (its tcp loop and two work threads outlive it: measured), and a
    process that finalizes with them running aborts now and then ("terminate called without an
    active exception", exit -6) after a run that ended well, failing the whole job. Everything the
    run writes is written and closed by then (checkpoints fsync'd, events, metrics and the rank's
    report replaced atomically); only the standard streams and logging are left to flush."""
    if not _Joined.group:
        return code
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed or broken pipe: nothing left to say
            stream.flush()
    os._exit(code)


# --------------------------------------------------------------------------- collectives


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def main_first(d: Dist, action):
    """``action`` on rank 0, then (once it is done: it may write what they read) on the others."""
    result = action() if d.is_main else None
    barrier(d)
    return result if d.is_main else action()


def sum_(tensor: torch.Tensor, d: Dist) -> torch.Tensor:
    """In place: the sum of ``tensor`` over all ranks (no host sync on GPU)."""
    if d.enabled:
        dist.all_reduce(tensor)
    return tensor


def any_rank(flag: bool, d: Dist) -> bool:
    """True on every rank when ``flag`` is true on any: a decision all ranks must share."""
    if not d.enabled:
        return flag
    device = torch.device("cuda", d.local_rank) if d.backend == "nccl" else torch.device("cpu")
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def gather_objects(obj, d: Dist) -> list:
    """Every rank's ``obj``, in rank order (on every rank)."""
    if not d.enabled:
        return [obj]
    out = [None] * d.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, d: Dist):
    """Rank 0's ``obj`` on every rank."""
    if not d.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def local(tensor: torch.Tensor) -> torch.Tensor:
    """A plain tensor from a DTensor result (FSDP's global gradient norm), else ``tensor``."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def hostnames(d: Dist) -> list[str]:
    return gather_objects(socket.gethostname(), d)


# --------------------------------------------------------------------------- parallelism


def shard_rows(batch: torch.Tensor, d: Dist) -> torch.Tensor:
    """This rank's rows of a global (micro-)batch: ranks take consecutive, disjoint slices."""
    return batch.tensor_split(d.world_size)[d.rank] if d.enabled else batch


def wrap(model: torch.nn.Module, strategy: str, d: Dist) -> torch.nn.Module:
    """DDP around the model, or FSDP2 applied in place (each ``model.layers`` block, then the root;
    on CUDA bf16 parameters with fp32 gradient reduction). One process: the model itself."""
    if not d.enabled:
        return model
    if strategy == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh  # lazy: FSDP (seconds to import)
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard  # lazy: FSDP

        mesh = init_device_mesh("cuda" if d.backend == "nccl" else "cpu", (d.world_size,))
        policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
                  if d.backend == "nccl" else MixedPrecisionPolicy())
        for block in model.layers:
            fully_shard(block, mesh=mesh, mp_policy=policy)
        fully_shard(model, mesh=mesh, mp_policy=policy)
        return model
    device_ids = [d.local_rank] if d.backend == "nccl" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def accumulating(forward: torch.nn.Module, last: bool):
    """Gradient accumulation: synchronise gradients only in the last micro-batch's backward."""
    if last:
        return contextlib.nullcontext()
    if hasattr(forward, "no_sync"):  # DDP
        return forward.no_sync()
    if hasattr(forward, "set_requires_gradient_sync"):  # FSDP2
        forward.set_requires_gradient_sync(False)
        return _resync(forward)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _resync(forward):
    try:
        yield
    finally:
        forward.set_requires_gradient_sync(True)


# --------------------------------------------------------------------------- checkpoint state


def sharded(model: torch.nn.Module) -> bool:
    """FSDP2 holds parameters as DTensor shards."""
    return any(type(p).__name__ == "DTensor" for p in model.parameters())


def full_model_state(model: torch.nn.Module, d: Dist) -> dict[str, torch.Tensor]:
    """The whole model's tensors on CPU, on rank 0 (gathered from the shards under FSDP)."""
    if not sharded(model):
        return model.state_dict()
    sd = _state_dict_api()
    return sd.get_model_state_dict(model, options=sd.StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a whole-model state dict into a (possibly sharded) model."""
    if sharded(model):
        sd = _state_dict_api()
        sd.set_model_state_dict(model, state, options=sd.StateDictOptions(full_state_dict=True, strict=False))
    else:
        model.load_state_dict(state, strict=False)


def save_sharded_optimizer(model, optimizer, folder: Path) -> None:
    """FSDP: every rank writes its shard of the optimizer state with torch.distributed.checkpoint
    (DCP), which can load it again on any number of ranks."""
    import torch.distributed.checkpoint as dcp  # lazy: DCP (seconds to import)

    dcp.save(_state_dict_api().get_optimizer_state_dict(model, optimizer), checkpoint_id=str(folder))


def load_sharded_optimizer(model, optimizer, folder: Path) -> None:
    import torch.distributed.checkpoint as dcp  # lazy: DCP (seconds to import)

    sd = _state_dict_api()
    state = sd.get_optimizer_state_dict(model, optimizer)
    dcp.load(state, checkpoint_id=str(folder))
    sd.set_optimizer_state_dict(model, optimizer, state)


def load_full_optimizer(model, optimizer, state: dict) -> None:
    """A whole optimizer state (``optimizer.pt``) into a sharded model's optimizer."""
    sd = _state_dict_api()
    sd.set_optimizer_state_dict(model, optimizer, state, options=sd.StateDictOptions(full_state_dict=True))


def _state_dict_api():
    """torch.distributed.checkpoint.state_dict: only sharded (FSDP) runs need it."""
    import torch.distributed.checkpoint.state_dict as api  # lazy: DCP (seconds to import)

    return api


# --------------------------------------------------------------------------- launching


def run_torchrun(argv: list[str]) -> dict[int, int] | None:
    """torchrun's agent (``python -m torch.distributed.run ARGV``) in this thread: None when every
    worker succeeded, else the exit code of each failed rank. ``training.launcher`` runs it so, to
    own the signals and say how the job ended; anything else torchrun raises propagates."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError  # lazy: the agent only
    from torch.distributed.run import parse_args, run  # lazy: the agent only (torchrun's CLI)

    try:
        run(parse_args(argv))
    except ChildFailedError as err:
        return {rank: failure.exitcode for rank, failure in err.failures.items()}
    return None
