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
from lmlab.reports.runs import is_run, status_text
from lmlab.reports.status import run_status
from lmlab.reports.sweep_report import write_sweep_report
from lmlab.rundir import CONFIG_FILE, EVENTS_FILE, is_run_dir
from lmlab.runlog import EventLog
from lmlab.sweepdir import is_sweep_dir


def run(args: argparse.Namespace) -> int:
    """``args``: ``runs`` (list of run directories), ``lang``, ``format`` (md | html), ``out``
    (one run: the folder for report and plots; several: the comparison file; or None). One run:
    its report, recorded as phase ``report`` in its event log when that can be written and the run
    is not training (a SLURM job that has not started: its status, no report)."""
    if len(args.runs) == 1 and is_sweep_dir(args.runs[0]):  # a sweep folder (lmlab sweep): English only
        out_dir = Path(args.out or args.runs[0])
        _refuse_unwritable(out_dir, "the report", f"lmlab report {args.runs[0]} --out DIR")
        path = _writing(lambda: write_sweep_report(args.runs[0], args.format, out_dir), "--out DIR")
    elif len(args.runs) == 1:
        path = _one_run(Path(args.runs[0]), args)
        if path is None:
            return 0
    else:
        suffix = ".html" if args.format == "html" else ".md"
        out = Path(args.out or f"comparison{suffix}")
        _refuse_unwritable(out.parent, "the comparison", f"lmlab report {' '.join(args.runs)} "
                           f"--out DIR/{out.name}")
        path = _writing(lambda: write_comparison(args.runs, out, lang=args.lang), "--out FILE")
    print(f"wrote {path}")
    return 0


def _one_run(run_dir: Path, args: argparse.Namespace) -> Path | None:
    status = run_status(run_dir) if is_run(run_dir) else None
    if status is None:
        raise LmlabError(f"{run_dir} is not a run directory (no {CONFIG_FILE}, {EVENTS_FILE} or "
                         "metrics). Fix: pass the dump_dir of a training run; `lmlab runs ROOT` "
                         "lists them.")
    if not is_run_dir(run_dir):  # submitted to SLURM, nothing trained yet
        print(f"{run_dir}: {status_text(status['status'], status.get('phase'), status.get('job_id'))}: "
              f"{status['reason']}. Nothing to report until training starts; no report written.")
        return None
    out_dir = Path(args.out) if args.out else run_dir
    _refuse_unwritable(out_dir, "the report", f"lmlab report {run_dir} --out DIR")
    # Recorded as a phase in the run's event log only when the run is not training now (its own
    # events must stay its own) and the log can be written (with --out it may be read-only).
    live = status["status"] in ("running", "queued")
    events = EventLog(run_dir, write=not live and unwritable(run_dir) is None)
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
