"""Where the training loop gets its batch, and stops when the data's bad records ran over budget
or a data file changed under the run.

Reading a batch never fails on a bad record: the loader skips it and counts it in the run's
``BadRecords`` (``data.max_bad_records``). When the batch of step ``s`` took the count over the
budget, that batch is still whole, so step ``s`` trains; before the batch of ``s + 1`` is read,
step ``s`` is checkpointed (unless it just was) and the run stops with the records and the fix.
After the fix the same command resumes from that checkpoint, with the batches an uninterrupted run
would have seen.

A data file rewritten, truncated or replaced while the run reads it (``DataChanged``) stops the run
the same way: the loader's position is still that of the last batch trained, so step ``s - 1`` is
checkpointed and the run exits 2 naming the file, instead of training on torn records (or, through a
memory map, dying of SIGBUS with the work since the last checkpoint lost).
"""
from __future__ import annotations

import torch

from lmlab import rundir
from lmlab.data.documents import DataChanged
from lmlab.data.prefetch import Prefetcher
from lmlab.errors import LmlabError
from lmlab.training import distributed


def fetch_batch(trainer, step: int) -> torch.Tensor:
    """The batch of ``step`` for ``trainer`` (a ``training.loop.Trainer``)."""
    bad, train = getattr(trainer.data, "bad_records", None), trainer.data.train
    # read ahead, the count may already include later batches: the prefetcher knows where it was
    over = train.over_budget if isinstance(train, Prefetcher) else bad is not None and bad.exceeded
    if over:
        raise bad.error(_stop(trainer, step))
    try:
        return train.next_batch()
    except DataChanged as err:
        if getattr(getattr(train, "loader", train), "disjoint", False):
            # only this process met it: a checkpoint needs them all (the others stop with it)
            raise LmlabError(f"{err}\nStopped at step {step}; the run resumes from its last "
                             f"checkpoint: {trainer.resume_command}.") from None
        raise LmlabError(f"{err}\n{_stop(trainer, step)}") from None


def share_bad_records(data, d) -> None:
    """At a sync point: processes reading different documents tell each other the bad records
    they met, so that all count the same and stop at the same step when over the budget."""
    bad = getattr(data, "bad_records", None)
    if bad is not None and bad.shared:
        bad.absorb([record for news in distributed.gather_objects(bad.news(), d) for record in news])


def _stop(trainer, step: int) -> str:
    """Checkpoint the last step trained (unless it just was); what to say about it."""
    done = step - 1
    latest = rundir.latest_checkpoint(trainer.run_dir)
    if done > 0 and (latest is None or latest.name != rundir.step_name(done)):
        trainer._save(done)  # the checkpoint the loop itself would write (collective on N ranks)
    trainer.console.close()
    return (f"Stopped after step {done}, checkpointed in {trainer.run_dir}: once the data is fixed "
            f"the command resumes from there: {trainer.resume_command}.") if done > 0 else ""
