"""Starting several processes on this machine, and how they end: ``lmlab train --nproc N``.

Three layers of processes, each with one job:

* the **launcher**: the ``lmlab train --nproc N`` a user started, in the terminal's session. It runs
  the agent in a session of its own, so a terminal's Ctrl-C reaches the launcher alone, and forwards
  SIGINT / SIGTERM / SIGUSR1 / SIGHUP to the agent; it returns the agent's exit status.
* the **agent**: ``python -m lmlab.training.launcher TORCHRUN_ARGS``, torchrun's own agent run in a
  thread, so that this module (not torchrun) owns the signals. It forwards each signal to every
  worker, as one process receives it (``training.signals``: the first Ctrl-C or SIGTERM/SIGUSR1
  stops the job at an agreed step with a checkpoint; a second Ctrl-C stops it at once; a third kills
  the workers), and waits for them, however long the checkpoint takes. torchrun's own log and
  traceback go to a buffer, shown only for a failure that no worker explained. The SLURM script can
  run it in place of torchrun (same arguments) to get the same behaviour on every node.
* the **workers** (``lmlab train`` under torchrun): each writes how it ended (exit code and its
  message) to a file in a folder the agent names (``REPORTS_ENV``) instead of printing an error
  itself. The agent then says it once, as one process would: a user error (``LmlabError``) exits 2
  with rank 0's message (or the lowest rank's that has one), an orderly Ctrl-C stop exits 130, a
  SIGTERM/SIGUSR1 preemption exits 0, a crash exits 1 with each failed rank's line (or traceback),
  the first to fail first.

No torch import at module level: the agent redirects ``sys.stderr`` before torch sets up its logging.
"""
from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

from lmlab.errors import LmlabError

AGENT_MODULE = "lmlab.training.launcher"  # this module, run as the agent
REPORTS_ENV = "LMLAB_RANK_REPORTS"  # the folder the workers write their exit reports to
COMMAND_ENV = "LMLAB_LAUNCH_COMMAND"  # the launcher's command line (JSON): provenance, resume hint
PARENT_ENV = "LMLAB_LAUNCHER_PID"  # the agent stops the job (as on SIGTERM) when the launcher dies
FORWARDED = ("SIGINT", "SIGTERM", "SIGUSR1", "SIGHUP")
USER_ERROR_EXIT = 2  # as lmlab.cli: a user error
INTERRUPTED_EXIT = 130  # 128 + SIGINT, as shells report a command stopped by Ctrl-C
KILL_AFTER_INTERRUPTS = 3  # the third Ctrl-C kills the workers
POLL_S = 0.1


# --------------------------------------------------------------------------- the launcher


def launch_local(nproc: int, argv: list[str], command: list[str] | None = None) -> int:
    """Run ``lmlab ARGV`` on ``nproc`` processes of this machine; returns the job's exit status.
    ``command``: the command line as the user typed it (with ``--nproc``), for the resume hint."""
    agent_cmd = [sys.executable, "-m", AGENT_MODULE, "--standalone",
                 f"--nproc_per_node={nproc}", "-m", "lmlab", *argv]
    env = {**os.environ, PARENT_ENV: str(os.getpid())}
    if command is not None:
        env[COMMAND_ENV] = json.dumps(command)
    print(f"launching {nproc} processes: torchrun --standalone --nproc_per_node={nproc} -m lmlab "
          f"{' '.join(argv)}", flush=True)
    pending: list[int] = []  # forwarded once the agent has its handlers (else it would just die)
    previous = _install(lambda signum, _frame: pending.append(signum))
    try:
        agent = subprocess.Popen(agent_cmd, env=env, start_new_session=True)
        while True:
            while pending and _ready(agent.pid):
                _signal(agent.pid, pending.pop(0))
            try:
                status = agent.wait(timeout=POLL_S)
                break
            except subprocess.TimeoutExpired:
                continue
    finally:
        _restore(previous)
    return status if status >= 0 else 128 - status


def _ready(pid: int) -> bool:
    """Whether the agent ``pid`` catches (or ignores) every forwarded signal yet (/proc/PID/status):
    Python catches SIGINT from its start, but the agent's own handlers come a moment later; and
    before its exec the child is still a copy of this process, with this process's handlers."""
    wanted = sum(1 << (getattr(signal, name) - 1) for name in FORWARDED)
    masks = {}
    try:
        if AGENT_MODULE.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes():
            return False  # not exec'd yet
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(("SigCgt:", "SigIgn:")):
                    masks[line[:6]] = int(line.split()[1], 16)
    except (OSError, ValueError):
        return True  # no way to know: send it
    return (masks.get("SigCgt", 0) | masks.get("SigIgn", 0)) & wanted == wanted


