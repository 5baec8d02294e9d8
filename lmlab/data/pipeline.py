"""From a RunConfig to ready data: the tokenizer, the training batches and the validation batches.

``build_data`` is what training needs; ``build_validation`` is its validation part alone, for
evaluating a saved run with its saved tokenizer without reading (or tokenizing) any training text.

Both say what the data yields (``yields``: tokens and windows per source) and refuse what yields
nothing: a training source without a single token, a validation set without a single window. Bad
records are skipped and counted in one ``BadRecords`` per run (``data.max_bad_records``); going
over the budget while the data is prepared stops the data phase, while training it stops the loop.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch

from lmlab.data import loader, prepared, sources, wikitext, yields
from lmlab.data.badrecords import BadRecords, OnRecord, warn
from lmlab.data.sources import Source
from lmlab.data.tokenizers import Tokenizer, encode_batch, load_tokenizer, save_tokenizer, train_tokenizer
from lmlab.errors import LmlabError
from lmlab.rundir import TOKENIZER_FILE


@dataclass
class ValidationData:
    batches: Callable[[], Iterable[torch.Tensor]]  # tokenized on the first call, reused after
    byte_lengths: torch.Tensor  # (V,) UTF-8 bytes per token id, for bits per byte
    pad_id: int | None
    yields: list[yields.Yield] = field(default_factory=list)  # filled by the first batches() call


@dataclass
class RunData:
    tokenizer: Tokenizer
    train: loader.PackedLoader | wikitext.SequenceLoader  # next_batch / state_dict / load_state_dict
    val_batches: Callable[[], Iterable[torch.Tensor]]
    total_steps: int
    byte_lengths: torch.Tensor  # (V,) UTF-8 bytes per token id, for bits per byte
    pad_id: int | None
    steps_per_epoch: int = 0  # epoch mode only
    bad_records: BadRecords | None = None  # skipped so far; the loop stops once it is over budget
    yields: list[yields.Yield] = field(default_factory=list)  # tokens / windows per source


def prepare_tokenizer(cfg, run_dir: Path, texts: Callable[[], Iterable[str]]) -> Tokenizer:
    """The run's tokenizer: reloaded from the run directory, loaded from a path, or trained and saved."""
    saved = Path(run_dir) / TOKENIZER_FILE
    if saved.is_file():
        tokenizer = load_tokenizer(saved)
        _check_same_tokenizer(cfg, tokenizer, saved)
        return tokenizer
    tokenizer = load_tokenizer(Path(cfg.path), cfg) if cfg.path else train_tokenizer(cfg, texts())
    save_tokenizer(tokenizer, saved)
    return tokenizer


def _check_same_tokenizer(cfg, tokenizer: Tokenizer, saved: Path) -> None:
    """A run keeps the tokenizer it started with (its checkpoints' embeddings index that vocabulary):
    a config asking for another one is refused rather than silently ignored."""
    new_run = "or use a new dump_dir to start a run with the other tokenizer"
    if cfg.path:
        wanted = load_tokenizer(Path(cfg.path), cfg)
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


def build_data(cfg, run_dir: Path, on_record: OnRecord | None = None, rank: int = 0,
               world_size: int = 1) -> RunData:
    """Tokenizer, training loader and validation batches of run config ``cfg`` for process ``rank``
    of ``world_size`` (its readers: ``data.readers``). The bad records skipped meanwhile go to
    ``on_record`` as they are met (also those of a preparation that goes over the budget and
    stops); without it they wait in ``bad_records`` for ``attach``."""
    data = cfg.data
    bad = BadRecords(sources.bad_record_budget(data), on_record)
    steps_per_epoch = 0
    if data.source == "wikitext2":
        # epoch mode (or step mode over epochs) on fixed (N, seq_len) word sequences
        train_lines = wikitext.read_split_lines(data.path, data.train_split)
        tokenizer = prepare_tokenizer(data.tokenizer, run_dir, lambda: train_lines)
        sequences = wikitext.build_sequences(train_lines, tokenizer, data.seq_len)
        found = [yields.sequence_yield("training", data.train_split, _split_file(data, data.train_split),
                                       len(sequences), data.seq_len)]
        train = wikitext.SequenceLoader(sequences, data.batch_size, cfg.seed, data.shuffle)
        steps_per_epoch = train.batches_per_epoch
        total = cfg.epochs * steps_per_epoch if cfg.epochs else cfg.steps
    elif data.source == "prepared":  # token shards written by `lmlab data prepare` (data/prepared.py)
        tokenizer, train, found = prepared.training_data(cfg, run_dir, rank, world_size)
        total = cfg.steps
    else:
        train_sources = sources.training_sources(data, bad)
        tokenizer = prepare_tokenizer(
            data.tokenizer, run_dir,
            lambda: itertools.chain.from_iterable(s.texts() for s in train_sources))
        found = [yields.training_yield(s, tokenizer, data.seq_len, _source_key(data, s.name))
                 for s in train_sources]
        train = loader.PackedLoader(train_sources, tokenizer, data.batch_size, data.seq_len, cfg.seed,
                                    data.shuffle, bad_records=bad, block_docs=data.shuffle_buffer,
                                    readers=data.readers, rank=rank, world_size=world_size,
                                    micro_batches=cfg.training.grad_accum)
        total = cfg.steps
    val = build_validation(cfg.data, cfg.eval.validation.max_steps, tokenizer, bad)
    if cfg.eval.validation.enabled:
        val.batches()  # tokenized now rather than at the first validation: zero windows are refused here
        found += val.yields
    bad.check("Stopped while preparing the data, before training (the run's checkpoints are as they were).")
    # from here on, processes reading different documents judge the budget together (every rank
    # read the validation data above, and its records, alike)
    bad.shared = getattr(train, "disjoint", False)
    return RunData(tokenizer, train, val.batches, total, val.byte_lengths, val.pad_id, steps_per_epoch,
                   bad, found)


