"""Preemption: SIGTERM / SIGUSR1 (a scheduler's warning before a time limit), or a request file in
the run directory, become a flag that the loop checks at step boundaries, so the run saves a
checkpoint and exits 0 instead of dying mid-step.

Ctrl-C (SIGINT) too: the first one stops the run the same way (``lmlab train`` then exits 130, the
run ``stopped``); a second one, while it finishes the step and saves, raises ``KeyboardInterrupt``
at once, as Python's default handler would.

The request file is for schedulers whose signal reaches only the batch script (SLURM's
``--signal=B:USR1@120``): the script creates ``<run>/preempt.request`` and every rank of every
node sees it on the shared filesystem; a new start removes it. A thread looks for it once a second
(``WATCH_EVERY_S``), never the training loop: on a shared filesystem a ``stat`` can take
milliseconds, or seconds when its metadata server is busy, and the loop would stall on it at every
step. The loop reads one flag, ``pending``, set by the handlers and the watcher.
"""
from __future__ import annotations

import os
import signal
import threading
from pathlib import Path


class PreemptionSignals:
    """Context manager installing the handlers (and watching for the request file); ``pending``
    says the run should stop after this step, ``requested`` why."""

    SIGNALS = ("SIGTERM", "SIGUSR1", "SIGINT")
    INTERRUPT = "SIGINT"
    WATCH_EVERY_S = 1.0

    def __init__(self, request_file: Path | None = None):
        # the loop reads this at every step: a plain flag (set by the handlers and the watcher), not
        # a property computed from ``received`` and ``request_seen``, so the step makes no call here
        self.pending = False
        self.received: str | None = None  # the signal's name
        self.request_file = request_file
        self.request_seen = False
        self._previous: dict = {}
        self._interrupts = 0
        self._stop_watching = threading.Event()
        self._watcher: threading.Thread | None = None

    @property
    def requested(self) -> str | None:
        """The signal's name, ``"a preemption request"`` for the file, or None."""
        if self.received:
            return self.received
        if self.request_seen:
            return f"a preemption request ({self.request_file.name})"
        return None

    def _handle(self, signum, _frame) -> None:
        name = signal.Signals(signum).name
        if name == self.INTERRUPT:
            self._interrupts += 1
            if self._interrupts > 1:
                raise KeyboardInterrupt  # the second Ctrl-C: stop now, without the checkpoint
            if os.environ.get("RANK", "0") == "0":  # a terminal's Ctrl-C reaches every rank; one says it
                try:  # os.write, not print: the interrupted code may be inside a print to stderr
                    os.write(2, b"\nCtrl-C: stopping after this step with a checkpoint (Ctrl-C again "
                                b"stops at once, without one)\n")
                except OSError:
                    pass
        self.received = self.received or name
        self.pending = True

    def _watch(self) -> None:
        while not self._request_exists():
            if self._stop_watching.wait(self.WATCH_EVERY_S):
                return
        self.request_seen = self.pending = True

    def _request_exists(self) -> bool:
        try:
            return self.request_file.exists()
        except OSError:  # e.g. a folder above lost its search permission: not seen yet, look again
            return False

    def __enter__(self) -> "PreemptionSignals":
        if threading.current_thread() is threading.main_thread():  # handlers only work there
            for name in self.SIGNALS:
                sig = getattr(signal, name)
                self._previous[sig] = signal.signal(sig, self._handle)
        if self.request_file is not None:
            self._watcher = threading.Thread(target=self._watch, name="lmlab-preempt-watch", daemon=True)
            self._watcher.start()
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        if self._watcher is not None:
            self._stop_watching.set()
            self._watcher.join(timeout=self.WATCH_EVERY_S)
