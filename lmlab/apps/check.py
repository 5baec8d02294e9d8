"""``lmlab check CONFIG [KEY=VALUE ...]``: preflight a config and its data files without training.
Warnings (allowed but almost never meant, e.g. a warmup longer than the run) are shown on stderr
as ``lmlab check: warning: ...``; they do not fail the check.

``--data`` then reads every training and validation file (``data.scan``) and lists every bad line at
once (``file:line: reason``, exit 2), or prints how many files, lines and bytes it scanned."""
from __future__ import annotations

from lmlab.data.scan import scan_data
from lmlab.errors import show_warnings
from lmlab.preflight import load_and_check, preflight_warnings


def run(args) -> int:
    cfg = load_and_check(args.config, args.overrides)
    warnings = preflight_warnings(cfg)
    show_warnings("check", warnings)
    said = f", {len(warnings)} warning{'s' if len(warnings) != 1 else ''} above" if warnings else ""
    print(f"ok: {args.config} passes preflight (model {cfg.model.name}, data {cfg.data.source}, "
          f"dump_dir {cfg.dump_dir}){said}")
    if getattr(args, "data", False):
        scan = scan_data(cfg.data)
        print(scan.summary(), flush=True)
        problem = scan.error()
        if problem is not None:
            raise problem
        print("ok: no bad lines")
    return 0
