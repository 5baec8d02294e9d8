"""What a run did: its event log (``<run>/events.jsonl``) and its provenance (``provenance.json``).

``metrics.jsonl`` says how training went; this file says what *happened*: each invocation's start
and end, the phases it went through (preflight, data, build, train, eval, report, ...), warnings,
and for a failure the exception, the ``file:line`` that raised it and a traceback file under
``<run>/errors/``. Reports and ``lmlab runs`` derive a run's status from it (``reports.status``).

Schema: one JSON object per line, always with ``event``, ``time`` (ISO 8601, UTC) and ``unix``
(seconds since the epoch, for arithmetic). Events and their extra fields:

* ``run_start``: ``pid``, ``host``, in a SLURM job ``slurm_job_id`` and ``slurm_restart_count``,
  plus whatever the caller passes (``command``, ``step``, ...).
* ``run_end``: ``status`` (``finished`` | ``stopped early`` | ``stopped`` | ``preempted`` |
  ``failed``), ``seconds``; when failed also ``phase`` and ``exception``; plus caller fields.
* ``phase_start``: ``phase`` plus caller fields.
* ``phase_end``: ``phase``, ``status`` (``ok`` | ``failed`` | ``interrupted`` | ``exited`` |
  caller-chosen), ``seconds``; when failed ``exception``: ``{type, message, where ("file:line"),
  function, traceback_file}``; plus caller fields.
* ``warning``: ``message``, ``category``, ``where`` (``file:line``).

Nothing secret is written: a value whose key names a credential is replaced, ``NAME=value``
text whose NAME names one is masked, and the value of every environment variable whose name
matches ``SECRET_NAME`` is masked wherever it appears (messages, tracebacks, info).
"""
from __future__ import annotations

import json
import os
import platform
import re
import socket
import subprocess
import sys
import time
import traceback
import warnings
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from lmlab import slurm_jobs
from lmlab.atomic import write_text
from lmlab.rundir import ERRORS_DIR, EVENTS_FILE, PROVENANCE_FILE, read_json

# Any command-line word or environment name that looks like it carries a credential.
SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL)", re.IGNORECASE)
REDACTED = "<redacted>"
RUN_END_STATUSES = ("finished", "stopped early", "stopped", "preempted", "failed")

# Dict keys name a credential when they *end* in a credential word ("api_key", "HF_TOKEN"), so that
# lmlab's own counters such as "tokens" or "val/tokens" stay readable; same words as SECRET_NAME.
_SECRET_KEY = re.compile(rf"(?:{SECRET_NAME.pattern}|CREDENTIALS)$", re.IGNORECASE)
# "name=value" / "name: value" inside free text, e.g. a command line echoed in an error message.
_SECRET_ASSIGNMENT = re.compile(
    rf"(?P<name>\b[\w.-]*(?:{SECRET_NAME.pattern}|CREDENTIALS)\b[\"']?\s*[=:]\s*)(?P<quote>[\"']?)"
    rf"(?P<value>[^\s\"',;]+)", re.IGNORECASE)
_PACKAGE_DIR = Path(__file__).resolve().parent  # .../lmlab


# --------------------------------------------------------------------------- redaction


def _secret_env_values() -> dict[str, str]:
    """Values of credential-named environment variables, longest first (so none masks part of
    another). Values shorter than 8 characters are skipped: they are flags, not credentials
    (``TOKENIZERS_PARALLELISM=false`` matches the name pattern), and masking every "false" in a
    traceback would only make it unreadable."""
    found = {v: k for k, v in os.environ.items() if SECRET_NAME.search(k) and len(v) >= 8}
    return dict(sorted(found.items(), key=lambda kv: -len(kv[0])))


def redact_text(text: str, env_values: dict[str, str] | None = None) -> str:
    """Mask credential env values and ``NAME=value`` credentials in free text."""
    for value, name in (env_values if env_values is not None else _secret_env_values()).items():
        text = text.replace(value, f"<redacted:{name}>")
    return _SECRET_ASSIGNMENT.sub(lambda m: m["name"] + m["quote"] + REDACTED, text)


