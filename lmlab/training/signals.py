"""Preemption: SIGTERM / SIGUSR1 (a scheduler's warning before a time limit), or a request file in
the run directory, become a flag that the loop checks at step boundaries, so the run saves a
checkpoint and exits 0 instead of dying mid-step.

The request file is for schedulers whose signal reaches only the batch script (SLURM's
``--signal=B:USR1@120``): the script creates ``<run>/preempt.request`` and every rank of every
node sees it on the shared filesystem; a new start removes it.
"""
from __future__ import annotations

import signal
import threading
from pathlib import Path

from lmlab.training import distributed
from lmlab.training.distributed import Dist


class PreemptionSignals:
    """Context manager installing the handlers; ``requested`` says why the run should stop, if so."""

    SIGNALS = ("SIGTERM", "SIGUSR1")

    def __init__(self, request_file: Path | None = None):
        self.received: str | None = None
        self.request_file = request_file
        self._previous: dict = {}

    @property
    def requested(self) -> str | None:
        """The signal's name, ``"a preemption request"`` for the file, or None."""
        if self.received:
            return self.received
        if self.request_file is not None and self.request_file.exists():
            return f"a preemption request ({self.request_file.name})"
        return None

    def agreed(self, d: Dist, sync_point: bool) -> bool:
        """Whether to stop after this step. One process decides at every step; several agree (an
        all-reduce) only at sync points (logging and checkpoint steps), so that they stop at the
        same step without a collective, and a host sync, at every step."""
        if not d.enabled:
            return self.requested is not None
        return sync_point and distributed.any_rank(self.requested is not None, d)

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
