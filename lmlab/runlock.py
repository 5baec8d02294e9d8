"""One process per run directory: ``lmlab train`` holds an exclusive lock on ``<run>/.lock``.

Two trainings writing one run directory would mix their config, metrics and checkpoints, so the
second is refused: it exits 2 naming the process (pid, host, start time) that holds the lock.
The lock is ``flock`` on the file; the kernel releases it whatever way the holder ends, ``kill -9``
included. Only the file stays behind then, still naming the dead holder: the next start takes it
over and says so. A clean exit empties the file before unlocking, so a takeover message always
means a holder that did not end cleanly. The file is never deleted: a process that opened it an
instant before would lock a file nobody else sees.

Readers (``lmlab eval``, ``report``, ``runs``) take no lock: they read a run while it trains.
Several-process jobs lock on rank 0 only (``apps/train.py``). ``RUN_MARKER`` is written here too:
it tells preflight that the folder is a run of ours and not a user's folder (``rundir.is_lmlab_dir``).
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import stat
import time
from datetime import datetime, timezone
from pathlib import Path

from lmlab.atomic import write_text
from lmlab.errors import LmlabError
from lmlab.rundir import LOCK_FILE, RUN_MARKER

_READ_TRIES, _READ_PAUSE_S = 20, 0.05  # a holder that just locked may not have written itself yet


class RunLock:
    """``with RunLock(run_dir) as lock:`` holds the run directory (creating it) for the block;
    ``lock.taken_over`` is the one-line note when a dead holder's file was taken over, else None."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self.taken_over: str | None = None
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        """Take the lock or raise ``LmlabError`` naming its holder and the fix."""
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fd = self._open(os.O_RDWR | os.O_CREAT)  # not inherited by child processes
        except OSError as err:
            raise LmlabError(f"cannot create the lock file {self.path}: {err.strerror or err}. Fix: set "
                             "dump_dir to a writable location.") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise LmlabError(f"cannot lock {self.path}: {err.strerror or err}. Fix: put dump_dir on "
                                 "a filesystem that supports file locks.") from None
            raise LmlabError(self._refusal()) from None
        previous = _parse(os.pread(fd, 4096, 0))
        if previous:
            self.taken_over = (f"taking over {self.path}: left by pid {previous.get('pid', '?')} on host "
                               f"{previous.get('host', '?')} (started {previous.get('started', '?')}), "
                               "which no longer holds it (killed?)")
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def refuse_if_held(self) -> None:
        """Raise the refusal ``acquire`` would raise while another process holds the lock; takes
        nothing and creates nothing. ``--nproc`` asks before it starts its processes, so that a
        second job on a run is refused in a second, not after N processes have imported torch."""
        try:
            fd = self._open(os.O_RDONLY)
        except FileNotFoundError:
            return  # no lock file yet: nobody holds it
        except OSError:
            return  # acquire, in the workers, says why the file cannot be opened
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # conflicts with a holder's LOCK_EX only
        except OSError as err:
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise LmlabError(self._refusal()) from None
        finally:
            os.close(fd)  # releases the shared lock at once

    def _open(self, flags: int) -> int:
        """The lock file's descriptor. Anything but a regular file there (a folder, a FIFO, a device)
        is not a lock lmlab wrote: refused, and left as it is."""
        try:
            fd = os.open(self.path, flags | os.O_NONBLOCK, 0o644)  # NONBLOCK: a FIFO must not hang the open
        except IsADirectoryError:
            fd = None
        if fd is None or not stat.S_ISREG(os.fstat(fd).st_mode):
            if fd is not None:
                os.close(fd)
            raise LmlabError(f"{self.path} is not a regular file, so not a lock lmlab wrote. Fix: move it "
                             "away, or set dump_dir to another folder.")
        return fd

    def release(self) -> None:
        """Empty the file (a clean end: nothing to take over), then unlock."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass  # a full or vanished disk: the next start only prints a takeover note
        finally:
            os.close(fd)  # closing the last descriptor releases the flock

    def _refusal(self) -> str:
        holder = {}
        for _ in range(_READ_TRIES):
            holder = read_holder(self.run_dir)
            if holder:
                break
            time.sleep(_READ_PAUSE_S)
        who = (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} (started "
               f"{holder.get('started', '?')})" if holder else "another process (it has not written "
               "its pid yet)")
        return (f"{self.run_dir} is in use: another lmlab train holds {self.path}: {who}. Fix: wait for "
                "that run to end (or stop it; Ctrl-C or kill saves a checkpoint and a later start "
                "resumes it), or set dump_dir to another folder. lmlab eval / report read the run while "
                "it trains.")

    def __enter__(self) -> "RunLock":
        return self if self._fd is not None else self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def read_holder(run_dir: str | Path) -> dict:
    """What the lock file says about its holder ({} when empty, missing or unreadable); this does
    not tell whether the holder still holds it."""
    try:
        return _parse((Path(run_dir) / LOCK_FILE).read_bytes())
    except OSError:
        return {}


def _parse(raw: bytes) -> dict:
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def mark_run_dir(run_dir: str | Path, command: str) -> None:
    """Write ``RUN_MARKER`` (once; atomically): this folder is an lmlab run."""
    path = Path(run_dir) / RUN_MARKER
    if path.is_file():
        return
    made = datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    write_text(path, f"lmlab run directory, created {made} by {command}. lmlab trains only into\n"
                     "empty folders and folders holding this file (or an older run's files).\n")
