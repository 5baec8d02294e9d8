"""Training on prepared token shards: ``data.source=prepared data.path=DIR`` (``lmlab data prepare``).

The shards of a split are one token stream (documents ``[BOS] + tokens + [EOS]`` back to back, in
input order), cut into windows of ``seq_len + 1`` tokens with one token shared between consecutive
windows, as ``loader.PackedLoader`` packs them. Each pass over the data (an epoch) visits every
window once, in a seeded order: a bijective hash permutation of the window indices (a Feistel
network, cycle-walked onto its range) of blocks of consecutive windows, and of the windows of a
buffer of blocks (see BLOCK_WINDOWS), computed per batch, so nothing the size of the corpus is ever
built and a loader starts at once. Rows are gathered from the memory-mapped shards.

The position is two integers (epoch, windows taken in it), so a resumed run sees exactly the
batches an uninterrupted one would, on any number of processes. Every process draws the same
global batch of window indices and gathers only the rows it trains on (``loader.own_rows``), so
processes read disjoint windows, together each window once per pass.
"""
from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np
import torch

from lmlab.data.loader import own_rows
from lmlab.data.manifest import (TOKENIZER_FILE, open_prepared, source_changes, tokenizer_config_problems,
                                 tokenizer_hash)
from lmlab.data.tokenizers import Tokenizer, load_tokenizer, save_tokenizer
from lmlab.data.yields import Yield
from lmlab.errors import ConfigError, LmlabError
from lmlab.rundir import TOKENIZER_FILE as RUN_TOKENIZER_FILE

_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
ROUNDS = 4
# The order reads the disk in runs: BLOCK_WINDOWS consecutive windows form a block (128 KiB at
# seq_len 1024 in uint16), blocks are visited in a seeded permutation, and the windows of
# BUFFER_BLOCKS consecutive blocks of that order in a seeded permutation of their own. A batch
# thus draws its rows from up to 64 places across the corpus, and the next batches from the same
# few MiB, which the page cache already holds: a cold corpus is read in 128 KiB runs rather than
# one random page per row (which ran at 0.6M tokens/s on an 8 GB corpus here).
BLOCK_WINDOWS, BUFFER_BLOCKS = 64, 64


