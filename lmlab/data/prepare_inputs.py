"""What ``lmlab data prepare`` reads, and in which pieces.

A source is a path: a Lingua-layout folder (``*.chunk.*.jsonl`` train, ``*.val.jsonl`` validation),
a jsonl file or folder of them, a text file or folder of ``*.txt`` (blank-line separated paragraphs,
as ``data.source=text`` reads them), or a local Hugging Face dataset: a ``save_to_disk`` folder
(a ``Dataset`` or a ``DatasetDict`` of splits, read through ``datasets``) or ``*.parquet`` /
``*.arrow`` files, with a text column.

The work is cut into *units* whose boundaries do not depend on how many processes do it: a jsonl or
text file in nominal byte ranges of ``unit_bytes``, each end moved forward to the next document
boundary (``align``: a line start; for text, the line after a blank line), a parquet file in row
groups, an arrow file in row ranges. A unit's documents are exactly those the whole file holds
between its two boundaries, with the same bad records (``documents.parse_record``) at the same lines.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from lmlab.data.documents import bad_line_what, parse_record  # the rules training reads by
from lmlab.errors import LmlabError

# data.sources' names (not imported from there: it imports torch, seconds for a command that needs none)
TRAIN_GLOB, VAL_GLOB = "*.chunk.*.jsonl", "*.val.jsonl"
BLANK = b" \t\r"  # what a blank text line may hold (a paragraph break), as data.source=text reads
HF_SUFFIXES = (".parquet", ".arrow")
SEEK_BLOCK = 1 << 16


@dataclass(frozen=True)
class InputFile:
    path: str
    kind: str  # jsonl | text | parquet | arrow
    split: str  # train | val
    size: int
    mtime_ns: int
    units: int = 0  # parquet: row groups; arrow: rows (bytes files: from size)


@dataclass(frozen=True)
class Unit:
    split: str
    file: int  # index into the input file list
    start: int  # nominal: byte offset (jsonl, text), row group (parquet), row (arrow)
    end: int


@dataclass
class UnitText:
    """A unit read: its documents (None where a record is bad) and where it really starts and ends."""

    texts: list[str]
    bad: list[tuple[int, str]]  # (0-based line or row in the unit, reason)
    lines: int  # lines (rows) it spans: the next unit of the file starts this many lines further
    begin: int  # aligned start / end (bytes), or rows
    finish: int
    nbytes: int  # input bytes it stands for (progress)


# --------------------------------------------------------------------------- finding the files


def find_inputs(source: str, val: str = "", split: str = "train", val_split: str = "validation",
                column: str = "text") -> list[InputFile]:
    """Training files, then validation files, each in sorted order."""
    path = Path(source)
    if not path.exists():
        raise LmlabError(f"{source} does not exist. Fix: give lmlab data prepare a Lingua source folder, "
                         "a jsonl or text file (or folder of them), or a local Hugging Face dataset.")
    if not path.is_dir() and not path.is_file():
        raise LmlabError(f"{source} is not a regular file or a folder (a pipe or device?). Fix: give lmlab "
                         "data prepare a Lingua source folder, a jsonl or text file (or folder of them), or "
                         "a local Hugging Face dataset.")
    train, found_val = _split_files(path, split, val_split, column)
    if val:
        if not Path(val).exists():
            raise LmlabError(f"--val {val} does not exist. Fix: give a validation file or folder, or drop --val.")
        found_val = _split_files(Path(val), split, None, column)[0] or _split_files(Path(val), val_split, None, column)[0]
    if not train:
        raise LmlabError(f"{source} holds no training data: no {TRAIN_GLOB}, *.jsonl, *.txt, *.parquet "
                         f"or *.arrow file (or split {split!r} of a dataset). Fix: point at the folder or "
                         "file holding the text (--split NAME for another dataset split).")
    return [_stat(p, kind, "train", column) for p, kind in train] + \
        [_stat(p, kind, "val", column) for p, kind in found_val]


def _kind(path: Path) -> str:
    suffix = path.suffix.lower()
    return {".jsonl": "jsonl", ".parquet": "parquet", ".arrow": "arrow"}.get(suffix, "text")


def _split_files(path: Path, split: str, val_split: str | None, column: str) -> tuple[list, list]:
    """(training, validation) (path, kind) pairs of a source path."""
    if path.is_file():
        return [(path, _kind(path))], []
    if (path / "dataset_dict.json").is_file():  # DatasetDict.save_to_disk
        splits = _saved_json(path / "dataset_dict.json").get("splits", [])
        if split not in splits:
            raise LmlabError(f"{path} has no split {split!r} (it has {', '.join(splits)}). Fix: --split NAME.")
        val = _saved_dataset(path / val_split) if val_split and val_split in splits else []
        return _saved_dataset(path / split), val
    if (path / "state.json").is_file():  # Dataset.save_to_disk
        return _saved_dataset(path), []
    lingua_train, lingua_val = sorted(path.glob(TRAIN_GLOB)), sorted(path.glob(VAL_GLOB))
    if lingua_train or lingua_val:
        return [(p, "jsonl") for p in lingua_train], [(p, "jsonl") for p in lingua_val]
    hf = sorted(p for p in path.rglob("*") if p.suffix.lower() in HF_SUFFIXES and p.is_file())
    if hf:
        return _hub_split(hf, path, split), (_hub_split(hf, path, val_split, strict=True) if val_split else [])
    jsonl = sorted(path.glob("*.jsonl"))
    if jsonl:
        return [(p, "jsonl") for p in jsonl], []
    return [(p, "text") for p in sorted(path.glob("*.txt")) if p.is_file()], []


def _saved_json(path: Path) -> dict:
    """A ``save_to_disk`` folder's dataset_dict.json or state.json, refused by name when it is not one."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(value, dict):
            files = value.get("_data_files", [])
            if path.name == "state.json" and not (isinstance(files, list) and all(
                    isinstance(f, dict) and isinstance(f.get("filename"), str) for f in files)):
                raise ValueError("'_data_files' is not a list of files")
            if path.name == "dataset_dict.json" and not isinstance(value.get("splits", []), list):
                raise ValueError("'splits' is not a list")
            return value
        raise ValueError("not a JSON object")
    except (OSError, ValueError) as err:
        raise LmlabError(f"{path} is not the {path.name} that datasets' save_to_disk writes ({err}). Fix: "
                         "save the dataset again (Dataset.save_to_disk), or point at its data files "
                         "(*.parquet, *.arrow, *.jsonl).") from None


