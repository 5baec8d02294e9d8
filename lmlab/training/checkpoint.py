"""Checkpoints that are never half-written: saving, publishing (best/final), pruning, cleaning up
after a kill, and loading the optimizer state back.

Layout: ``<dump_dir>/checkpoints/<step as 10 digits>/`` with ``model.safetensors`` (the consolidated
weights eval and generation read), ``optimizer.pt`` (loaded with ``weights_only=True``) and
``train_state.json`` (step, data-loader position, RNG states, scheduler, loop bookkeeping).

A checkpoint is written into a temporary directory, fsynced, then renamed into place: a directory
with a 10-digit name is always complete. Leftover temporary directories from a killed save are
removed on the next start; a save that fails (a full disk, in whichever words the writer says it)
removes its own and names the last good checkpoint. A tied tensor is stored once, under the same
name on one process and on several (``save_model``; ``models.weights`` reads them back, whichever
name was stored); the RNG states a checkpoint holds are ``lmlab.rng``'s.
"""
from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file
from torch import nn

from lmlab.errors import LmlabError, Problem
from lmlab.rundir import (MODEL_FILE, OPTIMIZER_DIR, OPTIMIZER_FILE, STATE_FILE, TMP_PREFIX,
                          checkpoints_root, fix_for_damaged_checkpoint, latest_checkpoint,
                          step_checkpoints)
from lmlab.training import distributed
from lmlab.training.distributed import SINGLE, Dist


@dataclass
class CheckpointConfig:
    """When checkpoints are written and how many are kept."""

    every: int = field(default=1000, metadata={"help": "Save a checkpoint every this many steps."})
    keep: int = field(default=1, metadata={
        "help": "Keep the newest this many step checkpoints (0 keeps all); best/ and final/ are "
                "never deleted."})


def check(cfg: CheckpointConfig) -> list[Problem]:
    problems = []
    if cfg.every <= 0:
        problems.append(Problem("checkpoint.every", f"must be > 0, got {cfg.every}.",
                                "set checkpoint.every=100"))
    if cfg.keep < 0:
        problems.append(Problem("checkpoint.keep", f"must be >= 0, got {cfg.keep}.",
                                "set checkpoint.keep=1 (or 0 to keep all)"))
    return problems


# --------------------------------------------------------------------------- saving


def save_checkpoint(run_dir: Path, name: str, model: nn.Module, optimizer, state: dict,
                    d: Dist = SINGLE) -> Path:
    """Atomically write checkpoint ``name`` (a step name, ``best`` or ``final``); returns its path.

    With several processes every rank calls it: rank 0 writes the whole weights (gathered from
    the shards under FSDP) and the train state; the optimizer state is written by rank 0 when every
    rank holds all of it (DDP) or by every rank, sharded, through torch.distributed.checkpoint
    (FSDP). The ranks agree that every part was written before rank 0 renames the folder into
    place, so a step folder is complete however many processes wrote it.
    """
    root = checkpoints_root(run_dir)
    tmp, target = root / f"{TMP_PREFIX}{name}-{d.tag or os.getpid()}", root / name
    _agree(_attempt(d.is_main, lambda: _fresh_dir(tmp)), d, run_dir, tmp, target)
    whole = distributed.full_model_state(model, d) if distributed.sharded(model) else None
    error = None
    if distributed.sharded(model):
        error = _attempt(True, lambda: distributed.save_sharded_optimizer(model, optimizer, tmp / OPTIMIZER_DIR))
    if d.is_main:
        error = error or _attempt(True, lambda: _write_main_parts(tmp, model, whole, optimizer, state))
    _agree(error, d, run_dir, tmp, target)
    _agree(_attempt(d.is_main, lambda: _replace_dir(tmp, target)), d, run_dir, tmp, target)
    return target


