"""One process per run directory (``lmlab.runlock``), and Ctrl-C: what two trainings started on one
dump_dir, a holder killed with ``kill -9`` and a SIGINT leave behind.

The processes that race, get killed or get a signal are real ``lmlab train`` processes, forked from
the session's zygote (tests/zygote.py: torch and lmlab imported once, not at each start); the runs
they are compared with train in-process (the same code, without a second torch start-up). Every
one computes on one thread: on a shared 2-core machine that is several times faster than two
threads fighting over the cores, and the same thread count keeps CPU results bitwise comparable."""
from __future__ import annotations

import os
import signal
import socket
import time

import pytest

from helpers import logged_steps, same_weights, tiny_args, wait_until
from lmlab import rundir
from lmlab.cli import main
from lmlab.reports.status import run_status
from lmlab.runlock import read_holder
from lmlab.training.signals import PreemptionSignals

HOST = socket.gethostname()
QUIET = "eval.validation.enabled=false"


pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- two at once

STEPS = 80  # long enough that the first is still training when the second reaches the lock
SETTINGS = {"a": {"seed": 1, "lr": 1e-3}, "b": {"seed": 2, "lr": 2e-3}}


@pytest.mark.parametrize("first", ["a", "b"])
def test_two_trainings_on_one_run_dir_one_trains_the_other_is_refused(first, tmp_path, jsonl_root, start_lmlab):
    run = tmp_path / "run"
    order = [first, "b" if first == "a" else "a"]
    procs = {}
    for name in order:  # the second starts 0.3 s after the first, with another seed and lr
        s = SETTINGS[name]
        procs[name] = start_lmlab(tiny_args(jsonl_root, run, QUIET, f"steps={STEPS}", "checkpoint.every=40",
                                            f"seed={s['seed']}", f"optim.lr={s['lr']}"))
        time.sleep(0.3)
    outs = {name: proc.communicate(timeout=240) for name, proc in procs.items()}
    codes = {name: proc.returncode for name, proc in procs.items()}
    assert sorted(codes.values()) == [0, 2], outs
    winner = next(n for n in order if codes[n] == 0)
    loser = next(n for n in order if codes[n] == 2)
    out, err = outs[loser]
    assert "Traceback" not in out + err
    assert (f"lmlab train: error: {run} is in use: another lmlab train holds {run}/.lock: "
            f"pid {procs[winner].pid} on host {HOST}") in err
    assert "Fix: wait for that run to end" in err and "set dump_dir to another folder" in err
    # one consistent run, the winner's: its config, each step logged once, its checkpoints
    config = rundir.read_config(run)
    assert (config["seed"], config["optim"]["lr"]) == (SETTINGS[winner]["seed"], SETTINGS[winner]["lr"])
    metrics = [m for m in rundir.read_jsonl(run / rundir.METRICS_FILE) if "loss" in m]
    assert [m["step"] for m in metrics] == list(range(1, STEPS + 1))
    assert metrics[4]["lr"] == pytest.approx(SETTINGS[winner]["lr"])  # the end of warmup=5
    starts = [e for e in rundir.read_jsonl(run / rundir.EVENTS_FILE) if e["event"] == "run_start"]
    assert [e["pid"] for e in starts] == [procs[winner].pid]
    assert rundir.read_train_state(run / "checkpoints" / "final")["step"] == STEPS
    assert [p.name for p in rundir.step_checkpoints(run)] == [rundir.step_name(STEPS)]  # keep=1
    assert run_status(run)["status"] == "finished"
    assert (run / rundir.LOCK_FILE).read_bytes() == b""  # released cleanly


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path, jsonl_root, capsys, start_lmlab):
    run = tmp_path / "run"
    args = tiny_args(jsonl_root, run, QUIET, "steps=12", "checkpoint.every=4", "checkpoint.keep=0")
    proc = start_lmlab(args)
    wait_until(lambda: rundir.is_checkpoint(run / "checkpoints" / "0000000004"), proc, "checkpoint 4")
    proc.kill()  # kill -9: the kernel drops the flock, the file stays
    proc.wait(timeout=60)
    assert read_holder(run)["pid"] == proc.pid
    capsys.readouterr()
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"lmlab train: taking over {run}/.lock: left by pid {proc.pid} on host {HOST}" in out
    assert "which no longer holds it" in out and f"resuming {run} from checkpoint" in out
    warnings = [e["message"] for e in rundir.read_jsonl(run / rundir.EVENTS_FILE) if e["event"] == "warning"]
    assert any(f"left by pid {proc.pid}" in w for w in warnings)  # recorded too, not only printed
    assert logged_steps(run) == list(range(1, 13))
    assert run_status(run)["status"] == "finished"
    assert (run / rundir.LOCK_FILE).read_bytes() == b""


# --------------------------------------------------------------------------- Ctrl-C


def test_ctrl_c_saves_a_checkpoint_exits_130_and_resume_is_exact(tmp_path, jsonl_root, capsys, start_lmlab):
    common = ["steps=30", "checkpoint.every=1000"]
    straight = tmp_path / "straight"
    assert main(tiny_args(jsonl_root, straight, QUIET, *common)) == 0
    run = tmp_path / "interrupted"
    proc = start_lmlab(tiny_args(jsonl_root, run, QUIET, *common))
    wait_until(lambda: len(logged_steps(run)) >= 5, proc, "5 steps")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    assert "Traceback" not in out + err
    assert "Ctrl-C: stopping after this step with a checkpoint" in err
    saved = [p.name for p in rundir.step_checkpoints(run)]
    assert len(saved) == 1 and 5 <= int(saved[0]) < 30
    step = int(saved[0])
    assert (f"received SIGINT: saved a checkpoint at step {step} in {run}; resume with the same command "
            f"(it continues at step {step + 1}): lmlab train") in out
    status = run_status(run)
    assert status["status"] == "stopped" and status["rule"] == "run_end"
    end = [e for e in rundir.read_jsonl(run / rundir.EVENTS_FILE) if e["event"] == "run_end"][-1]
    assert end["reason"] == "SIGINT" and end["step"] == step
    assert main(tiny_args(jsonl_root, run, QUIET, *common)) == 0
    assert f"resuming {run} from checkpoint {saved[0]}" in capsys.readouterr().out
    assert same_weights(straight, run)  # bitwise: the stop changed nothing


def test_a_second_ctrl_c_stops_at_once():
    before = signal.getsignal(signal.SIGINT)
    with PreemptionSignals() as signals:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
        assert signals.requested == "SIGINT"  # the first: a flag the loop checks at the step's end
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(100):
                time.sleep(0.01)
    assert signal.getsignal(signal.SIGINT) is before