def _saved_dataset(folder: Path) -> list[tuple[Path, str]]:
    state = _saved_json(folder / "state.json")
    return [(folder / item["filename"], "arrow") for item in state.get("_data_files", [])]


def _hub_split(files: list[Path], root: Path, split: str, strict: bool = False) -> list[tuple[Path, str]]:
    """Hub layout (``data/train-00000-of-00004.parquet``, ``train/0.parquet``): the files of ``split``;
    files that name no split at all are all training files."""
    def names(p: Path, s: str) -> bool:
        rel = p.relative_to(root)
        return s in rel.parts[:-1] or p.name.startswith((f"{s}-", f"{s}.", f"{s}_"))
    chosen = [p for p in files if names(p, split)]
    if not chosen and not strict and not any(names(p, s) for p in files for s in ("train", "validation", "test")):
        chosen = files
    return [(p, _kind(p)) for p in chosen]


# the first bytes of what is not text: compressed files, archives, executables, UTF-16 (its BOM)
MAGIC = ((b"\x1f\x8b", "gzip-compressed", "gunzip it"), (b"\x28\xb5\x2f\xfd", "zstd-compressed", "unzstd it"),
         (b"BZh", "bzip2-compressed", "bunzip2 it"), (b"\xfd7zXZ\x00", "xz-compressed", "unxz it"),
         (b"PK\x03\x04", "a zip archive", "unzip it"), (b"\x7fELF", "an executable", "give the text files"),
         (b"\xff\xfe", "UTF-16 text", "convert it to UTF-8 (iconv -f UTF-16 -t UTF-8)"),
         (b"\xfe\xff", "UTF-16 text", "convert it to UTF-8 (iconv -f UTF-16 -t UTF-8)"))
SNIFF_BYTES = 8192


def not_text(path: Path) -> str | None:
    """Why a jsonl or text file is plainly not text (a compressed file, an archive, binary data:
    NUL bytes in its first block), or None. Every line of such a file would be a bad record: it is
    refused by name instead of being prepared into zero documents."""
    with open(path, "rb") as handle:
        head = handle.read(SNIFF_BYTES)
    for magic, what, fix in MAGIC:
        if head.startswith(magic):
            return f"is {what}, not UTF-8 text. Fix: {fix} and prepare the result"
    if b"\x00" in head:
        return ("holds NUL bytes: binary data, not UTF-8 text. Fix: give the text files (jsonl with a "
                "'text' field per line, or plain text) instead")
    return None


