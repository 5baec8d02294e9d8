"""Run configuration: the component dataclasses composed into ``RunConfig``, and how it is loaded.

Precedence is defaults < YAML file < ``a.b=c`` command-line overrides. Every component owns its
dataclass (``DataConfig`` in ``data/sources.py``, ``OptimConfig`` in ``training/optim.py``, ...);
every field carries a ``help`` string in its metadata, which ``lmlab check --explain`` style tools
and the docs read.

Why a small hand-written loader rather than OmegaConf structured configs: we want *all* problems of a
config reported at once, each with a "did you mean" suggestion and the fix, and YAML 1.1 quirks
(``3e-4`` parses as a string) smoothed over; OmegaConf stops at the first error and does neither.
"""
from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lmlab.atomic import write_text
from lmlab.data.sources import DataConfig
from lmlab.errors import ConfigError, Problem, did_you_mean
from lmlab.evaluation.config import EvalConfig
from lmlab.models.hf_llama import INIT_PREFIX
from lmlab.models.registry import DEFAULT_MODEL, MODELS, model_config_class
from lmlab.reports.config import ReportConfig
from lmlab.training.checkpoint import CheckpointConfig
from lmlab.training.config import TrainingConfig
from lmlab.training.distributed import DistributedConfig
from lmlab.training.metrics import LoggingConfig
from lmlab.training.optim import OptimConfig, scaled_lr


def _model_field_class(raw: Any) -> type | None:
    """The model section's dataclass is chosen by its ``name`` key (see models/registry.py)."""
    name = raw.get("name", DEFAULT_MODEL) if isinstance(raw, dict) else DEFAULT_MODEL
    return model_config_class(name) if name in MODELS else None


@dataclass
class RunConfig:
    """Everything one ``lmlab train`` run needs. Key names follow Lingua where Lingua has them."""

    name: str = field(default="lmlab", metadata={"help": "Run name, shown in logs and reports."})
    dump_dir: str = field(
        default="runs/default",
        metadata={"help": "Run directory: config, metrics, checkpoints. Re-running resumes."},
    )
    seed: int = field(default=42, metadata={"help": "Seed for model init, data order and dropout."})
    steps: int = field(
        default=1000, metadata={"help": "Optimizer steps to train (step mode, when epochs is 0)."}
    )
    epochs: int = field(
        default=0, metadata={"help": "Epochs to train; > 0 selects epoch mode instead of steps."}
    )
    device: str = field(
        default="auto",
        metadata={"help": "auto (cuda if available), cpu or cuda.", "choices": ["auto", "cpu", "cuda"]},
    )
    precision: str = field(
        default="auto",
        metadata={
            "help": "auto (bf16 on CUDA, fp32 on CPU), fp32, bf16 or fp16 (CUDA only, with a "
            "GradScaler). Validation runs under the same autocast dtype as training.",
            "choices": ["auto", "fp32", "bf16", "fp16"],
        },
    )
    compile: bool | None = field(default=None, metadata={
        "help": "Wrap the model in torch.compile: true, false, or null (auto: on CUDA, off on CPU, "
                "where compiling costs more than it saves for small models)."})
    model: Any = field(
        default_factory=lambda: model_config_class(DEFAULT_MODEL)(),
        metadata={"help": f"Model; 'name' picks the family: {sorted(MODELS)}.",
                  "class_from": _model_field_class},
    )
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "Data and tokenizer."})
    optim: OptimConfig = field(default_factory=OptimConfig, metadata={"help": "Optimizer and LR."})
    training: TrainingConfig = field(
        default_factory=TrainingConfig, metadata={"help": "Training-loop behaviour."}
    )
    checkpoint: CheckpointConfig = field(
        default_factory=CheckpointConfig, metadata={"help": "Checkpoint cadence and retention."}
    )
    eval: EvalConfig = field(default_factory=EvalConfig, metadata={"help": "Evaluation."})
    logging: LoggingConfig = field(default_factory=LoggingConfig, metadata={"help": "Logging."})
    report: ReportConfig = field(default_factory=ReportConfig, metadata={
        "help": "What `lmlab report` shows beyond the logs (samples `lmlab eval` writes)."})
    distributed: DistributedConfig = field(
        default_factory=DistributedConfig,
        metadata={"help": "Several processes (torchrun, lmlab train --nproc, SLURM)."})


# --------------------------------------------------------------------------- loading


def load_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    """Defaults < YAML at ``path`` < ``overrides`` (``a.b=c``); raises ConfigError listing all problems.

    This checks keys and types only; ``lmlab.preflight.load_and_check`` adds the file and value checks.
    """
    cfg, problems = load_config_collecting(path, overrides)
    if problems:
        raise ConfigError(problems, source=str(path or "defaults"))
    return cfg


