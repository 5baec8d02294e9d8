"""Every metric sink of a run: ``metrics.jsonl`` always (``JsonlSink``), plus W&B and TensorBoard
when selected, behind one ``MetricSinks`` the loop logs to.

``metrics.jsonl`` is the source of truth, so its errors propagate; the optional sinks are mirrors,
so one that fails (no network, full disk, a bug in the package) is warned about once and dropped
while training and the JSON lines go on. Each optional package is imported only when selected
(``metrics.check`` has already reported a selected one that is missing, with its pip install).
A ``metrics.jsonl`` removed or replaced mid-run is repaired with one warning line (``JsonlSink``),
and a resumed run whose file lacks the steps up to its checkpoint says so once
(``warn_if_metrics_missing``): metrics are never lost silently.

Secrets: W&B reads ``WANDB_API_KEY`` from the environment itself; lmlab never passes it. The config
sent to W&B is redacted (``runlog.redact``), and W&B's collectors that copy the process's
surroundings to disk (console capture, system metadata with the command line, git state,
requirements, code) are switched off, so nothing secret lands in ``<run>/wandb``.
"""
from __future__ import annotations

import json
import os
import secrets
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

from lmlab.errors import LmlabError
from lmlab.rundir import METRICS_FILE, TENSORBOARD_DIR, WANDB_ID_FILE, read_jsonl
from lmlab.runlog import redact, redact_text
from lmlab.training.metrics import LoggingConfig, TensorBoardConfig, WandbConfig

# W&B settings that keep the run fast and private: no stdout/stderr copy (output.log), no metadata
# (argv, host, user, git remote, executable), no system-stats sampler, no code/requirements/job.
WANDB_SETTINGS = {"console": "off", "silent": True, "x_disable_meta": True, "x_disable_stats": True,
                  "save_code": False, "disable_git": True, "x_save_requirements": False,
                  "disable_job_creation": True}


def build_sinks(logging_cfg: LoggingConfig, run_dir: Path, run_name: str, config_dict: dict,
                *, resume_step: int | None = None) -> MetricSinks:
    """The sinks for one invocation of a run; ``resume_step`` is the checkpoint step resumed from.

    ``config_dict`` is the resolved run config (``config.config_to_dict``); it is redacted here.
    """
    run_dir = Path(run_dir)
    if resume_step:  # before the sink opens (and so creates) the file
        warn_if_metrics_missing(run_dir / METRICS_FILE, resume_step, logging_cfg.every)
    sinks = MetricSinks(JsonlSink(run_dir / METRICS_FILE))
    if logging_cfg.wandb.mode != "disabled":
        sinks.start("W&B", lambda: WandbSink(logging_cfg.wandb, run_dir, run_name, config_dict))
    if logging_cfg.tensorboard.enabled:
        sinks.start("TensorBoard", lambda: TensorBoardSink(logging_cfg.tensorboard, run_dir,
                                                           resume_step))
    return sinks


def numeric_only(metrics: dict) -> dict:
    """W&B and TensorBoard chart numbers; None (e.g. MFU on CPU) and text would only error there."""
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


class MetricSinks:
    """The loop's one sink (``log``/``close``, like ``JsonlSink``), fanning out to every sink."""

    def __init__(self, jsonl: JsonlSink):
        self.jsonl = jsonl
        self.optional: dict[str, object] = {}  # name -> sink, in the order started
        self.notes: list[str] = []  # one line per optional sink, for the console

    def start(self, name: str, factory) -> None:
        """Create an optional sink; one that cannot start is skipped with a warning."""
        try:
            sink = factory()
        except Exception as exc:  # noqa: BLE001 - a mirror must never stop training
            self._warn(name, "start", exc)
            return
        self.optional[name] = sink
        self.notes.append(sink.note)

    def log(self, metrics: dict, step: int) -> None:
        self.jsonl.log(metrics, step)
        numbers = numeric_only(metrics)
        for name, sink in list(self.optional.items()):
            self._guarded(name, "log", lambda: sink.log(numbers, step))

    def close(self) -> None:
        """Idempotent: the loop's exit paths may each call it."""
        for name, sink in list(self.optional.items()):
            self._guarded(name, "close", sink.close)
        self.optional.clear()
        self.jsonl.close()

    def _guarded(self, name: str, what: str, call) -> None:
        try:
            call()
        except Exception as exc:  # noqa: BLE001 - see the module docstring
            self.optional.pop(name, None)
            self._warn(name, what, exc)

    @staticmethod
    def _warn(name: str, what: str, exc: Exception) -> None:
        message = (f"{name} sink disabled after an error at {what}: {type(exc).__name__}: {exc}; "
                   "metrics.jsonl is still written.")
        warnings.warn(redact_text(message), RuntimeWarning, stacklevel=3)


