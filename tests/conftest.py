"""Shared fixtures (plain helpers live in tests/helpers.py)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers import make_jsonl_root


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
