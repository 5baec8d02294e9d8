"""A real one-node SLURM cluster for the system tests: Debian's ``slurmctld slurmd slurm-client
munge`` (installed with apt-get when missing), started on this machine, stopped by PID.

``with SlurmCluster(tmp) as cluster:`` writes ``slurm.conf`` under ``tmp`` (state, spool, logs and pid
files there too; accounting off; ``ProctrackType=proctrack/linuxproc``, ``SelectType=select/cons_tres``;
the node as ``slurmd -C`` sees it; free ports), starts munged (unless one answers already: then
it is used and left running), slurmctld and slurmd in the foreground as children of this process,
and waits for the node to be idle. ``cluster.env`` is the environment for SLURM commands and jobs
(``SLURM_CONF`` points at the file: the machine's ``/etc/slurm`` is not touched). On exit every job
is cancelled and the daemons it started are stopped by their PIDs (SIGTERM, then SIGKILL).

``AuthInfo=cred_expire`` is lowered from 120 s to ``CRED_EXPIRE_S``: SLURM holds a requeued job for
that long before it may start again (Reason=BeginTime).

Run as a script (``python tests/system/slurm_cluster.py [DIR]``) it starts the cluster, prints
``SLURM_CONF=...`` and waits for Ctrl-C: for trying things by hand.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "srun", "scontrol", "squeue", "scancel", "sinfo")
CRED_EXPIRE_S = 30
MUNGE_RUN = Path("/run/munge")


class Unavailable(Exception):
    """SLURM cannot be set up here (not root, no packages and no apt-get): the tests skip."""


def find(name: str) -> str | None:
    return shutil.which(name) or next((str(p) for p in (Path("/usr/sbin") / name, Path("/sbin") / name)
                                       if p.is_file()), None)


def ensure_installed() -> None:
    """The Debian packages, installed when a binary is missing; Unavailable when they cannot be."""
    if os.geteuid() != 0:
        raise Unavailable("needs root (starts slurmctld / slurmd / munged)")
    missing = [b for b in (*DAEMONS, *CLIENTS) if find(b) is None]
    if not missing:
        return
    if shutil.which("apt-get") is None:
        raise Unavailable(f"{', '.join(missing)} missing and no apt-get to install {' '.join(PACKAGES)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *PACKAGES]):
        out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        if out.returncode != 0:
            raise Unavailable(f"{' '.join(command)} failed: {(out.stderr or out.stdout)[-500:]}")
    still = [b for b in (*DAEMONS, *CLIENTS) if find(b) is None]
    if still:
        raise Unavailable(f"installed {' '.join(PACKAGES)} but {', '.join(still)} still missing")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


class SlurmCluster:
    def __init__(self, base: Path):
        self.base = Path(base)
        self.node = socket.gethostname().split(".")[0]
        self.conf = self.base / "etc" / "slurm.conf"
        self.log_dir = self.base / "log"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.started: list[tuple[str, int, subprocess.Popen | None]] = []  # (name, pid, child)
        self.cpus = 0

    # ------------------------------------------------------------------ setup

    def __enter__(self) -> "SlurmCluster":
        ensure_installed()
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _start(self) -> None:
        for sub in ("etc", "state/ctld", "state/d", "log", "run"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        self._start_munge()
        self.conf.write_text(self._config())
        self._daemon("slurmctld", [find("slurmctld"), "-D", "-i", "-f", str(self.conf)])
        self._wait(lambda: self.run("sinfo", check=False).returncode == 0, 60, "slurmctld to answer")
        self._daemon("slurmd", [find("slurmd"), "-D", "-f", str(self.conf)])
        self._wait(self._node_idle, 90, f"node {self.node} to be idle")

    def _start_munge(self) -> None:
        if self._munge_works():
            return  # someone else's munged: used, and left running
        key = Path("/etc/munge/munge.key")
        if not key.is_file() or key.stat().st_size == 0:
            subprocess.run([find("mungekey") or "mungekey", "--create"], capture_output=True, timeout=60)
            shutil.chown(key, "munge", "munge")
            key.chmod(0o400)
        # munged drops to the munge user: its pid file and socket folder must be that user's
        MUNGE_RUN.mkdir(parents=True, exist_ok=True)
        shutil.chown(MUNGE_RUN, "munge", "munge")
        MUNGE_RUN.chmod(0o755)
        pid_file = MUNGE_RUN / "munged.pid"
        pid_file.unlink(missing_ok=True)
        out = subprocess.run(["runuser", "-u", "munge", "--", find("munged"), f"--pid-file={pid_file}"],
                             capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"munged failed: {out.stderr or out.stdout}")
        self._wait(lambda: pid_file.is_file() and pid_file.read_text().strip().isdigit(), 30,
                   "munged's pid file")
        self.started.append(("munged", int(pid_file.read_text().strip()), None))  # it daemonized
        self._wait(self._munge_works, 30, "munged to answer")

    def _munge_works(self) -> bool:
        munge, unmunge = find("munge"), find("unmunge")
        if not munge or not unmunge:
            return False
        cred = subprocess.run([munge, "-n"], capture_output=True, timeout=10)
        return cred.returncode == 0 and subprocess.run(
            [unmunge], input=cred.stdout, capture_output=True, timeout=10).returncode == 0

    def _config(self) -> str:
        hardware = subprocess.run([find("slurmd"), "-C"], capture_output=True, text=True,
                                  timeout=30).stdout.splitlines()[0].split()
        fields = dict(word.split("=", 1) for word in hardware if "=" in word)
        self.cpus = int(fields["CPUs"])
        memory = max(int(int(fields.get("RealMemory", "1024")) * 0.8), 256)
        node = " ".join(f"{k}={v}" for k, v in fields.items() if k not in ("NodeName", "RealMemory"))
        b = self.base
        return f"""# a one-node test cluster (tests/system/slurm_cluster.py)
