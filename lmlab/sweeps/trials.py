"""A spec's trials: every grid point x random sample x seed, each with a stable name made from its
values (``lr=0.003_dim=64_seed=43``; random samples are numbered first, ``r03_lr=0.00123``), the
``key=value`` overrides that make it, and ``preflight``: every trial's config checked with lmlab's
own loader and preflight before the first trial starts, all problems at once."""
from __future__ import annotations

import hashlib
import itertools
import math
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from lmlab import sweepdir
from lmlab.config import RunConfig, load_config_collecting
from lmlab.errors import ConfigError, Problem
from lmlab.preflight import load_and_check, preflight_warnings
from lmlab.sweeps.spec import Axis, SweepSpec
from lmlab.training.trainer import Schedule

MAX_NAME = 120  # longer names end in a hash of the rest (file systems allow 255 bytes)
SEED_KEY = "seed"


@dataclass(frozen=True)
class Trial:
    """One run of the sweep: ``values`` (axis key -> value, the seed last) on top of the spec's
    fixed overrides; ``point`` is the name without the seed (seeds of one point share it)."""

    index: int
    name: str
    point: str
    values: dict

    def overrides(self, spec: SweepSpec) -> list[str]:
        """``key=value`` words for ``lmlab train BASE ...``: the fixed overrides, then the axes."""
        return [override(k, v) for k, v in {**spec.overrides, **self.values}.items()]

    def run_dir(self, sweep_dir: str | Path) -> Path:
        return sweepdir.trial_dir(sweep_dir, self.name)


def override(key: str, value: Any) -> str:
    """``key=value`` whose value the config loader reads back as ``value`` (YAML flow style)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=math.inf, allow_unicode=True).strip()
    if text.endswith("\n..."):
        text = text[:-4]
    elif text.endswith("..."):
        text = text[:-3].strip()
    return f"{key}={text}"


def base_seed(spec: SweepSpec) -> int:
    cfg, _ = load_config_collecting(spec.base, [override(k, v) for k, v in spec.overrides.items()])
    return cfg.seed


def expand(spec: SweepSpec, seed: int | None = None) -> list[Trial]:
    """The trials in spec order (grid points, then random samples, then seeds); raises
    ``ConfigError`` when two would get the same name. ``seed``: the base config's seed
    (``seeds: k`` runs seed, seed+1, ...)."""
    grid = [dict(zip([a.key for a in spec.grid], combo))
            for combo in itertools.product(*(a.values for a in spec.grid))]
    samples = [sample(spec.random, spec.random_seed, i) for i in range(spec.random_n)] or [{}]
    if isinstance(spec.seeds, list):
        seeds = spec.seeds
    elif spec.seeds > 1:
        first = base_seed(spec) if seed is None else seed
        seeds = [first + i for i in range(spec.seeds)]
    else:
        seeds = [None]
    short = short_keys([a.key for a in spec.axes])
    width = len(str(max(spec.random_n - 1, 0)))
    trials, names = [], {}
    for point_values, (r, drawn) in itertools.product(grid, enumerate(samples)):
        values = {**point_values, **drawn}
        parts = [f"r{r:0{width}d}"] if spec.random_n else []
        parts += [f"{short[k]}={_show(v)}" for k, v in values.items()]
        point = _safe("_".join(parts)) or "base"
        for s in seeds:
            with_seed = values if s is None else {**values, SEED_KEY: s}
            name = point if s is None else _safe(f"{point}_seed={s}" if parts else f"seed={s}")
            trial = Trial(index=len(trials), name=_shorten(name), point=point, values=with_seed)
            names.setdefault(trial.name, []).append(trial)
            trials.append(trial)
    clashes = [n for n, ts in names.items() if len(ts) > 1]
    if clashes:
        raise ConfigError([Problem("grid", f"{len(names[n])} trials would share the folder name {n}: their "
                                   "values differ only beyond 6 significant digits.",
                                   "make the grid values differ in their first 6 digits") for n in clashes],
                          source=str(spec.path))
    return trials


def sample(axes: list[Axis], seed: int, index: int) -> dict:
    """Random sample ``index``: its own generator, so adding samples (a larger n) keeps the others."""
    rng = random.Random(f"lmlab-sweep/{seed}/{index}")
    out = {}
    for axis in axes:
        if axis.dist == "choice":
            out[axis.key] = axis.choices[rng.randrange(len(axis.choices))]
            continue
        if axis.dist == "log_uniform":
            value = math.exp(rng.uniform(math.log(axis.low), math.log(axis.high)))
        else:
            value = rng.uniform(axis.low, axis.high)
        out[axis.key] = int(round(value)) if axis.integer else float(f"{value:.6g}")
    return out


def short_keys(keys: list[str]) -> dict[str, str]:
    """The last part of each dotted key (``lr``), or the whole key where two would clash."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}


