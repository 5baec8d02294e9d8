"""``run_status``: how a run ended (or that it still runs), from its event log and checkpoints."""
from __future__ import annotations

import json
import os
import socket
import time

import pytest

from fakerun import fail_in_validation
from lmlab import rundir
from lmlab.reports.status import read_events, run_status
from lmlab.runlog import EventLog


def test_run_records_the_result_and_failures(tmp_path):
    ok = EventLog(tmp_path / "ok")
    with ok.run():
        ok.set_result("stopped early", step=5)
    assert run_status(tmp_path / "ok")["status"] == "stopped early"

    fail_in_validation(tmp_path / "bad")
    status = run_status(tmp_path / "bad")
    assert status["status"] == "failed" and status["phase"] == "validate"
    assert status["exception"]["type"] == "ValueError"
    assert len(list((tmp_path / "bad" / "errors").iterdir())) == 1  # recorded once, innermost

    stop = EventLog(tmp_path / "ctrl_c")
    with pytest.raises(KeyboardInterrupt):
        with stop.run():
            raise KeyboardInterrupt
    assert run_status(tmp_path / "ctrl_c")["status"] == "stopped"


def write_events(run, *events):
    run.mkdir(parents=True, exist_ok=True)
    with open(run / rundir.EVENTS_FILE, "a") as handle:
        for e in events:
            handle.write(json.dumps({"time": "2026-01-01T00:00:00.000Z", "unix": time.time(), **e}) + "\n")


def test_status_rules_without_run_end(tmp_path):
    here = socket.gethostname()
    # Alive: our own pid on this host.
    write_events(tmp_path / "alive", {"event": "run_start", "pid": os.getpid(), "host": here},
                 {"event": "phase_start", "phase": "train"})
    alive = run_status(tmp_path / "alive", now=time.time() + 10**6)
    assert (alive["status"], alive["phase"], alive["rule"]) == ("running", "train", "alive")
    # Another host: decided by how recently the files changed.
    write_events(tmp_path / "remote", {"event": "run_start", "pid": 1, "host": "elsewhere"})
    assert run_status(tmp_path / "remote")["status"] == "running"
    gone = run_status(tmp_path / "remote", now=time.time() + 3600)
    assert (gone["status"], gone["rule"]) == ("interrupted", "vanished")
    # A failed phase and no run_end (the process died with the exception).
    write_events(tmp_path / "crashed", {"event": "run_start", "pid": 1, "host": "elsewhere"},
                 {"event": "phase_end", "phase": "eval", "status": "failed",
                  "exception": {"type": "KeyError", "message": "'acc'", "where": "lmlab/x.py:1"}})
    crashed = run_status(tmp_path / "crashed", now=time.time() + 3600)
    assert (crashed["status"], crashed["phase"]) == ("failed", "eval")
    # Only the last invocation counts: a failure that was resumed and then finished is finished.
    write_events(tmp_path / "crashed", {"event": "run_start", "pid": 1, "host": "elsewhere"},
                 {"event": "run_end", "status": "finished"})
    resumed = run_status(tmp_path / "crashed")
    assert (resumed["status"], resumed["attempts"]) == ("finished", 2)
    assert len(read_events(tmp_path / "crashed")) == 4


def test_phase_events_without_run_start_and_finished_checkpoints(tmp_path):
    # Only phase() used (no run()): the events still count as one invocation.
    log = EventLog(tmp_path / "phases_only")
    with pytest.raises(RuntimeError):
        with log.phase("eval"):
            raise RuntimeError("task not found")
    status = run_status(tmp_path / "phases_only", now=time.time() + 3600)
    assert (status["status"], status["phase"], status["attempts"]) == ("failed", "eval", 1)
    # Killed after training finished (no run_end): the finished checkpoint decides.
    run = tmp_path / "killed_late"
    write_events(run, {"event": "run_start", "pid": 1, "host": "elsewhere"})
    (run / "checkpoints" / "0000000012").mkdir(parents=True)
    (run / "checkpoints" / "0000000012" / "train_state.json").write_text('{"step": 12, "finished": true}')
    status = run_status(run, now=time.time() + 3600)
    assert (status["status"], status["rule"]) == ("finished", "ckpt_finished")