def load_config_collecting(path, overrides: list[str] = ()) -> tuple[RunConfig, list[Problem]]:
    """Like ``load_config`` but returns the problems; invalid values fall back to their defaults."""
    problems: list[Problem] = []
    raw = _read_yaml(Path(path), problems) if path else {}
    for item in overrides:
        _apply_override(raw, item, problems)
    cfg = _build(RunConfig, raw, "", problems)
    return cfg, problems + _ignored_steps(cfg, overrides)


def _ignored_steps(cfg: RunConfig, overrides: list[str]) -> list[Problem]:
    """``steps=N`` on the command line of an epoch-mode config (``epochs`` > 0) would be ignored
    silently: the run would train for its epochs instead. (A saved config.yaml holds both keys,
    so only an override says the user asked for steps.)"""
    asked = [item.partition("=")[2].strip() for item in overrides if item.partition("=")[0].strip() == "steps"]
    if not asked or not isinstance(cfg.epochs, int) or cfg.epochs <= 0:
        return []
    return [Problem("steps", f"steps={asked[-1]} has no effect: epochs={cfg.epochs} sets the run's "
                    "length (epoch mode, with early stopping).",
                    f"add epochs=0 to train {asked[-1]} steps, or drop steps=")]


def _read_yaml(path: Path, problems: list[Problem]) -> dict:
    if not path.is_file():
        problems.append(Problem(str(path), "config file not found.", "pass an existing YAML file, "
                                "e.g. configs/quickstart.yaml"))
        return {}
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        reason = getattr(err, "problem", None) or str(err)
        problems.append(Problem(str(path), f"YAML syntax error at {where}: {reason}.",
                                "fix the YAML at that position"))
        return {}
    except UnicodeDecodeError:
        problems.append(Problem(str(path), "not UTF-8 text.", "save the config as UTF-8"))
        return {}
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        problems.append(Problem(str(path), "top level must be a mapping of keys to values.",
                                "write 'key: value' lines"))
        return {}
    return raw


def _apply_override(raw: dict, item: str, problems: list[Problem]) -> None:
    """Merge one ``a.b=c`` override into the raw mapping; ``c`` is parsed as YAML ([x,y] is a list)."""
    key, sep, text = item.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(p.strip() for p in parts):
        problems.append(Problem(item, "bad override syntax: expected KEY=VALUE.",
                                "write overrides like optim.lr=1e-3 or data.sources=[a,b]"))
        return
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text  # not YAML (e.g. an unbalanced bracket in a path): keep the literal string
    node = raw
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[parts[-1]] = value


def _build(cls: type, raw: Any, prefix: str, problems: list[Problem]) -> Any:
    """Instantiate dataclass ``cls`` from ``raw``, type-checking each key; problems are appended."""
    if not isinstance(raw, dict):
        problems.append(Problem(prefix.rstrip(".") or "config", f"expected a mapping, got "
                                f"{_kind(raw)}.", "write it as nested 'key: value' lines"))
        return cls()
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in raw.items():
        path = f"{prefix}{key}"
        if key not in fields:
            problems.append(Problem(path, f"unknown key.{did_you_mean(str(key), fields)}",
                                    f"valid keys here: {', '.join(sorted(fields))}"))
            continue
        meta = fields[key].metadata
        target = meta["class_from"](value) if "class_from" in meta else hints[key]
        if target is None:  # a family chosen by name that does not exist
            name = value.get("name")
            problems.append(Problem(f"{path}.name", f"unknown name {name!r}.{did_you_mean(str(name), MODELS)}",
                                    f"use one of {sorted(MODELS)}"))
            continue
        converted = _convert(value, target, path, meta, problems)
        values[key] = _finite(converted, path, fields[key], problems)
    return cls(**{k: v for k, v in values.items() if v is not _INVALID})


def _finite(value: Any, path: str, spec: dataclasses.Field, problems: list[Problem]) -> Any:
    """``value`` unless a float in it (a scalar, or an entry of a mapping or list) is NaN or
    infinite: YAML reads .nan/.inf and "nan"/"inf" as numbers, and none of them means anything as a
    learning rate, weight or epsilon. Each one is a problem named by its full key."""
    if value is _INVALID or dataclasses.is_dataclass(value):
        return value
    bad = list(_non_finite(value, path))
    default = spec.default if spec.default is not dataclasses.MISSING else None
    for key, number in bad:
        example = (f"{key}={'null' if default is None else default} (its default)"
                   if key == path else f"{key}=1.0")
        problems.append(Problem(key, f"must be a finite number, got {number}.",
                                f"set {key} to a finite number, e.g. {example}"))
    return _INVALID if bad else value


