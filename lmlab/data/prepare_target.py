"""Where ``lmlab data prepare`` writes (``--out``): a new or empty folder, or one a preparation
wrote; never the source, never a folder of someone else's files; one preparation at a time; and the
only names it may ever delete (``ours``)."""
from __future__ import annotations

import fcntl
import os
import re
from pathlib import Path

from lmlab.data import manifest as mf
from lmlab.errors import LmlabError

LOCK_FILE = ".prepare.lock"


def check_out(out: Path) -> bool:
    """``--out`` is a new folder, an empty one, or one a preparation wrote (its manifest, or, before
    the manifest exists, its lock file, the first thing a preparation creates there): never a
    folder of someone else's files, which continuing would delete or replace (``train.bin``,
    ``tokenizer.json``). True: no preparation has started there."""
    if out.is_symlink() and not out.exists() or out.exists() and not out.is_dir():
        raise LmlabError(f"--out {out} is a {'file' if out.exists() else 'broken link'}, not a folder. Fix: "
                         "give the path of a new or empty folder.")
    if not out.is_dir():
        return True
    if (out / mf.MANIFEST_FILE).exists():
        try:
            mf.read_manifest(out)
        except LmlabError as err:
            raise LmlabError(f"--out {out}: {str(err).split(' Fix: ')[0]} Fix: give a new or empty folder as "
                             "--out (or, for a preparation of yours whose manifest is damaged, delete the "
                             "folder and prepare again).") from None
        return False
    try:
        names = sorted(p.name for p in out.iterdir())
    except OSError as err:
        raise LmlabError(f"--out {out} cannot be read ({err.strerror or err}). Fix: give a folder you can "
                         "read and write.") from None
    started = LOCK_FILE in names  # a preparation stopped before it wrote its manifest
    others = [n for n in names if not (started and ours(n) or n == LOCK_FILE)]
    if others:
        raise LmlabError(f"--out {out} holds files that lmlab data prepare did not write "
                         f"({', '.join(others[:3])}{', ...' if len(others) > 3 else ''}) and no "
                         f"{mf.MANIFEST_FILE}; preparing there would replace or delete them. Fix: give a "
                         "new or empty folder as --out.")
    return True


OUR_NAMES = re.compile(r"(?:(?:train|val)\.\d{5}\.(?:bin|idx\.npy)|\.(?:train|val)\.\d{5}\.(?:bin|idx\.npy)"
                       r"\.tmp-\d+|\.(?:manifest|tokenizer)\.json\.tmp-\d+)")


def ours(name: str) -> bool:
    """A name a preparation writes (shards, their indexes, and the temporary files of both and of
    the manifest and the tokenizer): the only files it ever deletes."""
    return name in (mf.TOKENIZER_FILE, LOCK_FILE) or OUR_NAMES.fullmatch(name) is not None


def refuse_out_in_source(out: Path, sources: dict[str, str]) -> None:
    """--out that is the source or holds it: the shards would land among the text they are made from
    (and a later run would read them as source). A folder inside the source is fine: no source
    layout reads a shard."""
    target = out.resolve()
    for flag, given in sources.items():
        source = Path(given).resolve() if given else None
        if source is not None and (target == source or target in source.parents):
            raise LmlabError(f"--out {out} is {'the' if target == source else 'a folder holding the'} "
                             f"{flag} {given}. Fix: give an --out outside the source, e.g. a new sibling "
                             "folder.")


def make_out(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / LOCK_FILE).touch()
    except OSError as err:
        raise LmlabError(f"cannot create --out {out}: {err.strerror or err}. Nothing was written. Fix: "
                         "give an --out on a writable disk.") from None


class locked:
    """One preparation per folder (flock, released however the process ends)."""

    def __init__(self, out: Path):
        self.path = out / LOCK_FILE

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            raise LmlabError(f"{self.path.parent} is being prepared by another process (it holds "
                             f"{self.path}). Fix: wait for it to end, or prepare into another --out.") from None
        return self

    def __exit__(self, *exc):
        os.close(self.fd)
