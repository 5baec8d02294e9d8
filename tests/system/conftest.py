"""The system tier starts real processes. Each computes on one thread, as torchrun's workers do by
default and as the in-process runs they are compared with (tests/conftest.py's ``single_thread``):
tiny models gain nothing from a second intra-op thread on a 2-core machine, and two processes with
two threads each fight over the cores (a single-process run took twice as long)."""
import pytest


@pytest.fixture(autouse=True)
def _processes_on_one_thread(monkeypatch):
    """Every process a system test starts inherits OMP_NUM_THREADS=1 / MKL_NUM_THREADS=1 (a test
    may set its own; ``lmlab sweep`` sets each trial's share itself). This process's thread pool
    was sized when torch was imported: it is not affected."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
