"""lm-eval's index of the tasks it ships, cached on disk: built once per lm-eval install, not once per
process.

lm-eval's ``TaskManager`` parses every task YAML it ships (~14,000 files, 6-36 s on 2 CPU cores) to
learn their names. lmlab needs that index for any ``eval.tasks`` name that is neither one of its
offline tasks nor in ``eval.include_path``: each ``lmlab eval`` of an lm-eval task, each check of a
misspelt name. It depends only on the installed lm-eval, so it is kept in the user's cache folder
(``$LMLAB_CACHE_DIR``, else ``$XDG_CACHE_HOME/lmlab``, else ``~/.cache/lmlab``) as two files per
lm-eval install (``cache_file``: named after its task folder, so that environments sharing the
folder keep their own): the names and kinds (small: all ``is_known`` and "did you mean" read) and
the entries with their raw configs (a group's members, a task's data source). Each file holds the
stamp of what it was built from: lm-eval's version, its task folder, and lm-eval's installed RECORD
(every installed file with its hash) or, for an editable install, every task YAML's path, size and
mtime, so that an edit shows.
A file with another stamp, or one that cannot be read, is rebuilt; a cache folder that cannot be
written leaves the index in memory for this process. Writes are atomic (a temporary file renamed).
The local folder ``eval.include_path`` is never cached: it is indexed alone, a few files, at once.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from lmlab.atomic import write_text

CACHE_ENV = "LMLAB_CACHE_DIR"
#: bumped when the files' layout changes, so that an older lmlab's files are rebuilt
FORMAT = 1
NAMES, ENTRIES = "names", "entries"  # the two files of an install: lm_eval_tasks-<folder digest>.<kind>.json
#: folders lm-eval's index skips
IGNORED_DIRS = frozenset({"__pycache__", ".ipynb_checkpoints"})


def cache_folder() -> Path:
    """Where lmlab keeps what it can rebuild: ``$LMLAB_CACHE_DIR``, ``$XDG_CACHE_HOME/lmlab`` or
    ``~/.cache/lmlab``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lmlab"


def shipped_folder() -> Path:
    """The folder of the task YAMLs lm-eval ships (found without importing lm-eval, which takes seconds)."""
    from importlib.util import find_spec  # lazy: only when an index is looked up

    spec = find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("lm-eval is not installed: pip install 'lm-eval>=0.4.5,<0.5'")
    return (Path(list(spec.submodule_search_locations)[0]) / "tasks").resolve()


@functools.lru_cache(maxsize=None)
def shipped_names() -> dict[str, str]:
    """Every task, group and tag lm-eval ships: name -> kind ("TASK", "PY_TASK", "GROUP", "TAG")."""
    folder = shipped_folder()
    stamp = _stamp(folder)
    cached = _read(cache_file(folder, NAMES), stamp)
    if cached is not None:
        return cached
    names = {name: entry.kind.name for name, entry in shipped_entries().items()}
    _write(cache_file(folder, NAMES), stamp, names, folder)
    return names


@functools.lru_cache(maxsize=None)
def shipped_entries() -> dict[str, Any]:
    """lm-eval's own index of the tasks it ships (``TaskManager(include_path=None).task_index``):
    name -> ``lm_eval.tasks._index.Entry``."""
    folder = shipped_folder()
    stamp = _stamp(folder)
    cached = _read(cache_file(folder, ENTRIES), stamp)
    if cached is not None:
        return _decode(cached)
    from lm_eval.tasks._index import TaskIndex  # lazy: lm-eval

    index = TaskIndex.build([folder])
    encoded = _encode(index)
    if _round_trips(encoded):  # a config JSON cannot hold as it is (a date, a number as a key) is not cached
        _prune_gone()
        _write(cache_file(folder, ENTRIES), stamp, encoded, folder)
    return index


