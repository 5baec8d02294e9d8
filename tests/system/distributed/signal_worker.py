"""A torchrun worker for test_launcher.py: writes the name of every signal it gets to
``FOLDER/rank-<RANK>.log`` and runs until it is killed. Once its handlers are in place it says so,
to the test (``FOLDER/rank-<RANK>.ready``) and, as ``lmlab train`` does, to lmlab's agent."""
import os
import signal
import sys
import time
from pathlib import Path

folder, rank = Path(sys.argv[1]), os.environ["RANK"]
log = folder / f"rank-{rank}.log"


def record(signum, _frame):
    with log.open("a") as f:
        f.write(signal.Signals(signum).name + "\n")


for name in ("SIGINT", "SIGTERM", "SIGUSR1"):
    signal.signal(getattr(signal, name), record)
(Path(os.environ["LMLAB_RANK_REPORTS"]) / f"ready-{os.getpid()}").touch()
(folder / f"rank-{rank}.ready").touch()
while True:
    time.sleep(0.05)
