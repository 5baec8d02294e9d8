"""Where the training loop gets its batch, and stops when the data's bad records ran over budget.

Reading a batch never fails on a bad record: the loader skips it and counts it in the run's
``BadRecords`` (``data.max_bad_records``). When the batch of step ``s`` took the count over the
budget, that batch is still whole, so step ``s`` trains; before the batch of ``s + 1`` is read,
step ``s`` is checkpointed (unless it just was) and the run stops with the records and the fix.
After the fix the same command resumes from that checkpoint, with the batches an uninterrupted run
would have seen.
"""
from __future__ import annotations

import torch

from lmlab import rundir
from lmlab.data.prefetch import Prefetcher


def fetch_batch(trainer, step: int) -> torch.Tensor:
    """The batch of ``step`` for ``trainer`` (a ``training.loop.Trainer``)."""
    bad, train = getattr(trainer.data, "bad_records", None), trainer.data.train
    # read ahead, the count may already include later batches: the prefetcher knows where it was
    over = train.over_budget if isinstance(train, Prefetcher) else bad is not None and bad.exceeded
    if over:
        done = step - 1
        latest = rundir.latest_checkpoint(trainer.run_dir)
        if done > 0 and (latest is None or latest.name != rundir.step_name(done)):
            trainer._save(done)  # the checkpoint the loop itself would write (collective on N ranks)
        trainer.console.close()
        saved = (f"Stopped after step {done}, checkpointed in {trainer.run_dir}: once the lines are "
                 f"fixed (or the budget raised) the command resumes from there: "
                 f"{trainer.resume_command}.") if done > 0 else ""
        raise bad.error(saved)
    return train.next_batch()
