"""Faults a long run meets: a preemption signal (SIGTERM) to a real ``lmlab train`` process (forked
from the session's zygote, tests/zygote.py). The non-finite losses need no process of their own:
tests/integration/training/test_faults.py.

The run it is compared with trains in-process, on one thread as the process does (start_lmlab):
the same code, without a second torch start-up, bitwise comparable."""
from __future__ import annotations

import signal

import pytest

from helpers import logged_steps, same_weights, tiny_args, wait_until
from lmlab.cli import main
from lmlab.reports.status import run_status

pytestmark = pytest.mark.usefixtures("one_thread")


def test_sigterm_saves_a_checkpoint_exits_0_and_resume_is_exact(tmp_path, jsonl_root, capsys, start_lmlab):
    common = ["steps=60", "checkpoint.every=1000", "eval.validation.enabled=false"]
    straight = tmp_path / "straight"
    assert main(tiny_args(jsonl_root, straight, *common)) == 0
    run = tmp_path / "preempted"
    proc = start_lmlab(tiny_args(jsonl_root, run, *common))
    wait_until(lambda: len(logged_steps(run)) >= 5, proc, "5 steps")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "received SIGTERM: saved a checkpoint at step" in out and "resume with the same command" in out
    assert run_status(run)["status"] == "preempted"  # recorded in events.jsonl as such
    saved = [p.name for p in (run / "checkpoints").iterdir() if p.name.isdigit()]
    assert len(saved) == 1 and 5 <= int(saved[0]) < 60
    assert main(tiny_args(jsonl_root, run, *common)) == 0
    assert same_weights(straight, run)
