"""``lmlab report RUN [RUN ...] [--lang L] [--format md|html] [--out PATH]``: the report of one run
(``report.md`` + ``plots/``, inside the run directory or, with ``--out DIR``, in DIR), or a
comparison of several runs (``--out FILE``, default ``comparison.md``). Reads the run directories
only: no model is built, torch is not imported.

Where the report goes is probed before anything is drawn: an unwritable folder is refused (exit 2)
with the ``--out`` fix, and so is a write that fails after all. A report is rebuilt from the run
directory at any time, so nothing is lost by a refusal.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from lmlab.atomic import unwritable
from lmlab.errors import LmlabError
from lmlab.reports.compare import write_comparison
from lmlab.reports.report import write_report
from lmlab.rundir import CONFIG_FILE, EVENTS_FILE, is_run_dir
from lmlab.runlog import EventLog


def run(args: argparse.Namespace) -> int:
    """``args``: ``runs`` (list of run directories), ``lang``, ``format`` (md | html), ``out``
    (one run: the folder for report and plots; several: the comparison file; or None). One run:
    its report, recorded as phase ``report`` in its event log when that can be written."""
    if len(args.runs) == 1:
        path = _one_run(Path(args.runs[0]), args)
    else:
        suffix = ".html" if args.format == "html" else ".md"
        out = Path(args.out or f"comparison{suffix}")
        _refuse_unwritable(out.parent, "the comparison", f"lmlab report {' '.join(args.runs)} "
                           f"--out DIR/{out.name}")
        path = _writing(lambda: write_comparison(args.runs, out, lang=args.lang), "--out FILE")
    print(f"wrote {path}")
    return 0


def _one_run(run_dir: Path, args: argparse.Namespace) -> Path:
    if not is_run_dir(run_dir):
        raise LmlabError(f"{run_dir} is not a run directory (no {CONFIG_FILE}, {EVENTS_FILE} or "
                         "metrics). Fix: pass the dump_dir of a training run; `lmlab runs ROOT` "
                         "lists them.")
    out_dir = Path(args.out) if args.out else run_dir
    _refuse_unwritable(out_dir, "the report", f"lmlab report {run_dir} --out DIR")
    # with --out the run directory may be read-only: then the phase is not recorded
    events = EventLog(run_dir, write=unwritable(run_dir) is None)
    with events.phase("report", lang=args.lang, format=args.format,
                      **({"out": str(out_dir)} if args.out else {})):
        return _writing(lambda: write_report(run_dir, lang=args.lang, fmt=args.format,
                                             out_dir=out_dir), "--out DIR")


def _refuse_unwritable(folder: Path, what: str, command: str) -> None:
    reason = unwritable(folder)
    if reason:
        raise LmlabError(f"cannot write {what}: {reason}. Fix: make it writable, or write {what} "
                         f"elsewhere: {command}")


def _writing(write, flag: str) -> Path:
    try:
        return write()
    except OSError as err:
        where = err.filename or "the output"
        raise LmlabError(f"could not write {where}: {err.strerror or err}. Nothing is lost: the "
                         f"report is rebuilt from the run directory at any time. Fix: make the folder "
                         f"writable, or write elsewhere with {flag}") from None
