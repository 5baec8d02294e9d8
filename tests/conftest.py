"""Shared fixtures (plain helpers live in tests/helpers.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

from helpers import make_jsonl_root


@pytest.fixture
def jsonl_root(tmp_path: Path) -> Path:
    """A toy Lingua-layout corpus: sources alpha and beta, two chunk files and a val file each."""
    return make_jsonl_root(tmp_path / "data")
