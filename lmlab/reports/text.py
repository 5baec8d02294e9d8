"""Report prose in every language: ``LANGS`` and ``Text``.

The prose is data, one file per language (``strings/<lang>.yaml``, same keys in each); numbers,
config keys, file names and code are filled in by language-independent code, so every language
says exactly the same thing with the very same numbers. Cheap to import (no matplotlib, no torch):
the CLI takes its ``--lang`` choices from ``LANGS``.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from lmlab import rundir

STRINGS_DIR = Path(__file__).resolve().parent / "strings"
# English first (the default), then the others by name.
LANGS: tuple[str, ...] = tuple(sorted((p.stem for p in STRINGS_DIR.glob("*.yaml")),
                                      key=lambda lang: (lang != "en", lang)))

# Run-directory names any string may use as a field, e.g. "`{eval_metrics_file}` is absent".
RUN_DIR_NAMES = {"config_file": rundir.CONFIG_FILE, "provenance_file": rundir.PROVENANCE_FILE,
                 "eval_metrics_file": rundir.EVAL_METRICS_FILE, "checkpoints_dir": rundir.CHECKPOINTS_DIR,
                 "plots_dir": rundir.PLOTS_DIR, "final": rundir.FINAL, "best": rundir.BEST,
                 "samples_file": rundir.SAMPLES_FILE}


@lru_cache(maxsize=None)
def strings(lang: str) -> dict[str, str]:
    """The ``{key: format string}`` table of one language."""
    if lang not in LANGS:
        raise ValueError(f"lang must be one of {list(LANGS)}, got {lang!r}")
    table = yaml.safe_load((STRINGS_DIR / f"{lang}.yaml").read_text(encoding="utf-8"))
    return {str(k): str(v) for k, v in table.items()}


class Text:
    """Looks up a key of one language's strings and fills its fields."""

    def __init__(self, lang: str):
        self.lang, self.table = lang, strings(lang)

    def __call__(self, key: str, **fields: Any) -> str:
        return self.table[key].format(**RUN_DIR_NAMES, **fields)

    def get(self, key: str, default: str) -> str:
        """``self(key)`` when the language has the key, else ``default`` (as given)."""
        return self(key) if key in self.table else default

    def status(self, status: str | None) -> str:
        return self.get(f"status.{status}", str(status))
