"""The event log: phases, failures with traceback files, warnings, redaction, and run_status rules."""
from __future__ import annotations

import json
import os
import socket
import time
import warnings

import pytest

from lmlab.data.wikitext import read_split_lines
from lmlab.errors import LmlabError
from lmlab.reports.events import EventLog, read_events, run_status

FAKE_KEY = "wandb-fake-3f9c2a7d41e8b6a0"


def test_phase_records_start_end_and_duration(tmp_path):
    log = EventLog(tmp_path / "run")
    with log.phase("build", model="transformer"):
        pass
    start, end = read_events(tmp_path / "run")
    assert (start["event"], start["phase"], start["model"]) == ("phase_start", "build", "transformer")
    assert (end["event"], end["phase"], end["status"]) == ("phase_end", "build", "ok")
    assert end["seconds"] >= 0 and end["time"].endswith("Z")


def test_phase_writes_traceback_file_before_reraising_with_lmlab_location(tmp_path):
    run = tmp_path / "run"
    log = EventLog(run)
    with pytest.raises(LmlabError) as caught:
        with log.phase("data"):
            read_split_lines(str(tmp_path / "nowhere"), "valid")
    # The exception is unchanged, and by the time it reached us everything was on disk.
    assert "split 'valid' not found" in str(caught.value)
    end = read_events(run)[-1]
    assert end["status"] == "failed"
    exc = end["exception"]
    assert exc["type"] == "LmlabError" and "not found" in exc["message"]
    assert exc["where"].startswith("lmlab/data/wikitext.py:") and exc["function"] == "read_split_lines"
    text = (run / exc["traceback_file"]).read_text()
    assert exc["traceback_file"].startswith("errors/") and exc["traceback_file"].endswith("-data.txt")
    assert "Traceback (most recent call last)" in text and "read_split_lines" in text


def test_traceback_is_on_disk_inside_the_callers_except_block(tmp_path):
    run = tmp_path / "run"
    try:
        with EventLog(run).phase("train"):
            raise RuntimeError("boom")
    except RuntimeError:
        files = list((run / "errors").glob("*-train.txt"))
        assert len(files) == 1 and "RuntimeError: boom" in files[0].read_text()
        assert read_events(run)[-1]["status"] == "failed"
    else:
        pytest.fail("the exception was swallowed")


def test_secrets_are_redacted_everywhere(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    run = tmp_path / "run"
    log = EventLog(run)
    with pytest.raises(RuntimeError):
        with log.run(command=["lmlab", "train", f"wandb.api_key={FAKE_KEY}"]):
            with log.phase("login", api_key=FAKE_KEY, note=f"using {FAKE_KEY}"):
                raise RuntimeError(f"wandb login failed for key {FAKE_KEY} (HF_TOKEN=hf_abcdefgh)")
    written = (run / "events.jsonl").read_text() + "".join(
        p.read_text() for p in (run / "errors").iterdir())
    assert FAKE_KEY not in written and "hf_abcdefgh" not in written
    assert "<redacted:WANDB_API_KEY>" in written and "<redacted>" in written
    events = read_events(run)
    assert events[0]["command"][-1] == "wandb.api_key=<redacted>"
    assert events[-1]["event"] == "run_end" and events[-1]["status"] == "failed"


def test_counters_named_like_tokens_are_not_redacted(tmp_path):
    log = EventLog(tmp_path)
    log.phase_end("train", tokens=1234, tokenizer="bytes")
    event = read_events(tmp_path)[-1]
    assert event["tokens"] == 1234 and event["tokenizer"] == "bytes"


def test_python_warnings_are_captured_and_still_shown(tmp_path):
    log = EventLog(tmp_path)
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        with log.capture_warnings():
            warnings.warn("lr looks high", UserWarning)
    assert [str(w.message) for w in shown] == ["lr looks high"]
    event = read_events(tmp_path)[-1]
    assert (event["event"], event["category"]) == ("warning", "UserWarning")
    assert event["message"] == "lr looks high"
    assert "test_events.py:" in event["where"] and event["where"].rsplit(":", 1)[1].isdigit()


def test_run_records_the_result_and_failures(tmp_path):
    ok = EventLog(tmp_path / "ok")
    with ok.run():
        ok.set_result("stopped early", step=5)
    assert run_status(tmp_path / "ok")["status"] == "stopped early"

    bad = EventLog(tmp_path / "bad")
    with pytest.raises(ValueError):
        with bad.run():
            with bad.phase("train"):
                with bad.phase("validate"):
                    raise ValueError("shape mismatch")
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
    with open(run / "events.jsonl", "a") as handle:
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