def with_shipped(manager: Any) -> Any:
    """``manager`` (a ``TaskManager`` over the local folder alone, ``include_defaults=False``) with
    the shipped tasks under it, as ``TaskManager(include_path=..., include_defaults=True)`` would
    index them (the local folder's tasks win), from the cache. An lm-eval whose manager keeps its
    index elsewhere gets lm-eval's own full build."""
    from lm_eval.tasks import TaskManager  # lazy: lm-eval

    fields = ("_index", "_all_tasks", "_all_subtasks", "_all_groups", "_all_tags")
    if not all(hasattr(manager, f) for f in fields):
        return TaskManager(include_path=manager.include_path, include_defaults=True)
    index = {**shipped_entries(), **manager.task_index}
    kinds = {name: entry.kind.name for name, entry in index.items()}
    manager._index = index
    manager._all_tasks = sorted(index)
    manager._all_subtasks = sorted(n for n, k in kinds.items() if k in ("TASK", "PY_TASK"))
    manager._all_groups = sorted(n for n, k in kinds.items() if k == "GROUP")
    manager._all_tags = sorted(n for n, k in kinds.items() if k == "TAG")
    return manager


# --------------------------------------------------------------------------- the files


def cache_file(folder: Path, kind: str) -> Path:
    """The cache file of ``kind`` (NAMES, ENTRIES) for the task folder ``folder``: one pair per lm-eval
    install, so that several environments sharing the cache folder do not rebuild each other's."""
    return cache_folder() / f"lm_eval_tasks-{hashlib.sha256(str(folder).encode()).hexdigest()[:16]}.{kind}.json"


@functools.lru_cache(maxsize=None)
def _stamp(folder: Path) -> str:
    """What the index of ``folder`` depends on, as a digest (once per process)."""
    from importlib import metadata  # lazy: only when an index is looked up

    digest = hashlib.sha256(f"{FORMAT}\0{metadata.version('lm_eval')}\0{folder}\0".encode())
    record = _installed_record(folder)
    if record is not None:
        digest.update(record.encode())
        return digest.hexdigest()
    for path in sorted(p for p in folder.rglob("*.yaml") if not IGNORED_DIRS & set(p.parts)):
        stat = path.stat()
        digest.update(f"{path.relative_to(folder)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _installed_record(folder: Path) -> str | None:
    """lm-eval's RECORD (each installed file with its sha256) when ``folder`` is the task folder of
    a regular (not editable) install of it; None otherwise."""
    from importlib import metadata  # lazy: only when an index is looked up

    try:
        dist = metadata.distribution("lm_eval")
    except metadata.PackageNotFoundError:
        return None
    direct = json.loads(dist.read_text("direct_url.json") or "{}")
    if (direct.get("dir_info") or {}).get("editable"):
        return None
    if Path(str(dist.locate_file("lm_eval/tasks"))).resolve() != folder.resolve():
        return None
    return dist.read_text("RECORD")


def _read(path: Path, stamp: str) -> Any:
    """The data of the cache file ``path`` when it was written for ``stamp``, else None."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return saved.get("data") if isinstance(saved, dict) and saved.get("stamp") == stamp else None


def _write(path: Path, stamp: str, data: Any, folder: Path) -> None:
    """Write the cache file atomically; a folder that cannot be written only costs the next process
    the build."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, json.dumps({"stamp": stamp, "folder": str(folder), "data": data}))
    except OSError:
        pass


def _prune_gone() -> None:
    """Remove the files of installs whose task folder is gone (a deleted environment), as the names
    file of each says."""
    for names in cache_folder().glob(f"lm_eval_tasks-*.{NAMES}.json"):
        try:
            folder = json.loads(names.read_text(encoding="utf-8")).get("folder")
        except (OSError, ValueError, AttributeError):
            continue
        if folder and not Path(folder).is_dir():
            for kind in (NAMES, ENTRIES):
                names.with_name(names.name.replace(f".{NAMES}.json", f".{kind}.json")).unlink(missing_ok=True)


def _encode(index: dict[str, Any]) -> dict[str, list]:
    return {name: [e.kind.name, str(e.yaml_path) if e.yaml_path else None, sorted(e.tags), e.cfg]
            for name, e in index.items()}


def _decode(encoded: dict[str, list]) -> dict[str, Any]:
    from lm_eval.tasks._index import Entry, Kind  # lazy: lm-eval

    return {name: Entry(name=name, kind=Kind[kind], yaml_path=Path(path) if path else None, cfg=cfg,
                        tags=set(tags))
            for name, (kind, path, tags, cfg) in encoded.items()}


def _round_trips(encoded: dict[str, list]) -> bool:
    try:
        return json.loads(json.dumps(encoded)) == encoded
    except (TypeError, ValueError):
        return False
