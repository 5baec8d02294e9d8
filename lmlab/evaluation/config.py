"""``eval.*``: what is evaluated, during training (``eval.every``) and by ``lmlab eval``.

Kept apart from ``harness.py`` so that loading and preflighting a config never imports lm-eval.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lmlab.data.hub import unavailable_reason
from lmlab.errors import Problem, did_you_mean
from lmlab.evaluation import catalog
from lmlab.evaluation.tasks import KNOWN_TASKS, missing_files
from lmlab.evaluation.validation import ValidationConfig
from lmlab.evaluation.validation import check as check_validation


@dataclass
class EvalConfig:
    """Validation and lm-eval harness tasks, run during and after training."""

    validation: ValidationConfig = field(
        default_factory=ValidationConfig, metadata={"help": "Validation loss/ppl/bpb/accuracy."})
    every: int = field(default=0, metadata={
        "help": "During training, run the harness tasks on the checkpoint saved at each multiple of "
                "this many steps and on the final one (0: never during training; `lmlab eval` "
                "always can). A failing evaluation is logged and training continues."})
    tasks: list[str | dict[str, Any]] = field(default_factory=list, metadata={
        "help": "lm-eval tasks to run (empty: none): any task, group or tag lm-eval knows, any task of "
                f"eval.include_path, and lmlab's offline {list(KNOWN_TASKS)} (with eval.data_dir). "
                "An entry is a name or {task: NAME, num_fewshot: N, limit: N, batch_size: N} "
                "(Lingua's form; unset keys take the eval.* values), e.g. "
                "[piqa, {task: nq_open, num_fewshot: 5}]."})
    num_fewshot: int | None = field(default=None, metadata={
        "help": "Few-shot examples per item (null: each task's default, 0 for these tasks)."})
    limit: int | None = field(default=None, metadata={
        "help": "Evaluate at most this many items per task (null: all of them)."})
    data_dir: str = field(default="", metadata={
        "help": "Folder holding the upstream task files (piqa/, hellaswag/, nq_open/) for offline runs; "
                "empty: the standard lm-eval tasks, downloaded from the Hugging Face hub."})
    include_path: str = field(default="", metadata={
        "help": "Folder of local lm-eval task YAMLs (lm-eval's --include_path): their tasks, groups "
                "and tags may be named in eval.tasks; they override lm-eval's of the same name."})
    batch_size: int = field(default=32, metadata={
        "help": "Most requests scored (or prompts decoded) per model call."})
    max_batch_tokens: int = field(default=16384, metadata={
        "help": "Scoring batches hold as many requests as fit this many (padded) tokens, at most "
                "batch_size: short requests share big batches, long ones stay within memory."})
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


@dataclass(frozen=True)
class TaskSetting:
    """One entry of ``eval.tasks`` with the eval.* defaults filled in."""

    task: str
    num_fewshot: int | None
    limit: int | None
    batch_size: int


#: the keys an ``eval.tasks`` entry may set (Lingua's per-task form)
TASK_KEYS = ("task", "num_fewshot", "limit", "batch_size")


def task_settings(cfg: EvalConfig) -> list[TaskSetting]:
    """``eval.tasks`` as settings (call after ``check``): a name takes every eval.* default."""
    out = []
    for entry in cfg.tasks:
        given = entry if isinstance(entry, dict) else {"task": entry}
        out.append(TaskSetting(str(given["task"]), given.get("num_fewshot", cfg.num_fewshot),
                               given.get("limit", cfg.limit), given.get("batch_size", cfg.batch_size)))
    return out


def check(cfg: EvalConfig, prefix: str = "eval") -> list[Problem]:
    """Every problem with ``cfg`` that would stop an evaluation: names, sizes, missing task files,
    data only the (unreachable) hub has."""
    problems = check_validation(cfg.validation)
    for key, value, low in (("every", cfg.every, 0), ("num_fewshot", cfg.num_fewshot, 0),
                            ("limit", cfg.limit, 1), ("batch_size", cfg.batch_size, 1),
                            ("max_gen_toks", cfg.max_gen_toks, 1), ("max_batch_tokens", cfg.max_batch_tokens, 1)):
        if value is not None and value < low:
            problems.append(Problem(f"{prefix}.{key}", f"must be >= {low}, got {value}.",
                                    f"set {prefix}.{key} to an integer >= {low}"))
    if cfg.include_path and not Path(cfg.include_path).is_dir():
        return problems + [Problem(f"{prefix}.include_path", f"{cfg.include_path} is not a directory.",
                                   "point it at a folder of lm-eval task YAML files, or leave it empty")]
    names = []
    for i, entry in enumerate(cfg.tasks):
        entry_problems, name = _check_entry(entry, f"{prefix}.tasks[{i}]")
        problems += entry_problems
        if name is not None:
            names.append(name)
    unknown = [n for n in names if not catalog.is_known(n, cfg.include_path)]
    for name in unknown:
        hint = did_you_mean(name, KNOWN_TASKS) or did_you_mean(name, catalog.all_names(cfg.include_path))
        problems.append(Problem(f"{prefix}.tasks", f"unknown task {name!r}.{hint}",
                                f"use lmlab's offline {list(KNOWN_TASKS)}, a task, group or tag of lm-eval "
                                f"(`lm-eval ls tasks`), or a local task YAML in {prefix}.include_path"))
    if unknown and cfg.include_path:
        problems += _unreadable_task_files(cfg.include_path, prefix)
    names = [n for n in names if n not in unknown]
    offline = [n for n in names if n in KNOWN_TASKS and not _local_override(n, cfg.include_path)]
    if cfg.data_dir:
        problems += _check_data_dir(cfg, offline, prefix)
    elif offline:
        problems += _check_hub(offline, prefix)
    return problems + _check_other_data([n for n in names if n not in offline], cfg.include_path, prefix)


class _TaskYamlLoader(yaml.SafeLoader):
    """YAML as lm-eval's task files write it: its tags (``!function utils.x``) read as plain values."""


