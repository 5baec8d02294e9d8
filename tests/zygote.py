"""Real ``lmlab`` processes without a fresh interpreter's start-up each: a "zygote" process imports
torch, torch._dynamo (which torch's optimizers import on first use) and lmlab once, then forks a
process per request that runs ``lmlab.cli.main(ARGS)`` as ``python -m lmlab ARGS`` would, on one
thread (OMP_NUM_THREADS=1, as the in-process runs it is compared with). A start costs a fraction of
a second instead of ~3 s. Each child is a real process of its own: its pid, its signals (SIGINT,
SIGTERM, SIGKILL), its file locks, its exit code; its stdout and stderr go to files.

tests/system/conftest.py starts one zygote a session (the ``zygote`` fixture); test_kill_resume.py
(kill -9 at random moments), test_run_lock.py and test_faults.py fork their training processes from it.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers import REPO

ZYGOTE = r"""
import importlib, json, os, sys, traceback
for name in ("torch", "torch._dynamo", "numpy", "safetensors.torch", "lmlab.cli", "lmlab.preflight",
             "lmlab.apps.train", "lmlab.training.trainer", "lmlab.training.checkpoint",
             "lmlab.training.metrics", "lmlab.data.pipeline", "lmlab.models.registry",
             "lmlab.evaluation.validation", "lmlab.runlog"):
    try:  # only a speed-up: whatever is missing is imported by the child itself
        importlib.import_module(name)
    except ImportError:
        pass
from lmlab.cli import main

def child(args, out, err):
    code = 1
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        efd = fd if err == out else os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1); os.dup2(efd, 2); os.close(fd)
        if efd != fd:
            os.close(efd)
        null = os.open(os.devnull, os.O_RDONLY); os.dup2(null, 0); os.close(null)
        sys.argv = ["lmlab", *args]
        code = main(args)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
    sys.stdout.flush(); sys.stderr.flush()
    os._exit(code or 0)

done = {}
def reply(obj):
    sys.stdout.write(json.dumps(obj) + "\n"); sys.stdout.flush()

reply({"ready": True})
while line := sys.stdin.readline():
    req = json.loads(line)
    if req["op"] == "start":
        pid = os.fork()
        if pid == 0:
            child(req["args"], req["out"], req["err"])
        reply({"pid": pid})
    elif req["op"] == "poll":
        pid = req["pid"]
        if pid not in done:
            got, status = os.waitpid(pid, os.WNOHANG)
            if got:
                done[pid] = os.waitstatus_to_exitcode(status)
        reply({"code": done.get(pid)})
os._exit(0)  # stdin closed: done (no interpreter shutdown walking torch's objects: it takes ~1 s)
"""


def child_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")  # tiny models on a busy 2-core machine
    return env


class Zygote:
    """A process that imported torch and lmlab once and forks a training process per request."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", ZYGOTE], cwd=REPO, env=child_env(),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.children: list[Child] = []
        assert self._read() == {"ready": True}

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        assert line, f"zygote died (exit {self.proc.poll()})"
        return json.loads(line)

    def call(self, **request) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def start(self, args: list[str], out: Path, err: Path | None = None) -> "Child":
        """``lmlab ARGS`` in a forked process: stdout to ``out``, stderr to ``err`` (default: ``out``)."""
        err = err or out
        child = Child(self, self.call(op="start", args=args, out=str(out), err=str(err))["pid"], out, err)
        self.children.append(child)
        return child

    def close(self) -> None:
        for child in self.children:
            child.kill()
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


class Child:
    """A forked ``lmlab`` process, with the part of ``subprocess.Popen``'s interface the tests use."""

    def __init__(self, zygote: Zygote, pid: int, out: Path, err: Path):
        self.zygote, self.pid, self.out, self.err = zygote, pid, out, err
        self.returncode: int | None = None  # known once a poll has reaped the process

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self.zygote.call(op="poll", pid=self.pid)["code"]
        return self.returncode

    def wait(self, timeout: float = 300) -> int:
        deadline = time.monotonic() + timeout
        while (code := self.poll()) is None:
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"lmlab did not finish in {timeout} s:\n{self.output()}")
            time.sleep(0.02)
        return code

    def communicate(self, timeout: float = 300) -> tuple[str, str]:
        """Wait for the end; (stdout, stderr)."""
        self.wait(timeout)
        return self._read(self.out), "" if self.err == self.out else self._read(self.err)

    def send_signal(self, signum: int) -> None:
        if self.returncode is None:  # not reaped yet (only poll reaps), so the pid is still ours
            os.kill(self.pid, signum)

    def kill(self) -> bool:
        """SIGKILL; True when that is what ended the process (not an exit of its own just before)."""
        if self.returncode is not None:
            return False
        os.kill(self.pid, signal.SIGKILL)
        return self.wait(60) == -signal.SIGKILL

    def output(self) -> str:
        return self._read(self.out) + ("" if self.err == self.out else self._read(self.err))

    @staticmethod
    def _read(path: Path) -> str:
        return path.read_text() if path.is_file() else ""
