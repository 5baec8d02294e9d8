"""Training batches read ahead in a background thread, so the accelerator never waits for the host.

A ``Prefetcher`` wraps a run's training loader (``PackedLoader`` or ``SequenceLoader``): a thread
reads the next ``depth`` batches, pins them in page-locked host memory when they go to a GPU (so the
step's ``non_blocking`` copy overlaps compute) and queues them. Tokenizing runs outside the GIL in
the HF tokenizers and numpy, so the thread truly overlaps the step.

Nothing about the run changes: the batches are the loader's own, in its order, and everything the
loop asks of the position refers to the batches *handed out*, not the ones read ahead:

* ``state_dict()`` is the loader's state right after the last batch handed out (each batch is
  queued with that snapshot), so a checkpoint resumes exactly where an unprefetched run would;
* ``over_budget`` says whether the bad records met while reading the batches handed out went over
  ``data.max_bad_records`` (the thread stops reading after such a batch, as the loop stops there);
* nothing is read past the batches this invocation takes (``limit``: the run's end or
  ``training.stop_at``), so no record beyond them is counted; a batch asked for after the thread
  has stopped is read in turn.

Why a thread rather than ``torch.utils.data.DataLoader`` workers: the loaders are stateful
iterators whose exact position is checkpointed; worker processes would each hold a copy of that
state and hand batches back out of order of it.
"""
from __future__ import annotations

import copy
import queue
import threading
from typing import Any

import torch

from lmlab.data.badrecords import BadRecords


_END = object()  # queued when the thread stops reading (its limit, or the bad-record budget)


class Prefetcher:
    """``loader``'s batches, ``depth`` of them read ahead by a daemon thread started at the first
    ``next_batch`` (so a resumed position is loaded first)."""

    def __init__(self, loader: Any, depth: int, pin: bool = False, bad_records: BadRecords | None = None,
                 limit: int | None = None):
        assert depth >= 1, depth
        self.loader, self.depth, self.pin, self.bad_records = loader, depth, pin, bad_records
        self.limit = limit  # batches this invocation will take: none is read past them
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._state: dict | None = None  # the position after the last batch handed out
        self._ended = False  # the thread is done: batches come from the loader directly
        self.over_budget = False

    @property
    def batch_size(self) -> int:
        return self.loader.batch_size

    def next_batch(self) -> torch.Tensor:
        if self._thread is None:
            self._thread = threading.Thread(target=self._read, name="lmlab-prefetch", daemon=True)
            self._thread.start()
        item = _END if self._ended else self._queue.get()
        if isinstance(item, BaseException):
            self.close()
            raise item
        if item is _END:  # the thread has ended (limit or budget reached): read here, in turn
            self._ended, self._state = True, None
            batch = self.loader.next_batch()
            self.over_budget = self.bad_records is not None and self.bad_records.exceeded
            return batch
        batch, self._state, self.over_budget = item
        return batch

    def state_dict(self) -> dict:
        return self._state if self._state is not None else self.loader.state_dict()

    def load_state_dict(self, state: dict) -> None:
        assert self._thread is None, "the position is loaded before the first batch"
        self.loader.load_state_dict(state)

    def close(self) -> None:
        """Stop the thread (it may be blocked on a full queue: drain it once)."""
        self._stop.set()
        while not self._queue.empty():
            self._queue.get_nowait()

    def _read(self) -> None:
        read = 0
        try:
            while not self._stop.is_set() and (self.limit is None or read < self.limit):
                read += 1
                batch = self.loader.next_batch()
                state = copy.deepcopy(self.loader.state_dict())
                over = self.bad_records is not None and self.bad_records.exceeded
                if self.pin:
                    batch = batch.pin_memory()
                if not self._put((batch, state, over)) or over:
                    break  # past the budget the loop stops after this batch: read no further
            self._put(_END)
        except BaseException as exc:  # handed to the consumer, raised at its next_batch
            self._put(exc)

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False


def read_ahead(loader: Any, depth: int | None, device: torch.device,
               bad_records: BadRecords | None = None, limit: int | None = None) -> Any:
    """``loader`` behind a ``Prefetcher`` of ``depth`` batches (``data.prefetch``; None: 2 on CUDA,
    none on CPU), or ``loader`` itself when there is nothing to read ahead. ``limit``: the batches
    the run will take, so that no record past its end is read (and counted, if bad)."""
    cuda = device.type == "cuda"
    depth = (2 if cuda else 0) if depth is None else depth
    return Prefetcher(loader, depth, pin=cuda, bad_records=bad_records, limit=limit) if depth > 0 else loader


def stop_reading(loader: Any) -> None:
    """End a ``Prefetcher``'s thread (nothing for a plain loader)."""
    if isinstance(loader, Prefetcher):
        loader.close()
