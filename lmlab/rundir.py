"""The run-directory contract: every file and folder name of a run, and the rules for reading them.

Every command reads and writes run directories through these names, so the layout lives here only::

    <dump_dir>/config.yaml  provenance.json  metrics.jsonl  metrics.eval.jsonl  events.jsonl
               samples.jsonl  tokenizer.json  errors/  plots/  report.md  .lmlab-run  .lock
               checkpoints/0000000100/{model.safetensors, optimizer.pt, train_state.json,
                                       eval_results.json}
               checkpoints/best/  checkpoints/final/   (hard links to a step checkpoint)

A step checkpoint is a folder named by its step in 10 digits that holds ``train_state.json``:
anything else under ``checkpoints/`` (a ``.tmp-`` folder of an interrupted save, a stray folder)
is not one. Nothing here imports torch: ``lmlab runs`` and ``lmlab report`` read runs through it.
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import yaml

from lmlab.errors import LmlabError

CONFIG_FILE = "config.yaml"
PROVENANCE_FILE = "provenance.json"
METRICS_FILE = "metrics.jsonl"
EVAL_METRICS_FILE = "metrics.eval.jsonl"
SAMPLES_FILE = "samples.jsonl"  # `lmlab eval`: greedy continuations of report.samples, shown by the report
EVENTS_FILE = "events.jsonl"
TOKENIZER_FILE = "tokenizer.json"
ERRORS_DIR = "errors"
PLOTS_DIR = "plots"
REPORT_STEM = "report"  # report.md, report.ja.md, report.html
TENSORBOARD_DIR, WANDB_DIR = "tensorboard", "wandb"  # the optional sinks' default folders
WANDB_ID_FILE = "wandb_run_id.txt"  # one W&B run per run directory, continued on resume
PREEMPT_FILE = "preempt.request"  # created by a scheduler script: save a checkpoint and exit 0
SUBMIT_FILE = "submit.slurm"  # `lmlab slurm`: the batch script (submitted again on requeue)
CODE_DIR = "code"  # `lmlab slurm`: the lmlab snapshot and resolved config the job runs
EVALS_DIR = "evals"  # <run>/evals/<step>/eval_results.json: results of step checkpoints (lmlab eval)
SLURM_OUTPUT = "slurm-%j.out"  # the job's log (%j: SLURM's job id)
CHECKPOINTS_DIR = "checkpoints"
RUN_MARKER = ".lmlab-run"  # written when lmlab creates a run directory: the folder is a run
LOCK_FILE = ".lock"  # `lmlab train` holds it (flock) while it trains the run: see lmlab.runlock
# inside a checkpoint
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"  # the whole optimizer state (one process, DDP)
OPTIMIZER_DIR = "optimizer"  # FSDP: its shards, written by torch.distributed.checkpoint
STATE_FILE = "train_state.json"
EVAL_RESULTS_FILE = "eval_results.json"
BEST, FINAL = "best", "final"
# inside provenance.json: the model's size as training measured it (models.registry.model_size)
MODEL_SIZE_KEY = "model_size"
# prefix of a checkpoint folder being written, replaced or deleted (never a complete checkpoint)
TMP_PREFIX = ".tmp-"
# folders inside a run that never hold runs themselves (not searched by ``lmlab runs``)
RUN_SUBDIRS = frozenset({CHECKPOINTS_DIR, PLOTS_DIR, ERRORS_DIR, TENSORBOARD_DIR, WANDB_DIR, CODE_DIR,
                         EVALS_DIR})
_STEP_DIGITS = 10


# --------------------------------------------------------------------------- checkpoints


def checkpoints_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINTS_DIR


def step_name(step: int) -> str:
    return f"{step:0{_STEP_DIGITS}d}"


def is_step_name(name: str) -> bool:
    return len(name) == _STEP_DIGITS and name.isdigit()


def is_checkpoint(path: Path) -> bool:
    """A complete checkpoint folder (step, best or final): its train state is written last."""
    return (path / STATE_FILE).is_file()


def step_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete step checkpoints, oldest first."""
    root = checkpoints_root(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and is_step_name(p.name) and is_checkpoint(p)]
    return sorted(found, key=lambda p: int(p.name))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = step_checkpoints(run_dir)
    return found[-1] if found else None


def named_checkpoint(run_dir: str | Path, name: str) -> Path:
    """``checkpoints/best`` or ``checkpoints/final`` (which may not exist)."""
    return checkpoints_root(run_dir) / name


def named_checkpoints(run_dir: str | Path) -> list[Path]:
    """The complete published copies (``best``, ``final``) that exist."""
    return [p for p in (named_checkpoint(run_dir, BEST), named_checkpoint(run_dir, FINAL)) if is_checkpoint(p)]


