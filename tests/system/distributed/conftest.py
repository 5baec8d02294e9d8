"""The 2-process runs of ``RECIPES["two_readers"]`` that several tests compare with one process and
with each other (test_torchrun.py, test_disjoint_readers.py): each started once a session with real
torchrun. Tests only read them; a test that resumes one works on a copy (``copy_run``)."""
from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import RECIPES, copy_run, torchrun

TWO_READERS = RECIPES["two_readers"]
STOP_AT = 10  # of its 20 steps


@dataclass(frozen=True)
class Launched:
    """A run directory and the torchrun that trained it (exit code, stdout, stderr)."""

    run: Path
    out: subprocess.CompletedProcess


@pytest.fixture(scope="session")
def straight_on_two(tmp_path_factory, tiny_corpus) -> Launched:
    """The recipe on 2 processes (DDP, one reader each), uninterrupted."""
    run = tmp_path_factory.mktemp("straight_on_two") / "run"
    return Launched(run, torchrun(TWO_READERS.argv(run, tiny_corpus, "distributed.strategy=ddp")))


@pytest.fixture(scope="session")
def stopped_on_two(tmp_path_factory, tiny_corpus) -> Launched:
    """The recipe on 2 processes, stopped at step STOP_AT with a checkpoint (``training.stop_at``)."""
    run = tmp_path_factory.mktemp("stopped_on_two") / "run"
    return Launched(run, torchrun(TWO_READERS.argv(run, tiny_corpus, f"training.stop_at={STOP_AT}")))


@pytest.fixture(scope="session")
def resumed_on_two(stopped_on_two, tmp_path_factory, tiny_corpus) -> Launched:
    """A copy of ``stopped_on_two`` resumed on 2 processes with the same command, to the end."""
    run = copy_run(stopped_on_two.run, tmp_path_factory.mktemp("resumed_on_two") / "run")
    return Launched(run, torchrun(TWO_READERS.argv(run, tiny_corpus)))
