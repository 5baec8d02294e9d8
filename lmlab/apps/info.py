"""``lmlab info CONFIG``: what a config would build, computed without allocating the model."""
from __future__ import annotations

import json

from lmlab.config import load_config
from lmlab.data.sources import vocab_size
from lmlab.data.tokenizers import WordTokenizer
from lmlab.data.wikitext import build_sequences, local_split_file
from lmlab.models.registry import build_on_meta, model_size, resolve_model_config
from lmlab.training.optim import scaled_lr


def run(args) -> int:
    info = run_info(args.config, args.overrides)
    if args.json:
        print(json.dumps(info))
        return 0
    width = max(len(k) for k in info)
    for key, value in info.items():
        shown = f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else value
        print(f"{key:<{width}}  {shown}")
    return 0


def run_info(path, overrides: list[str]) -> dict:
    cfg = load_config(path, overrides)
    vocab = vocab_size(cfg.data)
    model_cfg = resolve_model_config(cfg.model, vocab, cfg.data.seq_len)
    size = model_size(build_on_meta(model_cfg), model_cfg, cfg.data.seq_len, cfg.data.batch_size)
    info = {"model": size["model"], "params": size["params"], "vocab_size": vocab,
            "flops_per_token": size["flops_per_token"], "flops_formula": size["formula"],
            "tokens_per_step": size["tokens_per_step"],
            "batch_size": cfg.data.batch_size, "seq_len": cfg.data.seq_len,
            "lr": scaled_lr(cfg.optim, cfg.data.batch_size), "mode": "epochs" if cfg.epochs else "steps"}
    if cfg.data.source == "wikitext2" and cfg.data.path:
        info.update(_sequence_counts(cfg.data))
    return info


def _sequence_counts(data) -> dict:
    """Sequences per split from the local files (the count depends on word counts only, not ids)."""
    counts = {}
    for role, split in (("train_sequences", data.train_split), ("val_sequences", data.val_split)):
        file = local_split_file(data.path, split)
        if file is not None:
            lines = file.read_text(encoding="utf-8").splitlines()
            counts[role] = len(build_sequences(lines, WordTokenizer([]), data.seq_len))
    return counts
