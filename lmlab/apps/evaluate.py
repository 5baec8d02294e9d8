"""``lmlab eval RUN [KEY=VALUE ...] [--out DIR]``: validation and lm-eval tasks on the model of a run
(or of one of its checkpoints), with the run's saved config plus ``KEY=VALUE`` overrides
(``eval.tasks=...``).

The results are written to ``eval_results.json`` (beside ``best/``/``final/``; for a step checkpoint,
which the run's retention may delete while it still trains, in ``<run>/evals/<step>/``) and
appended to the run's ``metrics.eval.jsonl``; with ``--out DIR`` both go to DIR instead (a read-only
run directory, or results kept apart). The phase is recorded in the run's ``events.jsonl`` when that
can be written.

A run still training may delete or republish the chosen checkpoint at any moment: its files are
held open from the start (``loading.hold_checkpoint``), and one deleted before that is replaced by
the run's newest when a run directory was passed (said on stderr), else refused with the fix.

Nothing computed is lost: the folders are probed before the model is loaded (an unwritable one is
refused with the ``--out`` fix), the results are printed before they are written, and a write that
still fails prints them as JSON too and exits with code 2, saying where they are.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lmlab.atomic import unwritable
from lmlab.config import RunConfig, load_config_collecting
from lmlab.data import sources
from lmlab.errors import ConfigError, LmlabError, Problem
from lmlab.evaluation.config import check
from lmlab.evaluation.loading import LoadedRun, load_for_eval, named_file_id, saved_config_file
from lmlab.evaluation.results import format_rows, results_dir, results_json, write_results
from lmlab.evaluation.runner import run_evaluation
from lmlab.evaluation.samples import greedy_samples, write_samples
from lmlab.preflight import device_problems
from lmlab.reports.config import check as check_report
from lmlab.rundir import (EVAL_METRICS_FILE, EVAL_RESULTS_FILE, MODEL_FILE, enclosing_run, read_json,
                          resolve_checkpoint)
from lmlab.runlog import EventLog


def run(args: argparse.Namespace) -> int:
    """``args``: ``run`` (run or checkpoint directory), ``overrides`` (list), ``quiet`` (no progress),
    ``out`` (folder for the results, or None: see the module docstring)."""
    checkpoint_dir, run_dir = resolve_checkpoint(args.run)
    cfg = _checked_config(saved_config_file(checkpoint_dir, run_dir), args.overrides)
    out = getattr(args, "out", None)
    if out:
        _refuse_run_out(Path(out), run_dir)
    metrics_dir = Path(out) if out else run_dir
    _check_writable(args.run, [Path(out) if out else results_dir(checkpoint_dir, run_dir, None),
                               metrics_dir])  # before the (long) work
    loaded = load_for_eval(checkpoint_dir, run_dir, cfg, cfg.device,
                           newest_if_gone=Path(args.run) == run_dir)
    _say_if_replaced(checkpoint_dir, loaded.checkpoint_dir)
    # with --out the run directory may be read-only: then the phase is not recorded
    events = EventLog(run_dir, write=unwritable(run_dir) is None)
    phase = events.phase("eval", step=loaded.step, tasks=list(cfg.eval.tasks), command="lmlab eval",
                         **({"out": str(out)} if out else {}))
    with phase:
        rows = run_evaluation(loaded, cfg.eval, validation=cfg.eval.validation.enabled,
                              progress=not args.quiet, checked=True)
        # shown before the file is written: a failing write must not lose what took long to compute
        print(format_rows(rows), flush=True)
        target = _write(rows, loaded, Path(out) if out else None, metrics_dir, args.run)
        samples = greedy_samples(loaded, cfg.report.samples, cfg.report.sample_tokens) \
            if cfg.report.samples else []
        if samples:  # for the report, which reads them (it imports no torch)
            samples_file = write_samples(samples, metrics_dir)
    print(f"results: {target} (also appended to {metrics_dir / EVAL_METRICS_FILE})")
    if samples:
        print(f"samples: {samples_file} ({len(samples)} greedy continuations of report.samples)")
    return 0


def _say_if_replaced(chosen: Path, read: Path) -> None:
    if read != chosen:
        print(f"lmlab eval: note: checkpoint {chosen} was deleted by the run's checkpoint retention "
              f"before it could be read; evaluating the newest, {read}, instead.", file=sys.stderr,
              flush=True)


def _results_target(loaded: LoadedRun, out: Path | None) -> tuple[Path, dict | None]:
    """The folder for ``eval_results.json`` (``results_dir``: never one that retention may delete)
    and the results to merge with when it is new: those of a step checkpoint's former place."""
    if out is not None:
        return out, None
    ckpt = loaded.checkpoint_dir
    holds_it = named_file_id(ckpt / MODEL_FILE) == loaded.weights_id
    folder = results_dir(ckpt, loaded.run_dir, loaded.step, holds_it)
    earlier = read_json(ckpt / EVAL_RESULTS_FILE) if folder != ckpt and holds_it else None
    return folder, earlier


