"""Shared fixtures (plain helpers live in tests/helpers.py)."""
from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch

from helpers import make_jsonl_root

# The system tier: modules whose tests start processes (torchrun, `python -m lmlab`, kill -9,
# signals, SLURM). `python -m pytest -q -m "not system"` is the edit loop; README's command runs all.
SYSTEM_MODULES = ("distributed/", "system/", "sweeps/test_local.py", "sweeps/test_slurm_array.py",
                  "sweeps/test_real_slurm_array.py", "training/test_kill_resume.py",
                  "training/test_faults.py", "training/test_run_lock.py")
TESTS = Path(__file__).parent

# A test run started in the background (`bash .ci/run &`, a CI runner without job control) has
# SIGINT ignored, as bash sets it for `&` jobs, and every process it starts inherits that: the
# Ctrl-C tests would send SIGINT to processes that never see it. lmlab keeps an ignored SIGINT
# ignored on purpose (`nohup lmlab train &`), so the tests restore the default here, once.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        where = Path(str(item.fspath)).relative_to(TESTS).as_posix()
        if where.startswith(SYSTEM_MODULES):
            item.add_marker(pytest.mark.system)


@pytest.fixture
def jsonl_root(tmp_path: Path) -> Path:
    """A toy Lingua-layout corpus: sources alpha and beta, two chunk files and a val file each."""
    return make_jsonl_root(tmp_path / "data")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models on a busy 2-core machine: a second intra-op thread buys nothing, and its
    spin-waiting made small forwards many times slower. Modules opt in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
