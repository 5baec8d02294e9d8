"""Checkpoints that are never half-written, and exact restore of everything a run depends on.

Layout: ``<dump_dir>/checkpoints/<step as 10 digits>/`` with ``model.safetensors`` (the consolidated
weights eval and generation read), ``optimizer.pt`` (loaded with ``weights_only=True``) and
``train_state.json`` (step, data-loader position, RNG states, scheduler, loop bookkeeping).

A checkpoint is written into a temporary directory, fsynced, then renamed into place: a directory
with a 10-digit name is always complete. Leftover temporary directories from a killed save are
removed on the next start.
"""
from __future__ import annotations

import base64
import json
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_model
from torch import nn

from lmlab.errors import LmlabError, Problem

MODEL_FILE, OPTIMIZER_FILE, STATE_FILE = "model.safetensors", "optimizer.pt", "train_state.json"
_TMP_PREFIX = ".tmp-"


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


def checkpoints_root(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def step_name(step: int) -> str:
    return f"{step:010d}"


# --------------------------------------------------------------------------- saving


def save_checkpoint(run_dir: Path, name: str, model: nn.Module, optimizer, state: dict) -> Path:
    """Atomically write checkpoint ``name`` (a step name, ``best`` or ``final``); returns its path."""
    root = checkpoints_root(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f"{_TMP_PREFIX}{name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_model(model, str(tmp / MODEL_FILE))
    if optimizer is not None:
        torch.save(optimizer.state_dict(), tmp / OPTIMIZER_FILE)
    (tmp / STATE_FILE).write_text(json.dumps(state), encoding="utf-8")
    _fsync_tree(tmp)
    return _replace_dir(tmp, root / name)


def link_checkpoint(run_dir: Path, source: Path, name: str) -> Path:
    """Publish an existing checkpoint under another name (``best``/``final``) via hard links."""
    root = checkpoints_root(run_dir)
    tmp = root / f"{_TMP_PREFIX}{name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for item in source.iterdir():
        try:
            os.link(item, tmp / item.name)
        except OSError:  # filesystems without hard links
            shutil.copy2(item, tmp / item.name)
    _fsync_tree(tmp)
    return _replace_dir(tmp, root / name)


def _replace_dir(tmp: Path, target: Path) -> Path:
    if target.exists():
        old = target.with_name(f"{_TMP_PREFIX}old-{target.name}-{os.getpid()}")
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)
    _fsync_dir(target.parent)
    return target


def _fsync_tree(directory: Path) -> None:
    for item in directory.iterdir():
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
        shutil.rmtree(path, ignore_errors=True)


def remove_partial_checkpoints(run_dir: Path) -> list[Path]:
    """Remove temporary directories left by a save that was killed; returns what was removed."""
    root = checkpoints_root(run_dir)
    removed = []
    for path in sorted(root.glob(f"{_TMP_PREFIX}*")) if root.is_dir() else []:
        if not _restore_replaced(root, path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _restore_replaced(root: Path, path: Path) -> bool:
    """A kill between the two renames of ``_replace_dir`` leaves ``best``/``final`` only as its
    ``old-`` copy: put it back rather than delete the only copy."""
    prefix = f"{_TMP_PREFIX}old-"
    if not path.name.startswith(prefix):
        return False
    name = path.name[len(prefix):].rsplit("-", 1)[0]
    if (root / name).exists():
        return False
    os.replace(path, root / name)
    return True


# --------------------------------------------------------------------------- loading


def step_checkpoints(run_dir: Path) -> list[Path]:
    """Complete step checkpoints, oldest first."""
    root = checkpoints_root(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir()
             if p.is_dir() and p.name.isdigit() and len(p.name) == 10 and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name))


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = step_checkpoints(run_dir)
    return found[-1] if found else None


def read_train_state(path: Path) -> dict:
    try:
        return json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise LmlabError(f"checkpoint {path} has an unreadable {STATE_FILE}: {err}. Fix: delete "
                         "that checkpoint directory to resume from the previous one.") from None


def load_model_weights(model: nn.Module, path: Path) -> None:
    """Load ``model.safetensors`` into ``model``, naming any tensor whose name or shape differs."""
    file = Path(path) / MODEL_FILE if Path(path).is_dir() else Path(path)
    try:
        saved = load_file(str(file))
    except (OSError, SafetensorError) as err:
        raise LmlabError(f"cannot read weights {file}: {err}. The file is missing or truncated; "
                         "use another checkpoint.") from None
    expected = model.state_dict()
    for name, tensor in saved.items():
        if name in expected and tuple(expected[name].shape) != tuple(tensor.shape):
            raise LmlabError(
                f"checkpoint {file} does not fit this model: tensor {name!r} has shape "
                f"{tuple(tensor.shape)} in the checkpoint but {tuple(expected[name].shape)} in the "
                "model. Fix: use the model config the checkpoint was trained with.")
    unexpected = sorted(set(saved) - set(expected))
    if unexpected:
        raise LmlabError(f"checkpoint {file} has tensors this model lacks: {unexpected[:5]}. Fix: "
                         "use the model config the checkpoint was trained with.")
    missing = model.load_state_dict(saved, strict=False).missing_keys
    _check_missing_are_tied(model, missing, file)


def _check_missing_are_tied(model: nn.Module, missing: list[str], file: Path) -> None:
    # safetensors stores a tied tensor once; its other name is legitimately "missing".
    params = dict(model.named_parameters(remove_duplicate=False))
    unique = {id(p): n for n, p in model.named_parameters()}
    really_missing = [m for m in missing if m not in params or unique.get(id(params[m])) == m]
    if really_missing:
        raise LmlabError(f"checkpoint {file} lacks tensors {really_missing[:5]}. Fix: use the "
                         "model config the checkpoint was trained with.")


def load_optimizer(optimizer, path: Path) -> None:
    try:
        state = torch.load(path / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors have many types; all mean "unusable file"
        raise LmlabError(f"cannot load optimizer state {path / OPTIMIZER_FILE}: "
                         f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}. "
                         "Only plain tensors are accepted (weights_only=True).") from None
    optimizer.load_state_dict(state)


# --------------------------------------------------------------------------- RNG


def rng_state() -> dict:
    """Every RNG a run touches (python, numpy global, torch CPU and CUDA) as JSON."""
    state = {"python": _jsonable(random.getstate()),
             "numpy": _jsonable(np.random.get_state()),
             "torch": _b64(torch.get_rng_state())}
    if torch.cuda.is_available():
        state["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_unb64(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_unb64(s) for s in state["cuda"]])


def _b64(tensor: torch.Tensor) -> str:
    return base64.b64encode(tensor.numpy().tobytes()).decode("ascii")


def _unb64(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)


def _jsonable(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    return value
