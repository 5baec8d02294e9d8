"""Every shipped YAML config passes preflight (given the data it expects)."""
from __future__ import annotations

import pytest

from helpers import CONFIGS, write_jsonl
from lmlab.config import load_config
from lmlab.preflight import load_and_check


def data_for(config_path, tmp_path) -> list[str]:
    """Overrides pointing a config at stand-in data it would read on a real machine."""
    cfg = load_config(config_path)
    overrides = [f"dump_dir={tmp_path / 'run'}", "device=cpu"]
    if cfg.precision == "fp16":
        overrides.append("precision=fp32")
    if cfg.data.source == "jsonl":
        for name in cfg.data.sources:
            write_jsonl(tmp_path / "data" / name / f"{name}.chunk.00.jsonl", ["text"])
            write_jsonl(tmp_path / "data" / name / f"{name}.val.jsonl", ["text"])
        overrides.append(f"data.root_dir={tmp_path / 'data'}")
    if cfg.data.source == "wikitext2":
        for split in (cfg.data.train_split, cfg.data.val_split):
            (tmp_path / f"{split}.txt").write_text(" a b c d e f\n")
        overrides.append(f"data.path={tmp_path}")
    return overrides


@pytest.mark.parametrize("config_path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_config_passes_preflight(config_path, tmp_path):
    load_and_check(config_path, data_for(config_path, tmp_path))
