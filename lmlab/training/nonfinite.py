"""Non-finite steps: a run stops at its first one, naming it and its last good checkpoint (or
skips a few, ``training.skip_nonfinite_steps``), and nothing computed from it is logged or saved."""
from __future__ import annotations

import math
from pathlib import Path

import torch

from lmlab import rundir
from lmlab.errors import LmlabError
from lmlab.training.parts import StepResult
from lmlab.training.state import TrainState


class NonFiniteGuard:
    """Stops a run at its first non-finite step, naming it and the last good checkpoint.

    By default it remembers, on the device, the first step whose loss or gradient norm was not
    finite, and ``check`` (called before anything computed from the weights leaves the loop: a
    log line, a validation, a checkpoint) raises then, without reading every step back to the
    host. With ``training.skip_nonfinite_steps`` > 0 the step itself decides
    (``TrainingParts.step``'s ``skip_nonfinite``) and the guard counts the skips against that budget.
    """

    def __init__(self, device: torch.device, scaled: bool, skip_budget: int, run_dir: Path):
        self.scaled, self.skip_budget, self.run_dir = scaled, skip_budget, run_dir
        self.per_step = skip_budget > 0
        self._first_bad = torch.zeros((), dtype=torch.long, device=device)
        self._unchecked = False  # steps observed since the last check

    def observe(self, step: int, result: StepResult, state: TrainState, say) -> None:
        if not result.applied:
            self._skip_or_stop(step, result, state, say)
        elif not self.per_step:
            finite = torch.isfinite(result.loss)
            if not self.scaled:  # under a GradScaler an infinite gradient is the scaler's to skip
                finite = finite & torch.isfinite(result.grad_norm)
            self._first_bad = torch.where(~finite & (self._first_bad == 0), step, self._first_bad)
            self._unchecked = True

    def check(self) -> None:
        """Raise if a step since the start of this invocation was not finite (one host sync, and
        none when no step was observed since the last check)."""
        if not self._unchecked:
            return
        self._unchecked = False
        bad = int(self._first_bad.item())
        if bad:
            raise self._error(bad, "loss or gradient norm")

    def _skip_or_stop(self, step: int, result: StepResult, state: TrainState, say) -> None:
        loss, grad_norm = torch.stack([result.loss, result.grad_norm.float()]).tolist()
        what = "loss" if not math.isfinite(loss) else "gradient norm"
        if state.skipped_steps >= self.skip_budget:
            raise self._error(step, f"{what} (loss {loss}, grad norm {grad_norm})")
        state.skipped_steps += 1
        say(f"step {step}: non-finite {what} (loss {loss}, grad norm {grad_norm}); step skipped "
            f"({state.skipped_steps}/{self.skip_budget})")

    def _error(self, step: int, what: str) -> LmlabError:
        return LmlabError(
            f"non-finite {what} at step {step}; nothing computed from it was saved. Last good "
            f"checkpoint: {rundir.latest_checkpoint(self.run_dir) or 'none'} (kept intact). Fix: "
            "lower optim.lr, raise optim.warmup or enable clipping (optim.clip), then resume; or "
            "allow a few skips with training.skip_nonfinite_steps=N.")
