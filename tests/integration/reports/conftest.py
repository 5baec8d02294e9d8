"""Runs shared by the report tests: tiny real runs (a few seconds each on CPU, so built once), and a
hand-written run directory (``fake_run``) that needs neither training nor torch."""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import pytest
import torch
import yaml

from helpers import CONFIGS, TINY_TRANSFORMER, data_overrides, make_jsonl_root
from lmlab import rundir
from lmlab.cli import main
from lmlab.errors import ConfigError
from lmlab.preflight import load_and_check
from lmlab.runlog import EventLog

# The quickstart shrunk to seconds: 12 steps, logged every 2, validated and checkpointed every 6.
TINY_QUICKSTART = ["steps=12", "model.dim=32", "model.n_layers=1", "model.n_heads=2",
                   "model.multiple_of=16", "data.seq_len=32", "data.batch_size=2", "logging.every=2",
                   "eval.validation.every=6", "eval.validation.max_steps=1", "checkpoint.every=6"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_valid_png(path):
    from PIL import Image

    assert path.read_bytes()[:8] == PNG_MAGIC, path
    with Image.open(path) as image:
        image.verify()
        assert image.size[0] > 100 and image.size[1] > 100


@pytest.fixture
def valid_png():
    """``valid_png(path)`` asserts that ``path`` is a readable PNG of a real size."""
    return assert_valid_png


@contextlib.contextmanager
def one_thread():
    """Models this small gain nothing from a second thread, and on 2 shared cores an
    oversubscribed OpenMP pool can make them many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


def train_tiny(run: Path, *extra: str) -> Path:
    with one_thread():
        code = main(["train", str(CONFIGS / "quickstart.yaml"), f"dump_dir={run}", *TINY_QUICKSTART, *extra])
    assert code == 0
    return run


@pytest.fixture
def train_run():
    """``train_run(path, *overrides)``: a tiny finished quickstart run there (``train_tiny``)."""
    return train_tiny


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory) -> dict[str, Path]:
    """Two finished runs differing only in optim.lr; 'base' also has downstream eval results."""
    root = tmp_path_factory.mktemp("report_runs")
    runs = {"base": train_tiny(root / "base"), "low_lr": train_tiny(root / "low_lr", "optim.lr=1e-3")}
    evals = [{"step": 12, "task": "hellaswag", "metric": "acc_norm", "value": 0.2512, "stderr": 0.0043,
              "n": 10042, "seconds": 12.5},
             {"step": 12, "task": "arc_easy", "metric": "acc", "value": 0.3017, "stderr": 0.0094,
              "n": 2376, "seconds": 3.25}]
    (runs["base"] / rundir.EVAL_METRICS_FILE).write_text("".join(json.dumps(e) + "\n" for e in evals))
    return runs


@pytest.fixture
def preflight_failure(tmp_path) -> Path:
    """A run that failed in preflight, recorded by EventLog: validation is enabled but the
    corpus has no .val.jsonl files. Only events.jsonl and errors/ exist (no config.yaml yet)."""
    data_root = make_jsonl_root(tmp_path / "data")
    for val in data_root.glob("*/*.val.jsonl"):
        val.unlink()
    run = tmp_path / "failed_run"
    overrides = [*TINY_TRANSFORMER, *data_overrides(data_root), f"dump_dir={run}"]
    log = EventLog(run)
    with pytest.raises(ConfigError):
        with log.run(command=["lmlab", "train", "configs/debug.yaml", *overrides]):
            with log.phase("preflight"):
                load_and_check(CONFIGS / "debug.yaml", overrides)
    return run
