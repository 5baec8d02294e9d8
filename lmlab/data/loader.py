"""Batches of token windows: seeded, mixed across sources by weight, resumable to the exact sample.

Each document becomes ``[BOS] + tokens + [EOS]``; documents are packed back to back and cut into
windows of ``seq_len + 1`` tokens (inputs ``w[:-1]``, targets ``w[1:]``); consecutive windows share one
token so that every transition in the stream is trained once.

A loader's position is a few integers per source (data epoch, file, block of documents, documents
taken from it), the seeded source sampler's state and the tokens left over from the last document,
so ``state_dict()`` is small JSON and a resumed run sees exactly the batches an uninterrupted one
would. Files are read front to back (``documents.DocumentFile``): memory does not grow with them.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from lmlab.data.badrecords import BadRecords
from lmlab.data.documents import DataChanged, Record, bad_line_message, bad_line_what
from lmlab.data.sources import Source
from lmlab.data.tokenizers import ByteTokenizer, Tokenizer, encode_batch
from lmlab.errors import LmlabError

DEFAULT_BLOCK_DOCS = 1024  # documents shuffled together (data.shuffle_buffer)
BLOCK_BYTES = 64 << 20  # and at most this many bytes of them
TOKENIZE_AHEAD = 64  # documents tokenized in one call
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


@dataclass
class Block:
    """Up to ``data.shuffle_buffer`` consecutive documents of one file, visited in a seeded order."""

    records: list[Record]
    order: np.ndarray  # visiting order of the records
    end: tuple[int, int]  # (byte offset, line) after the last record: where the next block starts
    eof: bool  # the file has no document after this block


class PackedStream:
    """One source's documents, tokenized and packed into fixed windows of token ids.

    Files are visited in a seeded order each pass over the source (a data epoch); each file is read
    front to back, ``block_docs`` documents at a time, and the documents of a block are visited in
    a seeded permutation of the block (a shuffle buffer whose order is a pure function of the seed
    and the block's position, so a resumed run reads the block again and carries on exactly).

    The position (``state_dict``) is the data epoch, the file, the block's (byte offset, line),
    the documents of the block already packed and the tokens left over from them: small JSON.
    Documents are tokenized ``TOKENIZE_AHEAD`` at a time (one ``encode_batch`` call, Rust threads
    for HF tokenizers); a bad record counts when the stream reaches it, not when it is read ahead.
    """

    def __init__(self, source: Source, index: int, tokenizer: Tokenizer, window: int, seed: int,
                 shuffle: bool = True, block_docs: int = DEFAULT_BLOCK_DOCS):
        self.source, self.index, self.tokenizer = source, index, tokenizer
        self.window, self.seed, self.shuffle, self.block_docs = window, seed, shuffle, block_docs
        self.epoch = self.file_pos = self.taken = 0
        self.block_start = (0, 1)
        self.buffer = np.zeros(0, dtype=np.int64)  # tokens not yet in a window (never changed in place)
        self._orders: dict[tuple, np.ndarray] = {}
        self._block: Block | None = None
        self._pending: deque = deque()  # (record, ids or None, error or None) read ahead of ``taken``
        self._reader: tuple | None = None  # (file index, end position, records iterator) to go on with
        self._epoch_seen = [0, 0, True]  # documents, readable ones, this epoch read from its start

    def _order(self, key: tuple, n: int) -> np.ndarray:
        """Visiting order of n items, a pure function of (seed, source, key), cached."""
        full = (self.seed, self.index) + key
        if full not in self._orders:
            if len(self._orders) > 64:
                self._orders.clear()
            rng = np.random.default_rng(list(full))
            self._orders[full] = rng.permutation(n) if self.shuffle else np.arange(n)
        return self._orders[full]

    @property
    def file_index(self) -> int:
        return int(self._order((self.epoch,), len(self.source.files))[self.file_pos])

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
            self.taken += 1
            self._epoch_seen[0] += 1
            if error is None:
                self._epoch_seen[1] += 1
                return ids
            doc_file = self.source.files[self.file_index]
            if doc_file.bad is None:
                raise LmlabError(bad_line_message(doc_file.name, record.line, error))
            doc_file.bad.add(doc_file.name, record.line, bad_line_what(error))

    def _read_ahead(self) -> None:
        """Queue the next documents of the block, tokenized (moving to the next block, file or
        data epoch first when this one is used up)."""
        block = self._current_block()
        while self.taken >= len(block.records):
            self._advance(block)
            block = self._current_block()
        doc_file = self.source.files[self.file_index]
        chosen = [block.records[i] for i in block.order[self.taken: self.taken + TOKENIZE_AHEAD]]
        texts, errors = [], []
        for record in chosen:
            try:
                texts.append(doc_file.decode(record))
                errors.append(None)
            except (UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
                errors.append(err)
        encoded = iter(encode_ids(self.tokenizer, texts))
        tok = self.tokenizer
        for record, error in zip(chosen, errors):
            ids = None if error else np.concatenate(([tok.bos_id], next(encoded), [tok.eos_id])).astype(np.int64)
            self._pending.append((record, ids, error))

    def _current_block(self) -> Block:
        if self._block is None:
            self._block = self._read_block()
        return self._block

    def _read_block(self) -> Block:
        file_index = self.file_index
        doc_file = self.source.files[file_index]
        if self._reader is not None and self._reader[:2] == (file_index, self.block_start):
            doc_file.verify()  # the reader may hold the rest of a small file: is it still the file?
            records_iter = self._reader[2]
        else:
            records_iter = doc_file.records(*self.block_start)
        records, size, eof = [], 0, True
        for record in records_iter:
            records.append(record)
            size += len(record.raw)
            if len(records) >= self.block_docs or size >= BLOCK_BYTES:
                eof = False
                break
        end = (records[-1].end, records[-1].next_line) if records else self.block_start
        self._reader = None if eof else (file_index, end, records_iter)
        key = (self.epoch, file_index, self.block_start[1])  # by line: an edit elsewhere moves offsets
        return Block(records, self._order(key, len(records)), end, eof)

    def _advance(self, block: Block) -> None:
        files = self.source.files
        if not block.eof:
            self.block_start = block.end
        else:
            self.file_pos, self.block_start = self.file_pos + 1, (0, 1)
            if self.file_pos >= len(files):
                self._end_epoch()
                self.epoch, self.file_pos = self.epoch + 1, 0
        self.taken, self._block = 0, None
        self._pending.clear()

    def _end_epoch(self) -> None:
        """A pass over the source that found nothing to train on would loop for ever: refuse it."""
        docs, readable, whole = self._epoch_seen
        self._epoch_seen = [0, 0, True]
        if not whole or readable:
            return
        if not docs:
            raise LmlabError(f"source {self.source.name!r} has no documents to train on.")
        raise LmlabError(f"source {self.source.name!r} has no document that can be read: every "
                         f"one is a bad record (not a JSON object with a 'text' string). Fix: "
                         "run `lmlab check CONFIG --data` and repair its files.")

    def state_dict(self) -> dict:
        doc_file = self.source.files[self.file_index] if self.source.files else None
        stamp = doc_file.stamp if doc_file is not None else None
        return {"epoch": self.epoch, "file_pos": self.file_pos, "block": list(self.block_start),
                "taken": self.taken, "buffer": self.buffer.tolist(),
                "file_size": stamp.size if stamp else None}

    def load_state_dict(self, state: dict) -> None:
        if "block" not in state:
            raise LmlabError("this checkpoint's data position was written by an older lmlab that "
                             "read documents at random across each file; the streaming reader cannot "
                             "continue from it. Fix: resume with the lmlab version that wrote it, or "
                             "start a new run (a new dump_dir).")
        self.epoch, self.file_pos, self.taken = state["epoch"], state["file_pos"], state["taken"]
        self.block_start = tuple(state["block"])
        self.buffer = np.asarray(state["buffer"], dtype=np.int64)
        self._block, self._reader = None, None
        self._pending.clear()
        self._epoch_seen = [0, 0, False]
        if self.block_start[0] and state.get("file_size") is not None:
            self._realign(state["file_size"])

    def snapshot(self) -> tuple:
        """The position, cheaply (for ``restore`` after a failed read)."""
        return (self.epoch, self.file_pos, self.block_start, self.taken, self.buffer)

    def restore(self, snap: tuple) -> None:
        self.epoch, self.file_pos, self.block_start, self.taken, self.buffer = snap
        self._block, self._reader = None, None
        self._pending.clear()

    def _realign(self, saved_size: int) -> None:
        """A file edited since the checkpoint (a bad line repaired): find the block's line again."""
        doc_file = self.source.files[self.file_index]
        if doc_file.size == saved_size:
            return
        line = self.block_start[1]
        self.block_start = (doc_file.line_offset(line), line)


def encode_ids(tokenizer: Tokenizer, texts: list[str]) -> list[np.ndarray]:
    """Token ids of many texts as arrays (bytes need no tokenizer: their UTF-8 is the ids)."""
    if isinstance(tokenizer, ByteTokenizer):
        return [np.frombuffer(t.encode("utf-8"), dtype=np.uint8) for t in texts]
    return [np.asarray(ids, dtype=np.int64) for ids in encode_batch(tokenizer, texts)]


class PackedLoader:
    """Endless (batch_size, seq_len + 1) int64 batches; each row drawn from a source by weight."""

    def __init__(self, sources: list[Source], tokenizer: Tokenizer, batch_size: int, seq_len: int,
                 seed: int, shuffle: bool = True, bad_records: BadRecords | None = None,
                 block_docs: int = DEFAULT_BLOCK_DOCS):
        self.batch_size, self.seq_len = batch_size, seq_len
        self.bad_records = bad_records  # the skipped records are part of the position (the budget is the run's)
        self.streams = [PackedStream(s, i, tokenizer, seq_len + 1, seed, shuffle, block_docs)
                        for i, s in enumerate(sources)]
        weights = np.array([s.weight for s in sources], dtype=np.float64)
        self.probs = weights / weights.sum()
        self.rng = np.random.default_rng([seed, 7919])  # separate stream from the document orders

    def next_batch(self) -> torch.Tensor:
        """The next batch; a data file that changed under the read leaves the position where it
        was before this batch (so the checkpoint written before stopping is exact) and raises."""
        before = (self.rng.bit_generator.state, [s.snapshot() for s in self.streams])
        try:
            picks = self.rng.choice(len(self.streams), size=self.batch_size, p=self.probs)
            rows = [self.streams[i].next_window() for i in picks]
        except DataChanged:
            self.rng.bit_generator.state = before[0]
            for stream, snap in zip(self.streams, before[1]):
                stream.restore(snap)
            raise
        return torch.from_numpy(np.stack(rows))

    def __iter__(self) -> Iterator[torch.Tensor]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict:
        state = {"rng": self.rng.bit_generator.state, "streams": [s.state_dict() for s in self.streams],
                 "sources": [s.source.name for s in self.streams]}
        if self.bad_records is not None:
            state["bad_records"] = self.bad_records.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        now, saved = [s.source.name for s in self.streams], state.get("sources")
        if (saved is not None and saved != now) or len(state["streams"]) != len(self.streams):
            was = saved if saved is not None else f"{len(state['streams'])} source(s)"
            raise LmlabError(f"data.sources changed since the checkpoint: it was written reading {was}, "
                             f"this config reads {now}, so the data position cannot carry over. Fix: "
                             "resume with the data.sources the run was trained with (its config.yaml), "
                             "or use a new dump_dir to train on the new mix.")
        self.rng.bit_generator.state = state["rng"]
        for stream, stream_state in zip(self.streams, state["streams"], strict=True):
            stream.load_state_dict(stream_state)
        if self.bad_records is not None and "bad_records" in state:
            self.bad_records.load_state_dict(state["bad_records"], self._still_bad(state["bad_records"]))

    def _still_bad(self, saved: dict):
        """A line repaired since the checkpoint counts no more: one pass per file that had any."""
        files = {f.name: f for stream in self.streams for f in stream.source.files}
        wanted: dict[str, set[int]] = {}
        for name, line, _ in saved.get("records", []):
            wanted.setdefault(name, set()).add(int(line))
        bad = {name: files[name].bad_among(lines) for name, lines in wanted.items() if name in files}
        return lambda name, line: line in bad.get(name, ())

def validation_windows(sources: list[Source], tokenizer: Tokenizer, seq_len: int,
                       max_windows: int | None = None, tally: dict | None = None) -> torch.Tensor:
    """Every validation document, in file order, packed into (N, seq_len + 1) windows.

    Deterministic (no shuffling), so validation numbers are comparable across steps and runs. The
    tail shorter than a window is dropped; ``max_windows`` caps the work for a token budget.
    ``tally`` (optional) receives, per source read, ``{name: {"tokens", "windows", "complete"}}``:
    its text tokens and windows, and whether it was read to the end (not cut by ``max_windows``).
    """
    windows: list[list[int]] = []
    for source in sources:
        buffer: list[int] = []
        count = {"tokens": 0, "windows": 0, "complete": False}
        if tally is not None:
            tally[source.name] = count
        for doc_file in source.files:
            texts = list(doc_file.texts())
            for ids in encode_batch(tokenizer, texts):
                count["tokens"] += len(ids)
                buffer += [tokenizer.bos_id] + ids + [tokenizer.eos_id]
                while len(buffer) >= seq_len + 1:
                    windows.append(buffer[: seq_len + 1])
                    count["windows"] += 1
                    del buffer[:seq_len]
                    if max_windows is not None and len(windows) >= max_windows:
                        return torch.tensor(windows, dtype=torch.long)
        count["complete"] = True
    return torch.tensor(windows, dtype=torch.long).reshape(-1, seq_len + 1)


def fixed_batches(windows: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    """Consecutive batches of a fixed window tensor (the last may be smaller)."""
    for start in range(0, len(windows), batch_size):
        yield windows[start: start + batch_size]
