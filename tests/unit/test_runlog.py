"""The event-log writer (``lmlab.runlog``): phases, failures with traceback files and the lmlab
line that raised them, warnings, and redaction of secrets."""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from fakerun import fail_in_validation
from lmlab.data.wikitext import read_split_lines
from lmlab.errors import LmlabError
from lmlab.rundir import ERRORS_DIR, EVENTS_FILE, read_jsonl
from lmlab.runlog import EventLog

FAKE_KEY = "wandb-fake-3f9c2a7d41e8b6a0"


def read_events(run_dir: Path) -> list[dict]:
    return read_jsonl(Path(run_dir) / EVENTS_FILE)


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
        files = list((run / ERRORS_DIR).glob("*-train.txt"))
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
    written = (run / EVENTS_FILE).read_text() + "".join(
        p.read_text() for p in (run / ERRORS_DIR).iterdir())
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
    assert "test_runlog.py:" in event["where"] and event["where"].rsplit(":", 1)[1].isdigit()


def test_run_records_the_result_and_a_failure_once(tmp_path):
    ok = EventLog(tmp_path / "ok")
    with ok.run():
        ok.set_result("stopped early", step=5)
    assert read_events(tmp_path / "ok")[-1]["status"] == "stopped early"
    with pytest.raises(ValueError):
        ok.set_result("done")

    fail_in_validation(tmp_path / "bad")
    end = read_events(tmp_path / "bad")[-1]
    assert (end["event"], end["status"], end["phase"]) == ("run_end", "failed", "validate")
    assert len(list((tmp_path / "bad" / ERRORS_DIR).iterdir())) == 1  # recorded once, innermost