ClusterName=lmlabtest
SlurmctldHost={self.node}
SlurmUser=root
AuthType=auth/munge
AuthInfo=cred_expire={CRED_EXPIRE_S}
StateSaveLocation={b}/state/ctld
SlurmdSpoolDir={b}/state/d
SlurmctldPidFile={b}/run/slurmctld.pid
SlurmdPidFile={b}/run/slurmd.pid
SlurmctldLogFile={self.log_dir}/slurmctld.log
SlurmdLogFile={self.log_dir}/slurmd.log
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=3600
KillWait=30
NodeName={self.node} {node} RealMemory={memory} State=UNKNOWN
PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
"""

    def _daemon(self, name: str, command: list[str]) -> None:
        log = open(self.log_dir / f"{name}.stdout", "ab")
        proc = subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        self.started.append((name, proc.pid, proc))
        time.sleep(0.5)
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited at once ({proc.returncode}): {self.tail(name)}")

    def _node_idle(self) -> bool:
        state = self.run("sinfo", "--noheader", "--nodes", self.node, "--format=%t", check=False).stdout.strip()
        if state.startswith(("down", "drain", "inval")):
            self.run("scontrol", "update", f"nodename={self.node}", "state=resume", check=False)
        return state == "idle"

    def _wait(self, ready, seconds: float, what: str) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            dead = [(n, p.returncode) for n, _, p in self.started if p is not None and p.poll() is not None]
            if dead:
                raise RuntimeError(f"{dead[0][0]} exited ({dead[0][1]}): {self.tail(dead[0][0])}")
            if ready():
                return
            time.sleep(0.5)
        raise RuntimeError(f"timed out waiting for {what}: {self.tail('slurmctld')} {self.tail('slurmd')}")

    def tail(self, name: str, lines: int = 15) -> str:
        text = ""
        for path in (self.log_dir / f"{name}.log", self.log_dir / f"{name}.stdout"):
            if path.is_file():
                text += "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) + "\n"
        return text

    # ------------------------------------------------------------------ use

    def run(self, *command: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        out = subprocess.run([find(command[0]) or command[0], *command[1:]], env=self.env,
                             capture_output=True, text=True, timeout=timeout)
        if check and out.returncode != 0:
            raise RuntimeError(f"{' '.join(command)}: {out.returncode}: {out.stderr or out.stdout}")
        return out

    def job(self, job_id: str) -> dict:
        """``scontrol show job`` as a dict ({} when SLURM no longer knows the job)."""
        out = self.run("scontrol", "show", "job", str(job_id), "--oneliner", check=False)
        return dict(w.split("=", 1) for w in out.stdout.split() if "=" in w) if out.returncode == 0 else {}

    def state(self, job_id: str) -> str:
        return self.job(job_id).get("JobState", "")

    def wait_state(self, job_id: str, states: tuple[str, ...], seconds: float) -> str:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            state = self.state(job_id)
            if state in states:
                return state
            time.sleep(1)
        return self.state(job_id)

    # ------------------------------------------------------------------ teardown

    def stop(self) -> None:
        """Cancel every job, then stop the daemons this object started, newest first, by PID."""
        if any(n == "slurmctld" and p.poll() is None for n, _, p in self.started if p is not None):
            self.run("scancel", "--full", "--user", "root", check=False)
            deadline = time.monotonic() + 45
            while time.monotonic() < deadline and self.run("squeue", "--noheader", check=False).stdout.strip():
                time.sleep(1)
        for _, pid, proc in reversed(self.started):
            _stop(pid, proc)
        self.started.clear()


def _alive(pid: int, proc: subprocess.Popen | None) -> bool:
    if proc is not None:
        return proc.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _stop(pid: int, proc: subprocess.Popen | None) -> None:
    """SIGTERM to ``pid``, SIGKILL after 20 s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not _alive(pid, proc):
            return
        os.kill(pid, sig)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and _alive(pid, proc):
            time.sleep(0.2)


def _serve(where: Path) -> None:
    """Start the cluster, print how to use it, stop it on Ctrl-C or SIGTERM."""
    def stop(signum, _frame):
        raise KeyboardInterrupt
    for sig in (signal.SIGINT, signal.SIGTERM):  # SIGINT is ignored in a background job
        signal.signal(sig, stop)
    with SlurmCluster(where) as cluster:
        print(f"export SLURM_CONF={cluster.conf}  # {cluster.cpus} CPUs; pid {os.getpid()}: "
              "Ctrl-C or kill stops it", flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    _serve(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/lmlab-slurm-cluster"))


def running_cluster(base: Path):
    """A started cluster under ``base``, with SLURM_CONF pointing at it while it runs (the
    commands lmlab runs, squeue too, find it), restored after; skips the test where there is none.
    The body of a module fixture: ``yield from running_cluster(tmp_path_factory.mktemp("slurm"))``."""
    import pytest  # lazy: only the tests import this module

    before = os.environ.get("SLURM_CONF")
    try:
        with SlurmCluster(base) as running:
            os.environ["SLURM_CONF"] = running.env["SLURM_CONF"]
            yield running
    except Unavailable as err:
        pytest.skip(f"no real SLURM here: {err}")
    finally:
        if before is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = before