def redact(value: Any, env_values: dict[str, str] | None = None) -> Any:
    """Copy of ``value`` (JSON-like) with every secret masked; see the module docstring."""
    env_values = _secret_env_values() if env_values is None else env_values
    if isinstance(value, dict):
        return {k: REDACTED if isinstance(k, str) and _SECRET_KEY.search(k) and v not in (None, "")
                else redact(v, env_values) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v, env_values) for v in value]
    if isinstance(value, str):
        return redact_text(value, env_values)
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    return redact_text(str(value), env_values)  # paths, dtypes, ...: written as text


# --------------------------------------------------------------------------- exceptions


def exception_location(exc: BaseException) -> tuple[str, str]:
    """(``file:line``, function) of the innermost frame inside lmlab, else of the innermost frame.

    "Inside lmlab" is what a user can act on: the torch frame that raised an OOM is less useful
    than the lmlab line that called it. This module's own frames are skipped.
    """
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "?", "?"
    here = Path(__file__).resolve()
    ours = [f for f in frames if _inside_lmlab(f.filename) and Path(f.filename).resolve() != here]
    frame = (ours or frames)[-1]
    return f"{_display_path(frame.filename)}:{frame.lineno}", frame.name


def _inside_lmlab(filename: str) -> bool:
    try:
        Path(filename).resolve().relative_to(_PACKAGE_DIR)
        return True
    except (ValueError, OSError):
        return False


def _display_path(filename: str) -> str:
    """Relative to the folder holding the lmlab package when below it ("lmlab/training/trainer.py";
    "torch/nn/..." for a site-packages install), so reports do not depend on the checkout path;
    the path as given otherwise."""
    try:
        return Path(filename).resolve().relative_to(_PACKAGE_DIR.parent).as_posix()
    except (ValueError, OSError):
        return filename


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "phase"


def _now() -> tuple[str, float]:
    unix = time.time()
    iso = datetime.fromtimestamp(unix, timezone.utc).isoformat(timespec="milliseconds")
    return iso.replace("+00:00", "Z"), unix


