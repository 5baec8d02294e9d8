"""Preemption: SIGTERM / SIGUSR1 (a scheduler's warning before a time limit), or a request file in
the run directory, become a flag that the loop checks at step boundaries, so the run saves a
checkpoint and exits 0 instead of dying mid-step.

Ctrl-C (SIGINT) too: the first one stops the run the same way (``lmlab train`` then exits 130, the
run ``stopped``); a second one, while it finishes the step and saves, raises ``KeyboardInterrupt``
at once, as Python's default handler would.

The request file is for schedulers whose signal reaches only the batch script (SLURM's
``--signal=B:USR1@120``): the script creates ``<run>/preempt.request`` and every rank of every
node sees it on the shared filesystem; a new start removes it.
"""
from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

from lmlab.training import distributed
from lmlab.training.distributed import Dist


class PreemptionSignals:
    """Context manager installing the handlers; ``requested`` says why the run should stop, if so."""

    SIGNALS = ("SIGTERM", "SIGUSR1", "SIGINT")
    INTERRUPT = "SIGINT"

    def __init__(self, request_file: Path | None = None):
        self.received: str | None = None
        self.request_file = request_file
        self._previous: dict = {}
        self._interrupts = 0

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

    def __enter__(self) -> "PreemptionSignals":
        if threading.current_thread() is threading.main_thread():  # handlers only work there
            for name in self.SIGNALS:
                sig = getattr(signal, name)
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
