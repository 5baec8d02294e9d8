"""Reading a model's weights file (``model.safetensors``) back into a model, naming every tensor
whose name or shape does not fit and loading a tied tensor under whichever of its names was stored.

Training reads it when it resumes (``training.parts``), evaluation, generation and export when they
load a checkpoint (``evaluation.loading``): both sit above ``models``, so the reader lives here.
Checkpoints write it (``training.checkpoint.save_model``).
"""
from __future__ import annotations

import json
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from lmlab.errors import LmlabError
from lmlab.rundir import MODEL_FILE, STATE_FILE, fix_for_damaged_checkpoint


def load_model_weights(model: nn.Module, path: Path) -> None:
    """Load ``model.safetensors`` into ``model``, naming any tensor whose name or shape differs."""
    file = Path(path) / MODEL_FILE if Path(path).is_dir() else Path(path)
    try:
        saved = load_file(str(file))
    except (OSError, SafetensorError) as err:
        raise LmlabError(f"cannot read weights {file}: {err}. The file is missing, truncated or "
                         f"corrupt. Fix: {fix_for_damaged_checkpoint(file.parent)}") from None
    expected = model.state_dict()
    for name, tensor in saved.items():
        if name in expected and tuple(expected[name].shape) != tuple(tensor.shape):
            raise LmlabError(
                f"checkpoint {file} does not fit this model: tensor {name!r} has shape "
                f"{tuple(tensor.shape)} in the checkpoint but {tuple(expected[name].shape)} in the "
                f"model. Fix: use the model config the checkpoint was trained with"
                f"{_saved_model_hint(file.parent)}, or a new dump_dir to start a new run.")
    unexpected = sorted(set(saved) - set(expected))
    if unexpected:
        raise LmlabError(f"checkpoint {file} has tensors this model lacks: {unexpected[:5]}. Fix: "
                         "use the model config the checkpoint was trained with.")
    missing = model.load_state_dict(saved, strict=False).missing_keys
    _check_missing_are_tied(model, missing, set(saved), file)


def _check_missing_are_tied(model: nn.Module, missing: list[str], saved: set[str], file: Path) -> None:
    """A tied tensor is stored once, so its other names are legitimately "missing"; whichever of its
    names was stored loads it (checkpoints written before ``save_model`` fixed the name hold
    ``output.weight``, later ones ``tok_embeddings.weight``)."""
    params = dict(model.named_parameters(remove_duplicate=False))
    stored = {id(params[name]) for name in saved if name in params}
    really_missing = [m for m in missing if m not in params or id(params[m]) not in stored]
    if really_missing:
        raise LmlabError(f"checkpoint {file} lacks tensors {really_missing[:5]}. Fix: use the "
                         "model config the checkpoint was trained with.")


def _saved_model_hint(checkpoint_dir: Path) -> str:
    """' (model.dim=64, ...)' from the checkpoint's train_state.json, when it records the model."""
    try:
        saved = json.loads((checkpoint_dir / STATE_FILE).read_text(encoding="utf-8")).get("model")
    except (OSError, ValueError, AttributeError):
        return ""
    if not isinstance(saved, dict):
        return ""
    shown = [f"model.{k}={v}" for k, v in saved.items()
             if k not in ("vocab_size", "max_seq_len") and v is not None]
    return f" ({' '.join(shown)})" if shown else ""
