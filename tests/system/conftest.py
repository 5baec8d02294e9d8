"""The system tier starts real processes. Each computes on one thread, as torchrun's workers do by
default and as the in-process runs they are compared with (tests/conftest.py's ``single_thread``):
tiny models gain nothing from a second intra-op thread on a 2-core machine, and two processes with
two threads each fight over the cores (a single-process run took twice as long).

``zygote`` (tests/zygote.py) forks real ``lmlab`` processes from one that imported torch and lmlab
once a session, for the tests whose point is what a process does when it races, is signalled or
is killed (test_kill_resume.py, test_run_lock.py, test_faults.py), not how it starts."""
import itertools

import pytest

from zygote import Zygote


@pytest.fixture(autouse=True)
def _processes_on_one_thread(monkeypatch):
    """Every process a system test starts inherits OMP_NUM_THREADS=1 / MKL_NUM_THREADS=1 (a test
    may set its own; ``lmlab sweep`` sets each trial's share itself). This process's thread pool
    was sized when torch was imported: it is not affected."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def zygote():
    z = Zygote()
    yield z
    z.close()


@pytest.fixture
def start_lmlab(zygote, tmp_path):
    """``start_lmlab(ARGS)``: ``lmlab ARGS`` as a real process forked from the session's zygote,
    started at once; its stdout and stderr go to files under ``tmp_path`` (``communicate`` reads them)."""
    count = itertools.count()

    def start(args: list[str]):
        n = next(count)
        return zygote.start(args, tmp_path / f"lmlab-{n}.out", tmp_path / f"lmlab-{n}.err")

    return start
