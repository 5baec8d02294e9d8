"""Load a trained model for evaluation or generation from one checkpoint of a run.

The caller resolves the checkpoint (``rundir.resolve_checkpoint``) and loads the run's config
(``saved_config_file`` says where it is): the config layer sits above evaluation, so the apps load
it and pass it in, and evaluation names what it reads of it (``RunSettings``). The model is
rebuilt from the resolved model config stored in the checkpoint's ``train_state.json`` (vocab_size
and max_seq_len already filled in), so evaluation never depends on re-deriving sizes from the data;
older checkpoints without that entry fall back to the run's config resolved with the saved
tokenizer.

A run that is still training deletes old step checkpoints (``checkpoint.keep``: renamed, then
removed) and republishes ``best``/``final`` at any moment, so the files read are held open from the
start (``hold_checkpoint``): a folder deleted mid-read is still read whole, from the same
checkpoint. One that vanished before it could be opened is replaced by the run's newest checkpoint
when the caller resolved it from the run directory (``newest_if_gone``), else refused with the fix.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import torch

from lmlab.data.sources import DataConfig
from lmlab.data.tokenizers import Tokenizer, load_tokenizer
from lmlab.errors import LmlabError
from lmlab.evaluation.config import EvalConfig
from lmlab.models.registry import MODELS, build_model, model_config_class, resolve_model_config
from lmlab.models.weights import load_model_weights
from lmlab.rundir import (CONFIG_FILE, MODEL_FILE, STATE_FILE, TOKENIZER_FILE, is_step_name,
                          resolve_checkpoint)
from lmlab.runtime import resolve_device


class RunSettings(Protocol):
    """The sections of a run's config that evaluation reads, each typed by the layer that owns it.
    ``lmlab.config.RunConfig`` has them all: the application loads it (the config layer sits above
    evaluation) and passes it in."""

    dump_dir: str  # the run directory
    precision: str  # auto | fp32 | bf16 | fp16: the harness tasks' autocast (``scoring.eval_autocast``)
    model: Any  # a model family's config dataclass (``models.registry.MODELS``)
    data: DataConfig  # the tokenizer settings and the validation text
    eval: EvalConfig


@dataclass
class LoadedRun:
    """A model ready for evaluation (eval mode, no grad needed) and everything it came with."""

    model: torch.nn.Module  # a LanguageModel
    tokenizer: Tokenizer
    config: RunSettings
    checkpoint_dir: Path
    run_dir: Path
    step: int | None = None
    # (st_dev, st_ino) of the model file read: whether checkpoint_dir still holds these weights
    weights_id: tuple[int, int] | None = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def saved_config_file(checkpoint_dir: Path, run_dir: Path) -> Path:
    """The run's ``config.yaml``, without which a checkpoint cannot be interpreted."""
    config_file = Path(run_dir) / CONFIG_FILE
    if not config_file.is_file():
        raise LmlabError(f"{config_file} is missing, so the checkpoint {checkpoint_dir} cannot be "
                         "interpreted. Fix: keep checkpoints inside their run directory "
                         "(<run>/checkpoints/<step>).")
    return config_file


def load_for_eval(checkpoint_dir: Path, run_dir: Path, cfg: RunSettings,
                  device: str | torch.device = "cpu", *, newest_if_gone: bool = False) -> LoadedRun:
    """Model (eval mode, on ``device``; ``auto`` allowed) and tokenizer of ``checkpoint_dir``, a
    checkpoint of ``run_dir``, whose saved config (with any overrides) is ``cfg``.

    ``newest_if_gone``: the checkpoint was chosen for the caller (a run directory was passed), so
    if retention deletes it before it is opened, the run's newest checkpoint is read instead; the
    returned ``checkpoint_dir`` says which was read."""
    ckpt, run_dir = Path(checkpoint_dir), Path(run_dir)
    tok_file = run_dir / TOKENIZER_FILE
    if not tok_file.is_file():
        raise LmlabError(f"{tok_file} is missing: the model's vocabulary is unknown. Fix: copy the "
                         f"run's {TOKENIZER_FILE} back into {run_dir}.")
    tokenizer = load_tokenizer(tok_file)
    with hold_checkpoint(ckpt, run_dir, newest_if_gone) as held:
        state = held.train_state()
        model_cfg = _model_config(state.get("model"), cfg, tokenizer, held.folder)
        _check_tokenizer_fits(tokenizer, tok_file, cfg, model_cfg, held.folder)
        model = build_model(model_cfg)
        _load_held_weights(model, held)
        weights_id = held.file_id(MODEL_FILE)
    model.to(resolve_device(str(device))).eval()
    return LoadedRun(model, tokenizer, cfg, held.folder, run_dir, state.get("step"), weights_id)


