"""Batches of token windows: seeded, mixed across sources by weight, resumable to the exact sample.

Each document becomes ``[BOS] + tokens + [EOS]``; documents are packed back to back and cut into
windows of ``seq_len + 1`` tokens (inputs ``w[:-1]``, targets ``w[1:]``); consecutive windows share one
token so that every transition in the stream is trained once.

A loader's position is a few integers per source (data epoch, file, block of documents, documents
taken from it), the seeded source sampler's state and the tokens left over from the last document,
so ``state_dict()`` is small JSON and a resumed run sees exactly the batches an uninterrupted one
would. Files are read front to back (``documents.DocumentFile``): memory does not grow with them.

A ``Prefetcher`` reads a loader's batches ahead in a background thread (``data.prefetch``; the
section at the end says how the position stays exact).
"""
from __future__ import annotations

import copy
import queue
import threading
from collections import deque
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from lmlab.data.badrecords import BadRecords, merge_bad_records
from lmlab.data.documents import DataChanged, bad_line_message, bad_line_what
from lmlab.data.order import DEFAULT_BLOCK_DOCS, SourceCursor
from lmlab.data.sources import Source
from lmlab.data.tokenizers import ByteTokenizer, Tokenizer, encode_batch
from lmlab.errors import LmlabError

TOKENIZE_AHEAD = 64  # documents tokenized in one call
INLINE_TOKENS = 4096  # leftover tokens saved as such; more are read again from their document
IGNORE_INDEX = -100  # targets that count in no loss or metric (padding); F.cross_entropy's default


def split_window(batch: torch.Tensor, pad_id: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T+1) windows -> inputs (B, T) and targets (B, T); padding targets become IGNORE_INDEX
    (with ``where``, not a masked assignment: that would wait for the device to count the mask)."""
    inputs, targets = batch[:, :-1], batch[:, 1:]
    if pad_id is not None:
        targets = torch.where(targets == pad_id, IGNORE_INDEX, targets)
    return inputs.contiguous(), targets.contiguous()  # the strides a compiled model was built for


def pad_rows(inputs: torch.Tensor, targets: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) inputs and targets grown to ``rows`` rows (B <= rows): the new inputs are token 0, the
    new targets IGNORE_INDEX, so a summed loss over valid targets and its gradients are those of
    the B real rows, computed at a fixed shape (a CUDA graph replays only the shape it captured)."""
    extra = rows - inputs.shape[0]
    assert extra >= 0, (rows, inputs.shape)
    if extra == 0:
        return inputs, targets
    return F.pad(inputs, (0, 0, 0, extra), value=0), F.pad(targets, (0, 0, 0, extra), value=IGNORE_INDEX)


