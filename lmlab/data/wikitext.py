"""WikiText-2 as fixed-length word sequences (the context-vector reference run's data rules).

Where the text comes from, in order: a local directory ``data.path`` holding the raw files
``wiki.{train,valid,test}.raw`` or the tokenized ``{train,valid,test}.txt``; otherwise the
``wikitext-2-raw-v1`` splits from HF ``datasets`` (needs the network or a warm HF cache).

Sequence rules (the reference's): keep non-empty lines with at least 5 words; encode
``BOS + words + EOS``; an encoding longer than ``seq_len`` becomes windows of ``seq_len`` tokens with
stride ``seq_len // 2`` (full windows only); a shorter one is right-padded with PAD. The model reads
``seq[:-1]`` and predicts ``seq[1:]``; PAD targets are ignored. With ``seq_len`` 64 the tokenized
validation split gives exactly 5,272 sequences; the train split gives 51,026 in the reference
(not checkable offline here: the train split is not bundled).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lmlab.data.hub import unavailable_reason
from lmlab.data.tokenizers import Tokenizer
from lmlab.errors import LmlabError, Problem

HF_SPLIT = {"train": "train", "valid": "validation", "validation": "validation", "test": "test"}
LOCAL_NAMES = ("wiki.{split}.raw", "{split}.txt")
MIN_WORDS = 5


def local_split_file(path: str, split: str) -> Path | None:
    """The local file holding ``split`` under directory ``path``, raw preferred; None if absent."""
    split = "valid" if split == "validation" else split
    for pattern in LOCAL_NAMES:
        candidate = Path(path) / pattern.format(split=split)
        if candidate.is_file():
            return candidate
    return None


def read_split_lines(path: str, split: str) -> list[str]:
    """All lines of a WikiText-2 split, from ``path`` if set, else from HF datasets."""
    if path:
        file = local_split_file(path, split)
        if file is None:
            raise LmlabError(_missing_message(path, split))
        return file.read_text(encoding="utf-8").splitlines()
    return _hf_lines(split)


def _hf_lines(split: str) -> list[str]:
    try:
        from datasets import load_dataset  # lazy: datasets (seconds to import)
    except ImportError:
        raise LmlabError("WikiText-2 needs HF `datasets` (pip install datasets) or a local copy in "
                         "data.path.") from None
    try:
        dataset = load_dataset("wikitext", "wikitext-2-raw-v1", split=HF_SPLIT[split])
    except Exception as err:  # network / hub errors come in many types; all mean "not reachable"
        raise LmlabError(f"cannot download WikiText-2 ({type(err).__name__}). Offline? "
                         f"{_missing_message('DIR', split)}") from None
    return [row["text"] for row in dataset]


def _missing_message(path: str, split: str) -> str:
    split = "valid" if split == "validation" else split
    return (f"WikiText-2 split '{split}' not found in {path}. Put wiki.{split}.raw (raw) or "
            f"{split}.txt (tokenized) there, e.g. {Path(path) / (split + '.txt')}, and set "
            "data.path to that directory.")


def build_sequences(lines: list[str], tokenizer: Tokenizer, seq_len: int) -> torch.Tensor:
    """(N, seq_len) int64 sequences following the module's rules."""
    stride = max(1, seq_len // 2)
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id
    rows: list[list[int]] = []
    for line in lines:
        if len(line.split()) < MIN_WORDS:  # also drops empty lines
            continue
        ids = [tokenizer.bos_id] + tokenizer.encode(line) + [tokenizer.eos_id]
        if len(ids) > seq_len:
            rows += [ids[s: s + seq_len] for s in range(0, len(ids) - seq_len + 1, stride)]
        else:
            rows.append(ids + [pad] * (seq_len - len(ids)))
    return torch.tensor(rows, dtype=torch.long).reshape(-1, seq_len)


class SequenceLoader:
    """Batches of a fixed sequence tensor, reshuffled each epoch by a seeded generator; resumable.

    The order of epoch e is a pure function of (seed, e), so the position is just (epoch, batch).
    """

    def __init__(self, sequences: torch.Tensor, batch_size: int, seed: int, shuffle: bool = True):
        self.sequences, self.batch_size, self.seed, self.shuffle = sequences, batch_size, seed, shuffle
        self.epoch = self.position = 0

    @property
    def batches_per_epoch(self) -> int:
        return -(-len(self.sequences) // self.batch_size)

    def _order(self) -> np.ndarray:
        n = len(self.sequences)
        return np.random.default_rng([self.seed, self.epoch]).permutation(n) if self.shuffle \
            else np.arange(n)

    def next_batch(self) -> torch.Tensor:
        if self.position >= self.batches_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
        start = self.position * self.batch_size
        index = torch.from_numpy(self._order()[start: start + self.batch_size])
        self.position += 1
        return self.sequences[index]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = state["epoch"], state["position"]


def overlap(cfg) -> list[Problem]:
    """Two split names that are one local file (a copy made with a link): trained and validated on."""
    if not cfg.path:
        return []
    train, val = local_split_file(cfg.path, cfg.train_split), local_split_file(cfg.path, cfg.val_split)
    if train is None or val is None or not train.samefile(val):
        return []
    return [Problem(str(train), f"is both the training split ({cfg.train_split}) and the validation "
                    f"split ({cfg.val_split}, {val}): the model would train on its validation text.",
                    f"put the real {val.name} in {cfg.path} (not a link to the training file)")]


def check(cfg, validation_enabled: bool) -> list[Problem]:
    """Preflight: the splits exist locally, or the hub is usable; says which files to put where."""
    splits = [cfg.train_split] + ([cfg.val_split] if validation_enabled else [])
    bad = [s for s in splits if s not in HF_SPLIT]
    if bad:
        return [Problem("data.train_split" if cfg.train_split in bad else "data.val_split",
                        f"unknown WikiText-2 split {bad[0]!r}.", "use train, valid or test")]
    if validation_enabled and HF_SPLIT[cfg.train_split] == HF_SPLIT[cfg.val_split]:
        return [Problem("data.val_split", f"{cfg.val_split!r} is also the training split (data.train_split="
                        f"{cfg.train_split}): the model would train on its validation text.",
                        "validate on another split: data.train_split=train data.val_split=valid")]
    if cfg.path:
        return [Problem("data.path", _missing_message(cfg.path, s), "add the file or change the split")
                for s in splits if local_split_file(cfg.path, s) is None]
    why = unavailable_reason(["wikitext*"])
    if why:
        return [Problem("data.path", f"not set and WikiText-2 cannot be downloaded ({why}).",
                        "put wiki.{train,valid,test}.raw or {train,valid,test}.txt in a directory "
                        "and set data.path=DIR (or pip install datasets and go online)")]
    return []

