"""One data file read as documents, sequentially, in large blocks, from any (byte offset, line).

Memory never depends on the file's size: nothing indexes the file, a reader holds one read block
(``READ_BYTES``) and the record being cut from it. A position is (byte offset, 1-based line), so a
run resumes by seeking, and that is also how documents are visited: in file order, never at random
across the file (one random read per document is what a network file system punishes).

Two kinds: jsonl (one JSON object with a ``text`` string per non-blank line) and text (paragraphs:
runs of non-blank lines, separated by blank ones).

A file must not change under a run. ``DocumentFile`` remembers the file's size, mtime and inode
when first opened; every block read checks the open file again (one ``fstat``), and any later
opening checks the path, so a file rewritten during a run stops it with ``DataChanged`` (naming the
file and what changed) rather than training on torn records. Reading through ``read()`` instead of
a memory map also means a file truncated under the reader cannot kill the process with SIGBUS.
"""
from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from lmlab.data.badrecords import CHECK_HINT, BadRecords, warn
from lmlab.errors import LmlabError

READ_BYTES = 1 << 20  # bytes per read() call
BLANK = b" \t\r"  # what a blank text line may hold (paragraph separators)


class DataChanged(LmlabError):
    """A data file changed while a run was reading it (rewritten, truncated, replaced)."""


@dataclass(frozen=True)
class Record:
    """One document's raw bytes and where it sits: ``line`` is its first line, and (``end``,
    ``next_line``) the position right after it (where reading goes on)."""

    raw: bytes
    line: int
    end: int
    next_line: int


@dataclass(frozen=True)
class FileStamp:
    size: int
    mtime_ns: int
    inode: int

    @classmethod
    def of(cls, st: os.stat_result) -> "FileStamp":
        return cls(st.st_size, st.st_mtime_ns, st.st_ino)

    def differs(self, other: "FileStamp", same_inode: bool = True) -> str:
        """What changed from ``self`` to ``other`` ('' when nothing)."""
        if same_inode and other.inode != self.inode:
            return "was replaced by another file"
        if other.size != self.size:
            return f"changed size from {self.size:,} to {other.size:,} bytes"
        if other.mtime_ns != self.mtime_ns:
            return "was modified (its mtime changed)"
        return ""


def parse_record(raw: bytes | str) -> str:
    """The ``text`` of one jsonl line; raises UnicodeDecodeError, ValueError (bad JSON), KeyError
    (no ``text``) or TypeError (not an object, or ``text`` not a string): ``bad_line_what`` says it."""
    record = json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
    text = record["text"]  # a list or a number raises TypeError here
    if not isinstance(text, str):  # e.g. {"text": 5} or {"text": null}
        raise TypeError(f"'text' is {type(text).__name__}")
    escapes = ("\\ud", "\\uD") if isinstance(raw, str) else (b"\\ud", b"\\uD")
    if escapes[0] in raw or escapes[1] in raw:  # a surrogate escape: a lone one is no text
        text.encode("utf-8")  # raises UnicodeEncodeError for "\ud800" alone
    return text


def bad_line_what(err: Exception) -> str:
    if isinstance(err, UnicodeEncodeError):
        return "a lone surrogate escape (\\ud800-\\udfff) in 'text', which is not UTF-8 text"
    if isinstance(err, UnicodeDecodeError):
        return f"bytes that are not UTF-8 at offset {err.start}"
    if isinstance(err, KeyError):
        return "no 'text' field"
    if isinstance(err, TypeError):
        return "not a JSON object with a 'text' string"
    return f"malformed JSON ({err})"


def bad_line_message(name: str, line: int, err: Exception) -> str:
    return (f"{name}:{line}: {bad_line_what(err)}. Fix the line ({CHECK_HINT}), or let training "
            "skip and count such lines up to data.max_bad_records (data.skip_bad_lines=true: no limit).")


