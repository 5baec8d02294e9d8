"""Crash safety: SIGKILL training at random moments, many of them in the middle of a checkpoint save,
re-run the same command after each kill until the run finishes, and require the result to be
bitwise identical to an uninterrupted run (metrics, weights, optimizer state, train state, best/final).

After every kill, before the restart, each checkpoint that the loader (or ``lmlab eval``) would take
for complete must really load, and the restart must resume from the newest of them and say that it
removed the half-written one when the kill hit a save.

Kinds of kill, 14 per run mode (at least 10 must land before the run finishes), in an order drawn
from a seeded ``random.Random`` (step mode: 5 save, 8 random, 1 last; epoch mode: 5 save, 7 random,
1 best, 1 last):

* ``random``: a random moment within the restarted process's first few steps (compute, logging,
  validation, save, pruning);
* ``save``: the moment a save's temporary directory appears (polled every 0.5 ms), i.e. mid-save;
* ``best`` (epoch mode): the moment an epoch-end checkpoint appears, before it is published as best/;
* ``last``: the moment the last step's checkpoint appears, before it is published as final/.

Random timing alone cannot promise kills inside a save, hence the ``save`` kills; the test counts,
from what each kill left on disk, how many really landed inside a save.

Every (re)start is forked from the session's "zygote" process (tests/zygote.py), which has already
imported torch, torch._dynamo (which torch's optimizers import on first use: over a second per
restart otherwise) and lmlab, so a restart costs a fraction of a second instead of a fresh
interpreter's ~3 s; each kill is a real SIGKILL of the process running
``lmlab.cli.main(["train", ...])``.
"""
from __future__ import annotations

import json
import os
import random
import re
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import CONFIGS, TINY_CONTEXT_VECTOR, TINY_TRANSFORMER, assert_same_run, data_overrides
from lmlab.rundir import (MODEL_FILE, OPTIMIZER_FILE, STATE_FILE, checkpoints_root, step_checkpoints,
                          step_name)
from zygote import Child, Zygote

SAVE_IN_PROGRESS = re.compile(r"\.tmp-(\d{10}|best|final)-\d+$")  # a save's / publish's temp dir

STEP_TOTAL = 50
STEP_MODE = ["train", str(CONFIGS / "debug.yaml"), *TINY_TRANSFORMER, f"steps={STEP_TOTAL}",
             "checkpoint.every=1", "checkpoint.keep=2", "eval.validation.every=10",
             "logging.progress_bar=false"]
STEPS_PER_EPOCH, EPOCHS = 8, 6
EPOCH_MODE = ["train", str(CONFIGS / "newllm_wikitext2_baseline.yaml"), *TINY_CONTEXT_VECTOR,
              "model.dropout=0.1", "logging.every=1", "logging.progress_bar=false", f"epochs={EPOCHS}",
              "checkpoint.every=1", "checkpoint.keep=1"]


# --------------------------------------------------------------------------- what is on disk


def step_lines(out: str) -> int:
    return sum(1 for line in out.splitlines() if line.startswith("step ") and "| loss" in line)


def resumed_from(out: str) -> int:
    found = re.search(r"^resuming .* from checkpoint (\d{10})$", out, re.MULTILINE)
    return int(found.group(1)) if found else 0


def temp_dirs(run: Path) -> list[str]:
    try:
        return sorted(n for n in os.listdir(checkpoints_root(run)) if n.startswith(".tmp-"))
    except FileNotFoundError:
        return []


def saves_in_progress(run: Path) -> list[str]:
    return [n for n in temp_dirs(run) if SAVE_IN_PROGRESS.match(n)]


def saved_step(ckpt: Path) -> int | None:
    return json.loads((ckpt / STATE_FILE).read_text())["step"] if (ckpt / STATE_FILE).is_file() else None


