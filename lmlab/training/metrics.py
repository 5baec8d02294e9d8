"""Where metrics go (JSON lines always; console; optional sinks later) and how throughput is measured.

``metrics.jsonl`` is the source of truth: one flat JSON object per line with ``step`` (and ``epoch``
in epoch mode) and names such as ``loss``, ``grad_norm``, ``lr``, ``tokens_per_s``, ``val/loss``.

MFU = achieved FLOP/s / peak FLOP/s, where achieved FLOP/s uses the model's own
``flops_per_token`` formula (named in the run's ``info`` and report) and the peak is the GPU's
dense bf16 tensor-core figure from ``PEAK_BF16_FLOPS``. There is no meaningful peak for CPUs, so
MFU is ``null`` there.
"""
from __future__ import annotations

import json
import math
import resource
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from lmlab.errors import Problem


@dataclass
class LoggingConfig:
    """How often and where training metrics are reported."""

    every: int = field(default=10, metadata={"help": "Log training metrics every this many steps."})
    progress_bar: bool = field(default=True, metadata={
        "help": "Show a progress bar with ETA on an interactive terminal."})


def check(cfg: LoggingConfig) -> list[Problem]:
    if cfg.every <= 0:
        return [Problem("logging.every", f"must be > 0, got {cfg.every}.", "set logging.every=10")]
    return []


class MetricsSink(Protocol):
    def log(self, metrics: dict, step: int) -> None: ...

    def close(self) -> None: ...


class JsonlSink:
    """Appends one JSON object per call; flushed at once so a killed run loses nothing logged."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._handle = open(self.path, "a", encoding="utf-8")

    def log(self, metrics: dict, step: int) -> None:
        self._handle.write(json.dumps({"step": step, **metrics}, allow_nan=True) + "\n")
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()


def truncate_metrics(path: Path, last_step: int) -> None:
    """Drop lines logged after ``last_step`` (by a run killed after its last checkpoint)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= last_step]
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def read_metrics(path: Path) -> list[dict]:
    if not Path(path).is_file():
        return []
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line]


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


def throughput(tokens: int, seconds: float, flops_per_token: int, peak: float | None) -> dict:
    tokens_per_s = tokens / seconds if seconds > 0 else 0.0
    flops_per_s = tokens_per_s * flops_per_token
    return {"tokens_per_s": tokens_per_s, "flops_per_s": flops_per_s,
            "mfu": flops_per_s / peak if peak else None}


# --------------------------------------------------------------------------- console


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def format_train_line(m: dict, total_steps: int, eta_s: float) -> str:
    mfu = f" | mfu {100 * m['mfu']:.1f}%" if m.get("mfu") is not None else ""
    return (f"step {m['step']:>6}/{total_steps} | loss {m['loss']:.4f} | gnorm {m['grad_norm']:.3f}"
            f" | lr {m['lr']:.2e} | {_si(m['tokens_per_s'])}tok/s | {_si(m['flops_per_s'])}FLOP/s{mfu}"
            f" | data {100 * m['data_time_frac']:.0f}% | mem {m['mem_peak_gib']:.2f}GiB"
            f" | eta {format_duration(eta_s)}")


def format_val_line(step: int, m: dict, epoch: int | None = None) -> str:
    where = f"epoch {epoch} " if epoch is not None else ""
    return (f"{where}step {step} | val loss {m['val/loss']:.4f} | ppl {m['val/ppl']:.2f} | "
            f"bpb {m['val/bpb']:.4f} | acc {100 * m['val/acc']:.2f}% | {m['val/tokens']} tokens")


def _si(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{unit}"
    return f"{value:.1f}"


class ConsoleSink:
    """Human-readable lines on stdout, printed above the progress bar if there is one."""

    def __init__(self, write=None):
        self._write = write or (lambda line: print(line, file=sys.stdout, flush=True))

    def line(self, text: str) -> None:
        self._write(text)
