"""A resumed run evaluates its newest checkpoint only when no evaluation of it was recorded, where
the harness writes it (beside the checkpoint) or where `lmlab eval` does (<run>/evals/<step>/)."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from lmlab import rundir
from lmlab.evaluation.at_checkpoints import HarnessAtCheckpoints
from lmlab.evaluation.config import EvalConfig
from lmlab.evaluation.results import results_dir


@pytest.mark.parametrize("recorded", [None, "beside the checkpoint", "by lmlab eval"])
def test_a_checkpoint_evaluated_before_the_kill_is_not_evaluated_again(tmp_path, recorded):
    run = tmp_path / "run"
    checkpoint = rundir.checkpoints_root(run) / rundir.step_name(10)
    checkpoint.mkdir(parents=True)
    if recorded:
        folder = checkpoint if recorded == "beside the checkpoint" else results_dir(checkpoint, run, 10)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / rundir.EVAL_RESULTS_FILE).write_text(json.dumps({"piqa": {"acc": 0.5}}))
    cfg = SimpleNamespace(dump_dir=str(run), eval=EvalConfig(every=10, tasks=["piqa"]))
    harness = HarnessAtCheckpoints(cfg, None, None, None, None)
    evaluated = []
    harness.evaluate = lambda step, path: evaluated.append(step)
    harness.catch_up(10, checkpoint, last_eval_step=0)  # the resumed checkpoint, none evaluated yet
    assert evaluated == ([] if recorded else [10])
