"""Preemption: SIGTERM / SIGUSR1 (a scheduler's warning before a time limit) become a flag that the
loop checks at each step boundary, so the run saves a checkpoint and exits 0 instead of dying
mid-step."""
from __future__ import annotations

import signal
import threading


class PreemptionSignals:
    """Context manager installing the handlers; ``received`` is the signal's name once one came."""

    SIGNALS = ("SIGTERM", "SIGUSR1")

    def __init__(self):
        self.received: str | None = None
        self._previous: dict = {}

    def _handle(self, signum, _frame) -> None:
        self.received = signal.Signals(signum).name

    def __enter__(self) -> "PreemptionSignals":
        if threading.current_thread() is threading.main_thread():  # handlers only work there
            for name in self.SIGNALS:
                sig = getattr(signal, name)
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
