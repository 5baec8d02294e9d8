"""``lmlab eval RUN [KEY=VALUE ...]``: validation and lm-eval tasks on the model of a run (or of one
of its checkpoints), with the run's saved config plus ``KEY=VALUE`` overrides (``eval.tasks=...``).

The results are written beside the checkpoint (``eval_results.json``) and appended to the run's
``metrics.eval.jsonl``; the phase is recorded in the run's ``events.jsonl``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from lmlab.config import RunConfig, load_config_collecting
from lmlab.data import sources
from lmlab.errors import ConfigError, Problem
from lmlab.evaluation.config import check
from lmlab.evaluation.loading import load_for_eval, saved_config_file
from lmlab.evaluation.results import format_rows, write_results
from lmlab.evaluation.runner import run_evaluation
from lmlab.preflight import device_problems
from lmlab.rundir import EVAL_METRICS_FILE, resolve_checkpoint
from lmlab.runlog import EventLog


def run(args: argparse.Namespace) -> int:
    """``args``: ``run`` (run or checkpoint directory), ``overrides`` (list), ``quiet`` (no progress)."""
    checkpoint_dir, run_dir = resolve_checkpoint(args.run)
    cfg = _checked_config(saved_config_file(checkpoint_dir, run_dir), args.overrides)
    loaded = load_for_eval(checkpoint_dir, run_dir, cfg, cfg.device)
    phase = EventLog(run_dir).phase("eval", step=loaded.step, tasks=list(cfg.eval.tasks),
                                    command="lmlab eval")
    with phase:
        rows = run_evaluation(loaded, cfg.eval, validation=cfg.eval.validation.enabled,
                              progress=not args.quiet)
        # shown before the file is written: a failing write must not lose what took long to compute
        print(format_rows(rows), flush=True)
        target = write_results(rows, checkpoint_dir, run_dir, loaded.step)
    print(f"results: {target} (also appended to {run_dir / EVAL_METRICS_FILE})")
    return 0


def _checked_config(config_file: Path, overrides: list[str]) -> RunConfig:
    """The run's saved config with ``overrides``, preflighted for what evaluation needs: every
    problem is reported at once, before the model is loaded."""
    cfg, problems = load_config_collecting(config_file, overrides)
    problems += check(cfg.eval) + device_problems(cfg)
    if cfg.eval.validation.enabled:
        problems += sources.check(cfg.data, True)
    if not cfg.eval.tasks and not cfg.eval.validation.enabled:
        problems.append(Problem("eval.tasks", "nothing to evaluate: no tasks and validation is off.",
                                "set eval.tasks=[piqa,hellaswag,nq_open] eval.data_dir=../shared/data"))
    if problems:
        raise ConfigError(problems, source=f"{config_file} + overrides")
    return cfg
