"""Load a trained model for evaluation or generation from one checkpoint of a run.

The caller resolves the checkpoint (``rundir.resolve_checkpoint``) and loads the run's config
(``saved_config_file`` says where it is): the config layer sits above evaluation, so the apps load
it. The model is rebuilt from the resolved model config stored in the checkpoint's
``train_state.json`` (vocab_size and max_seq_len already filled in), so evaluation never depends on
re-deriving sizes from the data; older checkpoints without that entry fall back to the run's
config resolved with the saved tokenizer.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lmlab.data.tokenizers import Tokenizer, load_tokenizer
from lmlab.errors import LmlabError
from lmlab.models.registry import MODELS, build_model, model_config_class, resolve_model_config
from lmlab.rundir import (CONFIG_FILE, MODEL_FILE, STATE_FILE, TOKENIZER_FILE, is_checkpoint,
                          read_train_state)
from lmlab.training.checkpoint import load_model_weights
from lmlab.training.runtime import resolve_device

# The run's config arrives as an argument (``lmlab.config.RunConfig``, loaded by the application):
# evaluation sits below config in the layers and never imports it.
RunConfig = Any


@dataclass
class LoadedRun:
    """A model ready for evaluation (eval mode, no grad needed) and everything it came with."""

    model: Any  # a LanguageModel (nn.Module)
    tokenizer: Tokenizer
    config: RunConfig
    checkpoint_dir: Path
    run_dir: Path
    step: int | None = None

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


def load_for_eval(checkpoint_dir: Path, run_dir: Path, cfg: RunConfig,
                  device: str | torch.device = "cpu") -> LoadedRun:
    """Model (eval mode, on ``device``; ``auto`` allowed) and tokenizer of ``checkpoint_dir``, a
    checkpoint of ``run_dir``, whose saved config (with any overrides) is ``cfg``."""
    ckpt, run_dir = Path(checkpoint_dir), Path(run_dir)
    tok_file = run_dir / TOKENIZER_FILE
    if not tok_file.is_file():
        raise LmlabError(f"{tok_file} is missing: the model's vocabulary is unknown. Fix: copy the "
                         f"run's {TOKENIZER_FILE} back into {run_dir}.")
    tokenizer = load_tokenizer(tok_file)
    if not (ckpt / MODEL_FILE).is_file():
        raise LmlabError(f"{ckpt / MODEL_FILE} is missing. Fix: pass another checkpoint of the run.")
    state = read_train_state(ckpt) if is_checkpoint(ckpt) else {}
    model_cfg = _model_config(state.get("model"), cfg, tokenizer, ckpt)
    _check_tokenizer_fits(tokenizer, tok_file, cfg, model_cfg, ckpt)
    model = build_model(model_cfg)
    load_model_weights(model, ckpt)
    model.to(resolve_device(str(device))).eval()
    return LoadedRun(model, tokenizer, cfg, ckpt, run_dir, state.get("step"))


def _check_tokenizer_fits(tokenizer: Tokenizer, tok_file: Path, cfg: RunConfig, model_cfg: Any,
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


def _model_config(saved: dict | None, cfg: RunConfig, tokenizer: Tokenizer, ckpt: Path) -> Any:
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
