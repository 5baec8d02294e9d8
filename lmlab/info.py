"""``lmlab info``: what a config would build, computed without allocating the model."""
from __future__ import annotations

from lmlab.config import load_config
from lmlab.data.tokenizers import configured_vocab_size
from lmlab.models.registry import build_on_meta, resolve_model_config
from lmlab.training.optim import scaled_lr


def run_info(path, overrides: list[str]) -> dict:
    cfg = load_config(path, overrides)
    vocab = configured_vocab_size(cfg.data.tokenizer)
    model_cfg = resolve_model_config(cfg.model, vocab, cfg.data.seq_len)
    model = build_on_meta(model_cfg)
    flops, formula = model.flops_per_token(cfg.data.seq_len)
    info = {"model": model_cfg.name, "params": model.num_params(), "vocab_size": vocab,
            "flops_per_token": int(flops), "flops_formula": formula,
            "tokens_per_step": cfg.data.batch_size * cfg.data.seq_len,
            "batch_size": cfg.data.batch_size, "seq_len": cfg.data.seq_len,
            "lr": scaled_lr(cfg.optim, cfg.data.batch_size), "mode": "epochs" if cfg.epochs else "steps"}
    if cfg.data.source == "wikitext2" and cfg.data.path:
        info.update(_sequence_counts(cfg.data))
    return info


def _sequence_counts(data) -> dict:
    """Sequences per split from the local files (the count depends on word counts only, not ids)."""
    from lmlab.data.tokenizers import WordTokenizer
    from lmlab.data.wikitext import build_sequences, local_split_file

    counts = {}
    for role, split in (("train_sequences", data.train_split), ("val_sequences", data.val_split)):
        if local_split_file(data.path, split) is not None:
            lines = local_split_file(data.path, split).read_text(encoding="utf-8").splitlines()
            counts[role] = len(build_sequences(lines, WordTokenizer([]), data.seq_len))
    return counts