def _source_key(data, name: str) -> str:
    return {"jsonl": f"data.sources.{name}", "text": "data.path"}.get(data.source, "data.source")


def _split_file(data, split: str) -> Path | None:
    return wikitext.local_split_file(data.path, split) if data.path else None


def build_validation(data: sources.DataConfig, max_steps: int, tokenizer: Tokenizer,
                     bad: BadRecords | None = None) -> ValidationData:
    """Validation batches of the run's ``data`` settings encoded with ``tokenizer``; reads
    validation text only.

    Nothing is read until the first call of ``batches()``; the tokenized windows are then kept and
    reused at every validation. ``max_steps`` (``eval.validation.max_steps``) caps the batches (0:
    all of them).
    That first call raises when the validation data yields no window (naming its files), or when
    its bad records go over ``data.max_bad_records`` (``bad``: the run's, else a new count).
    """
    limit = max_steps * data.batch_size if max_steps else None
    cache: list[torch.Tensor] = []
    found: list[yields.Yield] = []
    bad = bad if bad is not None else BadRecords(sources.bad_record_budget(data), warn)

    def windows() -> torch.Tensor:
        if data.source == "wikitext2":
            lines = wikitext.read_split_lines(data.path, data.val_split)
            sequences = wikitext.build_sequences(lines, tokenizer, data.seq_len)[:limit]
            found.append(yields.sequence_yield("validation", data.val_split,
                                               _split_file(data, data.val_split), len(sequences),
                                               data.seq_len))
            return sequences
        if data.source == "prepared":
            out, prepared_yields = prepared.validation_data(data, tokenizer, limit)
            found.extend(prepared_yields)
            return out
        val_sources, tally = sources.validation_sources(data, bad), {}
        out = validation_windows(val_sources, tokenizer, data.seq_len, limit, tally)
        bad.check("Stopped while reading the validation data.")
        found.extend(yields.validation_yields(val_sources, tally, data.seq_len))
        return out

    def batches() -> Iterable[torch.Tensor]:
        if not cache:
            cache.append(windows())
        return fixed_batches(cache[0], data.batch_size)

    byte_lengths = torch.tensor(tokenizer.token_byte_lengths(), dtype=torch.float64)
    return ValidationData(batches, byte_lengths, tokenizer.pad_id, found)


def validation_windows(sources: list[Source], tokenizer: Tokenizer, seq_len: int,
                       max_windows: int | None = None, tally: dict | None = None) -> torch.Tensor:
    """Every validation document, in file order, packed into (N, seq_len + 1) windows.

    Deterministic (no shuffling), so validation numbers are comparable across steps and runs. The
    tail shorter than a window is dropped; ``max_windows`` caps the work for a token budget.
    ``tally`` (optional) receives, per source read, ``{name: {"tokens", "windows", "complete"}}``:
    its text tokens and windows, and whether it was read to the end (not cut by ``max_windows``).
    """
    windows: list[list[int]] = []
    for source in sources:
        buffer: list[int] = []
        count = {"tokens": 0, "windows": 0, "complete": False}
        if tally is not None:
            tally[source.name] = count
        for doc_file in source.files:
            texts = list(doc_file.texts())
            for ids in encode_batch(tokenizer, texts):
                count["tokens"] += len(ids)
                buffer += [tokenizer.bos_id] + ids + [tokenizer.eos_id]
                while len(buffer) >= seq_len + 1:
                    windows.append(buffer[: seq_len + 1])
                    count["windows"] += 1
                    del buffer[:seq_len]
                    if max_windows is not None and len(windows) >= max_windows:
                        return torch.tensor(windows, dtype=torch.long)
        count["complete"] = True
    return torch.tensor(windows, dtype=torch.long).reshape(-1, seq_len + 1)


def fixed_batches(windows: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    """Consecutive batches of a fixed window tensor (the last may be smaller)."""
    for start in range(0, len(windows), batch_size):
        yield windows[start: start + batch_size]
