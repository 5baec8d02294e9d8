"""Bad inputs about the run directory itself, table-driven like tests/integration/test_bad_inputs.py (same checks:
exit code, no traceback, the culprit and the fix named, nothing that was there lost): a dump_dir
that is empty (an unset shell variable), a folder that is not an lmlab run, a run that another
process is training. And the folders that are ours: an older run without the marker, the folder
of a SLURM job written before the marker existed."""
from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest

from badinput import Case, Ctx, run_case, snapshot, train_argv
from lmlab import rundir
from lmlab.runlock import RunLock

HELD: list[RunLock] = []  # locks a case's setup holds, released after the case


@pytest.fixture(autouse=True)
def _release_held_locks():
    yield
    while HELD:
        HELD.pop().release()


def user_folder(ctx: Ctx) -> Path:
    """A folder of the user's own, holding their config.yaml and notes (watched: nothing lost)."""
    folder = ctx.tmp / "mine"
    folder.mkdir()
    (folder / "config.yaml").write_text("my: own settings\n")
    (folder / "notes.txt").write_text("do not overwrite\n")
    ctx.watched.append(folder)
    return folder


def setup_empty_dump_dir(ctx: Ctx) -> list[str]:
    """``dump_dir=$RUN`` with RUN unset, typed in the user's folder."""
    ctx.monkeypatch.chdir(user_folder(ctx))
    return train_argv(ctx.data, ctx.tmp / "unused", "dump_dir=")


def setup_locked(ctx: Ctx) -> list[str]:
    """This test process holds the run's lock, as a training process would."""
    HELD.append(RunLock(ctx.run).acquire())
    return ctx.train()


def setup_locked_nproc(ctx: Ctx) -> list[str]:
    """As ``setup_locked``, with ``--nproc 2``: refused before any process is started."""
    return [*setup_locked(ctx), "--nproc", "2"]


def setup_old_run(ctx: Ctx) -> list[str]:
    """A run written before the marker existed resumes as before."""
    for name in (rundir.RUN_MARKER, rundir.LOCK_FILE):
        (ctx.run / name).unlink()
    return ctx.train()


def setup_old_slurm_dir(ctx: Ctx) -> list[str]:
    """`lmlab slurm` wrote submit.slurm and code/ (before the marker existed); the job trains there."""
    folder = ctx.tmp / "job"
    (folder / rundir.CODE_DIR).mkdir(parents=True)
    (folder / rundir.SUBMIT_FILE).write_text("#!/bin/bash\n")
    ctx.watched.append(folder)
    return train_argv(ctx.data, folder, "steps=1")


CASES = [
    Case("empty_dump_dir", setup_empty_dump_dir,
         ("dump_dir: is empty (an unset shell variable?)", "into the current directory {tmp}/mine",
          "fix: set dump_dir to a folder for this run")),
    Case("folder_that_is_not_a_run", lambda c: train_argv(c.data, user_folder(c)),
         ("dump_dir: {tmp}/mine is a folder with other files (config.yaml, notes.txt) and not an lmlab "
          "run (no .lmlab-run)", "fix: set dump_dir to a new or empty folder",
          "dump_dir={tmp}/mine/NAME")),
    Case("run_locked_by_a_live_process", setup_locked,
         ("{run} is in use: another lmlab train holds {run}/.lock",
          f"pid {os.getpid()} on host {socket.gethostname()}", "Fix: wait for that run to end",
          "or set dump_dir to another folder")),
    Case("run_locked_nproc_refused_before_launching", setup_locked_nproc,
         ("{run} is in use: another lmlab train holds {run}/.lock",
          f"pid {os.getpid()} on host {socket.gethostname()}", "Fix: wait for that run to end")),
    Case("old_run_without_marker_resumes", setup_old_run, ("resuming {run} from checkpoint 0000000003",),
         code=0, rewrites=("provenance.json",)),
    Case("old_slurm_folder_trains", setup_old_slurm_dir, ("finished after 1 steps",), code=0),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_bad_run_dir(case: Case, bad_input_base, tmp_path, monkeypatch, capsys):
    result = run_case(case, bad_input_base, tmp_path, monkeypatch, capsys)
    if case.code == 2:  # refused before writing anything: every watched file as it was
        assert snapshot(result.ctx.watched) == result.before
    if case.id == "empty_dump_dir":
        assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["config.yaml", "notes.txt"]
    if case.id.startswith("run_locked"):
        events = (result.ctx.run / rundir.EVENTS_FILE).read_text()
        assert events == (bad_input_base["resumable"] / rundir.EVENTS_FILE).read_text()  # no run_start of its own
    if case.code == 0:
        assert (tmp_path / ("job" if "slurm" in case.id else "resumable") / rundir.RUN_MARKER).is_file()
        assert (result.ctx.watched[0] / rundir.LOCK_FILE).read_bytes() == b""  # released cleanly


def test_only_run_folders_count_as_ours(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    assert not rundir.is_lmlab_dir(folder)
    (folder / "config.yaml").write_text("x: 1\n")
    assert not rundir.is_lmlab_dir(folder)  # a config alone: anyone's
    (folder / rundir.RUN_MARKER).write_text("")
    assert rundir.is_lmlab_dir(folder)
    shutil.rmtree(folder)
    folder.mkdir()
    (folder / rundir.PROVENANCE_FILE).write_text("{}")
    assert rundir.is_lmlab_dir(folder)
    # what lmlab itself puts in a folder that is becoming a run: not "other files"
    assert all(map(rundir.is_own_name, [".lock", ".lmlab-run", "..lmlab-run.tmp-12", ".lmlab-probe-x"]))
    assert not any(map(rundir.is_own_name, ["config.yaml", "lock", ".locks"]))
