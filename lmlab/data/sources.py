"""Where text comes from: Lingua-layout jsonl sources, plain text files, the bundled Tiny Shakespeare.

A *source* is a list of files; a *file* is a list of documents found by byte spans, so a document
can be read at random (for seeded shuffling) without loading the file, and a loader position is
three small integers.

Lingua layout: ``root_dir/<source>/*.chunk.*.jsonl`` for training and ``root_dir/<source>/*.val.jsonl``
for validation, one JSON object with a ``text`` field per line.
"""
from __future__ import annotations

import gzip
import json
import mmap
import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path

import numpy as np

from lmlab.data import wikitext
from lmlab.data.badrecords import CHECK_HINT, BadRecords, warn
from lmlab.data.tokenizers import TokenizerConfig
from lmlab.errors import LmlabError, Problem

SOURCE_KINDS = ("jsonl", "text", "tinyshakespeare", "wikitext2")
TRAIN_GLOB, VAL_GLOB = "*.chunk.*.jsonl", "*.val.jsonl"


@dataclass
class DataConfig:
    """Training / validation text, how it is tokenized and batched."""

    source: str = field(default="jsonl", metadata={
        "help": "jsonl (Lingua layout under root_dir), text (plain files at path / val_path), "
                "tinyshakespeare (bundled, offline) or wikitext2.", "choices": list(SOURCE_KINDS)})
    root_dir: str = field(default="", metadata={
        "help": "jsonl: directory holding one folder per source."})
    sources: dict[str, float] = field(default_factory=dict, metadata={
        "help": "jsonl: source folder name -> sampling weight (weights need not sum to 1)."})
    path: str = field(default="", metadata={
        "help": "text: training text file or directory of *.txt; wikitext2: local copy directory."})
    val_path: str = field(default="", metadata={
        "help": "text: validation text file or directory of *.txt."})
    train_split: str = field(default="train", metadata={
        "help": "wikitext2: split used for training (and for building the vocabulary)."})
    val_split: str = field(default="valid", metadata={"help": "wikitext2: split used for validation."})
    batch_size: int = field(default=32, metadata={
        "help": "Sequences per optimizer step (split into training.grad_accum micro-batches)."})
    seq_len: int = field(default=1024, metadata={"help": "Tokens per training sequence."})
    shuffle: bool = field(default=True, metadata={
        "help": "Visit files and documents in a seeded random order each epoch of the data."})
    max_bad_records: int = field(default=100, metadata={
        "help": "Bad records (a line that is not a JSON object with a 'text' string, or not UTF-8) "
                "a run may skip: each is skipped, counted and recorded (file:line in events.jsonl, "
                "one console line per file, `lmlab report`); one more stops the run with exit 2 "
                "after a checkpoint, listing them and the fix. 0: stop at the first. `lmlab check "
                "CONFIG --data` lists every bad line at once."})
    skip_bad_lines: bool = field(default=False, metadata={
        "help": "Older setting, kept so that older configs load: true lifts the data.max_bad_records "
                "limit (every bad record is skipped and counted)."})
    prefetch: int | None = field(default=None, metadata={
        "help": "Training batches read ahead by a background thread (pinned memory on a GPU, so "
                "the copy overlaps the step); the batches and resume positions are unchanged. "
                "null: auto (2 on CUDA, 0 on CPU, where the thread would take a core from the step)."})
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig, metadata={
        "help": "Tokenizer."})


# --------------------------------------------------------------------------- documents


