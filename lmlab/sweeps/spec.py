"""A sweep spec (YAML): the base config, fixed overrides and the axes, checked as a whole.

::

    name: lr-width                      # default: the spec file's name
    base: configs/quickstart.yaml       # the config every trial starts from (relative to the cwd)
    out: runs/sweeps/lr-width           # the sweep folder (default runs/sweeps/<name>)
    overrides: {steps: 200, device: cpu}            # every trial
    grid: {optim.lr: [1.0e-3, 3.0e-3], model.dim: [64, 128]}    # every combination
    random:                             # n samples (combined with every grid point), seeded
      n: 8
      seed: 0
      axes:
        optim.lr: {log_uniform: [1.0e-4, 1.0e-2]}
        optim.warmup: {uniform: [0, 50], int: true}
        model.n_layers: {choice: [2, 4]}
    seeds: 1                            # k: seeds seed, seed+1, ... of each point; or a list
    metric: val/loss                    # what the report ranks by; mode: min | max
    top_k: 3
    early_stop: {rule: median, steps: [100, 200], min_trials: 3}     # optional, off by default
    scaling: {x: params, predict: [1.0e7]}                            # optional: fit L = E + A x^-alpha

Every problem of the spec is reported at once (``ConfigError``: exit 2), each with its fix.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lmlab.errors import ConfigError, Problem, did_you_mean

SPEC_KEYS = ("name", "base", "out", "overrides", "grid", "random", "seeds", "metric", "mode", "top_k",
             "early_stop", "scaling")
RANDOM_KEYS = ("n", "seed", "axes")
DISTRIBUTIONS = ("uniform", "log_uniform", "choice")
EARLY_STOP_KEYS = ("rule", "steps", "min_trials")
EARLY_STOP_RULES = ("median",)
SCALING_KEYS = ("x", "predict")
SCALING_X = ("params", "flops", "tokens", "steps")
METRICS = ("val/loss", "val/bpb", "val/ppl", "val/acc", "loss")
EVAL_PREFIX = "eval:"  # eval:TASK/METRIC, from metrics.eval.jsonl
HIGHER_IS_BETTER = ("val/acc",)
DEFAULT_OUT_ROOT = "runs/sweeps"


@dataclass(frozen=True)
class Axis:
    """One swept key: grid ``values``, or a random distribution (``dist`` with ``low``/``high`` or
    ``choices``; ``integer`` rounds a uniform draw). ``log``: plot it on a log axis."""

    key: str
    kind: str  # grid | random
    values: tuple = ()
    dist: str = ""
    low: float = 0.0
    high: float = 0.0
    choices: tuple = ()
    integer: bool = False

    @property
    def log(self) -> bool:
        if self.dist == "log_uniform":
            return True
        numbers = [v for v in (self.values or self.choices) if _number(v)]
        return (len(numbers) == len(self.values or self.choices) and len(numbers) > 1 and min(numbers) > 0
                and max(numbers) / min(numbers) >= 10)


@dataclass
class SweepSpec:
    path: Path
    name: str
    base: str
    out: str
    overrides: dict[str, Any] = field(default_factory=dict)
    axes: list[Axis] = field(default_factory=list)  # grid axes first, then random ones
    random_n: int = 0
    random_seed: int = 0
    seeds: int | list[int] = 1
    metric: str = "val/loss"
    mode: str = "min"
    top_k: int = 3
    early_stop: dict | None = None
    scaling: dict | None = None

    @property
    def grid(self) -> list[Axis]:
        return [a for a in self.axes if a.kind == "grid"]

    @property
    def random(self) -> list[Axis]:
        return [a for a in self.axes if a.kind == "random"]


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def load_spec(path: str | Path, out: str | None = None) -> SweepSpec:
    """Read and check a spec; raises one ``ConfigError`` naming every problem and its fix."""
    path = Path(path)
    problems: list[Problem] = []
    raw = _read(path, problems)
    for key in raw:
        if key not in SPEC_KEYS:
            problems.append(Problem(str(key), f"unknown sweep spec key.{did_you_mean(str(key), SPEC_KEYS)}",
                                    f"valid keys: {', '.join(SPEC_KEYS)}"))
    name = str(raw.get("name") or path.stem)
    spec = SweepSpec(path=path, name=name, base=str(raw.get("base") or ""),
                     out=str(out or raw.get("out") or f"{DEFAULT_OUT_ROOT}/{name}"))
    _check_base(spec, raw, problems)
    spec.overrides = _mapping(raw, "overrides", problems)
    spec.axes = _grid(raw, problems) + _random(raw, spec, problems)
    _check_overlaps(spec, problems)
    spec.seeds = _seeds(raw.get("seeds", 1), problems)
    if spec.seeds != 1 and ("seed" in spec.overrides or any(a.key == "seed" for a in spec.axes)):
        problems.append(Problem("seeds", "is given, and so is `seed` as an override or axis.",
                                "drop `seed` from overrides/axes, or set seeds: 1"))
    _metric(raw, spec, problems)
    spec.early_stop = _early_stop(raw.get("early_stop"), problems)
    spec.scaling = _scaling(raw.get("scaling"), problems)
    if problems:
        raise ConfigError(problems, source=str(path))
    return spec


def _read(path: Path, problems: list[Problem]) -> dict:
    if not path.is_file():
        problems.append(Problem(str(path), "sweep spec not found.", "pass an existing YAML file, e.g. "
                                "configs/sweeps/quickstart.yaml"))
        return {}
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        problems.append(Problem(str(path), f"not a readable YAML file: {err}.", "fix the YAML"))
        return {}
    if not isinstance(raw, dict):
        problems.append(Problem(str(path), "top level must be a mapping (base:, grid:, ...).",
                                "write 'key: value' lines"))
        return {}
    return raw


def _check_base(spec: SweepSpec, raw: dict, problems: list[Problem]) -> None:
    if "base" not in raw or not spec.base:
        problems.append(Problem("base", "is missing: the config every trial starts from.",
                                "add e.g. `base: configs/quickstart.yaml`"))
    elif not Path(spec.base).is_file():
        beside = spec.path.parent / spec.base
        hint = (f" (paths are relative to the current directory; {beside} exists: write "
                f"`base: {beside}`)" if beside.is_file() else "")
        problems.append(Problem("base", f"config file {spec.base} not found{hint}.",
                                "set base to an existing config, e.g. configs/quickstart.yaml"))


def _mapping(raw: dict, key: str, problems: list[Problem]) -> dict:
    value = raw.get(key) or {}
    if not isinstance(value, dict):
        problems.append(Problem(key, f"must be a mapping of config key to value, got {value!r}.",
                                f"write it as `{key}: {{optim.lr: 1.0e-3}}`"))
        return {}
    return {str(k): v for k, v in value.items()}


def _grid(raw: dict, problems: list[Problem]) -> list[Axis]:
    axes = []
    for key, values in _mapping(raw, "grid", problems).items():
        if not isinstance(values, list) or not values:
            problems.append(Problem(f"grid.{key}", f"must be a non-empty list of values, got {values!r}.",
                                    f"write `{key}: [a, b]`"))
        elif len({yaml.safe_dump(v) for v in values}) != len(values):
            problems.append(Problem(f"grid.{key}", f"lists a value twice: {values}.", "list each value once"))
        else:
            axes.append(Axis(key=key, kind="grid", values=tuple(_yaml11_number(v) for v in values)))
    return axes


_EXPONENT_ONLY = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _yaml11_number(value: Any) -> Any:
    """``1e-3`` without a dot is a string to YAML 1.1 (PyYAML): a number here, as lmlab's config
    loader reads it, so trial names and plots see the number."""
    return float(value) if isinstance(value, str) and _EXPONENT_ONLY.fullmatch(value) else value


def _random(raw: dict, spec: SweepSpec, problems: list[Problem]) -> list[Axis]:
    block = raw.get("random")
    if block is None:
        return []
    if not isinstance(block, dict):
        problems.append(Problem("random", f"must be a mapping (n, seed, axes), got {block!r}.",
                                "write `random: {n: 8, seed: 0, axes: {optim.lr: {log_uniform: [1.0e-4, 1.0e-2]}}}`"))
        return []
    for key in block:
        if key not in RANDOM_KEYS:
            problems.append(Problem(f"random.{key}", f"unknown key.{did_you_mean(str(key), RANDOM_KEYS)}",
                                    f"valid keys: {', '.join(RANDOM_KEYS)}"))
    n, seed = block.get("n"), block.get("seed", 0)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        problems.append(Problem("random.n", f"must be a positive integer (the number of samples), got {n!r}.",
                                "set random.n: 8"))
    if not isinstance(seed, int) or isinstance(seed, bool):
        problems.append(Problem("random.seed", f"must be an integer, got {seed!r}.", "set random.seed: 0"))
    spec.random_n = n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 0
    spec.random_seed = seed if isinstance(seed, int) else 0
    axes_raw = block.get("axes")
    if not isinstance(axes_raw, dict) or not axes_raw:
        problems.append(Problem("random.axes", "must map config keys to distributions.",
                                "write `axes: {optim.lr: {log_uniform: [1.0e-4, 1.0e-2]}}`"))
        return []
    axes = []
    for key, dist in axes_raw.items():
        axis = _distribution(str(key), dist, problems)
        if axis is not None:
            axes.append(axis)
    return axes


def _distribution(key: str, dist: Any, problems: list[Problem]) -> Axis | None:
    where = f"random.axes.{key}"
    fix = (f"write `{key}: {{uniform: [low, high]}}`, `{{log_uniform: [low, high]}}` (low > 0) or "
           "`{choice: [a, b, c]}`; `int: true` rounds a uniform draw")
    if not isinstance(dist, dict):
        problems.append(Problem(where, f"must be a distribution, got {dist!r}.", fix))
        return None
    kinds = [k for k in dist if k in DISTRIBUTIONS]
    others = [k for k in dist if k not in DISTRIBUTIONS and k != "int"]
    if len(kinds) != 1 or others:
        named = others[0] if others else ", ".join(map(str, kinds)) or "none"
        hint = did_you_mean(str(named), DISTRIBUTIONS) if others else ""
        problems.append(Problem(where, f"needs exactly one of {', '.join(DISTRIBUTIONS)} (got {named}).{hint}", fix))
        return None
    kind, args = kinds[0], dist[kinds[0]]
    integer = dist.get("int", False)
    if kind == "choice":
        if not isinstance(args, list) or not args:
            problems.append(Problem(where, f"choice needs a non-empty list, got {args!r}.", fix))
            return None
        return Axis(key=key, kind="random", dist=kind, choices=tuple(_yaml11_number(a) for a in args))
    args = [_yaml11_number(a) for a in args] if isinstance(args, list) else args
    if not (isinstance(args, list) and len(args) == 2 and all(_number(a) for a in args) and args[0] < args[1]):
        problems.append(Problem(where, f"{kind} needs [low, high] with low < high, got {args!r}.", fix))
        return None
    if kind == "log_uniform" and args[0] <= 0:
        problems.append(Problem(where, f"log_uniform needs low > 0, got {args[0]}.", fix))
        return None
    if not isinstance(integer, bool):
        problems.append(Problem(f"{where}.int", f"must be true or false, got {integer!r}.", fix))
        return None
    return Axis(key=key, kind="random", dist=kind, low=float(args[0]), high=float(args[1]), integer=integer)


def _check_overlaps(spec: SweepSpec, problems: list[Problem]) -> None:
    seen: dict[str, str] = {k: "overrides" for k in spec.overrides}
    for axis in spec.axes:
        where = "grid" if axis.kind == "grid" else "random.axes"
        if axis.key in seen:
            problems.append(Problem(f"{where}.{axis.key}", f"is also set in {seen[axis.key]}.",
                                    "set each key in one place only"))
        seen.setdefault(axis.key, where)
        if axis.key == "dump_dir":
            problems.append(Problem(f"{where}.dump_dir", "is set by the sweep (one folder per trial).",
                                    "drop it; set the sweep folder with `out:`"))
    if "dump_dir" in spec.overrides:
        problems.append(Problem("overrides.dump_dir", "is set by the sweep (one folder per trial).",
                                "drop it; set the sweep folder with `out:`"))


def _seeds(value: Any, problems: list[Problem]) -> int | list[int]:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    if isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value) \
            and len(set(value)) == len(value):
        return list(value)
    problems.append(Problem("seeds", f"must be a count >= 1 or a list of distinct integers, got {value!r}.",
                            "set seeds: 3 (seed, seed+1, seed+2) or seeds: [1, 2, 3]"))
    return 1


def _metric(raw: dict, spec: SweepSpec, problems: list[Problem]) -> None:
    metric = str(raw.get("metric", "val/loss"))
    eval_ok = metric.startswith(EVAL_PREFIX) and metric.count("/") >= 1 and not metric.endswith("/")
    if metric not in METRICS and not eval_ok:
        problems.append(Problem("metric", f"unknown metric {metric!r}.{did_you_mean(metric, METRICS)}",
                                f"use one of {', '.join(METRICS)}, or eval:TASK/METRIC (lmlab eval results)"))
    spec.metric = metric
    default = "max" if metric in HIGHER_IS_BETTER or metric.startswith(EVAL_PREFIX) else "min"
    spec.mode = str(raw.get("mode", default))
    if spec.mode not in ("min", "max"):
        problems.append(Problem("mode", f"must be min or max, got {spec.mode!r}.", "set mode: min (a loss)"))
    top_k = raw.get("top_k", 3)
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
        problems.append(Problem("top_k", f"must be a positive integer, got {top_k!r}.", "set top_k: 3"))
    else:
        spec.top_k = top_k


def _early_stop(block: Any, problems: list[Problem]) -> dict | None:
    if block is None:
        return None
    fix = "write `early_stop: {rule: median, steps: [100, 200], min_trials: 3}`"
    if not isinstance(block, dict):
        problems.append(Problem("early_stop", f"must be a mapping, got {block!r}.", fix))
        return None
    for key in block:
        if key not in EARLY_STOP_KEYS:
            problems.append(Problem(f"early_stop.{key}", f"unknown key.{did_you_mean(str(key), EARLY_STOP_KEYS)}", fix))
    rule, steps, least = block.get("rule", "median"), block.get("steps"), block.get("min_trials", 3)
    if rule not in EARLY_STOP_RULES:
        problems.append(Problem("early_stop.rule", f"unknown rule {rule!r}.", f"use one of {EARLY_STOP_RULES}"))
    if not (isinstance(steps, list) and steps and all(isinstance(s, int) and not isinstance(s, bool)
                                                      and s > 0 for s in steps)):
        problems.append(Problem("early_stop.steps", f"must be a list of positive steps (validation steps), "
                                f"got {steps!r}.", fix))
        steps = []
    if not isinstance(least, int) or isinstance(least, bool) or least < 1:
        problems.append(Problem("early_stop.min_trials", f"must be a positive integer, got {least!r}.", fix))
    return {"rule": rule, "steps": sorted(set(steps)), "min_trials": least}


def _scaling(block: Any, problems: list[Problem]) -> dict | None:
    if block is None:
        return None
    fix = "write `scaling: {x: params, predict: [1.0e7]}`"
    if not isinstance(block, dict):
        problems.append(Problem("scaling", f"must be a mapping, got {block!r}.", fix))
        return None
    for key in block:
        if key not in SCALING_KEYS:
            problems.append(Problem(f"scaling.{key}", f"unknown key.{did_you_mean(str(key), SCALING_KEYS)}", fix))
    x, predict = block.get("x", "params"), block.get("predict", [])
    if x not in SCALING_X:
        problems.append(Problem("scaling.x", f"unknown x {x!r}.{did_you_mean(str(x), SCALING_X)}",
                                f"use one of {', '.join(SCALING_X)}"))
    predict = [_yaml11_number(p) for p in (predict if isinstance(predict, list) else [predict])]
    if not all(_number(p) and p > 0 for p in predict):
        problems.append(Problem("scaling.predict", f"must be positive numbers, got {predict!r}.", fix))
        predict = []
    return {"x": x, "predict": [float(p) for p in predict]}