# --------------------------------------------------------------------------- holding a checkpoint

_HOLD_TRIES = 5  # a checkpoint that vanishes or changes this often while being opened is refused


@dataclass
class HeldCheckpoint:
    """A checkpoint's files, open: deleting or replacing the folder no longer changes what is read."""

    folder: Path
    files: dict[str, BinaryIO] = field(default_factory=dict)  # MODEL_FILE, and STATE_FILE if any

    def __enter__(self) -> HeldCheckpoint:
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.files.values():
            handle.close()

    def file_id(self, name: str) -> tuple[int, int]:
        info = os.fstat(self.files[name].fileno())
        return info.st_dev, info.st_ino

    def unchanged(self, name: str) -> bool:
        """Whether the folder still names the held file (then reading the path reads it)."""
        return named_file_id(self.folder / name) == self.file_id(name)

    def readable_path(self, name: str) -> Path:
        """A path that opens the held file itself, even once it is deleted (Linux; /dev/fd else)."""
        fd = self.files[name].fileno()
        proc = Path(f"/proc/self/fd/{fd}")
        return proc if proc.parent.is_dir() else Path(f"/dev/fd/{fd}")

    def train_state(self) -> dict:
        """``train_state.json`` as read through the held handle ({} for a folder of bare weights)."""
        handle = self.files.get(STATE_FILE)
        if handle is None:
            return {}
        try:
            state = json.loads(handle.read().decode("utf-8"))
        except ValueError as err:
            state = err
        if not isinstance(state, dict):
            raise LmlabError(f"checkpoint {self.folder} has an unreadable {STATE_FILE}: {state}. Fix: "
                             "delete that checkpoint directory to resume from the previous one.")
        return state


def named_file_id(path: Path) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def hold_checkpoint(checkpoint_dir: Path, run_dir: Path, newest_if_gone: bool = False) -> HeldCheckpoint:
    """The files of ``checkpoint_dir`` opened, as one consistent checkpoint (both still in the folder
    once both are open). One deleted meanwhile (``checkpoint.keep`` of a run still training) is
    replaced by the run's newest when ``newest_if_gone``, else refused with the fix; best/ and
    final/, which are republished rather than deleted, are opened again."""
    ckpt = Path(checkpoint_dir)
    for _ in range(_HOLD_TRIES):
        held = _try_hold(ckpt)
        if held is not None:
            return held
        if is_step_name(ckpt.name) and not ckpt.exists():
            if not newest_if_gone:
                raise _vanished(ckpt, run_dir)
            ckpt = resolve_checkpoint(run_dir)[0]
        else:
            time.sleep(0.05)  # being republished (best/final), or a file swapped while opening
    raise LmlabError(f"checkpoint {ckpt} vanished or changed each of the {_HOLD_TRIES} times lmlab "
                     "tried to read it: the run is still training and replacing it faster than it can "
                     f"be opened. Fix: try again, or pass one of the run's step checkpoints "
                     f"({Path(run_dir) / 'checkpoints'}/<step>).")