class TokenStream:
    """The shards of one split as one token stream, each memory-mapped when first read."""

    def __init__(self, folder: Path, manifest: dict, split: str):
        shards = [s for s in manifest["splits"].get(split, {}).get("shards", []) if s["tokens"] > 0]
        self.names = [s["name"] for s in shards]
        self.paths = [Path(folder) / s["name"] for s in shards]
        self.sizes = np.array([s["tokens"] for s in shards], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        self.total = int(self.offsets[-1])
        self.dtype = np.dtype("<u2" if manifest["dtype"] == "uint16" else "<u4")
        self._maps: dict[int, tuple[mmap.mmap, np.ndarray]] = {}

    def shard(self, i: int) -> np.ndarray:
        """Shard ``i`` memory-mapped, as a plain array (slicing a np.memmap costs ~10x more)."""
        return self._map(i)[1]

    def _map(self, i: int) -> tuple[mmap.mmap, np.ndarray]:
        if i not in self._maps:
            with open(self.paths[i], "rb") as handle:
                mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
            self._maps[i] = mapped, np.frombuffer(mapped, dtype=self.dtype, count=int(self.sizes[i]))
        return self._maps[i]

    def will_need(self, start: int, length: int) -> None:
        """Ask the kernel to read tokens start .. start + length ahead, in one run (asynchronously)."""
        if not hasattr(mmap, "MADV_WILLNEED"):
            return
        end = min(start + length, self.total)
        while start < end:
            i = int(np.searchsorted(self.offsets, start, side="right") - 1)
            begin = (start - int(self.offsets[i])) * self.dtype.itemsize
            stop = (min(end, int(self.offsets[i + 1])) - int(self.offsets[i])) * self.dtype.itemsize
            aligned = begin - begin % mmap.PAGESIZE
            self._map(i)[0].madvise(mmap.MADV_WILLNEED, aligned, stop - aligned)
            start = int(self.offsets[i + 1])

    def gather(self, starts: np.ndarray, length: int) -> np.ndarray:
        """(len(starts), length) int64: the tokens at each start of the stream."""
        out = np.empty((len(starts), length), dtype=np.int64)
        shards = (np.searchsorted(self.offsets, starts, side="right") - 1).tolist()
        local = (starts - self.offsets[shards]).tolist()
        sizes = self.sizes.tolist()
        for row, (shard, begin) in enumerate(zip(shards, local)):
            if begin + length <= sizes[shard]:
                out[row] = self.shard(shard)[begin:begin + length]
            else:  # a window across shard boundaries (at most one per boundary)
                out[row] = self._across(int(starts[row]), length)
        return out

    def _across(self, start: int, length: int) -> np.ndarray:
        parts, i = [], int(np.searchsorted(self.offsets, start, side="right") - 1)
        while length > 0:
            begin = start - int(self.offsets[i])
            part = self.shard(i)[begin:begin + length]
            parts.append(part)
            start, length, i = start + len(part), length - len(part), i + 1
        return np.concatenate(parts)


def permute(index: np.ndarray, n: int, keys: np.ndarray) -> np.ndarray:
    """A seeded bijection of range(n) (``keys``: its round keys) applied to ``index``: a balanced
    Feistel network on the smallest even power of two >= n, cycle-walked back into range(n)."""
    half = max(1, ((n - 1).bit_length() + 1) // 2)
    shift, mask = np.uint64(half), np.uint64((1 << half) - 1)

    def once(x: np.ndarray) -> np.ndarray:
        left, right = x >> shift, x & mask
        for key in keys:
            mixed = right ^ key
            mixed = (mixed ^ (mixed >> np.uint64(30))) * _MIX1  # splitmix64's finalizer
            mixed = (mixed ^ (mixed >> np.uint64(27))) * _MIX2
            left, right = right, left ^ ((mixed ^ (mixed >> np.uint64(31))) & mask)
        return (left << shift) | right

    x = once(np.asarray(index, dtype=np.uint64))
    outside = x >= np.uint64(n)
    while outside.any():
        x[outside] = once(x[outside])
        outside = x >= np.uint64(n)
    return x.astype(np.int64)


class PreparedLoader:
    """Endless (batch_size, seq_len + 1) int64 batches of the training split of a prepared folder."""

    def __init__(self, folder: str | Path, batch_size: int, seq_len: int, seed: int, shuffle: bool = True,
                 manifest: dict | None = None, rank: int = 0, world_size: int = 1, micro_batches: int = 1,
                 fill: int = 0):
        self.folder, self.batch_size, self.seq_len = Path(folder), batch_size, seq_len
        self.seed, self.shuffle, self.fill = seed, shuffle, fill
        # this process gathers only the rows it trains on: processes read disjoint windows
        self.own = own_rows(batch_size, micro_batches, rank, world_size)
        self.stream = TokenStream(self.folder, manifest or open_prepared(folder), "train")
        self.windows = max(0, (self.stream.total - 1) // seq_len)
        if self.windows == 0:
            raise LmlabError(f"{self.folder} holds {self.stream.total:,} training tokens, less than one "
                             f"window of {seq_len + 1} (data.seq_len={seq_len}). Fix: lower data.seq_len, "
                             "or prepare more training text.")
        self.epoch = self.position = 0
        self.blocks = -(-self.windows // BLOCK_WINDOWS)
        self.positions = self.blocks * BLOCK_WINDOWS  # per pass; those past the last window are skipped
        self._buffer: tuple[int, int] | None = None  # the last buffer read ahead

    def _keys(self, *key: int) -> np.ndarray:
        return np.random.SeedSequence([self.seed % (1 << 63), *key, 0x5EED]).generate_state(ROUNDS, np.uint64)

    def _at(self, epoch: int, position: np.ndarray) -> np.ndarray:
        """The window at each ``position`` of pass ``epoch`` (-1: past the last window)."""
        if not self.shuffle:
            return np.where(position < self.windows, position, -1)
        buffer_size = BUFFER_BLOCKS * BLOCK_WINDOWS
        out = np.empty(len(position), dtype=np.int64)
        buffers = position // buffer_size
        for buffer in np.unique(buffers).tolist():
            mine = buffers == buffer
            size = min(buffer_size, self.positions - buffer * buffer_size)
            inner = permute(position[mine] - buffer * buffer_size, size, self._keys(epoch, buffer))
            slot = buffer * BUFFER_BLOCKS + inner // BLOCK_WINDOWS
            block = permute(slot, self.blocks, self._keys(epoch))
            out[mine] = block * BLOCK_WINDOWS + inner % BLOCK_WINDOWS
        return np.where(out < self.windows, out, -1)

    def _take(self, base: int, count: int) -> tuple[np.ndarray, int]:
        """``count`` windows from global position ``base`` (= epoch * positions + position), and
        the position after them."""
        found: list[np.ndarray] = []
        have = 0
        while have < count:
            epoch, position = divmod(base, self.positions)
            span = min(count - have + BLOCK_WINDOWS, self.positions - position)
            windows = self._at(epoch, np.arange(position, position + span, dtype=np.int64))
            valid = np.flatnonzero(windows >= 0)[: count - have]
            used = int(valid[-1]) + 1 if len(valid) == count - have else span
            found.append(windows[valid])
            have += len(valid)
            base += used
        return np.concatenate(found), base

    def _read_ahead(self, base: int, after: int) -> None:
        """Have the kernel read each buffer a batch enters (its blocks, each in one run), once."""
        size = BUFFER_BLOCKS * BLOCK_WINDOWS
        while self.shuffle and base < after:
            epoch, position = divmod(base, self.positions)
            buffer = (epoch, position // size)
            if buffer != self._buffer:
                self._buffer = buffer
                first = buffer[1] * size // BLOCK_WINDOWS
                slots = np.arange(first, min(self.blocks, first + BUFFER_BLOCKS))
                for block in permute(slots, self.blocks, self._keys(epoch)).tolist():
                    self.stream.will_need(block * BLOCK_WINDOWS * self.seq_len, BLOCK_WINDOWS * self.seq_len + 1)
            base = epoch * self.positions + min((buffer[1] + 1) * size, self.positions)

    def _windows_at(self, base: int, count: int) -> np.ndarray:
        return self._take(base, count)[0]

    def next_batch(self) -> torch.Tensor:
        base = self.epoch * self.positions + self.position
        chosen, after = self._take(base, self.batch_size)
        self._read_ahead(base, after)
        self.epoch, self.position = divmod(after, self.positions)
        if self.own.all():
            return torch.from_numpy(self.stream.gather(chosen * self.seq_len, self.seq_len + 1))
        batch = np.full((self.batch_size, self.seq_len + 1), self.fill, dtype=np.int64)
        batch[self.own] = self.stream.gather(chosen[self.own] * self.seq_len, self.seq_len + 1)
        return torch.from_numpy(batch)

    def __iter__(self):
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict:
        return {"prepared": str(self.folder), "epoch": self.epoch, "position": self.position,
                "windows": self.windows, "seq_len": self.seq_len, "seed": self.seed, "shuffle": self.shuffle}

    def load_state_dict(self, state: dict) -> None:
        if "prepared" not in state:
            raise LmlabError("the checkpoint's data position is not one of prepared shards (it was written "
                             "with another data.source), so it cannot carry over. Fix: resume with the "
                             "data.source the run was trained with (its config.yaml), or use a new dump_dir.")
        if (state["windows"], state["seq_len"]) != (self.windows, self.seq_len):
            raise LmlabError(f"the prepared data changed since the checkpoint: it read {state['windows']:,} "
                             f"windows of {state['seq_len'] + 1} tokens ({state['prepared']}), this run "
                             f"{self.windows:,} of {self.seq_len + 1} ({self.folder}). Fix: resume with the "
                             "data.path and data.seq_len the run was trained with, or use a new dump_dir.")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


# --------------------------------------------------------------------------- for data.pipeline


def run_tokenizer(folder: Path, manifest: dict, run_dir: Path | None) -> Tokenizer:
    """The prepared folder's tokenizer; a run that already has one (resuming) must have that one,
    which is then saved into the run directory (eval / generate / export read it there)."""
    tokenizer = load_tokenizer(folder / TOKENIZER_FILE)
    if run_dir is None:
        return tokenizer
    saved = Path(run_dir) / RUN_TOKENIZER_FILE
    if saved.is_file():
        check_run_tokenizer(folder, manifest, load_tokenizer(saved), f"{saved} (this run's tokenizer)")
    else:
        save_tokenizer(tokenizer, saved)
    return tokenizer


def check_run_tokenizer(folder: Path, manifest: dict, tokenizer: Tokenizer, what: str) -> None:
    """Refuse shards encoded with another tokenizer than ``tokenizer`` (named ``what``)."""
    made = manifest["tokenizer"]
    have = tokenizer_hash(tokenizer)
    if have != made["sha256"]:
        raise LmlabError(
            f"{folder} was prepared with another tokenizer ({made['name']}, {made['vocab_size']:,} ids, sha256 "
            f"{made['sha256'][:12]}) than {what} ({tokenizer.name}, {tokenizer.vocab_size:,} ids, sha256 "
            f"{have[:12]}): its token ids would mean other text. Fix: set data.path to the data the run was "
            f"prepared on, prepare this source with the run's tokenizer (`lmlab data prepare SOURCE --out NEW_DIR "
            f"--tokenizer-path TOKENIZER_JSON`), or use a new dump_dir.")


def training_data(cfg, run_dir: Path | None, rank: int = 0,
                  world_size: int = 1) -> tuple[Tokenizer, PreparedLoader, list[Yield]]:
    """Tokenizer, training loader (process ``rank`` of ``world_size``) and what the data yields,
    for ``data.source=prepared``."""
    data = cfg.data
    folder = Path(data.path)
    manifest = open_prepared(folder)
    problems = tokenizer_config_problems(manifest, data.tokenizer, folder)
    if problems:
        raise ConfigError(problems, source=str(folder))
    tokenizer = run_tokenizer(folder, manifest, run_dir)
    train = PreparedLoader(folder, data.batch_size, data.seq_len, cfg.seed, data.shuffle, manifest, rank,
                           world_size, cfg.training.grad_accum, tokenizer.bos_id)
    changed = source_changes(manifest)
    note = (f" (note: {changed[0]}{f' and {len(changed) - 1} more' if len(changed) > 1 else ''} since it "
            "was prepared; training reads the shards as they were prepared)") if changed else ""
    return tokenizer, train, [_yield("training", folder, manifest, train.stream, train.windows, data.seq_len, note)]


def validation_data(data, tokenizer: Tokenizer, max_windows: int | None) -> tuple[torch.Tensor, list[Yield]]:
    """Every validation window of the prepared folder, in order (at most ``max_windows``)."""
    folder = Path(data.path)
    manifest = open_prepared(folder)
    check_run_tokenizer(folder, manifest, tokenizer, "the run's tokenizer")
    stream = TokenStream(folder, manifest, "val")
    every = max(0, (stream.total - 1) // data.seq_len)
    count = every if max_windows is None else min(every, max_windows)
    if count == 0:
        has = "no validation split" if not stream.names else f"{stream.total:,} validation tokens, less than one " \
            f"window of {data.seq_len + 1}"
        raise LmlabError(f"{folder} has {has}, so validation would measure nothing. Fix: prepare it with "
                         "validation data (a Lingua source's *.val.jsonl, or --val PATH), lower "
                         "data.seq_len, or set eval.validation.enabled=false.")
    windows = torch.from_numpy(stream.gather(np.arange(count, dtype=np.int64) * data.seq_len, data.seq_len + 1))
    note = "" if count == every else " (eval.validation.max_steps reached here)"
    return windows, [_yield("validation", folder, manifest, stream, count, data.seq_len, note)]


def _yield(role: str, folder: Path, manifest: dict, stream: TokenStream, windows: int, seq_len: int,
           note: str) -> Yield:
    split = manifest["splits"]["train" if role == "training" else "val"]
    return Yield(role, f"prepared {folder.name}", stream.names, stream.total * stream.dtype.itemsize,
                 split.get("documents", 0), split.get("text_tokens", 0), windows, seq_len + 1, True, note=note)
