"""Which task names ``eval.tasks`` may use, and where their data comes from, without running anything.

Three sources, looked up in this order, each only when the one before does not know the name:

1. lmlab's offline definitions (``tasks.KNOWN_TASKS``: piqa, hellaswag, nq_open), known without
   reading anything;
2. the local task YAML folder ``eval.include_path``, indexed alone (a few files: instant);
3. every task, group and tag lm-eval ships, plus that folder: lm-eval's index of its ~14,000 task
   YAMLs (6-36 s to build) is built once per lm-eval install and read from the user's cache after
   that (``task_index``: its names alone for ``is_known``, in milliseconds), at most once per
   process and only for a name neither 1 nor 2 knows.

``hub_datasets`` says which of a name's tasks read their documents from the Hugging Face hub (any
``dataset_path`` that is not a local builder such as ``json`` or ``text`` reading local files), so that
preflight can refuse what cannot run offline. lm-eval is imported only when an index is built.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from lmlab.evaluation import task_index
from lmlab.evaluation.tasks import KNOWN_TASKS

#: ``datasets`` builders that read local files (``dataset_kwargs.data_files``), never the hub
LOCAL_BUILDERS = frozenset({"json", "csv", "text", "parquet", "arrow", "pandas", "webdataset"})


@functools.lru_cache(maxsize=None)
def task_manager(include_path: str = "", defaults: bool = True) -> Any:
    """lm-eval's ``TaskManager`` over ``include_path`` (a folder, or "") and, with ``defaults``,
    every task lm-eval ships (their index from ``task_index``'s cache); one per process for each pair."""
    from lm_eval.tasks import TaskManager  # lazy: lm-eval

    local = TaskManager(include_path=include_path or None, include_defaults=False)
    return task_index.with_shipped(local) if defaults else local


def manager_for(names: list[str], include_path: str = "") -> Any:
    """The cheapest manager that knows every one of ``names``: the local folder's alone when it
    holds them all, else the full index (which may still not know some: lm-eval then says so)."""
    if include_path and all(n in task_manager(include_path, False).task_index for n in names):
        return task_manager(include_path, False)
    return task_manager(include_path, True)


def is_known(name: str, include_path: str = "") -> bool:
    """Whether ``name`` is an offline task, in ``include_path``, or any lm-eval task/group/tag."""
    if name in KNOWN_TASKS:
        return True
    if include_path and name in task_manager(include_path, False).task_index:
        return True
    return name in task_index.shipped_names()


def all_names(include_path: str = "") -> list[str]:
    """Every name ``is_known`` accepts (reads the names of lm-eval's index)."""
    local = task_manager(include_path, False).task_index if include_path else {}
    return list(KNOWN_TASKS) + sorted(set(task_index.shipped_names()) | set(local))


def _entry(name: str, include_path: str):
    index = task_manager(include_path, False).task_index if include_path else {}
    return index.get(name) or task_index.shipped_entries().get(name)


def leaf_configs(name: str, include_path: str = "", depth: int = 0) -> list[dict]:
    """The raw YAML configs of the tasks ``name`` runs (itself, or a group's / tag's members)."""
    entry = _entry(name, include_path)
    if entry is None or depth > 8:
        return []
    kind = entry.kind.name
    if kind == "TAG":
        return [c for t in sorted(entry.tags) for c in leaf_configs(t, include_path, depth + 1)]
    if kind == "GROUP":
        members = (entry.cfg or {}).get("task") or []
        out = []
        for member in members if isinstance(members, list) else [members]:
            if isinstance(member, dict):
                out += [member] if "task" in member and "group" not in member else []
            else:
                out += leaf_configs(str(member), include_path, depth + 1)
        return out
    return [entry.cfg or {}]


def hub_datasets(name: str, include_path: str = "") -> list[str]:
    """The hub datasets (``dataset_path``) that the tasks of ``name`` download."""
    found = []
    for cfg in leaf_configs(name, include_path):
        path = cfg.get("dataset_path")
        if not path or "custom_dataset" in cfg or path in LOCAL_BUILDERS or Path(str(path)).exists():
            continue
        found.append(str(path))
    return sorted(set(found))


def missing_local_files(name: str, include_path: str = "") -> list[str]:
    """Local data files (``dataset_kwargs.data_files`` of a local builder) that do not exist."""
    missing = []
    for cfg in leaf_configs(name, include_path):
        if cfg.get("dataset_path") not in LOCAL_BUILDERS:
            continue
        files = (cfg.get("dataset_kwargs") or {}).get("data_files") or []
        values = files.values() if isinstance(files, dict) else [files]
        for value in values:
            for file in [value] if isinstance(value, str) else list(value):
                if not any(ch in str(file) for ch in "*?[") and not Path(str(file)).exists():
                    missing.append(str(file))
    return missing
