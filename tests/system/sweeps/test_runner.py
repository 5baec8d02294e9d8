"""The local runner with stand-in trials (small Python scripts instead of ``lmlab train``): a failed
trial is recorded with its exit code and crash line and the sweep goes on; Ctrl-C reaches every
running trial's process group and the sweep waits for them; the CPU cores are split; a locked run
directory is waited for. The real thing (training, kill -9, resume) is tests/system/sweeps/test_local.py."""
from __future__ import annotations

import fcntl
import os
import signal
import sys
import textwrap
from pathlib import Path

from helpers import CONFIGS
from lmlab import sweepdir
from lmlab.sweeps.early_stop import MedianRule
from lmlab.sweeps.progress import Display
from lmlab.sweeps.runner import LocalRunner, crash_line, lock_holder, plan
from lmlab.sweeps.spec import load_spec
from lmlab.sweeps.table import TrialTable
from lmlab.sweeps.trials import expand

# A stand-in for `lmlab train`: writes a run directory's event log as lmlab would, then behaves
# as its argument says: finish, fail (exit 3 with an error line), or wait for SIGINT (exit 130).
FAKE_TRAIN = textwrap.dedent("""
    import json, os, signal, sys, time
    run, mode = sys.argv[1], sys.argv[2]
    os.makedirs(run, exist_ok=True)
    def event(**e):
        with open(os.path.join(run, "events.jsonl"), "a") as f:
            f.write(json.dumps({"time": "t", "unix": time.time(), **e}) + "\\n")
    event(event="run_start", pid=os.getpid(), host="h")
    with open(os.path.join(run, "threads"), "w") as f:
        f.write(os.environ.get("OMP_NUM_THREADS", "?"))
    if mode == "fail":
        print("lmlab train: error: the data ran out at step 3", flush=True)
        event(event="run_end", status="failed", phase="train",
              exception={"type": "ValueError", "message": "bad batch", "where": "lmlab/x.py:1"})
        sys.exit(3)
    if mode == "wait":
        def stop(*_):
            event(event="run_end", status="stopped")
            sys.exit(130)
        signal.signal(signal.SIGINT, stop)
        open(os.path.join(run, "ready"), "w").close()
        while True:
            time.sleep(0.05)
    if mode.startswith("val:"):  # validation loss at step 10, then train on until the end or a stop
        with open(os.path.join(run, "metrics.jsonl"), "w") as f:
            f.write(json.dumps({"step": 10, "val/loss": float(mode[4:])}) + "\\n")
        release = os.path.join(os.path.dirname(run), "release")  # the test's: the rule has spoken
        deadline = time.time() + 20
        while time.time() < deadline and not os.path.exists(release):
            time.sleep(0.05)
        if os.path.exists(os.path.join(run, "preempt.request")):  # created before the release
            event(event="run_end", status="preempted")
            sys.exit(0)
    with open(os.path.join(run, "metrics.jsonl"), "a") as f:
        f.write(json.dumps({"step": 20, "loss": 2.0}) + "\\n" + json.dumps({"step": 20, "val/loss": 1.5}) + "\\n")
    event(event="run_end", status="finished")
""")


class FakeRunner(LocalRunner):
    modes: dict = {}
    interrupt_when_running = 0

    def command(self, trial):
        return [sys.executable, str(self.sweep_dir.parent / "fake_train.py"), str(trial.run_dir(self.sweep_dir)),
                self.modes.get(trial.name, "finish")]

    def _poll(self):
        super()._poll()
        if any(s.early for s in self.slots.values()):
            (self.sweep_dir / "release").touch()
        ready = [s for s in self.slots.values() if (s.trial.run_dir(self.sweep_dir) / "ready").exists()]
        if self.interrupt_when_running and len(ready) == self.interrupt_when_running and not self.stopping:
            self.signals.append(signal.SIGINT)  # as the handler does for a Ctrl-C


def setup(tmp_path: Path, values: str, parallel: int, modes: dict, interrupt: int = 0, rule=None):
    (tmp_path / "fake_train.py").write_text(FAKE_TRAIN)
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(f"base: {CONFIGS / 'quickstart.yaml'}\nout: {tmp_path / 'sweep'}\n"
                         f"grid: {{optim.lr: [{values}]}}\n")
    spec = load_spec(spec_file)
    trials = expand(spec)
    sweep = tmp_path / "sweep"
    table = TrialTable(sweep, trials)
    todo = table.reconcile(trials)
    runner = FakeRunner(spec, sweep, todo, {}, table, plan(parallel, 0, cores=4),
                        Display(len(trials), 0, parallel, quiet=True), rule)
    runner.modes, runner.interrupt_when_running = modes, interrupt
    return runner, sweep