class WandbSink:
    """One W&B run per run directory: its id is kept in ``<run>/wandb_run_id.txt``, so a resumed
    run continues the same W&B run (online) or syncs into it (offline, ``wandb sync``)."""

    def __init__(self, cfg: WandbConfig, run_dir: Path, run_name: str, config_dict: dict):
        import wandb  # lazy: optional sink

        folder = Path(cfg.dir) if cfg.dir else run_dir
        folder.mkdir(parents=True, exist_ok=True)
        self._run = wandb.init(
            mode=cfg.mode, project=cfg.project or None, entity=cfg.entity or None,
            name=cfg.run_name or run_name, dir=str(folder), id=stable_run_id(run_dir),
            resume="allow", reinit="finish_previous", config=redact(config_dict),
            settings=wandb.Settings(**WANDB_SETTINGS))
        # One <folder>/wandb/offline-run-<second>-<id> per invocation, with "-1", "-2" ... appended
        # by W&B when an invocation starts in the same second as an earlier one (wandb_init's
        # set_sync_dir_suffix); a resumed run syncs them all.
        attempts = Path(self._run.dir).parent.parent / f"offline-run-*-{self._run.id}*"
        where = self._run.url if cfg.mode == "online" else f"upload with: wandb sync {attempts}"
        self.note = f"W&B {cfg.mode} run {self._run.id}: {where}"

    def log(self, metrics: dict, step: int) -> None:
        # Steps a resumed run repeats (logged after its last checkpoint by the killed attempt) are
        # already in W&B; it would reject them with a warning on every call.
        if step >= (self._run.step or 0):
            self._run.log(metrics, step=step)

    def close(self) -> None:
        self._run.finish()


def stable_run_id(run_dir: Path) -> str:
    """The W&B run id of this run directory, created on first use."""
    path = Path(run_dir) / WANDB_ID_FILE
    if path.is_file() and path.read_text(encoding="utf-8").strip():
        return path.read_text(encoding="utf-8").strip()
    run_id = secrets.token_hex(8)
    path.write_text(run_id + "\n", encoding="utf-8")
    return run_id


class TensorBoardSink:
    """Scalars under their metric names (``loss``, ``val/loss`` ...), x-axis = optimizer step."""

    def __init__(self, cfg: TensorBoardConfig, run_dir: Path, resume_step: int | None):
        from torch.utils.tensorboard import SummaryWriter  # lazy: optional sink

        log_dir = Path(cfg.log_dir) if cfg.log_dir else Path(run_dir) / TENSORBOARD_DIR
        # purge_step hides what a killed attempt logged after the checkpoint being resumed from,
        # as truncate_metrics does for metrics.jsonl.
        purge = resume_step + 1 if resume_step else None
        self._writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge, flush_secs=30)
        self.note = f"TensorBoard: tensorboard --logdir {log_dir}"

    def log(self, metrics: dict, step: int) -> None:
        for name, value in metrics.items():
            self._writer.add_scalar(name, value, step)

    def close(self) -> None:
        self._writer.close()


class NullSink:
    """Where the metrics of ranks other than 0 go: nowhere (rank 0 logs the job's)."""

    notes: list[str] = []

    def log(self, metrics: dict, step: int) -> None:
        pass

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------- metrics.jsonl


