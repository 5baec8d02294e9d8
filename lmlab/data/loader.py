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
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from lmlab.data.badrecords import BadRecords
from lmlab.data.documents import DataChanged, bad_line_message, bad_line_what
from lmlab.data.order import DEFAULT_BLOCK_DOCS, SourceCursor
from lmlab.data.sources import Source
from lmlab.data.tokenizers import ByteTokenizer, Tokenizer, encode_batch
from lmlab.errors import LmlabError

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


class PackedStream:
    """One source's documents, in the ``SourceCursor``'s order, tokenized and packed into windows.

    Documents are tokenized ``TOKENIZE_AHEAD`` at a time (one ``encode_batch`` call: Rust threads,
    outside the GIL, for HF tokenizers); a bad record counts when the stream reaches it, not when it
    is read ahead. The position is the cursor's plus the tokens left over from the last document.
    """

    def __init__(self, source: Source, index: int, tokenizer: Tokenizer, window: int, seed: int,
                 shuffle: bool = True, block_docs: int = DEFAULT_BLOCK_DOCS):
        self.source, self.tokenizer, self.window = source, tokenizer, window
        self.cursor = SourceCursor(source, index, seed, shuffle, block_docs)
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
        return {**self.cursor.state_dict(), "buffer": self.buffer.tolist()}

    def load_state_dict(self, state: dict) -> None:
        self.cursor.load_state_dict(state)
        self.buffer = np.asarray(state["buffer"], dtype=np.int64)
        self._pending.clear()

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
