"""A run directory written by hand, as training would leave it: for the tests of what reads runs
(reports, ``lmlab runs``, status), which need neither training nor torch."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from lmlab import rundir
from lmlab.runlog import EventLog

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


def fail_in_validation(run: Path) -> None:
    """A run whose event log records a ValueError raised in phase validate (inside train)."""
    log = EventLog(run)
    with pytest.raises(ValueError):
        with log.run():
            with log.phase("train"):
                with log.phase("validate"):
                    raise ValueError("shape mismatch")