def test_a_failed_trial_is_recorded_and_the_sweep_goes_on(tmp_path, capsys):
    runner, sweep = setup(tmp_path, "0.1, 0.2, 0.3", 2, {"lr=0.2": "fail"})
    assert runner.run() == 1
    rows = {r["name"]: r for r in sweepdir.read_trials(sweep)}
    assert [rows[n]["status"] for n in ("lr=0.1", "lr=0.2", "lr=0.3")] == ["finished", "failed", "finished"]
    assert rows["lr=0.2"]["exit_code"] == 3
    assert rows["lr=0.2"]["crash"] == "failed in phase train: ValueError: bad batch (at lmlab/x.py:1)"
    assert "FAILED lr=0.2 (exit 3)" in capsys.readouterr().out
    # 4 cores, 2 trials at a time: 2 threads each
    assert (sweep / "lr=0.1" / "threads").read_text() == "2"
    # run again: the finished ones and the failed one are not started again
    runner2, _ = setup(tmp_path, "0.1, 0.2, 0.3", 2, {})
    assert runner2.pending == [] and runner2.run() == 0


def test_ctrl_c_reaches_every_running_trial_and_the_sweep_waits(tmp_path, capsys):
    runner, sweep = setup(tmp_path, "0.1, 0.2, 0.3", 2, {"lr=0.1": "wait", "lr=0.2": "wait"}, interrupt=2)
    assert runner.run() == 130
    rows = {r["name"]: r for r in sweepdir.read_trials(sweep)}
    assert rows["lr=0.1"]["status"] == rows["lr=0.2"]["status"] == "stopped"
    assert rows["lr=0.1"]["exit_code"] == 130
    assert rows["lr=0.3"]["status"] == "pending"  # never started
    assert "SIGINT: stopping 2 running trial(s)" in capsys.readouterr().out


def test_the_median_rule_stops_a_trial_worse_than_the_others(tmp_path, capsys):
    modes = {"lr=0.1": "val:1.0", "lr=0.2": "val:2.0", "lr=0.3": "val:3.0"}
    runner, sweep = setup(tmp_path, "0.1, 0.2, 0.3", 3, modes, rule=MedianRule(steps=[10], min_trials=2))
    assert runner.run() == 0
    rows = {r["name"]: r for r in sweepdir.read_trials(sweep)}
    assert [rows[n]["status"] for n in ("lr=0.1", "lr=0.2", "lr=0.3")] == ["finished", "finished", "stopped early"]
    assert rows["lr=0.3"]["stop_rule"] == ("median rule at step 10: val/loss 3.0000 > median 1.5000 of 2 "
                                           "other trial(s)")
    assert not (sweep / "lr=0.3" / "preempt.request").exists()
    runner2, _ = setup(tmp_path, "0.1, 0.2, 0.3", 3, {})
    assert runner2.pending == []  # stopped early: not run again


def test_crash_line_from_the_console_when_the_run_recorded_none(tmp_path):
    log = tmp_path / "t.log"
    log.write_text("=== header\nold attempt\n=== lmlab sweep: attempt 2\nlmlab train: error: configuration "
                   "has 1 problem (x.yaml):\n  - data.path: not found\n")
    assert crash_line(tmp_path / "run", log, len("=== header\nold attempt\n"), 0.0) == \
        "lmlab train: error: configuration has 1 problem (x.yaml): - data.path: not found"


def test_a_locked_run_directory_is_seen_as_busy(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    assert lock_holder(run) is None
    (run / ".lock").write_text('{"pid": 4242, "host": "h"}\n')
    assert lock_holder(run) is None  # a file nobody holds
    fd = os.open(run / ".lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        assert lock_holder(run)["pid"] == 4242
    finally:
        os.close(fd)


def test_plan_one_trial_per_gpu(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    p = plan(4, cuda_devices=2, cores=16)
    assert p.parallel == 2 and p.devices == ["3", "5"] and p.threads == 8
    assert plan(None, 0, cores=2).parallel == 1