class JsonlSink:
    """Appends one JSON object per call; flushed at once so a killed run loses nothing logged.

    The file is watched, because a ``metrics.jsonl`` removed or replaced while the run trains (a
    cleanup script, an editor's save, a sync tool) would otherwise swallow every later line into a
    deleted file. Before each write the open file is compared with the path (device and inode: one
    ``stat``): a removed file is re-created with every line logged so far, a replaced one is adopted
    and appended to (what only the old file held is kept beside it); each said in one warning line.
    What cannot be repaired (the path is now a folder, the run directory is gone) stops the run
    with the fix rather than logging into the void.
    """

    def __init__(self, path: Path, warn: Callable[[str], None] | None = None):
        self.path = Path(path)
        self._warn = warn or _print_warning
        self._handle = _open_metrics(self.path)
        self._stopped = False  # the path could not be repaired: the run stops with that error

    def log(self, metrics: dict, step: int) -> None:
        try:
            self._follow_path(step)
        except LmlabError:
            self._stopped = True
            raise
        self._handle.write(json.dumps({"step": step, **metrics}, allow_nan=True) + "\n")
        self._handle.flush()

    def close(self) -> None:
        """Idempotent: the loop's exit paths may each close the sinks. A file removed after the last
        line is still restored (a warning, never an error: this runs while the loop unwinds)."""
        if self._handle.closed:
            return
        try:
            if not self._stopped:  # else the error that stops the run says it already
                self._follow_path(None)
        except LmlabError as err:
            self._warn(str(err))
        self._handle.close()

    def _follow_path(self, step: int | None) -> None:
        """Make the path name the open file again, or switch to the file that now has the path."""
        try:
            named = os.stat(self.path)
        except FileNotFoundError:
            self._recreate(step)
            return
        except OSError:
            return  # e.g. the folder lost its search permission: keep appending to the open file
        held = os.fstat(self._handle.fileno())
        if (named.st_dev, named.st_ino) != (held.st_dev, held.st_ino):
            self._adopt(step)

    def _recreate(self, step: int | None) -> None:
        """The file was removed: put every line logged so far (still readable through the open
        handle) back under its name; exclusive creation never overwrites a file that appeared
        meanwhile (that one is adopted instead)."""
        logged = _held_bytes(self._handle)
        try:
            _write_durably(self.path, logged, mode="xb")
        except FileExistsError:
            self._adopt(step)
            return
        except OSError as err:
            raise _lost_error(self.path, "was removed while the run trained and cannot be re-created",
                              err) from None
        old, self._handle = self._handle, _open_metrics(self.path)
        old.close()
        lines = logged.count(b"\n")
        self._warn(f"{self.path} was removed while the run trained{_at(step)}; re-created it with the "
                   f"{lines} lines logged so far, and training goes on.")

    def _adopt(self, step: int | None) -> None:
        """The path names another file now (replaced on purpose, most likely): append to that one,
        and keep what only the old, now unlinked, file held beside it."""
        old, self._handle = self._handle, _open_metrics(self.path)
        kept = _keep_orphaned_lines(old, self.path)
        where = f"the lines only the old file held are kept in {kept}" if kept else \
            "no line logged before is lost"
        self._warn(f"{self.path} was replaced while the run trained{_at(step)}; lmlab appends to the "
                   f"new file from here on ({where}), and training goes on.")


def _open_metrics(path: Path):
    """Opened for appending (and reading: a removed file is restored from this handle)."""
    try:
        return open(path, "a+", encoding="utf-8")
    except OSError as err:
        raise _lost_error(path, "cannot be opened for appending", err) from None


def _lost_error(path: Path, what: str, err: OSError) -> LmlabError:
    return LmlabError(f"{path} {what}: {err.strerror or err}. Training metrics would be lost, so the "
                      f"run stops. Fix: make {path} a writable file again (move away what replaced "
                      "it), then run the same command to resume from the last checkpoint.")


def _held_bytes(handle) -> bytes:
    """Everything in the open file, read without moving the handle's position."""
    handle.flush()
    return os.pread(handle.fileno(), os.fstat(handle.fileno()).st_size, 0)


