"""Crash-safe small-file writes: a reader (or a run restarted after ``kill -9``) sees the old file
or the new one, never half of one. Checkpoints use the same rename idea for whole directories."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, fsync it, then rename it over ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def unwritable(directory: str | Path) -> str | None:
    """Why files cannot be created in ``directory`` (or, while it does not exist, in the nearest
    folder above it, where it would be created), or None when they can. Probes with a temporary
    file that is removed at once, so commands can refuse *before* their work instead of failing
    after it."""
    probe = Path(directory)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is not a directory"
    try:
        with tempfile.NamedTemporaryFile(dir=probe, prefix=".lmlab-probe-"):
            pass
    except OSError as err:
        return f"{probe} is not writable ({err.strerror or err})"
    return None
