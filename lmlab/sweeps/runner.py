"""Running a sweep's trials on this machine, N at a time, each as ``python -m lmlab train BASE
OVERRIDES dump_dir=<sweep>/<trial>`` in its own process group, its console output appended to
``<sweep>/logs/<trial>.log``.

* CPU: the cores are split, ``OMP_NUM_THREADS`` = cores // N per trial. GPUs: one trial per
  device (``CUDA_VISIBLE_DEVICES``), at most as many at a time as there are devices.
* A trial that fails is recorded (exit code, the crash line from its event log or console) and the
  sweep goes on; the sweep's exit status is then 1.
* Ctrl-C (or SIGTERM) of the sweep goes to every running trial's process group, so each saves a
  checkpoint and stops (``lmlab train`` on SIGINT), and the sweep waits for them (exit 130). A
  trial whose sweep is killed outright (``kill -9``) gets SIGTERM from the kernel
  (``PR_SET_PDEATHSIG``, Linux) and saves a checkpoint the same way. Running the same command
  again resumes: finished trials are skipped, the others resume from their checkpoints.
* A trial whose run directory is still locked (a trial of a killed sweep still saving, or an
  ``lmlab train`` started by hand) is started only once its lock is free.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from lmlab import rundir, sweepdir
from lmlab.rundir import LOCK_FILE, PREEMPT_FILE
from lmlab.runlock import read_holder
from lmlab.reports.status import run_status
from lmlab.sweeps.early_stop import MedianRule
from lmlab.sweeps.progress import Display, MetricsTail
from lmlab.sweeps.spec import SweepSpec
from lmlab.sweeps.table import RUN_DONE, TrialTable, now_iso, started_row
from lmlab.sweeps.trials import Trial, override

POLL_S = 0.25
INTERRUPTED_EXIT = 130
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass
class Slot:
    index: int
    trial: Trial
    proc: subprocess.Popen
    steps: int
    tail: MetricsTail
    log_offset: int
    started: float
    device: str | None = None
    early: str | None = None  # why the rule stopped it


@dataclass
class Plan:
    """How many trials at once, and each one's share of the machine."""

    parallel: int
    threads: int
    devices: list[str] = field(default_factory=list)  # GPU ids; [] on CPU

    def describe(self) -> str:
        where = (f"one GPU each ({', '.join(self.devices)})" if self.devices
                 else f"{self.threads} CPU thread(s) each")
        return f"{self.parallel} trial(s) at a time, {where}"