def read_train_state(path: Path) -> dict:
    """``train_state.json`` of checkpoint folder ``path``; a user error when it cannot be read."""
    try:
        return json.loads((Path(path) / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise LmlabError(f"checkpoint {path} has an unreadable {STATE_FILE}: {err}. Fix: delete "
                         "that checkpoint directory to resume from the previous one.") from None


def fix_for_damaged_checkpoint(checkpoint_dir: Path) -> str:
    """How to go on without a damaged checkpoint (its weights or optimizer state unreadable):
    delete it and resume from the one before."""
    if is_step_name(checkpoint_dir.name):
        earlier = [p for p in step_checkpoints(checkpoint_dir.parent.parent)
                   if int(p.name) < int(checkpoint_dir.name)]
        then = (f"resume from checkpoint {earlier[-1].name}" if earlier else
                "start the run over (there is no earlier checkpoint)")
        return (f"delete {checkpoint_dir} and run the same command again to {then}; or pass another "
                "checkpoint to lmlab eval / generate.")
    return f"pass another checkpoint of the run (a checkpoints/<step> directory) instead of {checkpoint_dir}."


def newest_train_state(run_dir: str | Path) -> dict:
    """Train state of the newest step checkpoint, else of ``final/`` ({} if none is readable).

    The newest step first: after a resume with more steps, ``final/`` still holds the old end."""
    for folder in [*step_checkpoints(run_dir)[::-1], named_checkpoint(run_dir, FINAL)]:
        state = read_json(folder / STATE_FILE)
        if state:
            return state
    return {}


def resolve_checkpoint(path: str | Path) -> tuple[Path, Path]:
    """(checkpoint folder, run folder) for a run directory or one of its checkpoint folders.

    A run directory resolves to ``checkpoints/final`` when it exists, else to the newest complete
    step checkpoint."""
    p = Path(path)
    if not p.exists():
        raise LmlabError(f"{p} does not exist. Fix: pass a run directory (the dump_dir of a training "
                         "run) or one of its checkpoints/<step> directories.")
    if is_checkpoint(p) or (p / MODEL_FILE).is_file():
        return p, p.parent.parent  # <run>/checkpoints/<name>/
    if (p / CONFIG_FILE).is_file() or checkpoints_root(p).is_dir():
        final = named_checkpoint(p, FINAL)
        if is_checkpoint(final):
            return final, p
        newest = latest_checkpoint(p)
        if newest is None:
            raise LmlabError(f"{p} has no complete checkpoint under {checkpoints_root(p)}. Fix: train "
                             f"the run first (lmlab train ... dump_dir={p}) or pass a checkpoint dir.")
        return newest, p
    raise LmlabError(f"{p} is neither a run directory (no {CONFIG_FILE}, no {CHECKPOINTS_DIR}/) nor a "
                     f"checkpoint directory (no {STATE_FILE}). Fix: pass the dump_dir of a training run "
                     "or one of its checkpoints/<step> directories.")


# --------------------------------------------------------------------------- run files


def is_run_dir(path: str | Path) -> bool:
    """A folder holding ``events.jsonl``, or ``config.yaml`` with metrics or checkpoints. The event
    log alone is enough, so that a run which failed before writing its config is still a run."""
    path = Path(path)
    if (path / EVENTS_FILE).is_file():
        return True
    return (path / CONFIG_FILE).is_file() and (
        (path / METRICS_FILE).is_file() or checkpoints_root(path).is_dir())


def is_lmlab_dir(path: str | Path) -> bool:
    """A folder lmlab may write into as a run: marked as one (``RUN_MARKER``), a run from before
    the marker (``is_run_dir`` or ``provenance.json``), or the folder of a SLURM job written before
    it (``submit.slurm`` and ``code/``). Preflight refuses any other folder that holds files."""
    path = Path(path)
    return ((path / RUN_MARKER).is_file() or is_run_dir(path) or (path / PROVENANCE_FILE).is_file()
            or ((path / SUBMIT_FILE).is_file() and (path / CODE_DIR).is_dir()))


def enclosing_run(path: str | Path) -> Path | None:
    """The run (``is_lmlab_dir``) that is ``path`` or holds it, resolved; None outside every run.
    Commands that write beside a run (export, ``eval --out``) never write there: a run's folders
    are the run's, and its retention may delete them."""
    target = Path(path).resolve()
    return next((p for p in (target, *target.parents) if is_lmlab_dir(p)), None)


def is_own_name(name: str) -> bool:
    """A file lmlab puts in a folder before (or while) it becomes a run: the lock, the marker and
    its temporary copy, a preflight's writability probe. A folder holding only these is empty."""
    return name == LOCK_FILE or name.lstrip(".").startswith("lmlab-")


def read_jsonl(path: str | Path, strict: bool = False) -> list[dict]:
    """Every JSON object of a JSON-lines file (``.gz`` decompressed on the fly); the one reader of
    JSON lines in lmlab.

    Run files (metrics, events; ``strict=False``): a missing file reads as [], and a line that does
    not parse (a write cut off by a kill) is skipped rather than failing the report of a run that
    died. Input data (``strict=True``, e.g. the evaluation task files): any problem raises
    ``OSError`` / ``ValueError`` naming the line, for the caller to turn into its fix."""
    path = Path(path)
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rt", encoding="utf-8",
                                                          errors="strict" if strict else "replace") as handle:
            lines = handle.read().splitlines()
    except OSError:
        if strict:
            raise
        return []
    out = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line) if line.strip() or not strict else None
        except ValueError as err:
            if strict:
                raise ValueError(f"line {number}: {err}") from None
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


def read_json(path: str | Path) -> dict:
    """A JSON object file of a run (provenance, train state, eval results); {} if missing or bad."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_config(run_dir: str | Path) -> dict:
    """The run's ``config.yaml`` as plain data ({} if missing or unreadable); no dataclasses."""
    try:
        data = yaml.safe_load((Path(run_dir) / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def last_update(run_dir: str | Path) -> float | None:
    """Newest modification time of the files a live run keeps writing (unix seconds)."""
    run_dir = Path(run_dir)
    paths = [run_dir / EVENTS_FILE, run_dir / METRICS_FILE, run_dir / EVAL_METRICS_FILE,
             checkpoints_root(run_dir)]
    times = [p.stat().st_mtime for p in paths if p.exists()]
    return max(times) if times else None