class PackedStream:
    """One source's documents, in the ``SourceCursor``'s order, tokenized and packed into windows.

    Documents are tokenized ``TOKENIZE_AHEAD`` at a time (one ``encode_batch`` call: Rust threads,
    outside the GIL, for HF tokenizers); a bad record counts when the stream reaches it, not when it
    is read ahead. The position is the cursor's plus the tokens left over from the last document.
    """

    def __init__(self, source: Source, index: int, tokenizer: Tokenizer, window: int, seed: int,
                 shuffle: bool = True, block_docs: int = DEFAULT_BLOCK_DOCS, reader: tuple[int, int] = (0, 1)):
        self.source, self.tokenizer, self.window = source, tokenizer, window
        self.cursor = SourceCursor(source, index, seed, shuffle, block_docs, reader)
        self.buffer = np.zeros(0, dtype=np.int64)  # tokens not yet in a window (never changed in place)
        self._pending: deque = deque()  # (record, ids or None, error or None), read ahead of the cursor

    def next_window(self) -> np.ndarray:
        pieces, have = [self.buffer], len(self.buffer)
        while have < self.window:
            ids = self._next_document()
            pieces.append(ids)
            have += len(ids)
        joined = np.concatenate(pieces) if len(pieces) > 1 else self.buffer
        self.buffer = joined[self.window - 1:]  # keep the last token: it is the next window's first input
        return joined[: self.window]

    def _next_document(self) -> np.ndarray:
        """[BOS] + tokens + [EOS] of the next readable document."""
        while True:
            if not self._pending:
                self._read_ahead()
            record, ids, error = self._pending.popleft()
            self.cursor.take(readable=error is None)
            if error is None:
                return ids
            doc_file = self.cursor.doc_file
            if doc_file.bad is None:
                raise LmlabError(bad_line_message(doc_file.name, record.line, error))
            doc_file.bad.add(doc_file.name, record.line, bad_line_what(error))

    def _read_ahead(self) -> None:
        chosen = self.cursor.upcoming(TOKENIZE_AHEAD)
        doc_file, tok = self.cursor.doc_file, self.tokenizer
        texts, errors = [], []
        for record in chosen:
            try:
                texts.append(doc_file.decode(record))
                errors.append(None)
            except (UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
                errors.append(err)
        encoded = iter(encode_ids(tok, texts))
        for record, error in zip(chosen, errors):
            ids = None if error else np.concatenate(([tok.bos_id], next(encoded), [tok.eos_id])).astype(np.int64)
            self._pending.append((record, ids, error))

    def state_dict(self) -> dict:
        """The cursor and the tokens left over. Those are always the end of the document taken
        last: a long document's are saved as their count and read again on resume, so that a
        checkpoint stays small whatever the documents (a 200 MB line made a 916 MB one)."""
        if len(self.buffer) > INLINE_TOKENS:
            return {**self.cursor.state_dict(), "buffer_tail": len(self.buffer)}
        return {**self.cursor.state_dict(), "buffer": self.buffer.tolist()}

    def load_state_dict(self, state: dict) -> None:
        self.cursor.load_state_dict(state)
        self._pending.clear()
        if "buffer_tail" not in state:
            self.buffer = np.asarray(state["buffer"], dtype=np.int64)
            return
        record, tok = self.cursor.last_taken(), self.tokenizer
        ids = encode_ids(tok, [self.cursor.doc_file.decode(record)])[0]
        self.buffer = np.concatenate(([tok.bos_id], ids, [tok.eos_id])).astype(np.int64)[-state["buffer_tail"]:]

    def snapshot(self) -> tuple:
        """The position, cheaply (for ``restore`` after a failed read)."""
        return self.cursor.snapshot(), self.buffer

    def restore(self, snap: tuple) -> None:
        self.cursor.restore(snap[0])
        self.buffer = snap[1]
        self._pending.clear()


def encode_ids(tokenizer: Tokenizer, texts: list[str]) -> list[np.ndarray]:
    """Token ids of many texts as arrays (bytes need no tokenizer: their UTF-8 is the ids)."""
    if isinstance(tokenizer, ByteTokenizer):
        return [np.frombuffer(t.encode("utf-8"), dtype=np.uint8) for t in texts]
    return [np.asarray(ids, dtype=np.int64) for ids in encode_batch(tokenizer, texts)]


class PackedLoader:
    """Endless (batch_size, seq_len + 1) int64 batches; each row drawn from a source by weight.

    ``readers`` (``data.readers``; None: one per process, or what the checkpoint says) split every
    source's documents (``order.SourceCursor``). Row j of a batch belongs to one reader: each
    micro-batch (``micro_batches``, the step's ``grad_accum``) is cut into ``readers`` equal runs of
    rows, in order, which is how the step deals a micro-batch out to the processes. When the
    ``world_size`` processes divide the readers evenly, this process (``rank``) runs only its own
    readers and fills the other rows with BOS (never trained on: the step keeps its own rows), so
    processes read disjoint documents; otherwise every process runs every reader. Either way the
    batch rows, and so the run, are the same for any number of processes with the same readers.
    """

    def __init__(self, sources: list[Source], tokenizer: Tokenizer, batch_size: int, seq_len: int,
                 seed: int, shuffle: bool = True, bad_records: BadRecords | None = None,
                 block_docs: int = DEFAULT_BLOCK_DOCS, readers: int | None = 1, rank: int = 0,
                 world_size: int = 1, micro_batches: int = 1):
        self.batch_size, self.seq_len = batch_size, seq_len
        self.bad_records = bad_records  # the skipped records are part of the position (the budget is the run's)
        self._make = lambda k, n: [PackedStream(s, i, tokenizer, seq_len + 1, seed, shuffle, block_docs, (k, n))
                                   for i, s in enumerate(sources)]
        self.names = [s.name for s in sources]
        self.fill = tokenizer.bos_id
        self.rank, self.world_size, self.micro_batches = rank, world_size, micro_batches
        self.adopt_readers = readers is None  # a resumed run keeps the readers it was trained with
        self._set_readers(readers or world_size)
        weights = np.array([s.weight for s in sources], dtype=np.float64)
        self.probs = weights / weights.sum()
        self.rng = np.random.default_rng([seed, 7919])  # separate stream from the document orders

    def _set_readers(self, readers: int) -> None:
        rows = rows_of_readers(self.batch_size, self.micro_batches, readers)
        if rows is None and self.adopt_readers:  # the default does not fit the batch: one reader
            readers, rows = 1, rows_of_readers(self.batch_size, self.micro_batches, 1)
        if rows is None:
            raise LmlabError(f"data.readers={readers} does not divide the rows of each micro-batch "
                             f"(data.batch_size={self.batch_size}, training.grad_accum={self.micro_batches})."
                             " Fix: set data.readers to a divisor of them (e.g. the number of processes), "
                             "or data.readers=1.")
        disjoint = readers % self.world_size == 0
        share = readers // self.world_size
        owned = range(self.rank * share, (self.rank + 1) * share) if disjoint else range(readers)
        self.readers, self.row_reader = readers, rows
        self.disjoint = disjoint and self.world_size > 1  # processes read different documents
        self.streams_of = {k: self._make(k, readers) for k in owned}

    @property
    def streams(self) -> list[PackedStream]:
        """The first reader's stream of each source (all of them with one reader)."""
        return self.streams_of[min(self.streams_of)]

    def next_batch(self) -> torch.Tensor:
        """The next batch; a data file that changed under the read leaves the position where it
        was before this batch (so the checkpoint written before stopping is exact) and raises."""
        before = self._snapshot()
        try:
            picks = self.rng.choice(len(self.names), size=self.batch_size, p=self.probs)
            rows = [self._row(j, int(i)) for j, i in enumerate(picks)]
        except DataChanged:
            self._restore(before)
            raise
        return torch.from_numpy(np.stack(rows))

    def _row(self, j: int, source: int) -> np.ndarray:
        streams = self.streams_of.get(self.row_reader[j])
        if streams is None:  # another process's row
            return np.full(self.seq_len + 1, self.fill, dtype=np.int64)
        return streams[source].next_window()

    def _snapshot(self) -> tuple:
        return (self.rng.bit_generator.state,
                {k: [s.snapshot() for s in streams] for k, streams in self.streams_of.items()})

    def _restore(self, snap: tuple) -> None:
        self.rng.bit_generator.state = snap[0]
        for k, streams in self.streams_of.items():
            for stream, saved in zip(streams, snap[1][k]):
                stream.restore(saved)

    def __iter__(self) -> Iterator[torch.Tensor]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict:
        """This process's part of the position (``merge_states`` joins every process's part)."""
        state = {"rng": self.rng.bit_generator.state, "readers": self.readers, "sources": self.names,
                 "streams": {str(k): [s.state_dict() for s in streams] for k, streams in self.streams_of.items()}}
        if self.bad_records is not None:
            state["bad_records"] = self.bad_records.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        saved, readers = state.get("sources"), state.get("readers", 1)
        streams = state["streams"] if isinstance(state["streams"], dict) else {"0": state["streams"]}
        if (saved is not None and saved != self.names) or len(next(iter(streams.values()))) != len(self.names):
            was = saved if saved is not None else f"{len(next(iter(streams.values())))} source(s)"
            raise LmlabError(f"data.sources changed since the checkpoint: it was written reading {was}, "
                             f"this config reads {self.names}, so the data position cannot carry over. Fix: "
                             "resume with the data.sources the run was trained with (its config.yaml), "
                             "or use a new dump_dir to train on the new mix.")
        if readers != self.readers:
            if not self.adopt_readers:
                raise LmlabError(f"data.readers={self.readers}, but the checkpoint was written with "
                                 f"data.readers={readers}, so its data position cannot carry over. Fix: "
                                 f"set data.readers={readers} (or null) to resume, or use a new dump_dir.")
            self._set_readers(readers)
        self.rng.bit_generator.state = state["rng"]
        for k, own in self.streams_of.items():
            for stream, stream_state in zip(own, streams[str(k)], strict=True):
                stream.load_state_dict(stream_state)
        if self.bad_records is not None and "bad_records" in state:
            self.bad_records.load_state_dict(state["bad_records"], self._still_bad(state["bad_records"]))

    def _still_bad(self, saved: dict):
        """A line repaired since the checkpoint counts no more: one pass per file that had any."""
        files = {f.name: f for streams in self.streams_of.values() for s in streams for f in s.source.files}
        wanted: dict[str, set[int]] = {}
        for name, line, _ in saved.get("records", []):
            wanted.setdefault(name, set()).add(int(line))
        bad = {name: files[name].bad_among(lines) for name, lines in wanted.items() if name in files}
        return lambda name, line: line in bad.get(name, ())


def rows_of_readers(batch_size: int, micro_batches: int, readers: int) -> list[int] | None:
    """The reader of each row: every micro-batch (``Tensor.chunk``, as the step cuts them) in
    ``readers`` equal runs; None when they are not equal."""
    rows = []
    for chunk in torch.arange(batch_size).chunk(micro_batches):
        if len(chunk) % readers:
            return None
        rows += [i * readers // len(chunk) for i in range(len(chunk))]
    return rows


def own_rows(batch_size: int, micro_batches: int, rank: int, world_size: int) -> np.ndarray:
    """(batch_size,) bool: the rows of a global batch that process ``rank`` trains on. The step
    cuts a batch into micro-batches with ``Tensor.chunk`` and gives each process its
    ``tensor_split`` share of each (``training.parts``, ``distributed.shard_rows``): the same here."""
    own = np.zeros(batch_size, dtype=bool)
    for chunk in torch.arange(batch_size).chunk(micro_batches):
        own[chunk.tensor_split(world_size)[rank].numpy()] = True
    return own


def merge_states(states: list[dict]) -> dict:
    """One position from every process's ``PackedLoader.state_dict()``: each reader's streams from
    the process that ran it, the bad records of all."""
    merged = dict(states[0])
    merged["streams"] = {k: v for state in states for k, v in state["streams"].items()}
    if "bad_records" in merged:
        merged["bad_records"] = merge_bad_records([s["bad_records"] for s in states])
    return merged

# --------------------------------------------------------------------------- reading ahead
#
# Training batches read ahead in a background thread, so the accelerator never waits for the host.
#
# A ``Prefetcher`` wraps a run's training loader (``PackedLoader`` or ``SequenceLoader``): a thread
# reads the next ``depth`` batches, pins them in page-locked host memory when they go to a GPU (so the
# step's ``non_blocking`` copy overlaps compute) and queues them. Tokenizing runs outside the GIL in
# the HF tokenizers and numpy, so the thread truly overlaps the step.
#
# Nothing about the run changes: the batches are the loader's own, in its order, and everything the
# loop asks of the position refers to the batches *handed out*, not the ones read ahead:
#
# * ``state_dict()`` is the loader's state right after the last batch handed out (each batch is
#   queued with that snapshot), so a checkpoint resumes exactly where an unprefetched run would;
# * ``over_budget`` says whether the bad records met while reading the batches handed out went over
#   ``data.max_bad_records`` (the thread stops reading after such a batch, as the loop stops there);
# * nothing is read past the batches this invocation takes (``limit``: the run's end or
#   ``training.stop_at``), so no record beyond them is counted; a batch asked for after the thread
#   has stopped is read in turn.
#
# Why a thread rather than ``torch.utils.data.DataLoader`` workers: the loaders are stateful
# iterators whose exact position is checkpointed; worker processes would each hold a copy of that
# state and hand batches back out of order of it.

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