def plan(parallel: int | None, cuda_devices: int, cores: int) -> Plan:
    """``--parallel`` (default: 1 on CPU, one per GPU) and the devices or threads per trial."""
    if cuda_devices:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        ids = [d.strip() for d in visible.split(",") if d.strip()] if visible else []
        ids = (ids or [str(i) for i in range(cuda_devices)])[:cuda_devices]
        n = min(parallel or len(ids), len(ids))
        return Plan(parallel=n, threads=max(1, cores // n), devices=ids[:n])
    n = max(1, parallel or 1)
    return Plan(parallel=n, threads=max(1, cores // n))


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class LocalRunner:
    def __init__(self, spec: SweepSpec, sweep_dir: Path, trials: list[Trial], steps: dict[str, int],
                 table: TrialTable, plan_: Plan, display: Display, rule: MedianRule | None = None):
        self.spec, self.sweep_dir, self.table, self.plan = spec, Path(sweep_dir), table, plan_
        self.steps, self.display, self.rule = steps, display, rule
        self.pending = list(trials)
        self.slots: dict[int, Slot] = {}
        self.signals: list[int] = []
        self.failed = 0
        self.stopping = False  # Ctrl-C / SIGTERM received: start no more trials
        self.waiting_noted: set[str] = set()

    # ----------------------------------------------------------------- the loop

    def run(self) -> int:
        previous = {s: signal.signal(s, lambda n, _f: self.signals.append(n))
                    for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            if self.rule is not None:  # what earlier attempts logged counts too
                for name in self.table.rows:
                    self.rule.observe_run(name, sweepdir.trial_dir(self.sweep_dir, name))
            while self.slots or (self.pending and not self.stopping):
                if self.signals:
                    self._forward(self.signals.pop(0))
                if not self.stopping:
                    self._fill()
                self._poll()
                self.display.heartbeat([(s.trial.name, s.tail.step, s.steps, s.tail.text())
                                        for s in self.slots.values()])
                if self.pending and not self.slots and not self.stopping:
                    time.sleep(1.0)  # every trial left waits for a lock held elsewhere
                time.sleep(POLL_S)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.display.close()
        if self.stopping:
            return INTERRUPTED_EXIT
        return 1 if self.failed else 0

    def _fill(self) -> None:
        free = [i for i in range(self.plan.parallel) if i not in self.slots]
        for index in free:
            trial = self._next_startable()
            if trial is None:
                return
            self._start(index, trial)

    def _next_startable(self) -> Trial | None:
        for trial in self.pending:
            holder = lock_holder(trial.run_dir(self.sweep_dir))
            if holder is None:
                self.pending.remove(trial)
                return trial
            if trial.name not in self.waiting_noted:
                self.waiting_noted.add(trial.name)
                self.display.line(f"waiting for {trial.name}: its run directory is locked by pid "
                                  f"{holder.get('pid', '?')} on {holder.get('host', '?')} (a trial of an "
                                  "earlier sweep still saving, or an lmlab train started by hand)")
        return None

    def command(self, trial: Trial) -> list[str]:
        return [sys.executable, "-m", "lmlab", "train", self.spec.base, *trial.overrides(self.spec),
                override("dump_dir", str(trial.run_dir(self.sweep_dir)))]

    def _start(self, index: int, trial: Trial) -> None:
        env = dict(os.environ)
        for name in THREAD_VARS:
            env[name] = str(self.plan.threads)
        device = self.plan.devices[index] if self.plan.devices else None
        if device is not None:
            env["CUDA_VISIBLE_DEVICES"] = device
        log = sweepdir.log_file(self.sweep_dir, trial.name)
        log.parent.mkdir(parents=True, exist_ok=True)
        row = started_row(self.table[trial.name], device, log, self.sweep_dir)
        command = self.command(trial)
        with open(log, "ab") as out:
            offset = out.tell()
            out.write(f"=== lmlab sweep: attempt {row['attempts']} at {row['started']}: "
                      f"{' '.join(command[2:])}\n".encode())
            out.flush()
            proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, start_new_session=True, preexec_fn=_die_with_parent(os.getpid()))
        self.table.update(trial.name, **row)
        tail = MetricsTail(trial.run_dir(self.sweep_dir) / rundir.METRICS_FILE)
        self.slots[index] = Slot(index, trial, proc, self.steps.get(trial.name, 0), tail, offset, time.time(), device)
        where = f"GPU {device}" if device is not None else f"{self.plan.threads} thread(s)"
        self.display.started(index, trial.name, self.steps.get(trial.name, 0), where)

    def _poll(self) -> None:
        for index, slot in list(self.slots.items()):
            for line in slot.tail.poll():
                if self.rule is not None:
                    self.rule.observe(slot.trial.name, int(line.get("step") or 0), line.get("val/loss"))
            self.display.progress(index, slot.tail.step, slot.tail.text())
        if self.rule is not None and not self.stopping:
            self._judge()
        for index, slot in list(self.slots.items()):
            if slot.proc.poll() is not None:
                del self.slots[index]
                self._ended(slot)

    def _judge(self) -> None:
        """The early-stopping rule on every running trial: a trial's value at a step may turn out
        worse than the median only once others have reached that step too."""
        for slot in self.slots.values():
            if slot.early:
                continue
            why = next((w for w in (self.rule.verdict(slot.trial.name, s) for s in sorted(self.rule.steps)) if w), None)
            if why:
                slot.early = why
                self.table.update(slot.trial.name, status=sweepdir.STOPPED_EARLY, stop_rule=why)
                (slot.trial.run_dir(self.sweep_dir) / PREEMPT_FILE).touch()
                self.display.line(f"stopping {slot.trial.name} early: {why}")

    # ----------------------------------------------------------------- a trial ends

    def _ended(self, slot: Slot) -> None:
        run, log = slot.trial.run_dir(self.sweep_dir), sweepdir.log_file(self.sweep_dir, slot.trial.name)
        slot.tail.poll()  # what it wrote after the last poll
        if slot.early:
            (run / PREEMPT_FILE).unlink(missing_ok=True)
        fields, text = outcome(slot, run_status(run)["status"] if run.is_dir() else None, self.stopping)
        if fields["status"] == sweepdir.FAILED:
            self.failed += 1
            fields["crash"] = crash_line(run, log, slot.log_offset, slot.started)
            text += f": {fields['crash']}\n  log: {log}"
        self.table.update(slot.trial.name, **fields)
        self.display.ended(slot.index, text, counted=fields["status"] in (*sweepdir.DONE, sweepdir.FAILED))

    def _forward(self, signum: int) -> None:
        """Ctrl-C / SIGTERM: to every running trial (its whole process group); start no more."""
        first = not self.stopping
        self.stopping = True
        if first:
            self.display.line(f"{signal.Signals(signum).name}: stopping {len(self.slots)} running trial(s) "
                              "with a checkpoint each (Ctrl-C again stops them at once, without one)")
        for slot in self.slots.values():
            try:
                os.killpg(slot.proc.pid, signum)
            except ProcessLookupError:
                pass


def outcome(slot: Slot, status: str | None, stopping: bool) -> tuple[dict, str]:
    """(the table's fields, one line) for a trial whose process ended with ``slot.proc.returncode``;
    ``status``: what its run directory says now; ``stopping``: the sweep was interrupted."""
    code, name, step = slot.proc.returncode, slot.trial.name, slot.tail.step
    fields = {"exit_code": code, "ended": now_iso(), "seconds": round(time.time() - slot.started, 1)}
    if code == 0 and status in RUN_DONE:
        said = f" ({slot.tail.text()})" if slot.tail.text() else ""
        return {**fields, "status": sweepdir.FINISHED, "stop_rule": None}, f"finished {name}{said}"
    if slot.early and code == 0:
        return {**fields, "status": sweepdir.STOPPED_EARLY, "stop_rule": slot.early}, \
            f"stopped early {name} at step {step}"
    if stopping and code in (0, INTERRUPTED_EXIT, -signal.SIGINT, -signal.SIGTERM):
        return {**fields, "status": sweepdir.STOPPED}, f"stopped {name} at step {step} (resumes from its checkpoint)"
    if code == 0 and status == "preempted":
        return {**fields, "status": sweepdir.PREEMPTED}, \
            f"preempted {name} at step {step} (the same command resumes it)"
    return {**fields, "status": sweepdir.FAILED}, f"FAILED {name} (exit {code})"


def lock_holder(run_dir: Path) -> dict | None:
    """None when the run directory's lock is free (or it has none), else what its file says of the
    holder. Probed with a shared descriptor of our own that is released at once."""
    path = run_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return read_holder(run_dir) or {"pid": "?"}
        return None
    finally:
        os.close(fd)  # also releases a lock we took
    return None


def _die_with_parent(parent: int):
    """In the trial's process, before ``exec``: SIGTERM when the sweep dies (``kill -9`` included),
    so that it saves a checkpoint instead of training on, orphaned, with its run directory locked."""
    def setup() -> None:
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            return
        if os.getppid() != parent:  # the sweep died before this line
            os.kill(os.getpid(), signal.SIGTERM)
    return setup


def crash_line(run: Path, log: Path, offset: int, started: float) -> str:
    """One line on why a trial failed: the exception its event log recorded in this attempt, else
    the error line of its console output (a preflight refusal, a crash before the run started)."""
    for event in reversed(rundir.read_jsonl(run / rundir.EVENTS_FILE)):
        if event.get("event") == "run_end" and float(event.get("unix") or 0) >= started - 1:
            exc = event.get("exception") or {}
            if event.get("status") == "failed" and exc:
                return (f"failed in phase {event.get('phase')}: {exc.get('type')}: {exc.get('message')} "
                        f"(at {exc.get('where')})")
            break
    try:
        with open(log, "rb") as handle:
            handle.seek(offset)
            lines = [ln.strip() for ln in handle.read().decode("utf-8", "replace").splitlines()[1:] if ln.strip()]
    except OSError:
        return "no output"
    for i in range(len(lines) - 1, -1, -1):
        if "error:" in lines[i] or lines[i].startswith(("lmlab train", "Traceback")):
            detail = lines[i]
            if detail.endswith(":") and i + 1 < len(lines):
                detail += " " + lines[i + 1]
            if detail.startswith("Traceback") and lines:
                detail = lines[-1]
            return detail
    return lines[-1] if lines else "no output"
