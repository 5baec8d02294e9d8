"""Evaluation runs on one thread, as in tests/unit/evaluation (tests/conftest.py says why)."""
import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every evaluation test of this folder on one thread."""
