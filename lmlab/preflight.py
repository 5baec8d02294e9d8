"""One validator for a whole run: every problem found before any model is built or data is read.

Each component owns its checks (``data/sources.check``, ``training/optim.check`` ...); this module
runs them all, adds the checks that span components, and raises one ``ConfigError`` listing each
problem with its key and fix. It only lists files and probes the output directory.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from lmlab import config as config_mod, rundir
from lmlab.config import RunConfig
from lmlab.data import sources, tokenizers
from lmlab.errors import ConfigError, Problem
from lmlab.evaluation import config as eval_config
from lmlab.models import registry
from lmlab.training import checkpoint, distributed, graphs, metrics, optim
from lmlab.training import config as training_config


def load_and_check(path, overrides: list[str] = (), world_size: int | None = None) -> RunConfig:
    """Load a config and preflight it for ``world_size`` processes (default: as launched); raises
    one ConfigError with every problem of both stages."""
    cfg, problems = config_mod.load_config_collecting(path, overrides)
    flagged = {p.key for p in problems}
    world = distributed.launched_world_size() if world_size is None else world_size
    problems += [p for p in preflight_problems(cfg, world) if not _covered(p.key, flagged)]
    if problems:
        raise ConfigError(problems, source=str(path or "defaults"))
    return cfg


def _covered(key: str, flagged: set[str]) -> bool:
    """A key the loader already reported, or one above or below it: an invalid value falls back to
    its default, whose own problems (``data.sources: no sources given`` after ``data.sources.a:
    must be a finite number``) would only mislead."""
    return any(key == f or key.startswith(f + ".") or f.startswith(key + ".") for f in flagged)


def preflight_warnings(cfg: RunConfig, total_steps: int | None = None) -> list[Problem]:
    """What is allowed but almost never meant (the command shows each, ``errors.show_warnings``, and goes
    on). ``total_steps``: the planned optimizer steps; by default ``steps`` in step mode, while in
    epoch mode they are known only once the data is read (the ``Trainer`` warns then itself)."""
    if total_steps is None:
        if cfg.epochs > 0:
            return []
        total_steps = cfg.steps
    return optim.warmup_warnings(cfg.optim, total_steps, cfg.epochs)


def preflight_problems(cfg: RunConfig, world_size: int = 1) -> list[Problem]:
    data = cfg.data
    val_enabled = cfg.eval.validation.enabled
    problems = _run_problems(cfg)
    problems += sources.check(data, val_enabled)
    if data.source != "prepared":  # a prepared folder brings its tokenizer (check_prepared)
        problems += tokenizers.check(data.tokenizer)
        problems += tokenizers.check_model_vocab(data.tokenizer, getattr(cfg.model, "vocab_size", 0))
    problems += registry.check(cfg.model, sources.vocab_size(data), data.seq_len)
    problems += optim.check(cfg.optim, data.batch_size)
    problems += checkpoint.check(cfg.checkpoint)
    problems += metrics.check(cfg.logging)
    problems += eval_config.check(cfg.eval)
    problems += training_config.check(cfg.training)
    problems += graphs.check(cfg)
    if cfg.training.cuda_graph and world_size > 1:
        problems.append(Problem("training.cuda_graph", f"a graphed step runs in one process; this "
                                f"run has {world_size}.", "set training.cuda_graph=null (auto)"))
    problems += distributed.check(cfg.distributed, world_size, data.batch_size, cfg.training.grad_accum,
                                  cfg.model.name, cfg.device)
    if world_size > 1 and cfg.eval.every:
        problems.append(Problem("eval.every", f"harness tasks during training run on one process; "
                                f"this run has {world_size}.", "set eval.every=0 and run `lmlab eval "
                                "RUN` after training (or on a checkpoint while it trains)"))
    return problems


def _run_problems(cfg: RunConfig) -> list[Problem]:
    problems = []
    if cfg.epochs < 0:
        problems.append(Problem("epochs", f"must be >= 0, got {cfg.epochs}.", "set epochs=0 (step mode)"))
    if cfg.epochs == 0 and cfg.steps <= 0:
        problems.append(Problem("steps", f"must be > 0, got {cfg.steps}.", "set steps=1000"))
    if cfg.epochs > 0 and cfg.data.source != "wikitext2":
        problems.append(Problem("epochs", f"epoch mode needs a fixed sequence set (data.source="
                                f"wikitext2); {cfg.data.source} data streams.",
                                "set epochs=0 and use steps, or data.source=wikitext2"))
    if cfg.data.source == "wikitext2" and cfg.data.tokenizer.name != "word":
        problems.append(Problem("data.tokenizer.name", f"wikitext2 sequences use the word tokenizer, "
                                f"got {cfg.data.tokenizer.name!r}.", "set data.tokenizer.name=word"))
    accum = cfg.training.grad_accum
    if accum <= 0:
        problems.append(Problem("training.grad_accum", f"must be > 0, got {accum}.",
                                "set training.grad_accum=1"))
    elif cfg.data.batch_size > 0 and cfg.data.batch_size % accum:
        problems.append(Problem("data.batch_size", f"{cfg.data.batch_size} is not divisible by "
                                f"training.grad_accum={accum}.", "make data.batch_size a multiple of "
                                "training.grad_accum"))
    problems += device_problems(cfg)
    problem = _dump_dir_problem(cfg.dump_dir)
    if problem:
        problems.append(problem)
    return problems


def device_problems(cfg: RunConfig) -> list[Problem]:
    problems = []
    has_cuda = torch.cuda.is_available()
    if cfg.device == "cuda" and not has_cuda:
        problems.append(Problem("device", "cuda requested but no CUDA GPU is available.",
                                "set device=cpu (or auto) or run on a machine with a GPU"))
    on_cpu = cfg.device == "cpu" or (cfg.device == "auto" and not has_cuda)
    if on_cpu and cfg.precision == "fp16":
        problems.append(Problem("precision", "fp16 needs CUDA; CPU runs train in fp32.",
                                "set precision=fp32 (or auto, which picks fp32 on CPU and bf16 on CUDA)"))
    return problems


def _dump_dir_problem(dump_dir: str) -> Problem | None:
    """A folder of our own (new, empty, or a run: ``rundir.is_lmlab_dir``), never the current
    directory by accident; then probe writability where it is (or will be created) without leaving
    a trace."""
    if not str(dump_dir).strip():
        return Problem("dump_dir", f"is empty (an unset shell variable?): training would write its "
                       f"files into the current directory {Path.cwd()}.",
                       "set dump_dir to a folder for this run, e.g. dump_dir=runs/NAME")
    dump_dir = Path(dump_dir)
    try:
        names = [p.name for p in dump_dir.iterdir()] if dump_dir.is_dir() else []
        others = sorted(name for name in names if not rundir.is_own_name(name))
    except OSError:
        others = []  # unreadable: the probe below says what is wrong
    if others and not rundir.is_lmlab_dir(dump_dir):
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        return Problem("dump_dir", f"{dump_dir} is a folder with other files ({shown}) and not an lmlab "
                       f"run (no {rundir.RUN_MARKER}): training would write {rundir.CONFIG_FILE}, "
                       f"{rundir.METRICS_FILE} and {rundir.CHECKPOINTS_DIR}/ into it, replacing files "
                       "of those names.", f"set dump_dir to a new or empty folder (e.g. a subfolder: "
                       f"dump_dir={dump_dir / 'NAME'}), or to an existing run to resume it")
    probe = dump_dir
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return Problem("dump_dir", f"{dump_dir} cannot be created: {probe} is not a directory.",
                       "set dump_dir to a path inside a writable directory")
    try:
        with tempfile.NamedTemporaryFile(dir=probe, prefix=".lmlab-probe-"):
            pass
    except OSError as err:
        return Problem("dump_dir", f"{probe} is not writable ({os.strerror(err.errno or 0)}).",
                       "set dump_dir to a writable location")
    return None
