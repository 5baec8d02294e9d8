"""Checkpoint retention and clean-up never lose the newest, best or final checkpoint."""
from __future__ import annotations

import os

import torch

from lmlab import rundir
from lmlab.training import checkpoint as ckpt


def save(run, step: int, model, optimizer):
    return ckpt.save_checkpoint(run, rundir.step_name(step), model, optimizer, {"step": step})


def test_retention_keeps_newest_best_and_final(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters())
    best = save(tmp_path, 1, model, optimizer)
    ckpt.link_checkpoint(tmp_path, best, "best")
    for step in range(2, 6):
        save(tmp_path, step, model, optimizer)
        ckpt.prune_checkpoints(tmp_path, keep=1)
    ckpt.link_checkpoint(tmp_path, rundir.latest_checkpoint(tmp_path), "final")
    ckpt.prune_checkpoints(tmp_path, keep=1)
    names = sorted(p.name for p in rundir.checkpoints_root(tmp_path).iterdir())
    assert names == ["0000000005", "best", "final"]
    assert rundir.read_train_state(rundir.checkpoints_root(tmp_path) / "best")["step"] == 1  # pruned step's files live on
    assert rundir.latest_checkpoint(tmp_path).name == "0000000005"


def test_partial_saves_are_removed_but_an_interrupted_best_swap_is_restored(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters())
    first = save(tmp_path, 1, model, optimizer)
    ckpt.link_checkpoint(tmp_path, first, "best")
    root = rundir.checkpoints_root(tmp_path)
    # killed between the two renames of a best/ update: only the old copy exists
    os.replace(root / "best", root / f"{rundir.TMP_PREFIX}old-best-1234")
    (root / f"{rundir.TMP_PREFIX}0000000002-99").mkdir()  # killed while writing step 2
    removed = ckpt.remove_partial_checkpoints(tmp_path)
    assert [p.name for p in removed] == [f"{rundir.TMP_PREFIX}0000000002-99"]
    assert sorted(p.name for p in root.iterdir()) == ["0000000001", "best"]
    assert rundir.read_train_state(root / "best")["step"] == 1