def _write_traceback(run_dir: Path, exc: BaseException, phase: str, summary: dict) -> str | None:
    """``errors/<UTC time>-<phase>.txt``: a short header, then the full (redacted) traceback."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    folder = run_dir / ERRORS_DIR
    try:
        folder.mkdir(parents=True, exist_ok=True)
        path, n = folder / f"{stamp}-{_safe_name(phase)}.txt", 1
        while path.exists():  # two failures in the same second
            n += 1
            path = folder / f"{stamp}-{_safe_name(phase)}-{n}.txt"
        header = (f"phase: {phase}\nexception: {summary['type']}: {summary['message']}\n"
                  f"where: {summary['where']} (in {summary['function']})\n\n")
        body = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        path.write_text(redact_text(header + body), encoding="utf-8")
    except OSError:
        return None  # a full disk must not hide the original exception
    return path.relative_to(run_dir).as_posix()


# --------------------------------------------------------------------------- writing


class EventLog:
    """Appends events to ``<run_dir>/events.jsonl`` (the directory is created on the first event).
    Typical use: ``with log.run(command=...): with log.phase("data"): ...``, then
    ``log.set_result(status, step=...)``. With ``write=False`` (the ranks other than 0 of a
    several-process job) it records nothing and only passes exceptions through."""

    def __init__(self, run_dir: str | Path, write: bool = True):
        self.run_dir, self.write = Path(run_dir), write
        self.path = self.run_dir / EVENTS_FILE
        self._phase_started: dict[str, float] = {}
        self._run_started: float | None = None
        self._result: dict | None = None
        # id(exception) -> (exception, summary, phase): an exception crossing nested phases and
        # run() is recorded (and its traceback written) once, at the innermost phase.
        self._failures: dict[int, tuple[BaseException, dict, str]] = {}

    def emit(self, event: str, **fields: Any) -> dict:
        """Append one event (redacted) and return it as written."""
        iso, unix = _now()
        record = redact({"event": event, "time": iso, "unix": unix, **fields})
        if not self.write:
            return record
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            # One write() per line on an O_APPEND handle, reopened each time: lines from concurrent
            # writers (or a process killed mid-run) stay whole, and nothing is buffered when killed.
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record, default=str, ensure_ascii=False) + "\n")
        except OSError as err:
            # Often called while an exception is propagating: a full disk or read-only run dir
            # must not replace the error the user needs to see.
            print(f"lmlab: could not write {self.path}: {err}", file=sys.stderr)
        return record

    # ----------------------------------------------------------------- runs

    def run_start(self, **info: Any) -> dict:
        self._run_started = time.time()
        self._result = None
        job = {f"slurm_{k}": v for k, v in slurm_jobs.environment_job().items()}
        return self.emit("run_start", pid=os.getpid(), host=socket.gethostname(), **job, **info)

    def run_end(self, status: str, **info: Any) -> dict:
        seconds = time.time() - self._run_started if self._run_started is not None else None
        return self.emit("run_end", status=status, seconds=seconds, **info)

    def set_result(self, status: str, **info: Any) -> None:
        """How the run ended, written as ``run_end`` when the ``run()`` block exits normally."""
        if status not in RUN_END_STATUSES:
            raise ValueError(f"status must be one of {RUN_END_STATUSES}, got {status!r}")
        self._result = {"status": status, **info}

    @contextmanager
    def run(self, **info: Any):
        """``run_start``, then ``run_end`` however the block ends; warnings are recorded inside.

        A normal exit writes the ``set_result`` status (default ``finished``; the training loop
        sets ``preempted`` after it saved on SIGTERM/SIGUSR1, see ``training.signals.PreemptionSignals``);
        Ctrl-C writes ``stopped``; any other exception writes ``failed`` with the phase it failed
        in. Exceptions are always re-raised.
        """
        self.run_start(**info)
        try:
            with self.capture_warnings():
                yield self
        except KeyboardInterrupt:
            self.run_end("stopped", reason="KeyboardInterrupt")
            raise
        except SystemExit as err:
            if err.code not in (0, None):
                self._run_failed(err)
            else:
                self.run_end(**(self._result or {"status": "finished"}))
            raise
        except Exception as err:
            self._run_failed(err)
            raise
        else:
            self.run_end(**(self._result or {"status": "finished"}))

    def _run_failed(self, err: BaseException) -> None:
        summary, phase = self.record_exception(err, "run")
        self.run_end("failed", phase=phase, exception=summary)

    # ----------------------------------------------------------------- phases

    def phase_start(self, name: str, **info: Any) -> dict:
        self._phase_started[name] = time.time()
        return self.emit("phase_start", phase=name, **info)

    def phase_end(self, name: str, status: str = "ok", **info: Any) -> dict:
        started = self._phase_started.pop(name, None)
        seconds = time.time() - started if started is not None else None
        return self.emit("phase_end", phase=name, status=status, seconds=seconds, **info)

    @contextmanager
    def phase(self, name: str, **info: Any):
        """``phase_start`` / ``phase_end``; on an exception, record it (and its traceback file)
        before re-raising it unchanged."""
        self.phase_start(name, **info)
        try:
            yield self
        except KeyboardInterrupt:
            self.phase_end(name, status="interrupted")
            raise
        except SystemExit as err:
            self.phase_end(name, status="exited", code=str(err.code))
            raise
        except Exception as err:
            summary, failed_in = self.record_exception(err, name)
            extra = {} if failed_in == name else {"failed_in": failed_in}
            self.phase_end(name, status="failed", exception=summary, **extra)
            raise
        else:
            self.phase_end(name)

    def record_exception(self, exc: BaseException, phase: str) -> tuple[dict, str]:
        """Summary of ``exc`` (type, message, where, function, traceback_file) and the phase it
        was first recorded in; writes the traceback file the first time ``exc`` is seen."""
        known = self._failures.get(id(exc))
        if known is not None and known[0] is exc:
            return known[1], known[2]
        where, function = exception_location(exc)
        summary = {"type": type(exc).__name__, "message": str(exc), "where": where,
                   "function": function}
        summary["traceback_file"] = _write_traceback(self.run_dir, exc, phase, summary) if self.write else None
        summary = redact(summary)
        self._failures[id(exc)] = (exc, summary, phase)
        return summary, phase

    # ----------------------------------------------------------------- warnings

    def warning(self, message: Any, category: Any = "UserWarning", file: str = "",
                line: int | None = None) -> dict:
        name = category.__name__ if isinstance(category, type) else str(category)
        where = f"{_display_path(str(file))}:{line}" if file else "?"
        return self.emit("warning", message=str(message), category=name, where=where)

    @contextmanager
    def capture_warnings(self):
        """Record every Python warning shown inside the block; it is still shown as before.

        Chains onto ``warnings.showwarning`` rather than ``catch_warnings(record=True)``, which
        would swallow the warnings the user (and pytest) should still see.
        """
        with warnings.catch_warnings():  # restores showwarning and the filters on exit
            previous = warnings.showwarning

            def hook(message, category, filename, lineno, file=None, line=None):
                try:
                    self.warning(message, category, filename, lineno)
                except OSError:
                    pass  # logging a warning must never become an error
                previous(message, category, filename, lineno, file, line)

            warnings.showwarning = hook
            yield self


# --------------------------------------------------------------------------- provenance

PACKAGES = ("lmlab", "torch", "numpy", "safetensors", "tokenizers", "pyyaml", "tqdm", "lm_eval",
            "datasets", "matplotlib")


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_info() -> dict:
    """Commit and dirty flag of the lmlab source tree (None outside a git checkout); for the code
    snapshot of ``lmlab slurm`` (no ``.git``), those of the checkout it was copied from."""
    root = _PACKAGE_DIR.parent
    sha = _git(["rev-parse", "HEAD"], root)
    source = slurm_jobs.snapshot_source(root) if sha is None else {}
    if isinstance(source.get("git"), dict):
        return {**source["git"], "snapshot_of": source.get("copied_from")}
    status = _git(["status", "--porcelain", "--untracked-files=no"], root) if sha else None
    return {"sha": sha, "dirty": bool(status) if status is not None else None}


def package_versions() -> dict:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def redact_argv(argv: list[str]) -> list[str]:
    """Replace the value of any ``name=value`` word whose name looks like a credential."""
    out = []
    for word in argv:
        name, sep, _ = word.partition("=")
        out.append(f"{name}=<redacted>" if sep and SECRET_NAME.search(name) else word)
    return out


def write_provenance(run_dir: str | Path, argv: list[str], machine: dict, **facts: Any) -> dict:
    """Write ``provenance.json`` for this invocation: time, command, git, versions, ``machine``
    (``runtime.device_info``) and ``facts`` (model size, resumed step, ...). The
    provenance of earlier invocations is kept under ``earlier_invocations``: a resume must not
    erase how a run began. In a SLURM job, ``slurm``: its id and restart count. Returns what was
    written."""
    path = Path(run_dir) / PROVENANCE_FILE
    old = read_json(path)
    earlier = old.pop("earlier_invocations", [])
    earlier = ([*earlier, old] if isinstance(earlier, list) else [old]) if old else []
    job = slurm_jobs.environment_job()
    record = {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "command": redact_argv(["lmlab", *argv]),
              "git": git_info(), "versions": package_versions(), "machine": machine, **facts,
              **({"slurm": job} if job else {}),
              "earlier_invocations": earlier}
    write_text(path, json.dumps(record, indent=2))
    return record