class DocumentFile:
    """One file seen as documents: jsonl lines (``text`` field) or blank-line separated paragraphs.

    A bad record (a line that is not a JSON object with a ``text`` string, or not UTF-8) raises an
    error naming ``file:line``, or, with ``bad`` (a run's ``BadRecords``), is skipped and counted.
    """

    def __init__(self, name: str, data: bytes | mmap.mmap, kind: str, bad: BadRecords | None = None):
        self.name, self.data, self.kind, self.bad = name, data, kind, bad

    @classmethod
    def open(cls, path: Path, skip_bad_lines: bool = False, bad: BadRecords | None = None) -> "DocumentFile":
        """``skip_bad_lines`` without ``bad``: skip every bad record, warning at the first."""
        kind = "jsonl" if path.name.endswith(".jsonl") else "text"
        bad = bad if bad is not None or not skip_bad_lines else BadRecords(None, warn)
        with open(path, "rb") as handle:
            if path.stat().st_size == 0:
                return cls(str(path), b"", kind, bad)
            data = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        return cls(str(path), data, kind, bad)

    @property
    def bad_lines(self) -> int:
        """Distinct bad records of this file skipped so far."""
        return self.bad.per_file.get(self.name, 0) if self.bad is not None else 0

    @cached_property
    def spans(self) -> np.ndarray:
        """(n_docs, 3) int64: byte start, byte end, 1-based line number of each document."""
        return _jsonl_spans(self.data) if self.kind == "jsonl" else _paragraph_spans(self.data)

    def __len__(self) -> int:
        return len(self.spans)

    def text(self, index: int) -> str | None:
        """Document ``index`` as text; None for a bad record that ``bad`` lets us skip."""
        try:
            return self._read(index)
        except (UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
            line = int(self.spans[index][2])
            if self.bad is None:
                raise LmlabError(_bad_line_message(self.name, line, err)) from None
            self.bad.add(self.name, line, bad_line_what(err))
            return None

    def peek(self, index: int) -> str | None:
        """Document ``index``, or None for a bad record, which is left for ``text`` to report."""
        try:
            return self._read(index)
        except (UnicodeDecodeError, ValueError, KeyError, TypeError):
            return None

    def is_bad_line(self, line: int) -> bool:
        """Whether 1-based ``line`` holds a document that cannot be read."""
        index = int(np.searchsorted(self.spans[:, 2], line))
        return index < len(self) and int(self.spans[index][2]) == line and self.peek(index) is None

    def size(self, index: int) -> int:
        start, end, _ = self.spans[index]
        return int(end - start)

    def _read(self, index: int) -> str:
        start, end, _ = (int(x) for x in self.spans[index])
        raw = bytes(self.data[start:end])
        return parse_record(raw) if self.kind == "jsonl" else raw.decode("utf-8")

    def texts(self):
        """Every document in file order."""
        for i in range(len(self)):
            text = self.text(i)
            if text is not None:
                yield text


def parse_record(raw: bytes | str) -> str:
    """The ``text`` of one jsonl line; raises UnicodeDecodeError, ValueError (bad JSON), KeyError
    (no ``text``) or TypeError (not an object, or ``text`` not a string): ``bad_line_what`` says it."""
    record = json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
    text = record["text"]  # a list or a number raises TypeError here
    if not isinstance(text, str):  # e.g. {"text": 5} or {"text": null}
        raise TypeError(f"'text' is {type(text).__name__}")
    return text


def _bad_line_message(name: str, line: int, err: Exception) -> str:
    return (f"{name}:{line}: {bad_line_what(err)}. Fix the line ({CHECK_HINT}), or let training "
            "skip and count such lines up to data.max_bad_records (data.skip_bad_lines=true: no limit).")


def bad_line_what(err: Exception) -> str:
    if isinstance(err, UnicodeDecodeError):
        what = f"bytes that are not UTF-8 at offset {err.start}"
    elif isinstance(err, KeyError):
        what = "no 'text' field"
    elif isinstance(err, TypeError):
        what = "not a JSON object with a 'text' string"
    else:
        what = f"malformed JSON ({err})"
    return what


def _jsonl_spans(data) -> np.ndarray:
    buf = np.frombuffer(data, dtype=np.uint8) if len(data) else np.zeros(0, np.uint8)
    newlines = np.flatnonzero(buf == 10)
    starts = np.concatenate([[0], newlines + 1])
    ends = np.concatenate([newlines, [len(buf)]])
    lines = np.arange(1, len(starts) + 1)
    keep = ends > starts
    # drop whitespace-only lines (e.g. a lone "\r"); only short lines can be, so check just those
    for i in np.flatnonzero(keep & (ends - starts <= 8)):
        keep[i] = bool(bytes(data[starts[i]:ends[i]]).strip())
    return np.stack([starts[keep], ends[keep], lines[keep]], axis=1).astype(np.int64)


_PARAGRAPH_BREAK = re.compile(rb"\n(?:[ \t\r]*\n)+")


def _paragraph_spans(data) -> np.ndarray:
    spans, start, line = [], 0, 1
    raw = bytes(data)
    for match in _PARAGRAPH_BREAK.finditer(raw):
        if raw[start:match.start()].strip():
            spans.append((start, match.start(), line))
        line += raw.count(b"\n", start, match.end())
        start = match.end()
    if raw[start:].strip():
        spans.append((start, len(raw), line))
    return np.array(spans, dtype=np.int64).reshape(-1, 3)


# --------------------------------------------------------------------------- sources


@dataclass
class Source:
    """A named list of document files with a sampling weight."""

    name: str
    files: list[DocumentFile]
    weight: float = 1.0

    def texts(self):
        for doc_file in self.files:
            yield from doc_file.texts()


def training_sources(cfg: DataConfig, bad: BadRecords | None = None) -> list[Source]:
    """Training sources for step mode (every file of every source is used). Bad records raise,
    or with ``bad`` are skipped and counted there."""
    if cfg.source == "jsonl":
        root = Path(cfg.root_dir)
        return [Source(name, _open_all(sorted((root / name).glob(TRAIN_GLOB)), cfg, bad), weight)
                for name, weight in cfg.sources.items()]
    if cfg.source == "text":
        return [Source("text", _open_all(text_files(cfg.path), cfg, bad))]
    if cfg.source == "tinyshakespeare":
        return [Source("tinyshakespeare", [bundled_file("train")])]
    raise LmlabError(f"data.source={cfg.source!r} has no packed training stream; it trains in "
                     "epoch mode (set epochs > 0).")


def validation_sources(cfg: DataConfig, bad: BadRecords | None = None) -> list[Source]:
    if cfg.source == "jsonl":
        root = Path(cfg.root_dir)
        return [Source(name, _open_all(sorted((root / name).glob(VAL_GLOB)), cfg, bad), weight)
                for name, weight in cfg.sources.items()]
    if cfg.source == "text":
        return [Source("text", _open_all(text_files(cfg.val_path), cfg, bad))] if cfg.val_path else []
    if cfg.source == "tinyshakespeare":
        return [Source("tinyshakespeare", [bundled_file("val")])]
    return []


def _open_all(paths: list[Path], cfg: DataConfig, bad: BadRecords | None) -> list[DocumentFile]:
    return [DocumentFile.open(p, cfg.skip_bad_lines, bad) for p in paths]


def bad_record_budget(cfg: DataConfig) -> int | None:
    """How many bad records a run may skip (None: no limit, the older ``skip_bad_lines``)."""
    return None if cfg.skip_bad_lines else cfg.max_bad_records


def text_files(path: str) -> list[Path]:
    """A text file itself, or the sorted ``*.txt`` files of a directory."""
    p = Path(path)
    return sorted(p.glob("*.txt")) if p.is_dir() else [p]


# --------------------------------------------------------------------------- bundled data

# Tiny Shakespeare (public domain text; karpathy/char-rnn data/tinyshakespeare/input.txt, 1,115,394
# bytes, sha256 86c4e6aa...65ed), gzip-compressed. The first 90% of lines train, the rest validate.
_BUNDLED = "tinyshakespeare.txt.gz"
_TRAIN_FRACTION = 0.9


def bundled_file(split: str) -> DocumentFile:
    text = gzip.decompress(resources.files("lmlab.data.bundled").joinpath(_BUNDLED).read_bytes())
    lines = text.splitlines(keepends=True)
    cut = int(len(lines) * _TRAIN_FRACTION)
    part = b"".join(lines[:cut] if split == "train" else lines[cut:])
    return DocumentFile(f"<bundled {_BUNDLED} {split}>", part, "text")


# --------------------------------------------------------------------------- preflight


def check(cfg: DataConfig, validation_enabled: bool) -> list[Problem]:
    """Problems with the data settings and files, found by listing files only (nothing is read)."""
    problems = []
    for key in ("batch_size", "seq_len"):
        if getattr(cfg, key) <= 0:
            problems.append(Problem(f"data.{key}", f"must be > 0, got {getattr(cfg, key)}.",
                                    f"set data.{key} to a positive integer"))
    if cfg.max_bad_records < 0:
        problems.append(Problem("data.max_bad_records", f"must be >= 0, got {cfg.max_bad_records}.",
                                "set data.max_bad_records=0 (stop at the first bad record) or more"))
    if cfg.prefetch is not None and cfg.prefetch < 0:
        problems.append(Problem("data.prefetch", f"must be >= 0 or null, got {cfg.prefetch}.",
                                "set data.prefetch=0 (no read-ahead) or null (auto)"))
    found: list[Problem] = []
    if cfg.source == "jsonl":
        found = _check_jsonl(cfg, validation_enabled)
    elif cfg.source == "wikitext2":
        found = wikitext.check(cfg, validation_enabled)
    elif cfg.source == "text":
        found = _check_text(cfg, validation_enabled)
    if validation_enabled and not found:  # the files exist: is any of them in both sets?
        found = _overlap(cfg)
    return problems + found


def _file_id(path: Path) -> tuple:
    """The same file under any name (a path, a symlink, a hard link)."""
    try:
        st = os.stat(path)
        return st.st_dev, st.st_ino
    except OSError:
        return (str(path.resolve()),)


def _overlap(cfg: DataConfig) -> list[Problem]:
    """A file both trained on and validated on: the validation loss would measure memorisation."""
    if cfg.source == "jsonl":
        root = Path(cfg.root_dir)
        train = [(p, f"data.sources.{n}") for n in cfg.sources for p in sorted((root / n).glob(TRAIN_GLOB))]
        val = [(p, f"data.sources.{n}") for n in cfg.sources for p in sorted((root / n).glob(VAL_GLOB))]
        fix = (f"rename it so that it matches only one of {TRAIN_GLOB} (training) and {VAL_GLOB} "
               "(validation), e.g. NAME.chunk.00.jsonl or NAME.val.jsonl")
    elif cfg.source == "text":
        train = [(p, "data.path") for p in text_files(cfg.path)]
        val = [(p, "data.val_path") for p in text_files(cfg.val_path)]
        fix = ("move the validation text out of the training folder (data.path reads every *.txt in "
               "it), or point data.path at the training files only")
    else:
        return wikitext.overlap(cfg)
    val_ids = {_file_id(p): (p, key) for p, key in val if p.is_file()}
    problems = []
    for path, key in train:
        if path.is_file() and _file_id(path) in val_ids:
            vpath, vkey = val_ids[_file_id(path)]
            same = "" if vpath == path else f" (also named {vpath})"
            problems.append(Problem(str(path), f"is both a training file ({key}) and a validation file "
                                    f"({vkey}){same}: the model would train on its validation text.", fix))
    return problems


def _check_jsonl(cfg: DataConfig, validation_enabled: bool) -> list[Problem]:
    root = Path(cfg.root_dir)
    if not cfg.root_dir or not root.is_dir():
        what = "is not set" if not cfg.root_dir else f"directory {root} does not exist"
        return [Problem("data.root_dir", f"{what}.", "set data.root_dir to the directory holding "
                        "one folder per source (root/<source>/*.chunk.*.jsonl)")]
    if not cfg.sources:
        found = sorted(p.name for p in root.iterdir() if p.is_dir())
        return [Problem("data.sources", "no sources given.",
                        f"set data.sources to a mapping of folder -> weight, e.g. "
                        f"data.sources={{{found[0] if found else 'mysource'}: 1.0}}")]
    problems = []
    for name, weight in cfg.sources.items():
        problems += _check_jsonl_source(root / name, f"data.sources.{name}", weight, validation_enabled)
    return problems


def _check_jsonl_source(folder: Path, key: str, weight: float, validation_enabled: bool) -> list[Problem]:
    if weight <= 0:
        return [Problem(key, f"weight must be > 0, got {weight}.", f"set {key}=1.0 or remove it")]
    if not folder.is_dir():
        return [Problem(key, f"source directory {folder} does not exist.",
                        f"create {folder} with *.chunk.*.jsonl files, or remove the source")]
    problems = []
    train = sorted(folder.glob(TRAIN_GLOB))
    if not train:
        others = sorted(p.name for p in folder.glob("*.jsonl") if not p.name.endswith(".val.jsonl"))
        hint = f" (found {others[:3]}: rename them to NAME.chunk.00.jsonl)" if others else ""
        problems.append(Problem(key, f"{folder} has no training files matching {TRAIN_GLOB}{hint}.",
                                f"add training files such as {folder / (folder.name + '.chunk.00.jsonl')}"))
    val = sorted(folder.glob(VAL_GLOB))
    if validation_enabled and not val:
        problems.append(Problem(key, f"validation is enabled but {folder} has no {VAL_GLOB} files.",
                                f"add validation files such as {folder / (folder.name + '.val.jsonl')}, "
                                "or set eval.validation.enabled=false"))
    problems += [Problem(str(p), "data file is empty.", "remove it or fill it with one JSON object "
                         "per line") for p in train + (val if validation_enabled else [])
                 if p.stat().st_size == 0]
    return problems


def _check_text(cfg: DataConfig, validation_enabled: bool) -> list[Problem]:
    problems = []
    pairs = [("data.path", cfg.path)] + ([("data.val_path", cfg.val_path)] if validation_enabled else [])
    for key, value in pairs:
        if not value:
            fix = "set data.path to a text file or a directory of *.txt" if key == "data.path" else \
                "set data.val_path to validation text, or set eval.validation.enabled=false"
            problems.append(Problem(key, "is not set.", fix))
            continue
        files = text_files(value)
        if not Path(value).exists() or not files:
            problems.append(Problem(key, f"{value} does not exist or holds no *.txt files.",
                                    f"point {key} at an existing text file or directory"))
        problems += [Problem(str(p), "data file is empty.", "remove it or add text")
                     for p in files if p.is_file() and p.stat().st_size == 0]
    return problems