def _keep_orphaned_lines(old, path: Path) -> Path | None:
    """Close ``old``; when it is linked nowhere any more and the new file at ``path`` does not start
    with its content (a copy that was edited keeps it), write its content beside ``path``."""
    logged = _held_bytes(old)
    orphaned = os.fstat(old.fileno()).st_nlink == 0
    if not orphaned or not logged or _starts_with(path, logged):
        old.close()
        return None
    kept = path.with_name(f"{path.stem}.replaced-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
                          f"{path.suffix}")
    try:
        _write_durably(kept, logged)
    except OSError as err:
        raise _lost_error(kept, "cannot be written to keep the lines of the replaced file", err) from None
    finally:
        old.close()
    return kept


def _starts_with(path: Path, data: bytes) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(len(data)) == data
    except OSError:
        return False


def _write_durably(path: Path, data: bytes, mode: str = "wb") -> None:
    with open(path, mode) as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _at(step: int | None) -> str:
    return f" (noticed before logging step {step})" if step is not None else ""


def _print_warning(message: str) -> None:
    """One line on stderr, as lmlab's other training warnings."""
    print(f"lmlab train: warning: {message}", file=sys.stderr, flush=True)


def truncate_metrics(path: Path, last_step: int) -> None:
    """Drop lines logged after ``last_step`` (by a run killed after its last checkpoint).

    Only lmlab's own lines of later steps and a cut-off last line (a kill mid-append) go: anything
    else (a file replaced by hand, bytes that are not UTF-8, JSON that is not an object, a ``step``
    that is not a number) is not this run's to delete and stays as it is; ``lmlab report`` skips
    what it cannot read. Rewritten atomically (a kill here must not lose lines), and only when a
    line goes."""
    path = Path(path)
    if not path.is_file():
        return
    try:
        data = path.read_bytes()
    except OSError as err:
        raise _lost_error(path, "cannot be read to resume the run", err) from None
    *complete, last = data.split(b"\n")
    kept = [line for line in complete if not _logged_after(line, last_step)]
    if last and not _cut_off(last) and not _logged_after(last, last_step):
        kept.append(last)
    text = b"".join(line + b"\n" for line in kept)
    if text != data:
        _replace_atomically(path, text)


def _logged_after(line: bytes, last_step: int) -> bool:
    """A line lmlab logged for a step after ``last_step``."""
    try:
        record = json.loads(line)
    except ValueError:
        return False
    step = record.get("step") if isinstance(record, dict) else None
    return isinstance(step, int) and not isinstance(step, bool) and step > last_step


def _cut_off(line: bytes) -> bool:
    """The start of one of lmlab's lines, cut off by a kill mid-append (they start with "step")."""
    try:
        json.loads(line)
        return False
    except ValueError:
        return line.startswith(b'{"step"')


def _replace_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    _write_durably(tmp, data)
    os.replace(tmp, path)


def warn_if_metrics_missing(path: Path, resume_step: int, every: int,
                            warn: Callable[[str], None] | None = None) -> None:
    """A resumed run whose ``metrics.jsonl`` ends well before the checkpoint (removed or replaced
    during an earlier attempt) goes on, but says once which steps have no metrics: a gap that is
    only seen in a plot later looks like a bug in the run."""
    if resume_step < every:
        return
    path = Path(path)
    steps = [r["step"] for r in read_jsonl(path)
             if isinstance(r.get("step"), int) and not isinstance(r.get("step"), bool)]
    last = max((s for s in steps if s <= resume_step), default=None)
    if last is not None and last > resume_step - every:
        return
    if not path.is_file():
        what = f"{path} is missing"
    elif last is None:
        what = f"{path} holds no metrics of this run"
    else:
        what = f"{path} ends at step {last}"
    (warn or _print_warning)(
        f"{what}, but the run resumes from its checkpoint of step {resume_step}: the metrics of steps "
        f"{(last or 0) + 1}-{resume_step} are missing (the file was removed or replaced during an "
        f"earlier attempt?); training goes on and appends from step {resume_step + 1}.")
