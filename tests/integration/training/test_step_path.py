"""How many lmlab files one training step passes through, from the loop to the model and back
(issue 24: at most 8): a real run in this process, profiled on its main thread, one plain step and
one logging step (every ``logging.every``: it also writes metrics.jsonl, ``sinks``). Counted as
the issue counted its 16: ``humanize``, the bottom floor's number formatter that the console line
calls, is not a stop of its own (the issue's console called it too). With read-ahead (``data.prefetch``, on by default on a GPU) the batches are read
on another thread; without it (the CPU default) reading a batch is data/'s own business (the
loader, its cursor, at a new document the reader and tokenizer), counted as the loader's one stop."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

import lmlab
from helpers import CONFIGS
from lmlab.cli import main

PACKAGE = Path(lmlab.__file__).parent
LOOP_ENTRY = ("trainer.py", "_next_batch")  # the loop's first call of each step


class StepProfile:
    """The lmlab files whose functions run on this thread, per loop iteration (1-based)."""

    def __init__(self):
        self.iteration = 0
        self.files: dict[int, set[str]] = {}

    def __call__(self, frame, event, _arg):
        if event != "call":
            return
        path = frame.f_code.co_filename
        if not path.startswith(str(PACKAGE)):
            return
        name = Path(path).relative_to(PACKAGE).as_posix()
        if (Path(path).name, frame.f_code.co_name) == LOOP_ENTRY:
            self.iteration += 1
        elif self.iteration and _inside_data_reading(frame):
            name = "data/loader.py"  # the loader's one stop (see the module docstring)
        if self.iteration:
            self.files.setdefault(self.iteration, set()).add(name)


def _inside_data_reading(frame) -> bool:
    """Called, however deep, from the loader's ``next_batch``."""
    caller = frame.f_back
    while caller is not None:
        if caller.f_code.co_name == "next_batch" and caller.f_code.co_filename.endswith("data/loader.py"):
            return True
        caller = caller.f_back
    return False


@pytest.mark.parametrize("prefetch", [1, 0], ids=["read_ahead", "inline_reads"])
def test_a_training_step_passes_through_at_most_eight_lmlab_files(tmp_path, prefetch):
    profile = StepProfile()
    argv = ["train", str(CONFIGS / "quickstart.yaml"), "steps=8", "model.dim=32", "model.n_layers=1",
            "model.n_heads=2", "model.multiple_of=16", "data.seq_len=32", "data.batch_size=2",
            "logging.every=4", "eval.validation.every=100", "checkpoint.every=100",
            f"data.prefetch={prefetch}", f"dump_dir={tmp_path / 'run'}"]
    sys.setprofile(profile)
    try:
        assert main(argv) == 0
    finally:
        sys.setprofile(None)
    plain, logging = sorted(profile.files[2]), sorted(profile.files[4])  # step 4 logs
    print(f"\nplain step ({len(plain)} files): {plain}\nlogging step ({len(logging)} files): {logging}")
    assert len(plain) <= 8, plain
    assert len(set(logging) - {"humanize.py"}) <= 8, logging