class DocumentFile:
    """A file (or, for bundled data, bytes) seen as a sequence of documents.

    A bad record (a line that is not a JSON object with a ``text`` string, or not UTF-8) raises an
    error naming ``file:line``, or, with ``bad`` (a run's ``BadRecords``), is skipped and counted.
    """

    def __init__(self, name: str, kind: str, bad: BadRecords | None = None, data: bytes | None = None):
        self.name, self.kind, self.bad, self.data = name, kind, bad, data
        self.path = None if data is not None else Path(name)
        self.stamp: FileStamp | None = None  # taken at the first opening

    @classmethod
    def open(cls, path: Path, skip_bad_lines: bool = False, bad: BadRecords | None = None) -> "DocumentFile":
        """Nothing is read yet. ``skip_bad_lines`` without ``bad``: skip every bad record, warning
        at the first."""
        kind = "jsonl" if path.name.endswith(".jsonl") else "text"
        bad = bad if bad is not None or not skip_bad_lines else BadRecords(None, warn)
        return cls(str(path), kind, bad)

    @property
    def size(self) -> int:
        return len(self.data) if self.data is not None else os.stat(self.name).st_size

    @property
    def bad_lines(self) -> int:
        """Distinct bad records of this file skipped so far."""
        return self.bad.per_file.get(self.name, 0) if self.bad is not None else 0

    # ------------------------------------------------------------------ reading

    def records(self, offset: int = 0, line: int = 1) -> Iterator[Record]:
        """The documents from byte ``offset`` (the start of 1-based ``line``) to the end."""
        reader = _jsonl_records if self.kind == "jsonl" else _paragraph_records
        with self._open() as handle:
            handle.seek(offset)
            yield from reader(self._chunks(handle), offset, line)

    def text(self, record: Record) -> str | None:
        """The document's text; None for a bad record that ``bad`` lets us skip (counted there)."""
        try:
            return self.decode(record)
        except (UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
            if self.bad is None:
                raise LmlabError(bad_line_message(self.name, record.line, err)) from None
            self.bad.add(self.name, record.line, bad_line_what(err))
            return None

    def decode(self, record: Record) -> str:
        """The text of ``record``; raises as ``parse_record`` does for a bad one."""
        return parse_record(record.raw) if self.kind == "jsonl" else record.raw.decode("utf-8")

    def peek(self, record: Record) -> str | None:
        """The text, or None for a bad record, which is left for ``text`` to report."""
        try:
            return self.decode(record)
        except (UnicodeDecodeError, ValueError, KeyError, TypeError):
            return None

    def texts(self) -> Iterator[str]:
        """Every document in file order."""
        for record in self.records():
            text = self.text(record)
            if text is not None:
                yield text

    def bad_among(self, lines: set[int]) -> set[int]:
        """Which of ``lines`` hold a document that cannot be read (one pass, up to the last one)."""
        found, last = set(), max(lines, default=0)
        for record in self.records():
            if record.line > last:
                break
            if record.line in lines and self.peek(record) is None:
                found.add(record.line)
        return found

    def line_offset(self, line: int) -> int:
        """Byte offset where 1-based ``line`` starts (one pass counting newlines up to it)."""
        number, offset = 1, 0
        with self._open() as handle:
            for chunk in iter(lambda: handle.read(READ_BYTES), b""):
                newlines = chunk.count(b"\n")
                if number + newlines < line:
                    number, offset = number + newlines, offset + len(chunk)
                    continue
                cut = -1
                for _ in range(line - number):
                    cut = chunk.find(b"\n", cut + 1)
                return offset + cut + 1
        raise LmlabError(f"{self.name} has {number:,} lines now, but the run's data position is at "
                         f"line {line:,}. Fix: restore the file the run was trained on, or start a "
                         "new run (a new dump_dir).")

    # ------------------------------------------------------------------ the file under us

    def _open(self):
        if self.data is not None:
            return io.BytesIO(self.data)
        try:
            handle = open(self.name, "rb")
        except OSError as err:
            raise DataChanged(f"{self.name}: cannot be read any more ({err.strerror}). Fix: restore "
                              "the file (the run's config names it) and run the same command again.") from None
        self._check(FileStamp.of(os.fstat(handle.fileno())), opening=True)
        return handle

    def _chunks(self, handle) -> Iterator[bytes]:
        while True:
            chunk = handle.read(READ_BYTES)
            if self.data is None:
                self._check(FileStamp.of(os.fstat(handle.fileno())), opening=False)
            if not chunk:
                return
            yield chunk

    def _check(self, now: FileStamp, opening: bool) -> None:
        if self.stamp is None:
            self.stamp = now
            return
        what = self.stamp.differs(now, same_inode=opening)
        if what:
            raise DataChanged(
                f"{self.name} {what} while this run was reading it. A training file must stay as it "
                "is during a run (lmlab reads it by byte position). Fix: put the file back as it was, "
                "or write new data under a new name (a new chunk file) and start a new run with a new "
                "dump_dir; positions are kept by line number, so the same command resumes from the "
                "last checkpoint once the file is final.")

    def verify(self) -> None:
        """Raise ``DataChanged`` when the file is no longer the one first opened (one ``stat``):
        a reader that holds a block in memory checks this before each new block."""
        if self.data is None and self.stamp is not None:
            try:
                now = FileStamp.of(os.stat(self.name))
            except OSError:
                now = FileStamp(-1, 0, -1)
            self._check(now, opening=True)


# --------------------------------------------------------------------------- cutting records


def _lines(chunks: Iterator[bytes], offset: int) -> Iterator[tuple[bytes, int]]:
    """(line with its newline, offset after it) for each line; the last may lack the newline. A
    line longer than a chunk is gathered in pieces and joined once (linear in its length: a
    200 MB line is read in seconds, held once, never re-copied per chunk)."""
    parts: list[bytes] = []  # the pieces of a line that began in an earlier chunk
    for chunk in chunks:
        start, cut = 0, chunk.find(b"\n")
        while cut >= 0:
            line = chunk[start:cut + 1]
            if parts:
                parts.append(line)
                line, parts = b"".join(parts), []
            offset += len(line)
            yield line, offset
            start, cut = cut + 1, chunk.find(b"\n", cut + 1)
        if start < len(chunk):
            parts.append(chunk[start:])
    if parts:
        rest = b"".join(parts)
        yield rest, offset + len(rest)


def _jsonl_records(chunks: Iterator[bytes], offset: int, line: int) -> Iterator[Record]:
    """Each non-blank line is a record (a lone ``\\r`` or spaces are blank)."""
    for raw, end in _lines(chunks, offset):
        if len(raw) > 8 or raw.strip():  # only short lines can be whitespace alone
            yield Record(raw.rstrip(b"\n"), line, end, line + 1)
        line += 1


def _paragraph_records(chunks: Iterator[bytes], offset: int, line: int) -> Iterator[Record]:
    """Runs of non-blank lines; a blank line ending in a newline closes one (without that last
    newline), the end of the file closes one as it is."""
    parts: list[bytes] = []
    first, end = line, offset
    for raw, end in _lines(chunks, offset):
        blank = raw.endswith(b"\n") and not raw[:-1].strip(BLANK)
        if blank and parts:
            text = b"".join(parts)[:-1]
            yield Record(text, first, end, line + 1)
            parts = []
        elif not blank:
            if not parts:
                first = line
            parts.append(raw)
        line += 1
    if parts and b"".join(parts).strip():
        yield Record(b"".join(parts), first, end, line)