def _fresh_dir(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir()


def _write_main_parts(tmp: Path, model: nn.Module, whole: dict | None, optimizer, state: dict) -> None:
    save_model(model, str(tmp / MODEL_FILE), whole)
    if whole is None and optimizer is not None:
        torch.save(optimizer.state_dict(), tmp / OPTIMIZER_FILE)
    (tmp / STATE_FILE).write_text(json.dumps(state), encoding="utf-8")
    _fsync_tree(tmp)


def save_model(model: nn.Module, filename: str, whole: dict | None = None) -> None:
    """``model``'s weights (or ``whole``, its state gathered from FSDP shards) as safetensors, each
    tied tensor once under its first name (``tok_embeddings.weight``), on every path.

    Not safetensors' ``save_model``: that one picks which name of a tied tensor to keep by itself
    (``output.weight`` for the transformer), so one-process and DDP checkpoints named it
    differently from FSDP's and tied runs could not be loaded back."""
    save_file(_untied(model.state_dict() if whole is None else whole, model), filename)


def _untied(state: dict, model: nn.Module) -> dict:
    """A state dict with each tied tensor once, under the first name ``named_parameters`` gives it."""
    first = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        first.setdefault(id(param), name)
    tied = {name for name, param in model.named_parameters(remove_duplicate=False) if first[id(param)] != name}
    return {k: v.contiguous() for k, v in state.items() if k not in tied}


# What the writers say when the disk cuts a write short: torch.save's zip writer reports ENOSPC
# as a RuntimeError ("unexpected pos 315520 vs 315408", errno lost); safetensors as a
# SafetensorError ("Error while serializing: I/O error: No space left on device (os error 28)").
_SHORT_WRITE = ("unexpected pos", "write")
_SERIALIZING = "error while serializing"
_NEARLY_FULL = 64 << 20  # bytes left after a short write that mean the disk filled up


def _attempt(run: bool, action) -> Exception | None:
    """Run ``action`` (when ``run``); a failed write is returned, for the ranks to agree on."""
    if not run:
        return None
    try:
        action()
    except (OSError, RuntimeError, SafetensorError) as err:
        if not _is_write_error(err):
            raise
        return err
    return None


def _is_write_error(err: Exception) -> bool:
    """An OSError, or a writer's own words for one (``_SHORT_WRITE``, ``_SERIALIZING``)."""
    text = str(err).lower()
    if isinstance(err, SafetensorError):
        return _SERIALIZING in text
    return isinstance(err, OSError) or any(words in text for words in _SHORT_WRITE)


def _agree(error: Exception | None, d: Dist, run_dir: Path, tmp: Path, target: Path) -> None:
    """Every rank learns whether any rank failed; then all raise the same user error."""
    if distributed.any_rank(error is not None, d):
        raise _save_error(run_dir, tmp, target, error or OSError("another process of the job could "
                                                                 "not write its part")) from None


def _save_error(run_dir: Path, tmp: Path, target: Path, err: Exception) -> LmlabError:
    """A failed save (disk full, quota, read-only disk): drop the partial copy, keep every earlier
    checkpoint, and say how to go on."""
    full = _disk_full(err, tmp.parent)  # measured before the partial copy frees its space
    shutil.rmtree(tmp, ignore_errors=True)
    if full:
        why, fix = "the disk is full", f"free disk space on the disk holding {target.parent}"
    elif "unexpected pos" in str(err):
        why = "a write was cut short, though the disk has space: a disk quota or a failing disk"
        fix = f"check your quota (quota -s) and the disk holding {target.parent}, or set dump_dir elsewhere"
    else:
        why, fix = "writing failed", f"make {target.parent} writable (or set dump_dir elsewhere)"
    latest = latest_checkpoint(run_dir)
    return LmlabError(
        f"cannot save checkpoint {target}: {why} ({_reason(err, full)}). The partial save was removed "
        f"and earlier checkpoints are intact (latest: {latest or 'none'}). Fix: {fix}, then run the "
        "same command again to resume from the latest checkpoint.")


def _disk_full(err: Exception, folder: Path) -> bool:
    """ENOSPC or EDQUOT however it is reported; a short write (errno lost) when the disk has next to
    no space left."""
    text = str(err).lower()
    if getattr(err, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "space" in text:
        return True
    return "unexpected pos" in text and _free_bytes(folder) < _NEARLY_FULL


def _free_bytes(folder: Path) -> int:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return _NEARLY_FULL  # unknown: not called full


def _reason(err: Exception, full: bool) -> str:
    """The system's words for the failure, not a writer's internals (``[enforce fail at ...]``)."""
    if getattr(err, "strerror", None):
        return err.strerror
    text = (str(err).splitlines() or [type(err).__name__])[0].split("] . ", 1)[-1]
    if full and "space" not in text.lower():
        return os.strerror(errno.ENOSPC)
    return text.split(": ")[-1] if isinstance(err, SafetensorError) else text


def link_checkpoint(run_dir: Path, source: Path, name: str) -> Path:
    """Publish an existing checkpoint under another name (``best``/``final``) via hard links."""
    root = checkpoints_root(run_dir)
    tmp = root / f"{TMP_PREFIX}{name}-{os.getpid()}"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        _link_tree(source, tmp)
        _fsync_tree(tmp)
        return _replace_dir(tmp, root / name)
    except OSError as err:
        raise _save_error(run_dir, tmp, root / name, err) from None


def _link_tree(source: Path, target: Path) -> None:
    for item in source.iterdir():
        if item.is_dir():  # the sharded optimizer's folder
            (target / item.name).mkdir()
            _link_tree(item, target / item.name)
            continue
        try:
            os.link(item, target / item.name)
        except OSError:  # filesystems without hard links
            shutil.copy2(item, target / item.name)


def _replace_dir(tmp: Path, target: Path) -> Path:
    if target.exists():
        old = target.with_name(f"{TMP_PREFIX}old-{target.name}-{os.getpid()}")
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)
    _fsync_dir(target.parent)
    return target


def _fsync_tree(directory: Path) -> None:
    for item in directory.iterdir():
        if item.is_dir():
            _fsync_tree(item)
            continue
        with open(item, "rb") as handle:
            os.fsync(handle.fileno())
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` step checkpoints (``best``/``final`` are not step names)."""
    if keep <= 0:
        return
    for path in step_checkpoints(run_dir)[:-keep]:
        # renamed out of the way first: a kill during the deletion must not leave a half-deleted
        # directory under a step name, which would pass for complete (step_checkpoints); the
        # temporary name is cleaned up on the next start
        trash = path.with_name(f"{TMP_PREFIX}pruned-{path.name}-{os.getpid()}")
        os.replace(path, trash)
        shutil.rmtree(trash, ignore_errors=True)


def remove_partial_checkpoints(run_dir: Path) -> list[Path]:
    """Remove temporary directories left by a save that was killed; returns what was removed."""
    root = checkpoints_root(run_dir)
    removed = []
    for path in sorted(root.glob(f"{TMP_PREFIX}*")) if root.is_dir() else []:
        if not _restore_replaced(root, path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _restore_replaced(root: Path, path: Path) -> bool:
    """A kill between the two renames of ``_replace_dir`` leaves ``best``/``final`` only as its
    ``old-`` copy: put it back rather than delete the only copy."""
    prefix = f"{TMP_PREFIX}old-"
    if not path.name.startswith(prefix):
        return False
    name = path.name[len(prefix):].rsplit("-", 1)[0]
    if (root / name).exists():
        return False
    os.replace(path, root / name)
    return True


# --------------------------------------------------------------------------- loading


def load_optimizer(model: nn.Module, optimizer, path: Path) -> None:
    """The checkpoint's optimizer state into ``optimizer`` (over ``model``'s parameters, sharded or
    not). Sharded state (FSDP) loads on any number of processes and strategies; a whole state
    (one process, DDP) into a sharded model is refused with the fix."""
    if (path / OPTIMIZER_DIR).is_dir():
        distributed.load_sharded_optimizer(model, optimizer, path / OPTIMIZER_DIR)
        return
    if distributed.sharded(model):
        raise LmlabError(f"checkpoint {path} holds the whole optimizer state of a one-process or ddp "
                         "run, which an fsdp run cannot load sharded. Fix: resume with "
                         "distributed.strategy=ddp, or start a new dump_dir.")
    file = path / OPTIMIZER_FILE
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # weights_only refused a Python object: never executed
        # torch's own text suggests weights_only=False, exactly what must not be done here: only
        # the line naming the refused object is kept
        found = [line.strip() for line in str(err).splitlines() if "GLOBAL" in line or "nsupported" in line]
        raise LmlabError(
            f"refused to load optimizer state {file}: it holds Python objects other than tensors "
            f"and plain containers{f' ({found[0]})' if found else ''}, which weights_only=True "
            "loading never runs. lmlab never writes such files, so it was altered or comes from "
            f"elsewhere. Fix: do not use this file; {fix_for_damaged_checkpoint(path)}") from None
    except Exception as err:  # a truncated or corrupt file: zip, EOF, ... errors of many types
        first = (str(err).strip().splitlines() or [""])[0].split(". ")[0].rstrip(".")
        raise LmlabError(f"cannot load optimizer state {file}: {type(err).__name__}: {first}. The "
                         f"file is missing, truncated or corrupt. Fix: {fix_for_damaged_checkpoint(path)}"
                         ) from None
    try:
        optimizer.load_state_dict(state)
    except (ValueError, KeyError, TypeError) as err:
        raise LmlabError(f"optimizer state {file} does not fit this model's optimizer ({err}). Fix: "
                         "resume with the optim.* and model settings the run was trained with, or "
                         "use a new dump_dir.") from None
