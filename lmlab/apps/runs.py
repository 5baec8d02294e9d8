"""``lmlab runs [ROOT]``: every run directory under ROOT with its status, progress, best
validation loss and duration. Reads the run directories only (torch is not imported)."""
from __future__ import annotations

import argparse

from lmlab.reports.runs import format_runs_table, list_runs


def run(args: argparse.Namespace) -> int:
    """``args``: ``root`` (the folder to search, itself included)."""
    print(format_runs_table(list_runs(args.root)))
    return 0
