"""What a training run prints: log lines on stdout, a progress bar with ETA on a terminal, and the
timing window between two log lines (tokens/s, data-loading share)."""
from __future__ import annotations

import sys
import time

from lmlab.humanize import duration, si


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
