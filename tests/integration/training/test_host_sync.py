"""The training loop reads values back from the device only on logging (and checkpoint) steps.

Every ``Tensor.item()`` / ``.tolist()`` / ``float(t)`` / ``int(t)`` / ``bool(t)`` that lmlab's own
code makes during a real 20-step run is recorded with the step it happened in. On a GPU each is a
host-device synchronisation; nanoGPT and torchtitan make them only when they log. Calls inside
torch (the CPU-side step counters of Adam, for example) are not lmlab's and are not counted, nor
are the data loader's (it works on host tensors before the step).
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from helpers import REPO, tiny_args
from lmlab.cli import main
from lmlab.data.loader import PackedLoader

LMLAB = REPO / "lmlab"
READS = ("item", "tolist", "__float__", "__int__", "__bool__")


def test_training_reads_from_the_device_only_on_logging_steps(tmp_path, jsonl_root, monkeypatch):
    log: list[tuple] = []
    step = {"n": 0, "in_loader": False}

    def counting(name, original):
        def read(self, *args, **kwargs):
            caller = Path(sys._getframe(1).f_code.co_filename).resolve()
            if LMLAB in caller.parents and not step["in_loader"]:
                log.append((step["n"], name, caller.name))
            return original(self, *args, **kwargs)
        return read

    for name in READS:
        monkeypatch.setattr(torch.Tensor, name, counting(name, getattr(torch.Tensor, name)))
    next_batch = PackedLoader.next_batch

    def marked_next_batch(self):
        step["n"] += 1
        step["in_loader"] = True
        try:
            return next_batch(self)
        finally:
            step["in_loader"] = False

    monkeypatch.setattr(PackedLoader, "next_batch", marked_next_batch)
    run = tmp_path / "run"
    code = main(tiny_args(jsonl_root, run, "steps=20", "logging.every=10", "checkpoint.every=10",
                          "eval.validation.enabled=false"))
    assert code == 0
    steps_that_read = sorted({s for s, _, _ in log})
    assert steps_that_read == [10, 20], log
    # at a logging step: the non-finite check, the logged loss + grad norm (one read for both)
    # and the float64 epoch-loss sum saved in the checkpoint
    per_step = [sum(1 for s, _, _ in log if s == n) for n in (10, 20)]
    assert per_step == [3, 3], log
