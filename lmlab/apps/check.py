"""``lmlab check CONFIG [KEY=VALUE ...]``: preflight a config and its data files without training."""
from __future__ import annotations

from lmlab.preflight import load_and_check


def run(args) -> int:
    cfg = load_and_check(args.config, args.overrides)
    print(f"ok: {args.config} passes preflight (model {cfg.model.name}, data {cfg.data.source}, "
          f"dump_dir {cfg.dump_dir})")
    return 0
