"""What the loop logs, how often and how it says it: ``logging.*`` (the cadence, the progress bar,
which optional sinks), the throughput figures it logs (tokens/s, MFU, peak memory), and the console:
log lines on stdout, a progress bar with ETA on a terminal, the timing window between two log lines.

``metrics.jsonl`` is the source of truth: one flat JSON object per line with ``step`` (and ``epoch``
in epoch mode) and names such as ``loss``, ``grad_norm``, ``lr``, ``tokens_per_s``, ``val/loss``.
Every sink, ``metrics.jsonl``'s included, lives in ``training/sinks.py``; the optional ones'
packages are imported only when selected, and ``check`` reports a selected one that is missing.

MFU = achieved FLOP/s / peak FLOP/s, where achieved FLOP/s uses the model's own
``flops_per_token`` formula (named in the run's ``info`` and report) and the peak is the GPU's
dense bf16 tensor-core figure from ``PEAK_BF16_FLOPS``. There is no meaningful peak for CPUs, so
MFU is ``null`` there.
"""
from __future__ import annotations

import importlib.util
import os
import resource
import sys
import time
from dataclasses import dataclass, field

import torch

from lmlab.errors import Problem
from lmlab.humanize import duration, si


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


# --------------------------------------------------------------------------- the console

class Console:
    """Log lines on stdout and, on an interactive terminal, a progress bar with ETA on stderr."""

    def __init__(self, progress_bar: bool, enabled: bool = True):
        self.enabled = enabled  # several processes: only rank 0 prints
        self.want_bar = enabled and progress_bar and sys.stderr.isatty()
        self.bar = None

    def start_progress(self, total: int, initial: int) -> None:
        if self.want_bar:
            from tqdm import tqdm  # lazy: only on a terminal

            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, leave=False)

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def line(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text, file=sys.stdout)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class LogWindow:
    """Accumulates timing between two log lines (tokens/s, data-loading share, ETA)."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.start, self.data_s, self.steps, self.tokens = time.perf_counter(), 0.0, 0, 0

    def add(self, data_s: float, tokens: int) -> None:
        self.data_s += data_s
        self.steps += 1
        self.tokens += tokens

    def summary(self) -> dict:
        seconds = time.perf_counter() - self.start
        return {"seconds": seconds, "tokens": self.tokens, "step_s": seconds / max(1, self.steps),
                "data_time_frac": self.data_s / seconds if seconds > 0 else 0.0}


def format_train_line(m: dict, total_steps: int, eta_s: float) -> str:
    mfu = f" | mfu {100 * m['mfu']:.1f}%" if m.get("mfu") is not None else ""
    return (f"step {m['step']:>6}/{total_steps} | loss {m['loss']:.4f} | gnorm {m['grad_norm']:.3f}"
            f" | lr {m['lr']:.2e} | {si(m['tokens_per_s'], 'tok/s', '')} | "
            f"{si(m['flops_per_s'], 'FLOP/s', '')}{mfu} | data {100 * m['data_time_frac']:.0f}% | "
            f"mem {m['mem_peak_gib']:.2f}GiB | eta {duration(eta_s)}")


def format_val_line(step: int, m: dict, epoch: int | None = None) -> str:
    where = f"epoch {epoch} " if epoch is not None else ""
    return (f"{where}step {step} | val loss {m['val/loss']:.4f} | ppl {m['val/ppl']:.2f} | "
            f"bpb {m['val/bpb']:.4f} | acc {100 * m['val/acc']:.2f}% | {m['val/tokens']} tokens")


def model_line(size: dict, runtime, d) -> str:
    """What trains where: the model's size and FLOPs formula, the device(s) and precision."""
    where = f" x {d.world_size} processes ({d.backend})" if d.enabled else ""
    return (f"model {size['model']}: {size['params']:,} parameters | {size['flops_per_token']:,} "
            f"FLOPs/token ({size['formula']}) | device {runtime.device}{where} {runtime.precision}")
