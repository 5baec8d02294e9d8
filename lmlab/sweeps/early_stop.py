"""Early stopping of hopeless trials (``early_stop:`` in the spec; off by default).

The median stopping rule (Golovin et al., "Google Vizier", 2017): at each of the spec's steps, a
trial whose validation loss is worse than the median of the other trials' at the same step (at
least ``min_trials`` of them) is stopped. It saves a checkpoint and ends like a preempted run (the
sweep creates the run's ``preempt.request``); the trial table records it as ``stopped early`` with
the rule and the numbers, and a later run of the sweep leaves it so.

Which trials a trial is compared with depends on which have reached the step already, so with
early stopping a sweep's outcome can depend on the order trials ran in (said in the README)."""
from __future__ import annotations

import statistics
from pathlib import Path

from lmlab import rundir

METRIC = "val/loss"


class MedianRule:
    def __init__(self, steps: list[int], min_trials: int):
        self.steps, self.min_trials = set(steps), min_trials
        self.seen: dict[int, dict[str, float]] = {s: {} for s in self.steps}

    def describe(self) -> str:
        return (f"median rule: {METRIC} at step(s) {sorted(self.steps)} worse than the median of at "
                f"least {self.min_trials} other trials")

    def observe(self, name: str, step: int, value: float) -> None:
        if step in self.seen and isinstance(value, (int, float)):
            self.seen[step][name] = float(value)

    def observe_run(self, name: str, run_dir: Path) -> None:
        """What an earlier attempt of a trial already logged (a resumed sweep compares with it too)."""
        for line in rundir.read_jsonl(run_dir / rundir.METRICS_FILE):
            if METRIC in line and isinstance(line.get("step"), int):
                self.observe(name, line["step"], line[METRIC])

    def verdict(self, name: str, step: int) -> str | None:
        """Why ``name`` should stop at ``step`` (one line), or None."""
        at = self.seen.get(step, {})
        if name not in at:
            return None
        others = [v for n, v in at.items() if n != name]
        if len(others) < self.min_trials:
            return None
        median = statistics.median(others)
        if at[name] <= median:
            return None
        return (f"median rule at step {step}: {METRIC} {at[name]:.4f} > median {median:.4f} of "
                f"{len(others)} other trial(s)")
