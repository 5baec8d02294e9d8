"""The work of ``lmlab data prepare`` (``data/prepare.py``): units tokenized in worker processes,
in input order, and written into shards that appear whole or not at all.

A worker reads its unit (``prepare_inputs.read_unit``) and encodes each document as ``[BOS] + ids +
[EOS]`` (``encode_batch``; the bytes tokenizer by a numpy fast path); the parent writes the pieces in
order into a temporary file that ``Shard.close`` fsyncs and renames, beside its document index.
"""
from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import signal
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmlab.data import manifest as mf
from lmlab.data.prepare_inputs import InputFile, Unit, read_unit
from lmlab.data.tokenizers import ByteTokenizer, Tokenizer, encode_batch, load_tokenizer

SHOWN_BAD = 100  # bad records kept per shard in the manifest (all are counted)
ENCODE_BATCH = 256  # documents per encode_batch call


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass
class Piece:
    """One unit tokenized (in a worker): documents back to back, and what the parent records."""

    tokens: np.ndarray
    starts: np.ndarray  # int64 document starts within ``tokens``
    bad: list[tuple[int, str]]
    lines: int
    nbytes: int


_WORKER: dict = {}


def _init_worker(tokenizer_file: str, files: list[InputFile], column: str, dtype: str, pooled: bool) -> None:
    if pooled:  # the parent alone handles Ctrl-C and SIGTERM; it ends us with SIGTERM, which must kill
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _WORKER.update(tokenizer=load_tokenizer(Path(tokenizer_file)), files=files, column=column,
                   dtype=np.dtype(dtype).newbyteorder("<"))


def _work(unit: Unit) -> Piece:
    w = _WORKER
    read = read_unit(w["files"][unit.file], unit, w["column"])
    tokens, starts = encode_documents(w["tokenizer"], [t for t in read.texts if t is not None], w["dtype"])
    return Piece(tokens, starts, read.bad, read.lines, read.nbytes)


def encode_documents(tokenizer: Tokenizer, texts: list[str], dtype) -> tuple[np.ndarray, np.ndarray]:
    """``[BOS] + ids + [EOS]`` per text, back to back, and each document's start offset."""
    bos, eos = tokenizer.bos_id, tokenizer.eos_id
    if not texts:
        return np.zeros(0, dtype), np.zeros(0, np.int64)
    if isinstance(tokenizer, ByteTokenizer):  # fast path: the ids are the UTF-8 bytes
        raw = [t.encode("utf-8") for t in texts]
        lengths = np.fromiter((len(r) + 2 for r in raw), np.int64, len(raw))
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        out = np.empty(int(lengths.sum()), dtype)
        text = np.ones(len(out), bool)
        text[starts], text[starts + lengths - 1] = False, False
        out[starts], out[starts + lengths - 1] = bos, eos
        out[text] = np.frombuffer(b"".join(raw), np.uint8)
        return out, starts
    pieces, lengths = [], []
    for i in range(0, len(texts), ENCODE_BATCH):
        flat: list[int] = []
        for ids in encode_batch(tokenizer, texts[i:i + ENCODE_BATCH]):
            flat.append(bos)
            flat.extend(ids)
            flat.append(eos)
            lengths.append(len(ids) + 2)
        pieces.append(np.array(flat, dtype))
    return np.concatenate(pieces), np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)


class Runner:
    """Units tokenized in input order: here (one worker) or by a pool of processes, at most
    ``2 x workers`` units ahead, so memory stays a few units whatever the corpus."""

    def __init__(self, workers: int, init_args: tuple):
        self.pool, self.ahead = None, 2 * workers
        if workers <= 1:
            _init_worker(*init_args, False)
            return
        self.parallel = os.environ.get("TOKENIZERS_PARALLELISM")
        os.environ["TOKENIZERS_PARALLELISM"] = "false"  # N processes already use the cores
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        self.pool = mp.get_context(method).Pool(workers, _init_worker, init_args + (True,))

    def results(self, units: list[Unit]):
        if self.pool is None:
            yield from ((unit, _work(unit)) for unit in units)
            return
        pending: deque = deque()
        for unit in units:
            pending.append((unit, self.pool.apply_async(_work, (unit,))))
            if len(pending) >= self.ahead:
                first, result = pending.popleft()
                yield first, result.get()
        while pending:
            first, result = pending.popleft()
            yield first, result.get()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None
            if self.parallel is None:
                os.environ.pop("TOKENIZERS_PARALLELISM", None)
            else:
                os.environ["TOKENIZERS_PARALLELISM"] = self.parallel


class Shard:
    """One shard being written: a temporary file, renamed into place by ``close``."""

    def __init__(self, out: Path, split: str, index: int, first_unit: int):
        self.out, self.name, self.index = out, mf.shard_name(split, index), mf.index_name(split, index)
        self.tmp = out / f".{self.name}.tmp-{os.getpid()}"
        self.handle = open(self.tmp, "wb")
        self.sha, self.tokens, self.starts = hashlib.sha256(), 0, []
        self.units, self.files, self.bad, self.bad_count = [first_unit, first_unit], {}, [], 0

    def add(self, unit: Unit, piece: Piece, bad: list) -> None:
        data = piece.tokens.tobytes()
        self.handle.write(data)
        self.sha.update(data)
        self.starts.append(piece.starts + self.tokens)
        self.tokens += len(piece.tokens)
        self.units[1] += 1
        lines, nbytes = self.files.get(str(unit.file), (0, 0))
        self.files[str(unit.file)] = (lines + piece.lines, nbytes + piece.nbytes)
        self.bad_count += len(bad)
        self.bad += bad[:max(0, SHOWN_BAD - len(self.bad))]

    def close(self) -> dict:
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()
        os.replace(self.tmp, self.out / self.name)
        starts = np.concatenate(self.starts) if self.starts else np.zeros(0, np.int64)
        tmp = self.out / f".{self.index}.tmp-{os.getpid()}"
        with open(tmp, "wb") as handle:
            np.save(handle, starts.astype("<i8"))
        os.replace(tmp, self.out / self.index)
        return {"name": self.name, "index": self.index, "tokens": self.tokens, "documents": len(starts),
                "sha256": self.sha.hexdigest(), "units": self.units,
                "files": {k: list(v) for k, v in self.files.items()}, "bad_count": self.bad_count,
                "bad": self.bad}

    def abort(self) -> None:
        self.handle.close()
        self.tmp.unlink(missing_ok=True)
