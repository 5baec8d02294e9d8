"""Runs shared by the report tests: copies of the session's tiny quickstart runs (tests/conftest.py's
``trained_run``: reports write into the run they report on), and a run that failed in preflight.
A hand-written run (``fake_run``) is tests/fakerun.py's."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import CONFIGS, TINY_TRANSFORMER, assert_valid_png, copy_run, data_overrides, make_jsonl_root
from lmlab import rundir
from lmlab.errors import ConfigError
from lmlab.preflight import load_and_check
from lmlab.runlog import EventLog


@pytest.fixture
def valid_png():
    """``valid_png(path)`` asserts that ``path`` is a readable PNG of a real size."""
    return assert_valid_png


@pytest.fixture
def train_run(trained_run):
    """``train_run(path)``: a finished tiny quickstart run there (a copy of ``trained_run("quickstart")``)."""
    return lambda path: copy_run(trained_run("quickstart"), path)


@pytest.fixture(scope="session")
def tiny_runs(trained_run, tmp_path_factory) -> dict[str, Path]:
    """Two finished runs differing only in optim.lr; 'base' also has downstream eval results."""
    root = tmp_path_factory.mktemp("report_runs")
    runs = {"base": copy_run(trained_run("quickstart"), root / "base"),
            "low_lr": copy_run(trained_run("quickstart_low_lr"), root / "low_lr")}
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
