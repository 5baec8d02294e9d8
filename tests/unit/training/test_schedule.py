"""When the loop logs, validates, checkpoints and stops (``trainer.Schedule``), and how a stop
request reaches it (``signals.PreemptionSignals``: a flag, and a thread watching the request file)."""
from __future__ import annotations

import threading
import time

from lmlab.training.signals import PreemptionSignals
from lmlab.training.trainer import Schedule


def test_every_cadence_counts_from_zero_and_all_of_them_happen_at_the_last_step():
    plan = Schedule(total=25, log_every=10, save_every=20, validate_every=0)
    assert [s for s in range(1, 26) if plan.logs(s)] == [10, 20, 25]
    assert [s for s in range(1, 26) if plan.saves(s)] == [20, 25]
    assert [s for s in range(1, 26) if plan.validates(s)] == [25]  # every=0: only at the end
    assert not any(plan.stops(s) for s in range(1, 26)) and plan.last_step == 25


def test_without_validation_nothing_validates_and_stop_at_saves_then_stops():
    plan = Schedule(total=30, log_every=5, save_every=100, validate_every=None, stop_at=12)
    assert not any(plan.validates(s) for s in range(1, 31))
    assert plan.saves(12) and not plan.saves(11)  # the step this invocation stops at is kept
    assert [s for s in range(1, 31) if plan.stops(s)][:2] == [12, 13] and not plan.stops(30)
    assert plan.last_step == 12
    assert Schedule(total=10, log_every=5, save_every=5, validate_every=2, stop_at=40).last_step == 10


def test_a_request_file_is_seen_by_the_watcher_not_by_the_loop(tmp_path, monkeypatch):
    monkeypatch.setattr(PreemptionSignals, "WATCH_EVERY_S", 0.01)
    request = tmp_path / "preempt.request"
    with PreemptionSignals(request) as signals:
        assert not signals.pending and signals.requested is None
        request.touch()
        deadline = time.monotonic() + 10
        while not signals.pending and time.monotonic() < deadline:
            time.sleep(0.01)
        assert signals.pending and signals.requested == "a preemption request (preempt.request)"
    assert not any(t.name == "lmlab-preempt-watch" for t in threading.enumerate())


def test_the_watcher_ends_with_the_loop_when_no_request_came(tmp_path):
    with PreemptionSignals(tmp_path / "preempt.request") as signals:
        assert any(t.name == "lmlab-preempt-watch" for t in threading.enumerate())
    assert not signals.pending
    assert not any(t.name == "lmlab-preempt-watch" for t in threading.enumerate())


def test_the_watcher_outlives_a_filesystem_error_and_sees_the_request_after_it(tmp_path, monkeypatch):
    """A folder above the run losing its search permission (EACCES from stat) is no request and no
    traceback from the thread: the watcher looks again."""
    monkeypatch.setattr(PreemptionSignals, "WATCH_EVERY_S", 0.01)
    request = tmp_path / "preempt.request"
    failing = threading.Event()
    failing.set()
    real_exists = type(request).exists

    def exists(path):
        if path == request and failing.is_set():
            raise PermissionError(13, "Permission denied", str(path))
        return real_exists(path)

    monkeypatch.setattr(type(request), "exists", exists)
    crashed = []
    monkeypatch.setattr(threading, "excepthook", crashed.append)
    with PreemptionSignals(request) as signals:
        request.touch()
        time.sleep(0.1)
        assert not signals.pending and not crashed
        failing.clear()
        deadline = time.monotonic() + 10
        while not signals.pending and time.monotonic() < deadline:
            time.sleep(0.01)
        assert signals.pending and not crashed
