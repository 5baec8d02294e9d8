"""The run lock's probe (``RunLock.refuse_if_held``): what ``lmlab train --nproc N`` asks before it
starts N processes. The lock itself (two real processes, kill -9, takeover) is tested in
tests/system/training/test_run_lock.py."""
from __future__ import annotations

import os

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