def _try_hold(ckpt: Path) -> HeldCheckpoint | None:
    """``ckpt``'s files opened, or None when the folder vanished or changed while they were opened."""
    held = HeldCheckpoint(ckpt)
    try:
        for name in (STATE_FILE, MODEL_FILE):
            _open_into(held, name)
        if MODEL_FILE not in held.files:
            if ckpt.is_dir() and all(held.unchanged(name) for name in held.files):
                raise LmlabError(f"{ckpt / MODEL_FILE} is missing. Fix: pass another checkpoint "
                                 "of the run.")
        elif all(held.unchanged(name) for name in held.files):
            return held
    except BaseException:
        held.__exit__()
        raise
    held.__exit__()
    return None


def _open_into(held: HeldCheckpoint, name: str) -> None:
    """Open ``name`` of the held folder; a missing one is left out (the caller decides)."""
    path = held.folder / name
    try:
        held.files[name] = open(path, "rb")
    except FileNotFoundError:
        return
    except OSError as err:
        raise LmlabError(f"cannot read {path}: {err.strerror or err}. Fix: make it readable, or pass "
                         "another checkpoint of the run.") from None


def _vanished(ckpt: Path, run_dir: Path) -> LmlabError:
    return LmlabError(f"checkpoint {ckpt} was deleted before it could be read (the run is still "
                      "training, and its checkpoint.keep retention removes old step checkpoints). "
                      f"Fix: pass the run directory ({run_dir}) to take its newest checkpoint, or a "
                      "checkpoint that is kept (checkpoints/final, checkpoints/best).")


def _load_held_weights(model, held: HeldCheckpoint) -> None:
    """Read through the checkpoint's own path while it names the held file (so that every message
    names the real file), else through the held handle: a read that failed or may have read other
    weights because the folder was deleted or republished meanwhile is done again from the handle."""
    try:
        load_model_weights(model, held.folder / MODEL_FILE)
        if held.unchanged(MODEL_FILE):
            return
    except LmlabError:
        if held.unchanged(MODEL_FILE):
            raise
    load_model_weights(model, held.readable_path(MODEL_FILE))


def _check_tokenizer_fits(tokenizer: Tokenizer, tok_file: Path, cfg: RunSettings, model_cfg: Any,
                          ckpt: Path) -> None:
    """The run's tokenizer.json must be the one the checkpoint was trained with: same kind as the
    run's config says, and no id beyond the model's embedding table."""
    vocab = getattr(model_cfg, "vocab_size", 0) or 0
    kind = cfg.data.tokenizer.name if not cfg.data.tokenizer.path else tokenizer.name
    if tokenizer.name != kind or (vocab and tokenizer.vocab_size > vocab):
        raise LmlabError(
            f"{tok_file} does not match checkpoint {ckpt}: it is a {tokenizer.name} tokenizer with "
            f"{tokenizer.vocab_size} ids, but the run was trained with a {kind} tokenizer"
            f"{f' and the model has {vocab} ids' if vocab else ''}. Fix: restore the run's own "
            f"{TOKENIZER_FILE} (the one written when it started training), or evaluate a checkpoint "
            "of the run this tokenizer belongs to.")


def _model_config(saved: dict | None, cfg: RunSettings, tokenizer: Tokenizer, ckpt: Path) -> Any:
    """The model's dataclass from train_state.json's "model" dict, else from the run config."""
    if saved is None:
        # Checkpoints written before the resolved model config was stored: re-derive the two
        # data-dependent sizes exactly as training did.
        return resolve_model_config(cfg.model, tokenizer.vocab_size, cfg.data.seq_len)
    name = saved.get("name")
    if name not in MODELS:
        raise LmlabError(f"{ckpt / STATE_FILE} names an unknown model family {name!r}. Fix: use an "
                         f"lmlab version that has it (known: {sorted(MODELS)}).")
    cls = model_config_class(name)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(saved) - known)
    if unknown:
        raise LmlabError(f"{ckpt / STATE_FILE} has model keys this lmlab does not know: {unknown}. "
                         "Fix: evaluate with the lmlab version that trained the checkpoint.")
    return cls(**saved)