def _check_writable(run: str, folders: list[Path]) -> None:
    reasons = sorted({r for r in map(unwritable, folders) if r})
    if reasons:
        raise LmlabError(f"cannot write the evaluation results: {'; '.join(reasons)}. Nothing was "
                         f"evaluated. Fix: make it writable, or write the results to another folder: "
                         f"lmlab eval {run} --out DIR")


def _write(rows: list[dict], loaded: LoadedRun, out: Path | None, metrics_dir: Path, run: str) -> Path:
    """``write_results``; when that fails after all (the folder turned read-only, a full disk), the
    rows are printed as JSON as well and the error says where they are."""
    step = loaded.step
    folder, earlier = _results_target(loaded, out)
    try:
        if folder != loaded.checkpoint_dir:  # never re-create a checkpoint folder deleted meanwhile
            folder.mkdir(parents=True, exist_ok=True)
        return write_results(rows, folder, metrics_dir, step, earlier)
    except OSError as err:
        print(results_json(rows, step), flush=True)
        failed = Path(err.filename) if err.filename else folder / EVAL_RESULTS_FILE
        if failed.name.startswith(f".{EVAL_RESULTS_FILE}.tmp"):  # atomic.write_text's temporary file
            failed = failed.with_name(EVAL_RESULTS_FILE)
        raise LmlabError(
            f"could not write {failed}: {err.strerror or err}. Nothing computed is lost: the results "
            f"are printed above on stdout (the table, then the JSON that {EVAL_RESULTS_FILE} would "
            f"hold). Fix: make {failed.parent} writable, or write the results to another folder: "
            f"lmlab eval {run} --out DIR") from None


def _refuse_run_out(out: Path, run_dir: Path) -> None:
    """``--out`` inside a run (another one, or this one's checkpoints) would mix this evaluation
    into that run's metrics, or into a folder its retention deletes."""
    run = enclosing_run(out)
    if run is not None:
        raise LmlabError(f"--out {out} is {'the run' if run == out.resolve() else 'inside the run'} "
                         f"{run}; eval --out never writes into a run (its metrics would mix with "
                         f"these). Fix: leave out --out to write the results into {run_dir}, or "
                         "pick a folder outside every run.")


# What a checkpoint fixes: the model and its tokenizer are the checkpoint's, the training settings
# are history. An override of these would be ignored or break loading: refused, with the keys that apply.
_NOT_FOR_EVAL = ("model", "data.tokenizer", "optim", "training", "checkpoint", "logging",
                 "distributed", "steps", "epochs", "dump_dir", "name")


def _override_problems(overrides: list[str]) -> list[Problem]:
    problems = []
    for item in overrides:
        key = item.partition("=")[0].strip()
        if any(key == k or key.startswith(k + ".") for k in _NOT_FOR_EVAL):
            problems.append(Problem(key, "does not apply to evaluation: the model and tokenizer are the "
                                    "checkpoint's, and the training settings are the run's history.",
                                    "drop it; eval takes eval.*, report.*, data.* (validation data), "
                                    "device, precision, compile and seed"))
    return problems


def _checked_config(config_file: Path, overrides: list[str]) -> RunConfig:
    """The run's saved config with ``overrides``, preflighted for what evaluation needs: every
    problem is reported at once, before the model is loaded."""
    cfg, problems = load_config_collecting(config_file, overrides)
    problems += _override_problems(overrides)
    problems += check(cfg.eval) + check_report(cfg.report) + device_problems(cfg)
    if cfg.eval.validation.enabled:
        problems += sources.check(cfg.data, True)
    if not cfg.eval.tasks and not cfg.eval.validation.enabled:
        problems.append(Problem("eval.tasks", "nothing to evaluate: no tasks and validation is off.",
                                "set eval.tasks=[piqa,hellaswag,nq_open] eval.data_dir=../shared/data"))
    if problems:
        raise ConfigError(problems, source=f"{config_file} + overrides")
    return cfg
