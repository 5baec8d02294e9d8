"""``lmlab check CONFIG --data``: read every training and validation file of a config once, at disk
speed, and report every bad line at once (``file:line: reason``), instead of meeting them one at a
time during training.

A jsonl line is good when it is UTF-8, one JSON object, with a ``text`` string (``documents.
parse_record``, the very rule training reads by); a text file (``data.source`` text, a local
WikiText-2 copy) must be UTF-8. Blank lines are not documents and are not counted as bad. A source
whose every document has empty text is reported too: it would train on BOS/EOS alone.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from lmlab.data import sources, wikitext
from lmlab.data.badrecords import BadRecord
from lmlab.data.documents import bad_line_what, parse_record
from lmlab.errors import LmlabError
from lmlab.humanize import si

BLOCK = 16 << 20  # bytes read at a time
PARALLEL_BYTES = 64 << 20  # less data than this is parsed in this process
MAX_WORKERS = 16
ASCII_SPACE = " \t\n\r\x0b\x0c"  # what bytes.strip() strips: blank lines as the loader finds them
SHOWN_PER_FILE = 200  # bad lines listed per file (all are counted)


@dataclass
class DataFile:
    role: str  # training | validation
    source: str  # the config key naming it: data.sources.NAME, data.path, data.val_split ...
    path: Path
    kind: str  # jsonl | text


@dataclass
class Scan:
    files: list[DataFile]
    lines: int = 0
    bytes: int = 0
    documents: dict[tuple[str, str], int] = field(default_factory=dict)  # (role, source) -> count
    empty: dict[tuple[str, str], int] = field(default_factory=dict)  # ... with empty text
    bad: list[BadRecord] = field(default_factory=list)
    bad_per_file: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    skipped: list[str] = field(default_factory=list)  # what could not be scanned, and why

    def hollow_sources(self) -> list[tuple[str, str]]:
        """(role, source) whose documents all have empty text (or which have none that reads)."""
        return [key for key, n in self.documents.items() if n == self.empty.get(key, 0)]

    def summary(self) -> str:
        speed = si(self.bytes / self.seconds, "B/s") if self.seconds > 0 else "-"
        roles = {r: sum(f.role == r for f in self.files) for r in ("training", "validation")}
        lines = [f"data: scanned {len(self.files)} files ({roles['training']} training, "
                 f"{roles['validation']} validation): {self.lines:,} lines, {si(self.bytes, 'B')} in "
                 f"{self.seconds:.2f} s ({speed})"]
        jsonl = {(f.role, f.source) for f in self.files if f.kind == "jsonl"}
        for (role, source), n in self.documents.items():
            empty = self.empty.get((role, source), 0)
            unit = (("document", "documents") if (role, source) in jsonl else
                    ("line with text", "lines with text"))[n != 1]
            lines.append(f"  {role} {source}: {n:,} {unit}" + (f", {empty:,} with empty text" if empty else ""))
        lines += [f"  not scanned: {why}" for why in self.skipped]
        return "\n".join(lines)

    def error(self) -> LmlabError | None:
        if not self.bad and not self.hollow_sources():
            return None
        parts = []
        if self.bad:
            n, files = sum(self.bad_per_file.values()), len(self.bad_per_file)
            parts.append(f"{n:,} bad line{'s' if n != 1 else ''} in {files} file{'s' if files != 1 else ''} "
                         "(not a JSON object with a 'text' string, or not UTF-8):")
            parts += [f"  {record}" for record in self.bad]
            parts += [f"  ... and {count - SHOWN_PER_FILE:,} more in {name}"
                      for name, count in self.bad_per_file.items() if count > SHOWN_PER_FILE]
        for role, source in self.hollow_sources():
            n = self.documents[(role, source)]
            what = f"every one of its {n:,} documents has empty text" if n else "it has no readable document"
            alone = " (training would see BOS/EOS alone)" if role == "training" else ""
            parts.append(f"{role} {source}: {what}, so it yields 0 tokens{alone}.")
        fixes = (["repair or delete those lines (until then training skips up to data.max_bad_records "
                  "of them, then stops with exit 2)"] if self.bad else []) + \
                (["fill the empty sources with text, or remove them from the config (training refuses a "
                  "source without text)"] if self.hollow_sources() else [])
        parts.append(f"Fix: {'; '.join(fixes)}.")
        return LmlabError("\n".join(parts))


def data_files(cfg: sources.DataConfig) -> tuple[list[DataFile], list[str]]:
    """Every training and validation file the config names that exists (validation files even when
    validation is off: ``lmlab eval`` reads them), and what cannot be scanned."""
    found, skipped = [], []
    if cfg.source == "jsonl":
        root = Path(cfg.root_dir)
        for name in cfg.sources:
            for role, pattern in (("training", sources.TRAIN_GLOB), ("validation", sources.VAL_GLOB)):
                found += [DataFile(role, f"data.sources.{name}", p, "jsonl")
                          for p in sorted((root / name).glob(pattern))]
    elif cfg.source == "text":
        for role, key, value in (("training", "data.path", cfg.path), ("validation", "data.val_path", cfg.val_path)):
            if value:
                found += [DataFile(role, key, p, "text") for p in sources.text_files(value) if p.is_file()]
    elif cfg.source == "wikitext2":
        for role, split in (("training", cfg.train_split), ("validation", cfg.val_split)):
            path = wikitext.local_split_file(cfg.path, split) if cfg.path else None
            if path is not None:
                found.append(DataFile(role, f"split {split}", path, "text"))
            else:
                skipped.append(f"WikiText-2 split {split} (no local copy in data.path: read from the hub)")
    elif cfg.source == "prepared":
        skipped.append(f"data.source=prepared (token shards, checked when they were written: "
                       f"`lmlab data inspect {cfg.path} --verify` reads them again)")
    else:
        skipped.append(f"data.source={cfg.source} (bundled with lmlab)")
    return found, skipped


def scan_data(cfg: sources.DataConfig, progress: bool | None = None, workers: int | None = None) -> Scan:
    """Read every data file of ``cfg``, with a tqdm bar in bytes on stderr (``progress=None``: only
    on a terminal). Large data is parsed by ``workers`` processes (default: one per CPU) while this
    one reads, so the scan goes at the speed of the disk rather than of one JSON parser."""
    files, skipped = data_files(cfg)
    scan = Scan(files, skipped=skipped)
    started = time.perf_counter()
    total = sum(f.path.stat().st_size for f in files)
    if workers is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        workers = min(cpus, MAX_WORKERS)
    parallel = workers > 1 and total >= PARALLEL_BYTES and "fork" in mp.get_all_start_methods()
    # the pool forks before the progress bar starts its monitor thread
    pool = mp.get_context("fork").Pool(workers) if parallel else None
    try:
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="scanning data",
                  disable=None if progress is None else not progress, leave=False) as bar:
            for data_file in files:
                _scan_file(data_file, scan, bar.update, pool, 2 * workers)
    finally:
        if pool is not None:
            pool.terminate()
    scan.seconds = time.perf_counter() - started
    return scan


def _blocks(path: Path):
    """The file in blocks of about BLOCK bytes, each cut after a newline (the last one: its rest)."""
    rest = b""
    with open(path, "rb") as handle:
        while True:
            block = handle.read(BLOCK)
            if not block:
                if rest:
                    yield rest, 0
                return
            data = rest + block
            cut = data.rfind(b"\n") + 1
            if cut == 0:
                rest = data
                continue
            yield data[:cut], len(block)
            rest = data[cut:]


def _scan_file(data_file: DataFile, scan: Scan, advance, pool, in_flight: int) -> None:
    key = (data_file.role, data_file.source)
    scan.documents.setdefault(key, 0)
    jsonl, name = data_file.kind == "jsonl", str(data_file.path)
    pending: deque = deque()
    line_base = 0

    def collect(result) -> None:
        nonlocal line_base
        lines, documents, empty, bad, size = result
        for line, reason in bad:
            _add_bad(scan, name, line_base + line, reason)
        scan.documents[key] += documents
        scan.empty[key] = scan.empty.get(key, 0) + empty
        line_base += lines
        scan.lines += lines
        scan.bytes += size
        advance(size)

    for block, size in _blocks(data_file.path):
        if pool is None:
            collect(scan_block(block, jsonl, size))
            continue
        pending.append(pool.apply_async(scan_block, (block, jsonl, size)))
        while len(pending) >= in_flight:  # bounded read-ahead: memory stays ~ in_flight blocks
            collect(pending.popleft().get())
    while pending:
        collect(pending.popleft().get())


def scan_block(block: bytes, jsonl: bool, size: int) -> tuple[int, int, int, list, int]:
    """(lines, documents, documents with empty text, [(line in block, reason)], size) of whole
    lines; documents: jsonl records, or a text file's non-blank lines."""
    try:  # one decode for the block (fast); line by line only when it holds bytes that are not UTF-8
        lines: list = block.decode("utf-8").split("\n")
    except UnicodeDecodeError:
        lines = block.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()  # after the final newline
    documents = empty = 0
    bad = []
    for number, raw in enumerate(lines, 1):
        if not raw.strip(ASCII_SPACE if isinstance(raw, str) else None):
            continue  # a blank line: no document (as the loader sees it)
        try:
            text = parse_record(raw) if jsonl else \
                (raw if isinstance(raw, str) else raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
            bad.append((number, bad_line_what(err)))
            continue
        documents += 1
        empty += not text.strip()
    return len(lines), documents, empty, bad, size


def _add_bad(scan: Scan, name: str, line: int, reason: str) -> None:
    count = scan.bad_per_file[name] = scan.bad_per_file.get(name, 0) + 1
    if count <= SHOWN_PER_FILE:
        scan.bad.append(BadRecord(name, line, reason))
