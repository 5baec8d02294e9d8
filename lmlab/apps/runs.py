"""``lmlab runs [ROOT]``: every run directory under ROOT with its status, progress, best
validation loss and duration. Reads the run directories only (torch is not imported)."""
from __future__ import annotations

import argparse

from lmlab.reports.runs import format_runs_table, list_runs
from lmlab.reports.sweep import format_sweep_trials
from lmlab.sweepdir import is_sweep_dir


def run(args: argparse.Namespace) -> int:
    """``args``: ``root`` (the folder to search, itself included)."""
    if is_sweep_dir(args.root):  # a sweep folder (lmlab sweep): its trials, ranked, pending ones too
        print(format_sweep_trials(args.root))
        return 0
    print(format_runs_table(list_runs(args.root)))
    return 0