def _non_finite(value: Any, path: str):
    if isinstance(value, float) and not math.isfinite(value):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _non_finite(item, f"{path}.{key}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _non_finite(item, f"{path}[{i}]")


_INVALID = object()


def _convert(value: Any, target: Any, path: str, meta: Any, problems: list[Problem]) -> Any:
    """Check/convert one value against a type annotation; returns _INVALID after recording a problem."""
    if dataclasses.is_dataclass(target):
        return _build(target, value, path + ".", problems)
    converted = _coerce(value, target)
    if converted is _INVALID:
        problems.append(Problem(path, f"expected {_type_name(target)}, got {_kind(value)} "
                                f"{value!r}.", f"set {path} to a {_type_name(target)}"))
        return _INVALID
    choices = meta.get("choices") if meta else None
    if choices and converted not in choices:
        problems.append(Problem(path, f"{converted!r} is not one of {choices}."
                                f"{did_you_mean(str(converted), choices)}",
                                f"set {path} to one of {choices}"))
        return _INVALID
    return converted


def _coerce(value: Any, target: Any) -> Any:
    origin, args = typing.get_origin(target), typing.get_args(target)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            out = _coerce(value, arg)
            if out is not _INVALID:
                return out
        return _INVALID
    if origin is list:
        if not isinstance(value, (list, tuple)):
            return _INVALID
        items = [_coerce(v, args[0]) for v in value] if args else list(value)
        return _INVALID if any(i is _INVALID for i in items) else items
    if origin is dict:
        if not isinstance(value, dict):
            return _INVALID
        out = {str(k): _coerce(v, args[1]) for k, v in value.items()}
        return _INVALID if any(v is _INVALID for v in out.values()) else out
    return _coerce_scalar(value, target)


def _coerce_scalar(value: Any, target: Any) -> Any:
    if target is Any:
        return value
    if target is bool:
        return value if isinstance(value, bool) else _INVALID
    if target is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _INVALID
    if target is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                return _INVALID
        return _INVALID
    if target is str:
        return value if isinstance(value, str) else _INVALID
    return value


def _type_name(target: Any) -> str:
    origin, args = typing.get_origin(target), typing.get_args(target)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is list:
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return f"mapping of name to {_type_name(args[1])}" if args else "mapping"
    return {bool: "boolean (true/false)", int: "integer", float: "number", str: "string",
            type(None): "null"}.get(target, getattr(target, "__name__", str(target)))


def _kind(value: Any) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "list",
            dict: "mapping", type(None): "null"}.get(type(value), type(value).__name__)


# --------------------------------------------------------------------------- saving


def config_to_dict(cfg: Any) -> dict:
    """Plain nested dict of a config (the model section keeps its ``name`` first)."""
    return dataclasses.asdict(cfg)


def finalize_config(cfg: RunConfig) -> RunConfig:
    """Derived settings written back into the resolved config (the effective lr of a scaling rule),
    so that config.yaml, checkpoints and reports show the value that was trained with."""
    lr = scaled_lr(cfg.optim, cfg.data.batch_size)
    if lr == cfg.optim.lr:
        return cfg
    return dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, lr=lr))


# Config values that are paths. A job that starts in another folder (a SLURM job runs from its code
# snapshot) needs them absolute, as preflight resolved them here.
PATH_KEYS = ("dump_dir", "data.root_dir", "data.path", "data.val_path", "data.tokenizer.path",
             "eval.data_dir", "eval.include_path", "logging.wandb.dir", "logging.tensorboard.log_dir")
# Values that hold a path after a prefix (model.init_from=hf:DIR): the path made absolute too
PREFIXED_PATH_KEYS = {"model.init_from": INIT_PREFIX}


def absolute_paths(cfg: RunConfig) -> RunConfig:
    """``cfg`` with every path value (``PATH_KEYS``, ``PREFIXED_PATH_KEYS``) absolute."""
    for key in PATH_KEYS:
        cfg = _absolute(cfg, key.split("."), "")
    for key, prefix in PREFIXED_PATH_KEYS.items():
        cfg = _absolute(cfg, key.split("."), prefix)
    return cfg


def _absolute(obj, keys: list[str], prefix: str):
    value = getattr(obj, keys[0], None)
    if value is None:  # a key this model family does not have
        return obj
    if len(keys) > 1:
        return dataclasses.replace(obj, **{keys[0]: _absolute(value, keys[1:], prefix)})
    if not isinstance(value, str) or not value.startswith(prefix):
        return obj
    path = value[len(prefix):]
    if not path or os.path.isabs(path):
        return obj
    return dataclasses.replace(obj, **{keys[0]: prefix + os.path.abspath(path)})


def config_yaml(cfg: RunConfig) -> str:
    """The resolved config as YAML (readable, and loadable again by ``load_config``): what
    ``config.yaml`` holds."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False, allow_unicode=True)


def dump_config(cfg: RunConfig, path: Path) -> None:
    write_text(path, config_yaml(cfg))


def describe_fields(cls: type = RunConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, help) for every leaf field: the documentation of the config surface."""
    rows = []
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            rows += describe_fields(type(default), key + ".")
        else:
            rows.append((key, repr(default), f.metadata.get("help", "")))
    return rows
