"""Reading the local task files into the ``datasets`` objects lm-eval's ConfigurableTask expects."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from lmlab.errors import LmlabError
from lmlab.rundir import read_jsonl

_CACHE: dict[tuple, object] = {}


def read_task_file(path: Path) -> list[dict]:
    """An upstream task file (JSON lines, maybe ``.gz``); a damaged one is a user error with the fix."""
    try:
        return read_jsonl(path, strict=True)
    except (OSError, ValueError) as err:
        raise LmlabError(f"cannot read task file {path}: {err}. Fix: restore the upstream file "
                         "(see the data directory's README).") from None


def cached_validation_split(files: list[Path], load_docs: Callable[[], list[dict]]):
    """A ``DatasetDict`` with one "validation" split of ``load_docs()``, reused while the files are unchanged.

    Evaluation during training builds the same tasks at every checkpoint; parsing hellaswag's
    12 MB again each time would cost seconds for nothing.
    """
    import datasets  # lazy: datasets

    key = tuple((str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in files)
    if key not in _CACHE:
        _CACHE[key] = datasets.DatasetDict({"validation": datasets.Dataset.from_list(load_docs())})
    return _CACHE[key]
