"""The run lock's probe (``RunLock.refuse_if_held``): what ``lmlab train --nproc N`` asks before it
starts N processes. The lock itself (two real processes, kill -9, takeover) is tested in
tests/system/training/test_run_lock.py."""
from __future__ import annotations

import os
import threading

import pytest

from lmlab.errors import LmlabError
from lmlab.rundir import LOCK_FILE
from lmlab.runlock import RunLock


def test_the_probe_refuses_while_the_lock_is_held_and_takes_nothing(tmp_path):
    run = tmp_path / "run"
    held = RunLock(run).acquire()  # another open file: flock conflicts as with another process
    try:
        with pytest.raises(LmlabError, match=rf"{run} is in use: .* pid {os.getpid()} .*Fix: wait"):
            RunLock(run).refuse_if_held()
        assert (run / LOCK_FILE).read_text().startswith("{")  # the holder's record untouched
    finally:
        held.release()
    RunLock(run).refuse_if_held()  # released: no refusal
    with RunLock(run) as again:  # and the probe left nothing held
        assert again.taken_over is None


def test_the_probe_creates_nothing_where_no_run_is(tmp_path):
    RunLock(tmp_path / "new").refuse_if_held()
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_what_is_not_a_regular_file_is_refused_by_the_probe_and_the_lock_and_kept(tmp_path, kind):
    """A FIFO (a blocking open would wait for a writer forever) or a folder where the lock file goes:
    not a lock lmlab wrote. Both the probe and the lock refuse at once, naming it; it stays."""
    run = tmp_path / "run"
    run.mkdir()
    lock = run / LOCK_FILE
    os.mkfifo(lock) if kind == "fifo" else lock.mkdir()
    for attempt in (RunLock(run).refuse_if_held, RunLock(run).acquire):
        errors = []

        def attempt_once(attempt=attempt):
            errors.append(pytest.raises(LmlabError, attempt).value)

        thread = threading.Thread(target=attempt_once, daemon=True)
        thread.start()
        thread.join(timeout=10)
        assert not thread.is_alive()
        assert f"{lock} is not a regular file" in str(errors[0]) and "Fix: move it away" in str(errors[0])
    assert lock.is_fifo() if kind == "fifo" else lock.is_dir()
