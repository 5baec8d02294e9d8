"""``eval.*``: what is evaluated, during training (``eval.every``) and by ``lmlab eval``.

Kept apart from ``harness.py`` so that loading and preflighting a config never imports lm-eval.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lmlab.data.hub import unavailable_reason
from lmlab.errors import Problem, did_you_mean
from lmlab.evaluation.tasks import KNOWN_TASKS, missing_files
from lmlab.training.validation import ValidationConfig
from lmlab.training.validation import check as check_validation


@dataclass
class EvalConfig:
    """Validation and lm-eval harness tasks, run during and after training."""

    validation: ValidationConfig = field(
        default_factory=ValidationConfig, metadata={"help": "Validation loss/ppl/bpb/accuracy."})
    every: int = field(default=0, metadata={
        "help": "During training, run the harness tasks on the checkpoint saved at each multiple of "
                "this many steps and on the final one (0: never during training; `lmlab eval` "
                "always can). A failing evaluation is logged and training continues."})
    tasks: list[str] = field(default_factory=list, metadata={
        "help": f"lm-eval tasks to run, any of {list(KNOWN_TASKS)} (empty: none)."})
    num_fewshot: int | None = field(default=None, metadata={
        "help": "Few-shot examples per item (null: each task's default, 0 for these tasks)."})
    limit: int | None = field(default=None, metadata={
        "help": "Evaluate at most this many items per task (null: all of them)."})
    data_dir: str = field(default="", metadata={
        "help": "Folder holding the upstream task files (piqa/, hellaswag/, nq_open/) for offline runs; "
                "empty: the standard lm-eval tasks, downloaded from the Hugging Face hub."})
    batch_size: int = field(default=32, metadata={
        "help": "Requests scored (or prompts decoded) per model call."})
    max_gen_toks: int = field(default=64, metadata={
        "help": "Most tokens generated per answer when a task does not set max_gen_toks (nq_open "
                "stops at its stop strings long before; an unbounded value is what made the "
                "reference run spend 17 minutes generating)."})

    def due(self, step: int, last_eval_step: int, finished: bool) -> bool:
        """During training (``every``): the first checkpoint at or after each multiple of ``every``,
        and the last one; ``last_eval_step`` is the checkpoint evaluated last."""
        if not self.every or not self.tasks or step == last_eval_step:
            return False
        return finished or step // self.every > last_eval_step // self.every


def check(cfg: EvalConfig, prefix: str = "eval") -> list[Problem]:
    """Every problem with ``cfg`` that would stop an evaluation: names, sizes, missing task files."""
    problems = check_validation(cfg.validation)
    for name in cfg.tasks:
        if name not in KNOWN_TASKS:
            problems.append(Problem(f"{prefix}.tasks", f"unknown task {name!r}.{did_you_mean(name, KNOWN_TASKS)}",
                                    f"use any of {list(KNOWN_TASKS)}"))
    for key, value, low in (("every", cfg.every, 0), ("num_fewshot", cfg.num_fewshot, 0),
                            ("limit", cfg.limit, 1), ("batch_size", cfg.batch_size, 1),
                            ("max_gen_toks", cfg.max_gen_toks, 1)):
        if value is not None and value < low:
            problems.append(Problem(f"{prefix}.{key}", f"must be >= {low}, got {value}.",
                                    f"set {prefix}.{key} to an integer >= {low}"))
    if cfg.data_dir:
        problems += _check_data_dir(cfg, prefix)
    elif cfg.tasks:
        problems += _check_hub(cfg.tasks, prefix)
    return problems


def _check_data_dir(cfg: EvalConfig, prefix: str) -> list[Problem]:
    root = Path(cfg.data_dir)
    if not root.is_dir():
        return [Problem(f"{prefix}.data_dir", f"{root} is not a directory.",
                        "point it at the folder holding piqa/, hellaswag/ and nq_open/ "
                        "(e.g. ../shared/data), or leave it empty to use the hub")]
    problems = []
    for name in (t for t in cfg.tasks if t in KNOWN_TASKS):
        for path in missing_files(name, root):
            problems.append(Problem(f"{prefix}.data_dir", f"task {name} needs {path}, which is missing.",
                                    f"put the upstream file at {path}, or remove {name} from {prefix}.tasks"))
    return problems


def _check_hub(tasks: list[str], prefix: str) -> list[Problem]:
    """Without ``data_dir`` the standard tasks download their data: refuse early when that cannot work."""
    why = unavailable_reason([f"*{name}*" for name in tasks])  # the cache names datasets by repo
    if not why:
        return []
    return [Problem(f"{prefix}.data_dir", f"the standard lm-eval tasks download their data, but {why}.",
                    f"set {prefix}.data_dir to a folder with piqa/, hellaswag/ and nq_open/ upstream "
                    "files (e.g. ../shared/data) to run them offline")]
