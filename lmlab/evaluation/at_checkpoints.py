"""``eval.every``: the lm-eval tasks on the checkpoints a run saves while it trains.

The policy: the first checkpoint at or after each multiple of ``every`` and the last one
(``EvalConfig.due``); after a kill, the newest checkpoint once more unless its results were
recorded already (beside it, or where ``lmlab eval`` writes them). A failure is recorded
(events.jsonl, errors/, and the ``Outcome`` the trainer keeps in its saved state) and training goes
on: an evaluation must never cost the run.

The trainer owns its bookkeeping (which step was evaluated last, which evaluations failed): it
hands the last evaluated step in and records the ``Outcome`` that comes back, so that evaluation
knows nothing of training and sits below it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from lmlab import rundir
from lmlab.data.tokenizers import Tokenizer
from lmlab.evaluation.loading import LoadedRun, RunSettings
from lmlab.evaluation.results import checkpoint_results, format_rows, write_results
from lmlab.runlog import EventLog, exception_location, redact_text


@dataclass(frozen=True)
class Outcome:
    """One evaluation of a checkpoint: its step, and the record of its failure (None: it passed)."""

    step: int
    failure: dict | None = None


class HarnessAtCheckpoints:
    """The harness tasks of the run config's ``eval`` on the checkpoints of its run directory, with
    the model being trained (rank 0's whole copy) and its tokenizer; ``say`` prints a line."""

    def __init__(self, cfg: RunSettings, model: torch.nn.Module, tokenizer: Tokenizer,
                 say: Callable[[str], None], events: EventLog):
        self.cfg, self.eval_cfg, self.model, self.tokenizer = cfg, cfg.eval, model, tokenizer
        self.say, self.events = say, events
        self.run_dir = Path(cfg.dump_dir)
        self.enabled = bool(self.eval_cfg.every and self.eval_cfg.tasks)

    def after_save(self, step: int, path: Path, finished: bool, last_eval_step: int) -> Outcome | None:
        """Evaluate the checkpoint just saved when it is due."""
        return self.evaluate(step, path) if self.eval_cfg.due(step, last_eval_step, finished) else None

    def catch_up(self, step: int, checkpoint: Path, last_eval_step: int) -> Outcome | None:
        """The previous attempt was killed after saving its newest checkpoint, before evaluating it."""
        if self.eval_cfg.due(step, last_eval_step, False) and \
                not checkpoint_results(checkpoint, self.run_dir):
            return self.evaluate(step, checkpoint)
        return None

    def evaluate(self, step: int, path: Path) -> Outcome:
        from lmlab.evaluation.runner import run_evaluation  # lazy: lm-eval, 0.15 s of every training start

        loaded = LoadedRun(self.model, self.tokenizer, self.cfg, path, self.run_dir, step)
        try:
            with self.events.phase("eval", step=step, tasks=list(self.eval_cfg.tasks)):
                # validation is logged by the loop itself; here only the harness tasks, whose
                # settings are checked again (task files may be gone since preflight)
                rows = run_evaluation(loaded, self.eval_cfg, validation=False, progress=False)
                write_results(rows, path, self.run_dir, step)
        except Exception as err:  # noqa: BLE001 -- by design: any evaluation error is survivable
            return Outcome(step, self._failure(step, err))
        self.say(f"evaluation at step {step}:\n{format_rows(rows)}")
        return Outcome(step)

    def report_failures(self, failed: list[dict]) -> None:
        """The evaluations that failed during the run (said once at the end, as the last line)."""
        if failed:
            self.say(f"{len(failed)} evaluation(s) failed, at step(s) "
                     f"{', '.join(str(f['step']) for f in failed)}; see events.jsonl and errors/")

    def _failure(self, step: int, err: Exception) -> dict:
        where, _ = exception_location(err)
        failure = {"step": step, "phase": "eval", "exception": type(err).__name__,
                   "message": redact_text(str(err)), "where": where}
        self.say(f"evaluation at step {step} failed ({failure['exception']}: {failure['message']} "
                 f"at {where}); training continues. Details: {self.run_dir / rundir.EVENTS_FILE}")
        return failure
