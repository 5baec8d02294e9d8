"""The run's metric sinks: ``metrics.jsonl`` always, plus W&B and TensorBoard when selected.

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

import secrets
import warnings
from pathlib import Path

from lmlab.rundir import METRICS_FILE, TENSORBOARD_DIR, WANDB_ID_FILE
from lmlab.runlog import redact, redact_text
from lmlab.training.metrics import (JsonlSink, LoggingConfig, TensorBoardConfig, WandbConfig,
                                    warn_if_metrics_missing)

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
