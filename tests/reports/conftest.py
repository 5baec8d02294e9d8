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


# --------------------------------------------------------------------------- a run written by hand

FAKE_MODEL_SIZE = {"model": "transformer", "params": 123456, "flops_per_token": 987654,
                   "formula": "6N + 12*L*d*T", "vocab_size": 260, "seq_len": 32, "tokens_per_step": 64}


def write_fake_run(run: Path, model_size: dict | None = FAKE_MODEL_SIZE, steps: int = 20) -> Path:
    """A finished 20-step run as training would leave it, written without torch: config, metrics
    (every 2 steps, validation every 10), events, provenance (with ``model_size`` unless None),
    step checkpoints 10 and 20 with ``final`` hard-linked to 20, plus an interrupted save and a
    folder without a train state, which are not checkpoints."""
    run.mkdir(parents=True)
    config = {"name": run.name, "model": {"name": "transformer", "dim": 32}, "steps": steps,
              "device": "cpu", "precision": "fp32", "data": {"batch_size": 2, "seq_len": 32},
              "optim": {"lr": 0.003, "clip": 1.0}, "dump_dir": str(run)}
    (run / rundir.CONFIG_FILE).write_text(yaml.safe_dump(config))
    lines = []
    for step in range(2, steps + 1, 2):
        lines.append({"step": step, "loss": 5.0 - 0.1 * step, "lr": 0.003, "grad_norm": 1.5,
                      "tokens_per_s": 1000.0 + step, "flops_per_s": 1.2e9, "data_time_frac": 0.05,
                      "mem_peak_gib": 0.25, "tokens": 64 * step})
        if step % 10 == 0:
            lines.append({"step": step, "val/loss": 4.5 - 0.05 * step, "val/ppl": 50.0, "val/bpb": 2.5,
                          "val/acc": 0.2, "val/tokens": 640})
    (run / rundir.METRICS_FILE).write_text("".join(json.dumps(m) + "\n" for m in lines))
    events = [{"event": "run_start", "time": "2026-01-01T00:00:00.000Z", "unix": 1767225600.0,
               "pid": 1, "host": "elsewhere", "command": "lmlab train x.yaml"},
              {"event": "phase_start", "phase": "train", "time": "2026-01-01T00:00:01.000Z",
               "unix": 1767225601.0},
              {"event": "phase_end", "phase": "train", "status": "ok", "seconds": 60.0,
               "time": "2026-01-01T00:01:01.000Z", "unix": 1767225661.0},
              {"event": "run_end", "status": "finished", "seconds": 62.0,
               "time": "2026-01-01T00:01:02.000Z", "unix": 1767225662.0}]
    (run / rundir.EVENTS_FILE).write_text("".join(json.dumps(e) + "\n" for e in events))
    provenance = {"time": "2026-01-01T00:00:00+00:00", "command": ["lmlab", "train", "x.yaml"],
                  "git": {"sha": "0123456789abcdef", "dirty": False},
                  "versions": {"python": "3.11.0", "lmlab": "0.1.0"},
                  "machine": {"device": "cpu", "platform": "Linux", "cpu_threads": 2}}
    if model_size is not None:
        provenance["model_size"] = model_size
    (run / rundir.PROVENANCE_FILE).write_text(json.dumps(provenance))
    for step in (10, steps):
        folder = rundir.checkpoints_root(run) / rundir.step_name(step)
        folder.mkdir(parents=True)
        (folder / rundir.MODEL_FILE).write_bytes(b"\0" * 4096)
        (folder / rundir.STATE_FILE).write_text(json.dumps({"step": step, "finished": step == steps}))
    final = rundir.named_checkpoint(run, rundir.FINAL)
    final.mkdir()
    for file in (rundir.MODEL_FILE, rundir.STATE_FILE):
        os.link(rundir.checkpoints_root(run) / rundir.step_name(steps) / file, final / file)
    (rundir.checkpoints_root(run) / f"{rundir.TMP_PREFIX}{rundir.step_name(30)}").mkdir()
    (rundir.checkpoints_root(run) / rundir.step_name(40)).mkdir()  # no train state: incomplete
    return run


@pytest.fixture
def make_fake_run():
    """``make_fake_run(path, model_size=..., steps=20)``: see ``write_fake_run``."""
    return write_fake_run


@pytest.fixture
def fake_run(tmp_path) -> Path:
    return write_fake_run(tmp_path / "fake")
