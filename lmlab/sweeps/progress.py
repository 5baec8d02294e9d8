"""What a local sweep shows while it runs: one tqdm bar for the trials and, on a terminal, one live
line (bar) per running trial: its step, train loss and last validation loss, read from the trial's
``metrics.jsonl`` as it grows (``MetricsTail``). Without a terminal (a log file, CI): a line when a
trial starts or ends, and every ``HEARTBEAT_S`` seconds one line per running trial."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from tqdm import tqdm

HEARTBEAT_S = 60.0


class MetricsTail:
    """The new lines of a growing ``metrics.jsonl``: the newest training line and every validation
    line. A resume truncates the file to its checkpoint: then it is read again from the start."""

    def __init__(self, path: Path):
        self.path, self.offset, self.partial = path, 0, b""
        self.step, self.loss, self.val_loss = 0, None, None

    def poll(self) -> list[dict]:
        """The validation lines written since the last call."""
        try:
            size = self.path.stat().st_size
        except OSError:
            return []
        if size < self.offset:
            self.offset, self.partial = 0, b""
        if size == self.offset:
            return []
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            data = self.partial + handle.read(size - self.offset)
        self.offset = size
        lines, _, self.partial = data.rpartition(b"\n")
        new_val = []
        for raw in lines.split(b"\n"):
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            if not isinstance(line, dict):
                continue
            self.step = max(self.step, int(line.get("step") or 0))
            if "loss" in line:
                self.loss = line["loss"]
            if "val/loss" in line:
                self.val_loss = line["val/loss"]
                new_val.append(line)
        return new_val

    def text(self) -> str:
        loss = f" loss {self.loss:.4f}" if isinstance(self.loss, (int, float)) else ""
        val = f" val {self.val_loss:.4f}" if isinstance(self.val_loss, (int, float)) else ""
        return (loss + val).strip()


class Display:
    def __init__(self, total: int, done: int, slots: int, quiet: bool = False):
        self.live = not quiet and sys.stderr.isatty() and os.environ.get("TERM") != "dumb"
        self.quiet = quiet
        self.bar = tqdm(total=total, initial=done, unit="trial", desc="sweep", position=0,
                        dynamic_ncols=True) if self.live else None
        self.slot_bars: dict[int, tqdm] = {}
        self.slots = slots
        self.last_heartbeat = time.monotonic()

    def line(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stdout)
        else:
            print(text, flush=True)

    def started(self, slot: int, name: str, steps: int, where: str) -> None:
        self.line(f"start {name} ({where})")
        if self.live:
            self.slot_bars[slot] = tqdm(total=steps or None, desc=name, unit="step", position=slot + 1,
                                        leave=False, dynamic_ncols=True)

    def progress(self, slot: int, step: int, text: str) -> None:
        bar = self.slot_bars.get(slot)
        if bar is not None and (bar.n != step or bar.postfix != text):
            bar.n = step
            bar.set_postfix_str(text, refresh=False)
            bar.refresh()

    def heartbeat(self, running: list[tuple[str, int, int, str]]) -> None:
        """Without a terminal: now and then, one line per running trial (name, step, steps, text)."""
        if self.live or self.quiet or time.monotonic() - self.last_heartbeat < HEARTBEAT_S:
            return
        self.last_heartbeat = time.monotonic()
        for name, step, steps, text in running:
            self.line(f"  running {name}: step {step}/{steps} {text}".rstrip())

    def ended(self, slot: int, text: str, counted: bool) -> None:
        bar = self.slot_bars.pop(slot, None)
        if bar is not None:
            bar.close()
        self.line(text)
        if counted and self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        for bar in self.slot_bars.values():
            bar.close()
        self.slot_bars = {}
        if self.bar is not None:
            self.bar.close()
            self.bar = None
