"""Which document of a source comes next: the reading order of the streaming loader.

Files are visited in a seeded order each pass over the source (a data epoch); each file is read
front to back, ``block_docs`` documents at a time (at most ``BLOCK_BYTES``), and the documents of a
block are visited in a seeded permutation of the block: a shuffle buffer whose order is a pure
function of (seed, source, epoch, file, the block's first line), so a resumed run reads the block
again and carries on exactly. Reads are sequential and memory is one block, whatever the corpus.

Several readers (``reader=(k, R)``, one or more per process under ``--nproc``) split every block:
reader k takes the documents at positions k, k + R, ... of the block's order, so readers read
disjoint documents that together cover the source once per pass (each reads the file front to
back, as Lingua's ranks do, and parses and tokenizes only its own documents).

The position is (epoch, file, block start as (byte offset, line), documents of the block taken):
four small integers. The line makes it robust to an edit of the file between two invocations (a
bad line repaired moves every later byte offset): a resumed cursor finds the block's line again.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lmlab.data.documents import Record
from lmlab.data.sources import Source
from lmlab.errors import LmlabError

DEFAULT_BLOCK_DOCS = 1024  # documents shuffled together (data.shuffle_buffer)
BLOCK_BYTES = 64 << 20  # and at most this many bytes of them


@dataclass
class Block:
    """Consecutive documents of one file, visited in ``order``."""

    records: list[Record]
    order: np.ndarray  # this reader's share of the block, in visiting order
    end: tuple[int, int]  # (byte offset, line) after the last record: where the next block starts
    eof: bool  # the file has no document after this block


class SourceCursor:
    """The reading position in one source (``index``: its place in the run's source list)."""

    def __init__(self, source: Source, index: int, seed: int, shuffle: bool = True,
                 block_docs: int = DEFAULT_BLOCK_DOCS, reader: tuple[int, int] = (0, 1)):
        self.source, self.index, self.seed = source, index, seed
        self.shuffle, self.block_docs, self.reader = shuffle, block_docs, reader
        self.epoch = self.file_pos = self.taken = 0
        self.block_start = (0, 1)
        self._orders: dict[tuple, np.ndarray] = {}
        self._block: Block | None = None
        self._reader: tuple | None = None  # (file index, position, records iterator) to read on from
        self._seen = [0, 0, True]  # this epoch's documents, readable ones, read from its start

    @property
    def file_index(self) -> int:
        return int(self._order((self.epoch,), len(self.source.files))[self.file_pos])

    @property
    def doc_file(self):
        return self.source.files[self.file_index]

    def upcoming(self, n: int) -> list[Record]:
        """The next ``n`` documents of the current block (fewer at its end), not yet taken; moves
        on to the next block, file or epoch first when this block is used up."""
        block = self._current_block()
        while self.taken >= len(block.order):
            self._advance(block)
            block = self._current_block()
        return [block.records[i] for i in block.order[self.taken: self.taken + n]]

    def last_taken(self) -> Record:
        """The document taken last (the current block's, read again after a resume)."""
        assert self.taken > 0, "nothing taken from this block yet"
        block = self._current_block()
        return block.records[block.order[self.taken - 1]]

    def take(self, readable: bool) -> None:
        """The next document was consumed (``readable``: not a bad record)."""
        self.taken += 1
        self._seen[0] += 1
        self._seen[1] += readable

    # ------------------------------------------------------------------ blocks

    def _order(self, key: tuple, n: int) -> np.ndarray:
        """Visiting order of n items, a pure function of (seed, source, key), cached."""
        full = (self.seed, self.index) + key
        if full not in self._orders:
            if len(self._orders) > 64:
                self._orders.clear()
            rng = np.random.default_rng(list(full))
            self._orders[full] = rng.permutation(n) if self.shuffle else np.arange(n)
        return self._orders[full]

    def _current_block(self) -> Block:
        if self._block is None:
            self._block = self._read_block()
        return self._block

    def _read_block(self) -> Block:
        file_index, doc_file = self.file_index, self.doc_file
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
        k, readers = self.reader
        return Block(records, self._order(key, len(records))[k::readers], end, eof)

    def _advance(self, block: Block) -> None:
        if not block.eof:
            self.block_start = block.end
        else:
            self.file_pos, self.block_start = self.file_pos + 1, (0, 1)
            if self.file_pos >= len(self.source.files):
                self._end_epoch()
                self.epoch, self.file_pos = self.epoch + 1, 0
        self.taken, self._block = 0, None

    def _end_epoch(self) -> None:
        """A pass over the source that found nothing to train on would loop for ever: refuse it."""
        docs, readable, whole = self._seen
        self._seen = [0, 0, True]
        if not whole or readable:
            return
        if not docs and self.reader[1] > 1:
            k, readers = self.reader
            raise LmlabError(f"source {self.source.name!r} has no documents for reader {k} of {readers}: "
                             f"fewer documents than data.readers={readers} share. Fix: set "
                             "data.readers=1 (every process reads every document), or add documents.")
        if not docs:
            raise LmlabError(f"source {self.source.name!r} has no documents to train on.")
        raise LmlabError(f"source {self.source.name!r} has no document that can be read: every "
                         f"one is a bad record (not a JSON object with a 'text' string). Fix: "
                         "run `lmlab check CONFIG --data` and repair its files.")

    # ------------------------------------------------------------------ position

    def state_dict(self) -> dict:
        stamp = self.doc_file.stamp if self.source.files else None
        return {"epoch": self.epoch, "file_pos": self.file_pos, "block": list(self.block_start),
                "taken": self.taken, "file_size": stamp.size if stamp else None}

    def load_state_dict(self, state: dict) -> None:
        if "block" not in state:
            raise LmlabError("this checkpoint's data position was written by an older lmlab that "
                             "read documents at random across each file; the streaming reader cannot "
                             "continue from it. Fix: resume with the lmlab version that wrote it, or "
                             "start a new run (a new dump_dir).")
        self.epoch, self.file_pos, self.taken = state["epoch"], state["file_pos"], state["taken"]
        self.block_start = tuple(state["block"])
        self._block, self._reader, self._seen = None, None, [0, 0, False]
        saved_size = state.get("file_size")
        if self.block_start[0] and saved_size is not None and self.doc_file.size != saved_size:
            # the file was edited since the checkpoint (a bad line repaired): find the line again
            self.block_start = (self.doc_file.line_offset(self.block_start[1]), self.block_start[1])

    def snapshot(self) -> tuple:
        return (self.epoch, self.file_pos, self.block_start, self.taken)

    def restore(self, snap: tuple) -> None:
        self.epoch, self.file_pos, self.block_start, self.taken = snap
        self._block, self._reader = None, None
