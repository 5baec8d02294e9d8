"""Checkpoint retention and clean-up never lose the newest, best or final checkpoint; a full disk
while saving is the disk-full message naming the last good checkpoint, whichever writer hit it."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError

from lmlab import rundir
from lmlab.errors import LmlabError
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


# --------------------------------------------------------------------------- a full disk


# What each writer raised on a real full disk (a 2.5 MB tmpfs under a tiny lmlab run): torch.save's
# zip writer loses the errno; safetensors keeps the system's words.
TORCH_FULL = "[enforce fail at inline_container.cc:672] . unexpected pos 315520 vs 315408"
SAFETENSORS_FULL = "Error while serializing: I/O error: No space left on device (os error 28)"


def _torch_save_on_full_disk(obj, f, *args, **kwargs):
    Path(f).write_bytes(b"\0" * 100)  # the part written before the disk filled up
    raise RuntimeError(TORCH_FULL)


def _save_file_on_full_disk(tensors, filename, *args, **kwargs):
    Path(filename).write_bytes(b"\0" * 100)
    raise SafetensorError(SAFETENSORS_FULL)


def _fsync_on_full_disk(directory):
    raise OSError(errno.ENOSPC, "No space left on device")


FULL_DISK = {"torch.save": (torch, "save", _torch_save_on_full_disk),
             "safetensors": (ckpt, "save_file", _save_file_on_full_disk),
             "oserror": (ckpt, "_fsync_tree", _fsync_on_full_disk)}


@pytest.mark.parametrize("writer", sorted(FULL_DISK))
def test_a_full_disk_names_the_last_good_checkpoint_and_leaves_no_partial_save(tmp_path, monkeypatch, writer):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters())
    first = save(tmp_path, 1, model, optimizer)
    monkeypatch.setattr(*FULL_DISK[writer])
    # what is left on a full disk (raising=False: the test also runs against code without it)
    monkeypatch.setattr(ckpt, "_free_bytes", lambda folder: 4096, raising=False)
    with pytest.raises(LmlabError) as caught:
        save(tmp_path, 2, model, optimizer)
    root = rundir.checkpoints_root(tmp_path)
    message = str(caught.value)
    assert message.startswith(f"cannot save checkpoint {root / '0000000002'}: the disk is full "
                              "(No space left on device")
    assert f"(latest: {first})" in message and "Fix: free disk space" in message
    assert "enforce fail" not in message and "unexpected pos" not in message
    assert sorted(p.name for p in root.iterdir()) == ["0000000001"]  # no partial temporary folder


def test_a_short_write_with_space_left_is_not_called_a_full_disk(tmp_path, monkeypatch):
    """torch.save loses the errno: with space left, a cut-short write is a quota or a bad disk."""
    model = torch.nn.Linear(3, 2)
    monkeypatch.setattr(torch, "save", _torch_save_on_full_disk)
    monkeypatch.setattr(ckpt, "_free_bytes", lambda folder: 10 << 30, raising=False)
    with pytest.raises(LmlabError, match="a write was cut short, though the disk has space.*quota"):
        save(tmp_path, 1, model, torch.optim.Adam(model.parameters()))
    assert list(rundir.checkpoints_root(tmp_path).iterdir()) == []


def test_an_error_that_is_no_write_error_is_not_hidden(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(torch, "save", broken)
    model = torch.nn.Linear(3, 2)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        save(tmp_path, 1, model, torch.optim.Adam(model.parameters()))