def _show(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple, dict)):
        return override("x", value)[2:]
    return str(value)


def _safe(name: str) -> str:
    """A folder name: letters, digits and ``._=+-`` (anything else becomes ``-``)."""
    return re.sub(r"[^A-Za-z0-9._=+-]", "-", name).strip(".")


def _shorten(name: str) -> str:
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:10]
    return f"{name[:MAX_NAME - 11]}~{digest}"


# --------------------------------------------------------------------------- preflight


def preflight(spec: SweepSpec, trials: list[Trial], sweep_dir: Path, world_size: int = 1,
              ignore: Callable[[RunConfig, Problem], bool] | None = None) -> tuple[dict, list[Problem]]:
    """Every trial's config through lmlab's loader and preflight (as ``lmlab train`` / ``lmlab
    slurm`` would for ``world_size`` processes); returns ({trial name: config}, the warnings, each
    once). Raises one ``ConfigError`` with every problem: one that every trial has is named once
    ("every trial"), the others per trial; a key that an axis sets says so. ``ignore``: problems
    left to where the trials run (the GPU checks on a SLURM login node)."""
    found: dict[Problem, list[str]] = {}
    configs, warnings = {}, []
    for trial in trials:
        args = [*trial.overrides(spec), override("dump_dir", str(trial.run_dir(sweep_dir)))]
        try:
            cfg = load_and_check(spec.base, args, world_size=world_size)
        except ConfigError as err:
            cfg, _ = load_config_collecting(spec.base, args)
            left = [p for p in err.problems if not (ignore and ignore(cfg, p))]
            for p in left:
                found.setdefault(p, []).append(trial.name)
            if left:
                continue
        configs[trial.name] = cfg
        warnings += [w for w in preflight_warnings(cfg) if w not in warnings]
    problems = [_scoped(p, names, len(trials), spec) for p, names in found.items()]
    problems += early_stop_problems(spec, configs)
    if problems:
        raise ConfigError(problems, source=str(spec.path))
    return configs, warnings


def _scoped(p: Problem, names: list[str], total: int, spec: SweepSpec) -> Problem:
    if len(names) == total:
        scope = "every trial" if total > 1 else f"trial {names[0]}"
    else:
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        scope = f"trial{'s' if len(names) > 1 else ''} {shown}"
    origin = next((f"the spec's {'grid' if a.kind == 'grid' else 'random'} axis {a.key}" for a in spec.axes
                   if p.key == a.key or p.key.startswith(a.key + ".") or a.key.startswith(p.key + ".")), None)
    if origin is None and (p.key in spec.overrides or any(k.startswith(p.key + ".") for k in spec.overrides)):
        origin = f"the spec's overrides ({p.key})"
    fix = p.fix + (f" (this value comes from {origin})" if origin else "")
    return Problem(f"{scope}: {p.key}", p.message, fix)


def early_stop_problems(spec: SweepSpec, configs: dict[str, RunConfig]) -> list[Problem]:
    """The early-stopping steps must be validation steps of every trial (step mode)."""
    if not spec.early_stop:
        return []
    problems = []
    for name, cfg in configs.items():
        val = cfg.eval.validation
        if cfg.epochs > 0:
            problems.append(Problem("early_stop", f"trial {name} trains in epochs; the rule compares "
                                    "validation at fixed steps.", "drop early_stop for epoch-mode sweeps"))
        elif not val.enabled:
            problems.append(Problem("early_stop", f"trial {name} does not validate "
                                    "(eval.validation.enabled is false).", "set eval.validation.enabled=true"))
        else:
            plan = Schedule.of(cfg, cfg.steps)
            missing = [s for s in spec.early_stop["steps"] if s >= cfg.steps or not plan.validates(s)]
            if missing:
                problems.append(Problem("early_stop.steps", f"{missing} are not validation steps before the "
                                        f"end of trial {name} (steps={cfg.steps}, eval.validation.every="
                                        f"{val.every}).", "use multiples of eval.validation.every below steps"))
        if problems:
            break  # one trial says it; the others are alike
    return problems