def assert_loadable(ckpt: Path) -> None:
    """Everything a resume (or ``lmlab eval``) reads from this checkpoint loads."""
    weights = load_file(str(ckpt / MODEL_FILE))
    assert weights and all(torch.isfinite(t).all() for t in weights.values()), ckpt
    torch.load(ckpt / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
    state = json.loads((ckpt / STATE_FILE).read_text())
    assert "rng" in state and "loader" in state, ckpt
    if ckpt.name.isdigit():
        assert state["step"] == int(ckpt.name), ckpt


def check_checkpoints(run: Path) -> None:
    """Every checkpoint the loader would take for complete really is complete."""
    for ckpt in step_checkpoints(run):
        assert_loadable(ckpt)
    for name in ("best", "final"):  # lmlab eval resolves a run to final/ when its state file exists
        if (checkpoints_root(run) / name / STATE_FILE).is_file():
            assert_loadable(checkpoints_root(run) / name)


# --------------------------------------------------------------------------- kill, resume, compare


class Exited(Exception):
    """The process ended on its own before the kill."""


def poll(child: Child, ready, timeout: float = 120, interval: float = 0.0005) -> None:
    deadline, n = time.monotonic() + timeout, 0
    while not ready():
        n += 1
        if n % 20 == 0 and child.poll() is not None:
            raise Exited
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for the training process:\n{child.output()}")
        time.sleep(interval)


def kill_at(child: Child, kind: str, run: Path, total: int, rng: random.Random) -> bool:
    """Wait for the moment ``kind`` describes, SIGKILL; False when the run finished first."""
    try:
        # every kill waits until this process trains (past start-up, resume and clean-up)
        n = rng.randint(1, 3) if kind == "random" else 1
        poll(child, lambda: step_lines(child.output()) >= n, interval=0.002)
        start = resumed_from(child.output())
        if kind == "random":
            time.sleep(rng.uniform(0.0, 0.1))
        elif kind == "save":
            poll(child, lambda: saves_in_progress(run))
        elif kind == "best":
            ends = [step_name(s) for s in range(STEPS_PER_EPOCH, total + 1, STEPS_PER_EPOCH) if s > start]
            poll(child, lambda: any((checkpoints_root(run) / e).is_dir() for e in ends))
        elif kind == "last":
            poll(child, lambda: (checkpoints_root(run) / step_name(total)).is_dir())
        return child.kill()
    except Exited:
        return False


def kill_and_resume(zygote: Zygote, args: list[str], run: Path, total: int, kinds: list[str],
                    rng: random.Random) -> dict:
    """Run ``args`` and SIGKILL it as ``kinds`` says, re-running the same command after each kill;
    then let it finish. Returns what the kills hit."""
    logs = run.parent / f"{run.name}-logs"
    logs.mkdir()
    stats = {"kills": 0, "during_save": 0, "removed_reported": 0, "trace": []}
    pending = None  # what the previous kill left: (newest complete step, saves in progress)
    for attempt, kind in enumerate([*kinds, None]):
        child = zygote.start(args, logs / f"{attempt:02d}.log")
        killed = kill_at(child, kind, run, total, rng) if kind else False
        code = child.wait()
        out = child.output()
        if pending:
            newest, interrupted = pending
            if step_lines(out) or "already finished" not in out:  # a restart that got going
                assert resumed_from(out) == newest, f"did not resume from step {newest}:\n{out}"
            if interrupted:
                assert "removed incomplete checkpoint" in out, out
                stats["removed_reported"] += 1
        if not killed:
            assert code == 0 and "Traceback" not in out, out
            if kind is None:
                return stats
            pending = None
            continue  # finished before this kill could land: the remaining kinds find it done
        stats["kills"] += 1
        interrupted = saves_in_progress(run)
        stats["during_save"] += bool(interrupted)
        check_checkpoints(run)  # before anything else touches the run directory
        complete = step_checkpoints(run)
        pending = (int(complete[-1].name) if complete else 0, interrupted)
        published = {n: saved_step(checkpoints_root(run) / n) for n in ("best", "final")}
        stats["trace"].append(f"{kind}: resumed at {resumed_from(out)}, killed after "
                              f"{step_lines(out)} step(s), left {temp_dirs(run) or 'no temp dir'}; "
                              f"newest complete {pending[0]}, published {published}")
    raise AssertionError("unreachable")


def kill_plan(rng: random.Random, n_save: int, n_random: int, last: list[str]) -> list[str]:
    plan = ["save"] * n_save + ["random"] * n_random
    rng.shuffle(plan)
    return plan + last  # the end-of-run windows last, once the run is near them


def kill_resume_compare(zygote, tmp_path: Path, args: list[str], total: int, plan: list[str],
                        rng: random.Random, names: list[str]) -> dict:
    straight = zygote.start([*args, f"dump_dir={tmp_path / 'straight'}"], tmp_path / "straight.log")
    try:
        stats = kill_and_resume(zygote, [*args, f"dump_dir={tmp_path / 'killed'}"],
                                tmp_path / "killed", total, plan, rng)
        assert straight.wait() == 0, straight.output()
    finally:  # nothing of this test may outlive it
        for child in zygote.children:
            child.kill()
    summary = "\n".join([f"{k}: {v}" for k, v in stats.items() if k != "trace"] + stats["trace"])
    print(summary)
    assert stats["kills"] >= 10 and stats["during_save"] >= 3, summary
    assert stats["removed_reported"] == stats["during_save"], summary
    assert_same_run(tmp_path / "straight", tmp_path / "killed", tuple(names))
    return stats


@pytest.mark.slow
def test_sigkill_anywhere_step_mode_resumes_bitwise_identical(zygote, tmp_path, jsonl_root):
    rng = random.Random(20261122)
    kill_resume_compare(zygote, tmp_path, [*STEP_MODE, *data_overrides(jsonl_root)], STEP_TOTAL,
                        kill_plan(rng, 5, 8, ["last"]), rng, ["final", step_name(STEP_TOTAL)])


@pytest.mark.slow
def test_sigkill_anywhere_epoch_mode_resumes_bitwise_identical(zygote, tmp_path, wikitext_dir):
    rng = random.Random(4242)
    total = STEPS_PER_EPOCH * EPOCHS
    kill_resume_compare(zygote, tmp_path, [*EPOCH_MODE, f"data.path={wikitext_dir}"], total,
                        kill_plan(rng, 5, 7, ["best", "last"]), rng, ["final", "best", step_name(total)])


def test_pruning_killed_midway_leaves_no_half_deleted_checkpoint_that_passes_for_complete(
        tmp_path, monkeypatch):
    from lmlab.training import checkpoint as ckpt

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters())
    for step in (1, 2):
        ckpt.save_checkpoint(tmp_path, step_name(step), model, optimizer,
                             {"step": step, "rng": {}, "loader": {}})

    def killed_during(path, ignore_errors=False):  # deletes the weights, then the process "dies"
        (Path(path) / MODEL_FILE).unlink()
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt.shutil, "rmtree", killed_during)
    with pytest.raises(KeyboardInterrupt):
        ckpt.prune_checkpoints(tmp_path, keep=1)
    monkeypatch.undo()
    check_checkpoints(tmp_path)  # 0000000001 without its weights must not look complete
    ckpt.remove_partial_checkpoints(tmp_path)  # the next start
    assert sorted(os.listdir(checkpoints_root(tmp_path))) == [step_name(2)]