def _stat(path: Path, kind: str, split: str, column: str) -> InputFile:
    try:
        st = path.stat()
        if not path.is_file():
            raise LmlabError(f"{path} is {'a folder' if path.is_dir() else 'not a regular file (a pipe or device)'}, "
                             "not a data file. Fix: give files (or rename it so that it does not look like one).")
        why = not_text(path) if kind in ("jsonl", "text") and st.st_size else None
    except OSError as err:
        what = "a broken link" if path.is_symlink() and not path.exists() else err.strerror or str(err)
        raise LmlabError(f"{path} cannot be read: {what}. Fix: restore it or remove it from the source.") from None
    if why:
        raise LmlabError(f"{path} {why}.")
    units = _hf_units(path, kind, column) if kind in ("parquet", "arrow") else 0
    return InputFile(str(path.resolve()), kind, split, st.st_size, st.st_mtime_ns, units)


def _hf_units(path: Path, kind: str, column: str) -> int:
    """Row groups of a parquet file, rows of an arrow file; refuses a file without ``column``."""
    import pyarrow as pa  # lazy: only Hugging Face sources need pyarrow
    try:
        if kind == "parquet":
            import pyarrow.parquet as pq  # lazy: as above
            meta = pq.ParquetFile(path)
            names, units = meta.schema_arrow.names, meta.metadata.num_row_groups
        else:
            table = _arrow_table(str(path))
            names, units = table.column_names, table.num_rows
    except (pa.ArrowException, OSError, ValueError) as err:
        raise LmlabError(f"{path} is not a readable {kind} file ({str(err).splitlines()[0][:200]}). Fix: "
                         f"replace it with a whole {kind} file, or remove it from the source.") from None
    if column not in names:
        raise LmlabError(f"{path} has no column {column!r} (its columns: {', '.join(names)}). Fix: "
                         "--text-field NAME names the column that holds the text.")
    if kind == "parquet":
        field = meta.schema_arrow.field(column)
    else:
        field = table.schema.field(column)
    if not (pa.types.is_string(field.type) or pa.types.is_large_string(field.type)
            or pa.types.is_null(field.type)):
        raise LmlabError(f"{path}: column {column!r} holds {field.type}, not text. Fix: --text-field NAME "
                         f"names the column that holds the text (its columns: {', '.join(names)}).")
    return units


_TABLES: dict[str, object] = {}


def _arrow_table(path: str):
    """The memory-mapped table of an arrow file written by ``datasets`` (cached per process)."""
    if path not in _TABLES:
        from datasets import Dataset  # lazy: datasets takes a second to import
        if len(_TABLES) > 8:
            _TABLES.clear()
        _TABLES[path] = Dataset.from_file(path).data.table
    return _TABLES[path]


# --------------------------------------------------------------------------- units


