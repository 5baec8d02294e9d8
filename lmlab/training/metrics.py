"""Where metrics go (JSON lines always; console; W&B / TensorBoard if selected); throughput.

``metrics.jsonl`` is the source of truth: one flat JSON object per line with ``step`` (and ``epoch``
in epoch mode) and names such as ``loss``, ``grad_norm``, ``lr``, ``tokens_per_s``, ``val/loss``.
The optional sinks (``logging.wandb``, ``logging.tensorboard``) live in ``training/sinks.py``; their
packages are imported only when selected, and ``check`` reports a selected one that is missing.

MFU = achieved FLOP/s / peak FLOP/s, where achieved FLOP/s uses the model's own
``flops_per_token`` formula (named in the run's ``info`` and report) and the peak is the GPU's
dense bf16 tensor-core figure from ``PEAK_BF16_FLOPS``. There is no meaningful peak for CPUs, so
MFU is ``null`` there.
"""
from __future__ import annotations

import importlib.util
import json
import os
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from lmlab.errors import LmlabError, Problem
from lmlab.rundir import read_jsonl


WANDB_MODES = ["disabled", "offline", "online"]
# Characters W&B refuses in a project name (it raises at wandb.init, i.e. after the data is built).
_WANDB_PROJECT_BAD_CHARS = "/\\#?%:"


@dataclass
class WandbConfig:
    """Weights & Biases sink. The API key is never a config value: W&B reads WANDB_API_KEY."""

    mode: str = field(default="disabled", metadata={
        "help": "disabled (no W&B), offline (W&B files written locally, no network; upload "
                "later with 'wandb sync') or online (needs WANDB_API_KEY in the environment).",
        "choices": WANDB_MODES})
    project: str = field(default="lmlab", metadata={"help": "W&B project name."})
    entity: str = field(default="", metadata={
        "help": "W&B entity (user or team); empty = the key's default entity."})
    run_name: str = field(default="", metadata={"help": "W&B run name; empty = the run's 'name'."})
    dir: str = field(default="", metadata={
        "help": "Folder W&B writes its 'wandb/' folder into; empty = the run directory "
                "(<dump_dir>/wandb)."})


@dataclass
class TensorBoardConfig:
    """TensorBoard sink: scalar event files readable by ``tensorboard --logdir``."""

    enabled: bool = field(default=False, metadata={"help": "Also write TensorBoard event files."})
    log_dir: str = field(default="", metadata={
        "help": "Folder for the event files; empty = <dump_dir>/tensorboard."})


@dataclass
class LoggingConfig:
    """How often and where training metrics are reported (metrics.jsonl always, more optionally)."""

    every: int = field(default=10, metadata={"help": "Log training metrics every this many steps."})
    progress_bar: bool = field(default=True, metadata={
        "help": "Show a progress bar with ETA on an interactive terminal."})
    wandb: WandbConfig = field(default_factory=WandbConfig, metadata={
        "help": "Weights & Biases sink (numeric metrics and the resolved config)."})
    tensorboard: TensorBoardConfig = field(default_factory=TensorBoardConfig, metadata={
        "help": "TensorBoard sink (numeric metrics as scalars)."})

    def due(self, step: int, total: int) -> bool:
        return step % self.every == 0 or step == total


def check(cfg: LoggingConfig) -> list[Problem]:
    problems = []
    if cfg.every <= 0:
        problems.append(Problem("logging.every", f"must be > 0, got {cfg.every}.",
                                "set logging.every=10"))
    return problems + _wandb_problems(cfg.wandb) + _tensorboard_problems(cfg.tensorboard)


def _wandb_problems(cfg: WandbConfig) -> list[Problem]:
    """Caught before the run starts, so a typo or a missing package does not cost a data build."""
    key = "logging.wandb.mode"
    if cfg.mode not in WANDB_MODES:
        return [Problem(key, f"{cfg.mode!r} is not one of {WANDB_MODES}.",
                        f"set {key} to one of {WANDB_MODES}")]
    if cfg.mode == "disabled":
        return []
    if not package_installed("wandb"):
        return [Problem(key, f"W&B is selected ({cfg.mode}) but the wandb package is not "
                        "installed.", "pip install wandb")]
    problems = []
    if cfg.mode == "online" and not os.environ.get("WANDB_API_KEY"):
        problems.append(Problem(key, "online mode needs WANDB_API_KEY in the environment (lmlab "
                                "never takes the key from a config or the command line).",
                                "export WANDB_API_KEY=<key from https://wandb.ai/authorize>, or "
                                "set logging.wandb.mode=offline"))
    bad = sorted(set(cfg.project) & set(_WANDB_PROJECT_BAD_CHARS))
    if bad:
        problems.append(Problem("logging.wandb.project", f"{cfg.project!r} contains "
                                f"{''.join(bad)!r}, which W&B does not allow in a project name.",
                                f"drop the characters {_WANDB_PROJECT_BAD_CHARS!r}"))
    return problems


def _tensorboard_problems(cfg: TensorBoardConfig) -> list[Problem]:
    if cfg.enabled and not package_installed("tensorboard"):
        return [Problem("logging.tensorboard.enabled", "TensorBoard is selected but the "
                        "tensorboard package is not installed.", "pip install tensorboard")]
    return []


def package_installed(name: str) -> bool:
    """Whether ``name`` can be imported, without importing it (wandb alone takes seconds)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a broken install, or a module without a spec
        return False


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


# --------------------------------------------------------------------------- throughput and memory

# Dense bf16 tensor-core peak FLOP/s by GPU name fragment (vendor datasheets; SXM where both exist).
PEAK_BF16_FLOPS = {
    "H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12,
    "A10G": 70e12, "A10": 125e12, "RTX 4090": 165e12, "RTX 3090": 71e12, "V100": 125e12, "T4": 65e12,
}


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for fragment, flops in PEAK_BF16_FLOPS.items():
        if fragment in name:
            return flops
    return None


def peak_memory_gib(device: torch.device) -> float:
    """GPU: peak allocated by torch; CPU: the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kib / 2**20


def throughput(tokens: int, seconds: float, flops_per_token: int, peak: float | None,
               devices: int = 1) -> dict:
    """The whole job's tokens/s and FLOP/s; MFU against the peak of all ``devices`` (the same
    number per device); with several devices also tokens/s per device."""
    tokens_per_s = tokens / seconds if seconds > 0 else 0.0
    flops_per_s = tokens_per_s * flops_per_token
    out = {"tokens_per_s": tokens_per_s, "flops_per_s": flops_per_s,
           "mfu": flops_per_s / (peak * devices) if peak else None}
    if devices > 1:
        out["tokens_per_s_per_device"] = tokens_per_s / devices
    return out