_TaskYamlLoader.add_multi_constructor("!", lambda loader, _suffix, node: None)


def _unreadable_task_files(include_path: str, prefix: str) -> list[Problem]:
    """The task files of ``include_path`` that are not YAML: lm-eval skips them without a word, so
    a task they define is just "unknown"."""
    problems = []
    for path in sorted(Path(include_path).rglob("*.y*ml")):
        try:
            yaml.load(path.read_text(encoding="utf-8"), Loader=_TaskYamlLoader)
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            reason = getattr(err, "problem", None) or getattr(err, "strerror", None) or err
            problems.append(Problem(f"{prefix}.include_path", f"{path} is not a readable task YAML{where}: "
                                    f"{reason}; lm-eval skips it, so the tasks it defines are unknown.",
                                    f"fix the YAML in {path.name}"))
    return problems


def _local_override(name: str, include_path: str) -> bool:
    """A task of ``include_path`` with an offline task's name replaces the offline definition."""
    return bool(include_path) and name in catalog.task_manager(include_path, False).task_index


def _check_entry(entry: Any, key: str) -> tuple[list[Problem], str | None]:
    """Problems of one ``eval.tasks`` entry, and its task name (None when it has none)."""
    if isinstance(entry, str):
        return [], entry
    if not isinstance(entry.get("task"), str):
        return [Problem(key, f"a per-task entry needs a task name, got {entry!r}.",
                        "write {task: NAME, num_fewshot: N} (or just NAME)")], None
    problems = [Problem(f"{key}.{k}", f"unknown key.{did_you_mean(str(k), TASK_KEYS)}",
                        f"per-task keys: {', '.join(TASK_KEYS)}") for k in entry if k not in TASK_KEYS]
    for k, low in (("num_fewshot", 0), ("limit", 1), ("batch_size", 1)):
        value = entry.get(k)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < low):
            problems.append(Problem(f"{key}.{k}", f"must be an integer >= {low}, got {value!r}.",
                                    f"set {k} to an integer >= {low} (or leave it out)"))
    return problems, entry["task"]


def _check_data_dir(cfg: EvalConfig, offline: list[str], prefix: str) -> list[Problem]:
    root = Path(cfg.data_dir)
    if not root.is_dir():
        return [Problem(f"{prefix}.data_dir", f"{root} is not a directory.",
                        "point it at the folder holding piqa/, hellaswag/ and nq_open/ "
                        "(e.g. ../shared/data), or leave it empty to use the hub")]
    problems = []
    for name in offline:
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


def _check_other_data(names: list[str], include_path: str, prefix: str) -> list[Problem]:
    """lm-eval / local tasks: local data files that are missing, hub datasets that cannot be had."""
    problems = []
    for name in names:
        for file in catalog.missing_local_files(name, include_path):
            problems.append(Problem(f"{prefix}.tasks", f"task {name} reads {file}, which is missing.",
                                    "put the file there, or fix data_files in the task's YAML"))
    hub = {name: catalog.hub_datasets(name, include_path) for name in names}
    hub = {name: found for name, found in hub.items() if found}
    why = unavailable_reason([f"*{d.split('/')[-1]}*" for found in hub.values() for d in found]) if hub else ""
    if why:
        listed = "; ".join(f"{name} ({', '.join(found[:3])}{', ...' if len(found) > 3 else ''})"
                           for name, found in hub.items())
        problems.append(Problem(f"{prefix}.tasks", f"these tasks download their data from the Hugging Face "
                                f"hub, but {why}: {listed}.",
                                f"run them where the hub is reachable (or its cache is warm), or write local "
                                f"task YAMLs reading local files into {prefix}.include_path"))
    return problems
