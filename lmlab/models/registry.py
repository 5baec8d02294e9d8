"""Model families by name, and the one function that builds a model from its config.

Adding a family: write ``models/<family>.py`` (a config dataclass with a ``name`` field plus an
``nn.Module`` implementing ``LanguageModel``) and add one line to ``MODELS``.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, NamedTuple

import torch
from torch import nn

from lmlab.errors import Problem
from lmlab.models import hf_llama
from lmlab.models.context_vector import ContextVectorConfig, ContextVectorLM
from lmlab.models.protocol import LanguageModel
from lmlab.models.transformer import Transformer, TransformerConfig


class ModelFamily(NamedTuple):
    config_class: type
    model_class: type


MODELS: dict[str, ModelFamily] = {
    "transformer": ModelFamily(TransformerConfig, Transformer),
    "context_vector": ModelFamily(ContextVectorConfig, ContextVectorLM),
}
DEFAULT_MODEL = "transformer"


def model_config_class(name: str) -> type:
    return MODELS[name].config_class


def resolve_model_config(cfg: Any, vocab_size: int, seq_len: int) -> Any:
    """Fill the fields a model config leaves to the data side (0 = 'from the tokenizer / data')."""
    updates = {}
    if getattr(cfg, "vocab_size", None) == 0:
        updates["vocab_size"] = vocab_size
    if getattr(cfg, "max_seq_len", None) == 0:
        updates["max_seq_len"] = seq_len
    return dataclasses.replace(cfg, **updates) if updates else cfg


def build_model(cfg: Any) -> LanguageModel:
    """Instantiate the family named by ``cfg.name`` (parameters initialised on the current device)."""
    return MODELS[cfg.name].model_class(cfg)


# nn.init's in-place initialisers, which the modules' constructors call
_INITIALISERS = ("normal_", "uniform_", "kaiming_uniform_", "trunc_normal_", "ones_", "zeros_", "constant_")


@contextlib.contextmanager
def _initialisers_skipped():
    """``torch.nn.init``'s initialisers as no-ops, for building on the meta device: there they have
    no storage to fill, but their meta decompositions import torch._dynamo on first use (2-3 s),
    which would double the time of `lmlab check` and of every refused command."""
    saved = {name: getattr(nn.init, name) for name in _INITIALISERS}
    for name in _INITIALISERS:
        setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(nn.init, name, fn)


def build_on_meta(cfg: Any) -> LanguageModel:
    """The model with shapes but no storage: instant, for parameter counts and shape checks."""
    with torch.device("meta"), _initialisers_skipped():
        return build_model(cfg)


def model_size(model: LanguageModel, cfg: Any, seq_len: int, batch_size: int) -> dict:
    """The size facts ``lmlab info`` prints, training records in provenance.json ("model_size")
    and reports show: parameters, training FLOPs per token (with the formula's name), tokens per step."""
    flops, formula = model.flops_per_token(seq_len)
    return {"model": cfg.name, "params": model.num_params(), "flops_per_token": int(flops),
            "formula": formula, "vocab_size": getattr(cfg, "vocab_size", None), "seq_len": seq_len,
            "tokens_per_step": batch_size * seq_len}


def check(cfg: Any, vocab_size: int, seq_len: int) -> list[Problem]:
    """Sizes must be positive; anything the family's constructor rejects is reported too."""
    problems = []
    for f in dataclasses.fields(cfg):
        value, key = getattr(cfg, f.name), f"model.{f.name}"
        if f.name in ("vocab_size", "max_seq_len"):
            if value < 0:
                problems.append(Problem(key, f"must be >= 0 (0 = automatic), got {value}.", f"set {key}=0"))
        elif f.name == "dropout" and not 0 <= value < 1:
            problems.append(Problem(key, f"must be in [0, 1), got {value}.", f"set {key}=0.1"))
        elif isinstance(value, int) and not isinstance(value, bool) and value <= 0:
            problems.append(Problem(key, f"must be > 0, got {value}.", f"set {key} to a positive integer"))
    max_len = getattr(cfg, "max_seq_len", 0)
    if max_len and seq_len > max_len:
        problems.append(Problem("model.max_seq_len", f"{max_len} is shorter than data.seq_len={seq_len}.",
                                "raise model.max_seq_len or set it to 0 (= data.seq_len)"))
    if problems:
        return problems
    try:
        model = build_on_meta(resolve_model_config(cfg, vocab_size, max(seq_len, 1)))
    except ValueError as err:  # the family's own shape rules (e.g. dim % n_heads)
        return [Problem("model", str(err), "adjust the model sizes named above")]
    if getattr(cfg, "init_from", ""):
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        problems += hf_llama.check(cfg, shapes, vocab_size)
    return problems
