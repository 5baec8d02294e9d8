"""``lmlab check CONFIG [KEY=VALUE ...]``: preflight a config and its data files without training.
Warnings (allowed but almost never meant, e.g. a warmup longer than the run) are shown on stderr
as ``lmlab check: warning: ...``; they do not fail the check."""
from __future__ import annotations

from lmlab.preflight import load_and_check, preflight_warnings, show_warnings


def run(args) -> int:
    cfg = load_and_check(args.config, args.overrides)
    warnings = preflight_warnings(cfg)
    show_warnings("check", warnings)
    said = f", {len(warnings)} warning{'s' if len(warnings) != 1 else ''} above" if warnings else ""
    print(f"ok: {args.config} passes preflight (model {cfg.model.name}, data {cfg.data.source}, "
          f"dump_dir {cfg.dump_dir}){said}")
    return 0