def plan_units(files: list[InputFile], unit_bytes: int) -> dict[str, list[Unit]]:
    """Every unit of every file, per split, in input order."""
    plan: dict[str, list[Unit]] = {"train": [], "val": []}
    for index, f in enumerate(files):
        if f.kind == "parquet":
            plan[f.split] += [Unit(f.split, index, g, g + 1) for g in range(f.units)]
            continue
        total = f.units if f.kind == "arrow" else f.size
        step = max(1, f.units * unit_bytes // max(f.size, 1)) if f.kind == "arrow" else unit_bytes
        plan[f.split] += [Unit(f.split, index, s, min(s + step, total)) for s in range(0, total, step)]
    return plan


def unit_bytes_of(f: InputFile, unit: Unit) -> int:
    """Input bytes a unit stands for (its share of the file, for progress)."""
    if f.kind in ("jsonl", "text"):
        return unit.end - unit.start
    return f.size * unit.end // max(f.units, 1) - f.size * unit.start // max(f.units, 1)


def read_unit(f: InputFile, unit: Unit, column: str = "text") -> UnitText:
    if f.kind in ("parquet", "arrow"):
        return _read_rows(f, unit, column)
    with open(f.path, "rb") as handle:
        begin, finish = align(handle, unit.start, f.size, f.kind), align(handle, unit.end, f.size, f.kind)
        handle.seek(begin)
        data = handle.read(finish - begin)
    if len(data) != finish - begin:
        raise LmlabError(f"{f.path} changed while it was read (now shorter). Fix: prepare it once it "
                         "is no longer written to.")
    read = _jsonl_texts if f.kind == "jsonl" else _paragraph_texts
    texts, bad = read(data, finish == f.size)
    return UnitText(texts, bad, data.count(b"\n"), begin, finish, unit_bytes_of(f, unit))


def align(handle, offset: int, size: int, kind: str) -> int:
    """The first document boundary at or after ``offset``: a line start (jsonl), or the line start
    after a blank line (text). Monotone in ``offset``, so aligned units tile the file. Scans block
    by block without gathering lines: linear in the distance, whatever the length of a line."""
    if offset <= 0:
        return 0
    if offset >= size:
        return size
    base = offset - 1  # the file offset of chunk[0]
    handle.seek(base)
    in_first, blank = True, True  # still in the line holding byte offset - 1; the line so far is blank
    while True:
        chunk = handle.read(SEEK_BLOCK)
        if not chunk:
            return size
        start = 0
        while True:
            cut = chunk.find(b"\n", start)
            if not in_first and blank and chunk[start:len(chunk) if cut < 0 else cut].strip(BLANK):
                blank = False
            if cut < 0:
                break
            if in_first and kind == "jsonl" or not in_first and blank:
                return base + cut + 1
            in_first, blank, start = False, True, cut + 1
        base += len(chunk)


def _jsonl_texts(data: bytes, at_eof: bool) -> tuple[list, list]:
    """Each non-blank line is a record (a lone ``\\r`` or a few spaces are blank)."""
    texts, bad = [], []
    for number, raw in enumerate(data.split(b"\n")):
        if len(raw) > 8 or raw.strip():
            try:
                text = parse_record(raw)
            except (UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
                texts.append(None)
                bad.append((number, bad_line_what(err)))
                continue
            texts.append(text)
    return texts, bad


UNENCODABLE = "'text' holds a lone surrogate (e.g. \\ud800): not encodable as UTF-8"


def _encodable(text: str) -> bool:
    """JSON can spell a lone surrogate, which no tokenizer can encode (it would stop the run)."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _paragraph_texts(data: bytes, at_eof: bool) -> tuple[list, list]:
    """Runs of non-blank lines; a blank line closes one (without the last newline before it), the
    end of the file closes one as it is (when it is not whitespace alone)."""
    texts, bad, parts, first = [], [], [], 0
    pieces = data.split(b"\n")
    last = len(pieces) - 1

    def close(raw: bytes, line: int) -> None:
        try:
            texts.append(raw.decode("utf-8"))
        except UnicodeDecodeError as err:
            texts.append(None)
            bad.append((line, bad_line_what(err)))

    for number, piece in enumerate(pieces):
        if number == last and not piece:
            break
        raw = piece + b"\n" if number < last else piece
        blank = number < last and not piece.strip(BLANK)
        if blank and parts:
            close(b"".join(parts)[:-1], first)
            parts = []
        elif not blank:
            if not parts:
                first = number
            parts.append(raw)
    if parts:
        assert at_eof, "a unit ends after a blank line unless it ends the file"
        if b"".join(parts).strip():
            close(b"".join(parts), first)
    return texts, bad


def _read_rows(f: InputFile, unit: Unit, column: str) -> UnitText:
    if f.kind == "parquet":
        import pyarrow.parquet as pq  # lazy: only Hugging Face sources need pyarrow
        values = pq.ParquetFile(f.path).read_row_group(unit.start, columns=[column]).column(column).to_pylist()
    else:
        values = _arrow_table(f.path).column(column).slice(unit.start, unit.end - unit.start).to_pylist()
    texts, bad = [], []
    for row, value in enumerate(values):
        ok = isinstance(value, str) and _encodable(value)
        texts.append(value if ok else None)
        if not ok:
            bad.append((row, f"{column!r} is {type(value).__name__}, not a string" if not isinstance(value, str)
                        else UNENCODABLE))
    return UnitText(texts, bad, len(values), unit.start, unit.end, unit_bytes_of(f, unit))


def file_stamp(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns
