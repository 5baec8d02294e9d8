"""From a RunConfig to ready data: the tokenizer, the training batches and the validation batches.

``build_data`` is what training needs; ``build_validation`` is its validation part alone, for
evaluating a saved run with its saved tokenizer without reading (or tokenizing) any training text.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch

from lmlab.data import loader, sources, wikitext
from lmlab.data.tokenizers import Tokenizer, load_tokenizer, save_tokenizer, train_tokenizer
from lmlab.errors import LmlabError
from lmlab.rundir import TOKENIZER_FILE


@dataclass
class ValidationData:
    batches: Callable[[], Iterable[torch.Tensor]]  # tokenized on the first call, reused after
    byte_lengths: torch.Tensor  # (V,) UTF-8 bytes per token id, for bits per byte
    pad_id: int | None


@dataclass
class RunData:
    tokenizer: Tokenizer
    train: loader.PackedLoader | wikitext.SequenceLoader  # next_batch / state_dict / load_state_dict
    val_batches: Callable[[], Iterable[torch.Tensor]]
    total_steps: int
    byte_lengths: torch.Tensor  # (V,) UTF-8 bytes per token id, for bits per byte
    pad_id: int | None
    steps_per_epoch: int = 0  # epoch mode only


def prepare_tokenizer(cfg, run_dir: Path, texts: Callable[[], Iterable[str]]) -> Tokenizer:
    """The run's tokenizer: reloaded from the run directory, loaded from a path, or trained and saved."""
    saved = Path(run_dir) / TOKENIZER_FILE
    if saved.is_file():
        tokenizer = load_tokenizer(saved)
        _check_same_tokenizer(cfg, tokenizer, saved)
        return tokenizer
    tokenizer = load_tokenizer(Path(cfg.path)) if cfg.path else train_tokenizer(cfg, texts())
    save_tokenizer(tokenizer, saved)
    return tokenizer


def _check_same_tokenizer(cfg, tokenizer: Tokenizer, saved: Path) -> None:
    """A run keeps the tokenizer it started with (its checkpoints' embeddings index that vocabulary):
    a config asking for another one is refused rather than silently ignored."""
    new_run = "or use a new dump_dir to start a run with the other tokenizer"
    if cfg.path:
        wanted = load_tokenizer(Path(cfg.path))
        if wanted.to_json() != tokenizer.to_json():
            raise LmlabError(
                f"data.tokenizer.path={cfg.path} is not the tokenizer this run was trained with "
                f"({saved}, a {tokenizer.name} tokenizer with {tokenizer.vocab_size} ids). Fix: remove "
                f"data.tokenizer.path to resume with the run's own tokenizer, {new_run}.")
    elif cfg.name != tokenizer.name:
        raise LmlabError(
            f"data.tokenizer.name={cfg.name} does not match this run's tokenizer {saved} (a "
            f"{tokenizer.name} tokenizer with {tokenizer.vocab_size} ids, which its checkpoints were "
            f"trained with). Fix: set data.tokenizer.name={tokenizer.name} to resume, {new_run}.")


def build_data(cfg, run_dir: Path) -> RunData:
    """Tokenizer, training loader and validation batches of run config ``cfg``."""
    data = cfg.data
    steps_per_epoch = 0
    if data.source == "wikitext2":
        # epoch mode (or step mode over epochs) on fixed (N, seq_len) word sequences
        train_lines = wikitext.read_split_lines(data.path, data.train_split)
        tokenizer = prepare_tokenizer(data.tokenizer, run_dir, lambda: train_lines)
        train = wikitext.SequenceLoader(wikitext.build_sequences(train_lines, tokenizer, data.seq_len),
                                        data.batch_size, cfg.seed, data.shuffle)
        steps_per_epoch = train.batches_per_epoch
        total = cfg.epochs * steps_per_epoch if cfg.epochs else cfg.steps
    else:
        train_sources = sources.training_sources(data)
        tokenizer = prepare_tokenizer(
            data.tokenizer, run_dir,
            lambda: itertools.chain.from_iterable(s.texts() for s in train_sources))
        train = loader.PackedLoader(train_sources, tokenizer, data.batch_size, data.seq_len, cfg.seed,
                                    data.shuffle)
        total = cfg.steps
    val = build_validation(cfg, tokenizer)
    return RunData(tokenizer, train, val.batches, total, val.byte_lengths, val.pad_id, steps_per_epoch)


def build_validation(cfg, tokenizer: Tokenizer) -> ValidationData:
    """Validation batches of run config ``cfg`` encoded with ``tokenizer``; reads validation text only.

    Nothing is read until the first call of ``batches()``; the tokenized windows are then kept and
    reused at every validation. ``eval.validation.max_steps`` caps the batches (0: all of them).
    """
    data = cfg.data
    budget = cfg.eval.validation.max_steps
    limit = budget * data.batch_size if budget else None
    cache: list[torch.Tensor] = []

    def windows() -> torch.Tensor:
        if data.source == "wikitext2":
            lines = wikitext.read_split_lines(data.path, data.val_split)
            return wikitext.build_sequences(lines, tokenizer, data.seq_len)[:limit]
        return loader.validation_windows(sources.validation_sources(data), tokenizer, data.seq_len,
                                         limit)

    def batches() -> Iterable[torch.Tensor]:
        if not cache:
            cache.append(windows())
        return loader.fixed_batches(cache[0], data.batch_size)

    byte_lengths = torch.tensor(tokenizer.token_byte_lengths(), dtype=torch.float64)
    return ValidationData(batches, byte_lengths, tokenizer.pad_id)
