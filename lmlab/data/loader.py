"""Batches of token windows: seeded, mixed across sources by weight, resumable to the exact sample.

Each document becomes ``[BOS] + tokens + [EOS]``; documents are packed back to back and cut into
windows of ``seq_len + 1`` tokens (inputs ``w[:-1]``, targets ``w[1:]``); consecutive windows share one
token so that every transition in the stream is trained once.

A loader's position is a few integers per source (data epoch, file, document), the seeded source
sampler's state and the few tokens left over from the last document, so ``state_dict()`` is small
JSON and a resumed run sees exactly the batches an uninterrupted one would.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from lmlab.data.badrecords import BadRecords
from lmlab.data.sources import Source
from lmlab.data.tokenizers import Tokenizer, encode_batch
from lmlab.errors import LmlabError

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
    """One source's documents in seeded order, tokenized and packed into fixed windows."""

    def __init__(self, source: Source, index: int, tokenizer: Tokenizer, window: int, seed: int,
                 shuffle: bool = True):
        self.source, self.index, self.tokenizer = source, index, tokenizer
        self.window, self.seed, self.shuffle = window, seed, shuffle
        self.epoch = self.file_pos = self.doc_pos = 0
        self.buffer: list[int] = []
        self._orders: dict[tuple, np.ndarray] = {}

    def _order(self, key: tuple, n: int) -> np.ndarray:
        """Visiting order of n items, a pure function of (seed, source, key), cached."""
        full = (self.seed, self.index) + key
        if full not in self._orders:
            if len(self._orders) > 64:
                self._orders.clear()
            rng = np.random.default_rng(list(full))
            self._orders[full] = rng.permutation(n) if self.shuffle else np.arange(n)
        return self._orders[full]

    def _next_document(self) -> str:
        files = self.source.files
        empty_files = skipped = 0
        while True:
            if self.file_pos >= len(files):
                self.epoch, self.file_pos, self.doc_pos = self.epoch + 1, 0, 0
            file_index = int(self._order((self.epoch,), len(files))[self.file_pos])
            doc_file = files[file_index]
            if self.doc_pos >= len(doc_file):
                self.file_pos, self.doc_pos = self.file_pos + 1, 0
                empty_files += 1
                if empty_files > 2 * len(files):  # a full pass found no document at all
                    raise LmlabError(f"source {self.source.name!r} has no documents to train on.")
                continue
            doc = doc_file.text(int(self._order((self.epoch, file_index), len(doc_file))[self.doc_pos]))
            self.doc_pos += 1
            if doc is not None:
                return doc
            skipped += 1  # a bad record, skipped: a source of nothing else would loop for ever
            if skipped > 64 and skipped > sum(len(f) for f in files):
                raise LmlabError(f"source {self.source.name!r} has no document that can be read: every "
                                 f"one is a bad record (not a JSON object with a 'text' string). Fix: "
                                 "run `lmlab check CONFIG --data` and repair its files.")

    def next_window(self) -> list[int]:
        tok = self.tokenizer
        while len(self.buffer) < self.window:
            self.buffer += [tok.bos_id] + tok.encode(self._next_document()) + [tok.eos_id]
        window = self.buffer[: self.window]
        del self.buffer[: self.window - 1]  # keep the last token: it is the next window's first input
        return window

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "file_pos": self.file_pos, "doc_pos": self.doc_pos,
                "buffer": list(self.buffer)}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.file_pos, self.doc_pos = state["epoch"], state["file_pos"], state["doc_pos"]
        self.buffer = list(state["buffer"])


class PackedLoader:
    """Endless (batch_size, seq_len + 1) int64 batches; each row drawn from a source by weight."""

    def __init__(self, sources: list[Source], tokenizer: Tokenizer, batch_size: int, seq_len: int,
                 seed: int, shuffle: bool = True, bad_records: BadRecords | None = None):
        self.batch_size, self.seq_len = batch_size, seq_len
        self.bad_records = bad_records  # the skipped records are part of the position (the budget is the run's)
        self.streams = [PackedStream(s, i, tokenizer, seq_len + 1, seed, shuffle)
                        for i, s in enumerate(sources)]
        weights = np.array([s.weight for s in sources], dtype=np.float64)
        self.probs = weights / weights.sum()
        self.rng = np.random.default_rng([seed, 7919])  # separate stream from the document orders

    def next_batch(self) -> torch.Tensor:
        picks = self.rng.choice(len(self.streams), size=self.batch_size, p=self.probs)
        rows = [self.streams[i].next_window() for i in picks]
        return torch.tensor(rows, dtype=torch.long)

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
            files = {f.name: f for stream in self.streams for f in stream.source.files}
            self.bad_records.load_state_dict(  # a line repaired since the checkpoint counts no more
                state["bad_records"], lambda name, line: name in files and files[name].is_bad_line(line))


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
