"""``lmlab`` as a process (``lmlab.cli.entry``: the console script and ``python -m lmlab``) prepares a
quick exit once its command is done: one garbage collection (finalizers that are due run), then the
objects left are frozen, so that the interpreter's shutdown does not walk torch's object graph
again and again. atexit handlers still run, and the exit code is the command's."""
from __future__ import annotations

import subprocess
import sys

from helpers import REPO

SCRIPT = """
import atexit, gc, sys
from pathlib import Path
from lmlab import cli

folder = Path(sys.argv[1])
class Cycle:
    def __del__(self):
        (folder / "finalized").write_text("yes")
cycle = Cycle()
cycle.me = cycle
del cycle  # garbage only a collection finds
atexit.register(lambda: (folder / "atexit").write_text(str(gc.get_freeze_count() > 0)))
sys.argv = ["lmlab", "runs", str(folder / "no_runs_here")]
gc.disable()  # no automatic collection before entry's own
sys.exit(cli.entry())
"""


def test_the_command_collects_once_then_freezes_what_is_left(tmp_path):
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    code = subprocess.run([sys.executable, "-m", "lmlab", "runs", str(tmp_path / "no_runs_here")], cwd=REPO,
                          capture_output=True, text=True, timeout=120).returncode
    assert done.returncode == code, done.stderr
    assert (tmp_path / "finalized").read_text() == "yes"
    assert (tmp_path / "atexit").read_text() == "True"
