"""A torchrun worker for test_torchrun.py: ``lmlab train ARGS`` in which rank 1 fails at step 5."""
import os
import sys

from lmlab.cli import main
from lmlab.training.parts import TrainingParts

original = TrainingParts.step
calls = {"n": 0}


def failing_on_rank_1(*args, **kwargs):
    calls["n"] += 1
    if os.environ.get("RANK") == "1" and calls["n"] == 5:
        raise RuntimeError("injected failure at step 5")
    return original(*args, **kwargs)


TrainingParts.step = failing_on_rank_1
sys.exit(main(sys.argv[1:]))
