"""``lmlab train --nproc N`` ends as one process does (lmlab/training/launcher.py).

Signals reach the workers and the launcher returns only once they have exited: Ctrl-C (as a
terminal sends it, to the launcher's process group) stops the job with a checkpoint and exits 130;
SIGTERM to the launcher preempts it (exit 0); a second Ctrl-C stops at once, a third kills. A user
error inside the job exits 2 with one message and no torchrun traceback; a crash names the failed
ranks, the first first. A job environment exported by hand is refused at once.

The torchrun runs share what they can: one job is refused the lock of another that trains, is then
stopped by Ctrl-C, resumed with the printed command, and preempted by SIGTERM.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import REPO, make_jsonl_root, processes_mentioning, run_lmlab, tiny_args
from lmlab.cli import main
from lmlab.errors import LmlabError
from lmlab.reports.status import run_status
from lmlab.rundir import METRICS_FILE, read_jsonl, step_checkpoints
from lmlab.training import launcher
from lmlab.training.distributed import JOB_ENV

# Steps of 0.4 s (a sleep: no CPU): longer than the 0.25 s Python's subprocess waits for a child
# after Ctrl-C, which is how the old launcher returned before the checkpoint.
SLOW_STEPS = {"PYTHONPATH": str(Path(__file__).with_name("slow_steps")), "LMLAB_TEST_STEP_SLEEP": "0.4"}
AGENT = [sys.executable, "-m", "lmlab.training.launcher", "--standalone", "--nproc_per_node=2"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return make_jsonl_root(tmp_path_factory.mktemp("corpus"))


def train_args(corpus: Path, run: Path, *extra: str) -> list[str]:
    return tiny_args(corpus, run, "checkpoint.every=100", "logging.progress_bar=false", *extra)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST") and k not in JOB_ENV}
    return {**env, **extra}


def wait_for(condition, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        assert proc.poll() is None, f"exited early ({proc.returncode})"
        time.sleep(0.05)
    raise AssertionError("timed out")


class Started:
    """A command in a session of its own (as a terminal's foreground job), output to files."""

    def __init__(self, command: list[str], folder: Path, name: str, **env: str):
        self.out, self.err = folder / f"{name}.out", folder / f"{name}.err"
        with self.out.open("w") as out, self.err.open("w") as err:
            self.proc = subprocess.Popen(command, cwd=REPO, env=clean_env(**env), stdout=out, stderr=err,
                                         start_new_session=True)

    def wait(self, timeout: float = 120) -> tuple[int, str, str]:
        try:
            code = self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
        return code, self.out.read_text(), self.err.read_text()


def losses(run: Path) -> int:
    return len([m for m in read_jsonl(run / METRICS_FILE) if "loss" in m])


@pytest.mark.slow
def test_ctrl_c_and_sigterm_stop_the_job_with_a_checkpoint_and_return_after_it(corpus, tmp_path):
    run = tmp_path / "run"
    args = [*train_args(corpus, run, "data.batch_size=8", "steps=200"), "--nproc", "2"]
    # a stale job environment in the shell does not stop --nproc (torchrun sets the workers' own)
    job = Started([sys.executable, "-m", "lmlab", *args], tmp_path, "first", WORLD_SIZE="4", RANK="3",
                  **SLOW_STEPS)
    wait_for(lambda: losses(run) >= 1, job.proc, timeout=120)

    # a second job on the same run directory: the lock's refusal, said once, exit 2, no traceback
    second = run_lmlab(*args, timeout=120)
    assert second.returncode == 2, second.stderr[-3000:]
    assert second.stderr.count("lmlab train: error:") == 1 and "is in use" in second.stderr
    assert "Traceback" not in second.stderr and "ChildFailedError" not in second.stderr

    os.killpg(job.proc.pid, signal.SIGINT)  # Ctrl-C in a terminal: the foreground process group
    code, out, err = job.wait()
    assert not processes_mentioning(str(run))  # returned only after every worker exited
    assert code == 130, err[-3000:]
    assert run_status(run)["status"] == "stopped"
    assert len(step_checkpoints(run)) == 1
    assert err.count("Ctrl-C: stopping after this step") == 1 and "Traceback" not in err
    resume_hint = "resume with the same command"
    assert resume_hint in out and out.rstrip().endswith(f": lmlab {' '.join(args)}")  # --nproc 2 too

    again = Started([sys.executable, "-m", "lmlab", *args], tmp_path, "again", **SLOW_STEPS)  # as printed
    stopped_at = int(step_checkpoints(run)[0].name)
    wait_for(lambda: losses(run) > stopped_at, again.proc, timeout=120)
    os.kill(again.proc.pid, signal.SIGTERM)  # a scheduler's (or `kill`'s) SIGTERM to the launcher
    code, out, err = again.wait()
    assert not processes_mentioning(str(run))
    assert code == 0, err[-3000:]
    assert "resuming" in out and "received SIGTERM" in out and resume_hint in out
    assert run_status(run)["status"] == "preempted" and "Traceback" not in err
    assert int(step_checkpoints(run)[-1].name) > stopped_at


@pytest.mark.slow
def test_a_crash_names_the_failed_ranks_first_cause_first_without_torchruns_traceback(corpus, tmp_path):
    run = tmp_path / "run"
    raising = str(Path(__file__).with_name("raise_on_rank.py"))  # rank 1 raises at step 5
    out = subprocess.run([*AGENT, raising, *train_args(corpus, run, "data.batch_size=8", "steps=20")],
                         cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert out.stderr.startswith("lmlab train (rank 1 of 2): failed in phase train: RuntimeError: "
                                 "injected failure at step 5"), out.stderr[-3000:]
    assert out.stderr.count("(rank 1 of 2)") == 1 and "Traceback" not in out.stderr
    assert not processes_mentioning(str(run))


@pytest.mark.slow
def test_the_agent_forwards_each_signal_to_every_worker_and_the_third_ctrl_c_kills(tmp_path):
    worker = str(Path(__file__).with_name("signal_worker.py"))  # logs the signals it gets, runs on
    agent = Started([*AGENT, worker, str(tmp_path)], tmp_path, "agent")
    logs = [tmp_path / f"rank-{rank}.log" for rank in (0, 1)]
    wait_for(lambda: all((tmp_path / f"rank-{rank}.ready").exists() for rank in (0, 1)), agent.proc)
    sent = ["SIGUSR1", "SIGTERM", "SIGINT", "SIGINT"]
    for n, name in enumerate(sent, 1):
        os.kill(agent.proc.pid, getattr(signal, name))
        wait_for(lambda: all(log.exists() and len(log.read_text().split()) == n for log in logs), agent.proc)
    os.kill(agent.proc.pid, signal.SIGINT)  # the third Ctrl-C
    code, _, err = agent.wait(timeout=30)
    assert code == 130 and [log.read_text().split() for log in logs] == [sent, sent]
    assert err.count("Ctrl-C again: every process stops at once") == 1
    assert "Ctrl-C 3 times: killed the processes" in err and "Traceback" not in err
    assert err.rstrip().endswith("interrupted")


# --------------------------------------------------------------------------- how a job ended


def report(code: int, text: str | None = None, at: float = 0.0) -> dict:
    return {"code": code, "text": text, "time": at}


LOG = "torchrun's own log"


@pytest.mark.parametrize("failed, reports, failed_ranks, received, expected", [
    (False, {0: report(0), 1: report(0)}, {}, [signal.SIGTERM], (0, None)),  # a preemption
    (True, {0: report(2, "e0"), 1: report(2, "e1")}, {0: 2, 1: 2}, [], (2, "e0")),  # rank 0's
    (True, {0: report(1, "gloo: peer closed"), 1: report(2, "e1")}, {0: 1, 1: 2}, [], (2, "e1")),
    (True, {1: report(2, "e1")}, {0: -15, 1: 2}, [], (2, "e1")),  # rank 0 stopped by torchrun
    (True, {0: report(130), 1: report(130)}, {0: 130, 1: 130}, [signal.SIGINT], (130, None)),
    (True, {0: report(130, "interrupted")}, {0: 130, 1: -9}, [signal.SIGINT] * 2, (130, "interrupted")),
    (True, {}, {0: -2, 1: -2}, [signal.SIGINT], (130, "interrupted")),  # before any handler
    (True, {}, {0: -15, 1: -15}, [signal.SIGTERM], (143, None)),  # as one process killed so
    (True, {0: report(1, "r0 gloo", at=2), 1: report(1, "r1 cause", at=1)}, {0: 1, 1: 1}, [],
     (1, "r1 cause\nr0 gloo")),
    (True, {0: report(1, "r0 gloo")}, {0: 1, 1: -11}, [],
     (1, f"r0 gloo\nrank 1 (exit code -11) ended without a message; torchrun's log:\n{LOG}")),
])
def test_the_job_ends_with_one_status_and_one_message(failed, reports, failed_ranks, received, expected):
    assert launcher.outcome(failed, reports, failed_ranks, received, LOG) == expected


def test_a_worker_reports_how_it_ended_instead_of_printing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(launcher.REPORTS_ENV, str(tmp_path))
    monkeypatch.setenv("RANK", "1")

    def refused():
        raise LmlabError("run dir in use. Fix: wait")

    def interrupted():
        raise KeyboardInterrupt

    def crashed():
        launcher.tell("lmlab train (rank 1 of 2): failed in phase train: ...")
        return 1

    def bug():
        return 1 // 0

    for action, code, text in [(refused, 2, "lmlab train: error: run dir in use. Fix: wait"),
                               (interrupted, 130, "interrupted"), (lambda: 130, 130, None),
                               (crashed, 1, "lmlab train (rank 1 of 2): failed in phase train: ..."),
                               (bug, 1, "lmlab train (rank 1) crashed:\nTraceback (most recent call last):")]:
        assert launcher.report_exit(action, "train") == code
        written = launcher._read_reports(tmp_path)
        assert list(written) == [1] and written[1]["code"] == code
        assert written[1]["text"] == text or written[1]["text"].startswith(text)
    assert written[1]["text"].endswith("ZeroDivisionError: integer division or modulo by zero")
    assert capsys.readouterr().err == ""


def test_a_signal_the_shell_ignores_stays_ignored():
    """``nohup lmlab train --nproc 2 &``: a closed terminal's SIGHUP must not reach the workers."""
    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        previous = launcher._install(lambda *_: None)
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN and signal.SIGHUP not in previous
        launcher._restore(previous)
    finally:
        signal.signal(signal.SIGHUP, before)


@pytest.mark.parametrize("env, said", [
    ({"WORLD_SIZE": "2"}, "WORLD_SIZE=2 is set but this process was not started by torchrun"),
    # with RANK and MASTER_* too, the rendezvous waited distributed.timeout_s (600 s) for rank 1
    ({"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29511"},
     "Fix: unset WORLD_SIZE RANK MASTER_ADDR MASTER_PORT to train on one process"),
    ({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}, "(no TORCHELASTIC_RUN_ID)"),
    ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' is not a number of processes"),
])
def test_a_job_environment_exported_by_hand_is_refused_at_once(corpus, tmp_path, monkeypatch, capsys, env,
                                                                said):
    for name in JOB_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    started = time.monotonic()
    code = main([*train_args(corpus, tmp_path / "run", "distributed.timeout_s=5", "steps=2")])
    err = capsys.readouterr().err
    assert code == 2 and said in err and "--nproc N" in err and "Traceback" not in err
    assert time.monotonic() - started < 5
    assert not (tmp_path / "run").exists()
