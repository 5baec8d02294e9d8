"""``lmlab report RUN [RUN ...] [--lang L] [--format md|html] [--out FILE]``: the report of one run
(``report.md`` + ``plots/`` inside it), or a comparison of several runs (``--out``, default
``comparison.md``). Reads the run directories only: no model is built, torch is not imported.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from lmlab.errors import LmlabError
from lmlab.reports.compare import write_comparison
from lmlab.reports.report import write_report
from lmlab.rundir import CONFIG_FILE, EVENTS_FILE, is_run_dir
from lmlab.runlog import EventLog


def run(args: argparse.Namespace) -> int:
    """``args``: ``runs`` (list of run directories), ``lang``, ``format`` (md | html), ``out``
    (comparison file, or None). One run without ``--out``: its report, recorded as phase
    ``report`` in its event log; otherwise a comparison."""
    if len(args.runs) == 1 and not args.out:
        run_dir = Path(args.runs[0])
        if not is_run_dir(run_dir):
            raise LmlabError(f"{run_dir} is not a run directory (no {CONFIG_FILE}, {EVENTS_FILE} or "
                             "metrics). Fix: pass the dump_dir of a training run; `lmlab runs ROOT` "
                             "lists them.")
        with EventLog(run_dir).phase("report", lang=args.lang, format=args.format):
            path = write_report(run_dir, lang=args.lang, fmt=args.format)
    else:
        suffix = ".html" if args.format == "html" else ".md"
        path = write_comparison(args.runs, args.out or f"comparison{suffix}", lang=args.lang)
    print(f"wrote {path}")
    return 0
