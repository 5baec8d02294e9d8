"""Where text comes from: Lingua-layout jsonl sources, plain text files, the bundled Tiny Shakespeare.

A *source* is a list of files; a *file* is read front to back as documents (``documents.py``), so
memory does not depend on the corpus size and a loader position is a few small integers.

Lingua layout: ``root_dir/<source>/*.chunk.*.jsonl`` for training and ``root_dir/<source>/*.val.jsonl``
for validation, one JSON object with a ``text`` field per line.
"""
from __future__ import annotations

import gzip
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from lmlab.data import wikitext
from lmlab.data.badrecords import BadRecords
from lmlab.data.documents import DocumentFile
from lmlab.data.manifest import check_prepared, prepared_vocab_size
from lmlab.data.tokenizers import TokenizerConfig, configured_vocab_size
from lmlab.errors import LmlabError, Problem

SOURCE_KINDS = ("jsonl", "text", "tinyshakespeare", "wikitext2", "prepared")
TRAIN_GLOB, VAL_GLOB = "*.chunk.*.jsonl", "*.val.jsonl"


@dataclass
class DataConfig:
    """Training / validation text, how it is tokenized and batched."""

    source: str = field(default="jsonl", metadata={
        "help": "jsonl (Lingua layout under root_dir), text (plain files at path / val_path), "
                "tinyshakespeare (bundled, offline), wikitext2, or prepared (token shards that "
                "`lmlab data prepare` wrote into path).", "choices": list(SOURCE_KINDS)})
    root_dir: str = field(default="", metadata={
        "help": "jsonl: directory holding one folder per source."})
    sources: dict[str, float] = field(default_factory=dict, metadata={
        "help": "jsonl: source folder name -> sampling weight (weights need not sum to 1)."})
    path: str = field(default="", metadata={
        "help": "text: training text file or directory of *.txt; wikitext2: local copy directory; "
                "prepared: the folder `lmlab data prepare` wrote."})
    val_path: str = field(default="", metadata={
        "help": "text: validation text file or directory of *.txt."})
    train_split: str = field(default="train", metadata={
        "help": "wikitext2: split used for training (and for building the vocabulary)."})
    val_split: str = field(default="valid", metadata={"help": "wikitext2: split used for validation."})
    batch_size: int = field(default=32, metadata={
        "help": "Sequences per optimizer step (split into training.grad_accum micro-batches)."})
    seq_len: int = field(default=1024, metadata={"help": "Tokens per training sequence."})
    shuffle: bool = field(default=True, metadata={
        "help": "Visit files in a seeded random order each pass over the data, and documents in a "
                "seeded order within each block of data.shuffle_buffer documents."})
    shuffle_buffer: int = field(default=1024, metadata={
        "help": "Documents read together (in file order, at most 64 MiB) and visited in a seeded "
                "random order: files are read front to back, so memory stays this size whatever "
                "the corpus. Larger mixes better; 1 keeps file order."})
    max_bad_records: int = field(default=100, metadata={
        "help": "Bad records (a line that is not a JSON object with a 'text' string, or not UTF-8) "
                "a run may skip: each is skipped, counted and recorded (file:line in events.jsonl, "
                "one console line per file, `lmlab report`); one more stops the run with exit 2 "
                "after a checkpoint, listing them and the fix. 0: stop at the first. `lmlab check "
                "CONFIG --data` lists every bad line at once."})
    skip_bad_lines: bool = field(default=False, metadata={
        "help": "Older setting, kept so that older configs load: true lifts the data.max_bad_records "
                "limit (every bad record is skipped and counted)."})
    readers: int | None = field(default=None, metadata={
        "help": "Disjoint document readers per source (each takes every R-th document of each "
                "shuffled block). Processes under --nproc run their own readers, so they read and "
                "tokenize different documents; the batches depend on the readers, not on the "
                "number of processes (set it to compare runs on 1 and N processes batch for "
                "batch). null: one per process at the run's start, then what the run was started "
                "with (1 when that does not divide the rows of a micro-batch)."})
    prefetch: int | None = field(default=None, metadata={
        "help": "Training batches read ahead by a background thread (pinned memory on a GPU, so "
                "the copy overlaps the step); the batches and resume positions are unchanged. "
                "null: auto (2 on CUDA, 0 on CPU, where the thread would take a core from the step)."})
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig, metadata={
        "help": "Tokenizer."})


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


def vocab_size(cfg: DataConfig) -> int:
    """The vocabulary the model is built with, known before any text is read: that of the
    tokenizer a prepared folder was made with, else ``data.tokenizer``'s."""
    made = prepared_vocab_size(cfg.path) if cfg.source == "prepared" else None
    return made or configured_vocab_size(cfg.tokenizer)


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
    return DocumentFile(f"<bundled {_BUNDLED} {split}>", "text", data=part)


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
    if cfg.shuffle_buffer < 1:
        problems.append(Problem("data.shuffle_buffer", f"must be >= 1, got {cfg.shuffle_buffer}.",
                                "set data.shuffle_buffer=1024 (or 1 to keep file order)"))
    if cfg.readers is not None and cfg.readers < 1:
        problems.append(Problem("data.readers", f"must be >= 1 or null, got {cfg.readers}.",
                                "set data.readers=null (one per process) or a positive number"))
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
    elif cfg.source == "prepared":
        found = check_prepared(cfg, validation_enabled)
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
