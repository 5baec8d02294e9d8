"""A tied run (``model.weight_tying=true``) on 2 processes (torchrun, gloo, DDP) stops and resumes.

DDP's rank 0 wrote the tied matrix under the name safetensors' ``save_model`` picked
(``output.weight``), which no resume could load; now it is ``tok_embeddings.weight``, as under
FSDP and on one process (tests/integration/training/test_tied_weights.py covers one process). About 10 s.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from helpers import REPO, make_jsonl_root, tiny_args
from lmlab.rundir import FINAL, checkpoints_root

pytestmark = pytest.mark.slow


def torchrun(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "lmlab", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def test_a_tied_ddp_run_resumes_on_two_processes(tmp_path):
    run, data = tmp_path / "run", make_jsonl_root(tmp_path / "data")
    args = tiny_args(data, run, "data.seq_len=64", "steps=4", "optim.warmup=0", "checkpoint.every=2",
                     "model.weight_tying=true", "distributed.strategy=ddp", "logging.progress_bar=false")
    stopped = torchrun(*args, "training.stop_at=2")
    assert stopped.returncode == 0 and "stopped at step 2/4" in stopped.stdout, stopped.stderr[-3000:]
    resumed = torchrun(*args)
    assert resumed.returncode == 0 and "resuming" in resumed.stdout, resumed.stderr[-3000:]
    saved = load_file(str(checkpoints_root(run) / FINAL / "model.safetensors"))
    assert "tok_embeddings.weight" in saved and "output.weight" not in saved