def _install(handler) -> dict:
    """``handler`` for the forwarded signals, except those ignored (``nohup``: SIGHUP; a background
    job of a script: SIGINT): they stay ignored here, as in the processes started from here."""
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for name in FORWARDED:
            sig = getattr(signal, name)
            if signal.getsignal(sig) != signal.SIG_IGN:
                previous[sig] = signal.signal(sig, handler)
    return previous


def _restore(previous: dict) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


# --------------------------------------------------------------------------- the agent


class Agent:
    """torchrun's agent in a thread of this process; the main thread forwards signals to the workers."""

    def __init__(self, torchrun_args: list[str], log, reports_dir: Path):
        self.torchrun_args, self.log, self.reports_dir = torchrun_args, log, reports_dir
        self.received: list[int] = []
        self.delivered: dict[int, int] = {}  # worker pid -> how many of ``received`` it got
        self.said = 0  # how many of ``received`` were announced
        self.failed_ranks: dict[int, int] | None = None  # rank -> exit code, when any failed
        self.error: BaseException | None = None  # anything else the agent raised

    def run(self) -> None:
        thread = threading.Thread(target=self._agent, name="torchrun-agent", daemon=True)
        previous = _install(self._on_signal)
        parent = os.environ.pop(PARENT_ENV, "")  # for this process only, not the workers
        if parent.isdigit() and not _die_with_parent(int(parent)):
            self.received.append(signal.SIGTERM)  # the launcher is already gone
        try:
            thread.start()
            while thread.is_alive():
                thread.join(POLL_S)
                self._deliver()
        finally:
            _restore(previous)

    def _agent(self) -> None:
        from lmlab.training import distributed  # lazy: torch, imported once sys.stderr is the log

        try:
            self.failed_ranks = distributed.run_torchrun(self.torchrun_args)
        except BaseException as err:  # noqa: BLE001 -- reported by the main thread, with the log
            traceback.print_exc(file=self.log)
            self.error = err

    def _on_signal(self, signum, _frame) -> None:
        self.received.append(signum)  # delivered by the main thread's loop, never re-entrantly

    def _deliver(self) -> None:
        """Every signal received so far, in order, to every worker once it is ready for one (it has
        started lmlab: a signal earlier would kill it mid-import, with Python's fatal-error noise);
        the third Ctrl-C kills them all at once."""
        received = list(self.received)  # a signal that arrives meanwhile is for the next round
        if not received:
            return
        interrupts = received.count(signal.SIGINT)
        kill = interrupts >= KILL_AFTER_INTERRUPTS
        ready = {path.name.removeprefix("ready-") for path in self.reports_dir.glob("ready-*")}
        for pid in _children(os.getpid()):
            if kill:
                _signal(pid, signal.SIGKILL)
            elif str(pid) in ready:
                for signum in received[self.delivered.get(pid, 0):]:
                    _signal(pid, signum)
                self.delivered[pid] = len(received)
        if len(received) > self.said and received[-1] == signal.SIGINT and interrupts > 1:
            _say("\nCtrl-C again: every process stops at once, without a checkpoint (Ctrl-C once more "
                 "kills them)" if not kill else f"\nCtrl-C {interrupts} times: killed the processes")
        self.said = len(received)


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (torchrun's workers are the agent's only children)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()  # after "pid (comm) ": state, ppid, ...
        if len(fields) > 1 and fields[1] == str(pid):
            found.append(int(entry.name))
    return found


def _die_with_parent(parent: int) -> bool:
    """SIGTERM to this process when the launcher dies (even by SIGKILL): the job then stops with a
    checkpoint instead of training on, orphaned, with the run directory locked. False if the
    launcher is already gone."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    return os.getppid() == parent


def _say(text: str) -> None:
    try:  # to fd 2: sys.stderr is torchrun's log here
        os.write(2, (text + "\n").encode())
    except OSError:
        pass


def outcome(failed: bool, reports: dict[int, dict], failed_ranks: dict[int, int], received: list[int],
            log: str) -> tuple[int, str | None]:
    """The job's exit status and the one message to print, from how every worker ended.

    ``failed``: torchrun saw a worker fail; ``reports``: rank -> what the worker wrote
    (``code``, ``text``, ``time``); ``failed_ranks``: rank -> exit code, as torchrun saw them;
    ``received``: the signals forwarded; ``log``: torchrun's own output."""
    if not failed:
        return 0, None
    user = sorted(rank for rank, r in reports.items() if r.get("code") == USER_ERROR_EXIT and r.get("text"))
    if user:
        return USER_ERROR_EXIT, reports[user[0]]["text"]  # rank 0's if it has one: it sorts first
    interrupted = sorted(rank for rank, r in reports.items() if r.get("code") == INTERRUPTED_EXIT)
    if interrupted or signal.SIGINT in received:
        texts = [reports[rank]["text"] for rank in interrupted if reports[rank].get("text")]
        return INTERRUPTED_EXIT, texts[0] if texts else (None if interrupted else "interrupted")
    if received:  # the workers died of a forwarded signal before they could stop in order
        return 128 + int(received[0]), None
    crashes = sorted((r for r in reports.values() if r.get("code") not in (0, None) and r.get("text")),
                     key=lambda r: r.get("time", 0))  # the first to fail first: the likely cause
    lines = [r["text"] for r in crashes]
    unexplained = {rank: code for rank, code in sorted(failed_ranks.items()) if rank not in reports}
    if unexplained:
        ended = ", ".join(f"rank {rank} (exit code {code})" for rank, code in unexplained.items())
        lines.append(f"{ended} ended without a message; torchrun's log:\n{log.rstrip()}")
    elif not lines:
        lines.append(f"torchrun failed; its log:\n{log.rstrip()}")
    return 1, "\n".join(lines)


def agent_main(argv: list[str] | None = None) -> int:
    """``python -m lmlab.training.launcher TORCHRUN_ARGS``: torchrun, with lmlab's signals and exit."""
    argv = list(sys.argv[1:] if argv is None else argv)
    log = tempfile.TemporaryFile("w+", prefix="lmlab-torchrun-", suffix=".log")
    real_stderr, sys.stderr = sys.stderr, log  # torchrun's log and tracebacks; the workers keep fd 2
    reports_dir = Path(tempfile.mkdtemp(prefix="lmlab-ranks-"))
    os.environ[REPORTS_ENV] = str(reports_dir)
    try:
        agent = Agent(argv, log, reports_dir)
        agent.run()
        log.flush()
        log.seek(0)
        failed = agent.failed_ranks is not None or agent.error is not None
        code, text = outcome(failed, _read_reports(reports_dir), agent.failed_ranks or {}, agent.received,
                             log.read())
    finally:
        sys.stderr = real_stderr
        shutil.rmtree(reports_dir, ignore_errors=True)
    if text:
        print(text, file=sys.stderr, flush=True)
    return code


def _read_reports(folder: Path) -> dict[int, dict]:
    reports = {}
    for path in folder.glob("rank-*.json"):
        try:
            report = json.loads(path.read_text())
            reports[int(report["rank"])] = report
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return reports


# --------------------------------------------------------------------------- the workers


class _Held:
    text: str | None = None


def reporting() -> bool:
    """This process is a worker of the agent above: it reports how it ended instead of printing."""
    return REPORTS_ENV in os.environ and "RANK" in os.environ


def launch_command() -> list[str] | None:
    """The launcher's command line (``lmlab train ... --nproc N``), in a worker it started."""
    raw = os.environ.get(COMMAND_ENV)
    try:
        command = json.loads(raw) if raw else None
    except ValueError:
        return None
    return command if isinstance(command, list) and all(isinstance(w, str) for w in command) else None


def tell(text: str) -> None:
    """A worker's last word (a crash line): held for its report when the agent says it, else printed."""
    if reporting():
        _Held.text = text
    else:
        print(text, file=sys.stderr, flush=True)


def report_exit(action, command: str) -> int:
    """Run ``action`` (returns an exit code) as a worker that reports how it ended: a user error's
    message and a Ctrl-C are written to the report, not printed (the agent prints one for the job)."""
    _Held.text = None
    folder = Path(os.environ[REPORTS_ENV])
    with contextlib.suppress(OSError):  # from now on a signal stops this process in order
        (folder / f"ready-{os.getpid()}").touch()
    try:
        code, text = action(), None
    except LmlabError as err:
        code, text = USER_ERROR_EXIT, f"lmlab {command}: error: {err}"
    except KeyboardInterrupt:
        code, text = INTERRUPTED_EXIT, "interrupted"
    except Exception:  # noqa: BLE001 -- a bug, or this rank's end after another's (a peer gone)
        rank = os.environ.get("RANK")
        code, text = 1, f"lmlab {command} (rank {rank}) crashed:\n{traceback.format_exc().rstrip()}"
    _write_report(code, text or _Held.text)
    return code


def _write_report(code: int, text: str | None) -> None:
    folder = Path(os.environ[REPORTS_ENV])
    rank = int(os.environ.get("RANK", "0"))
    report = {"rank": rank, "code": code, "text": text, "time": time.time()}
    tmp = folder / f".rank-{rank}.json.tmp"
    try:
        tmp.write_text(json.dumps(report))
        os.replace(tmp, folder / f"rank-{rank}.json")
    except OSError:  # the agent is gone (its folder with it): print, as without one
        if text:
            print(text, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(agent_main())
