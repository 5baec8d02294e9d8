"""Two processes that read different documents (``data.readers``) still judge the bad-record budget
on all of them: a bad line only one rank meets stops both, at one step, after one checkpoint."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import CONFIGS, REPO, TINY_TRANSFORMER, toy_texts, write_jsonl
from lmlab import rundir

pytestmark = pytest.mark.slow


def test_a_bad_record_one_rank_meets_stops_both_ranks_at_one_checkpoint(tmp_path):
    root = tmp_path / "data"
    texts = [json.dumps({"text": t}) for t in toy_texts("s", 300)]
    texts[7] = '{"text": "cut off'  # in the first block: one reader meets it early
    path = root / "s" / "s.chunk.00.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text("\n".join(texts) + "\n")
    write_jsonl(root / "s" / "s.val.jsonl", toy_texts("v", 30))
    run = tmp_path / "run"
    args = ["train", str(CONFIGS / "debug.yaml"), *TINY_TRANSFORMER, f"data.root_dir={root}",
            "data.sources={s: 1}", "data.seq_len=32", "data.batch_size=4", "data.readers=2",
            "data.shuffle_buffer=16", "data.max_bad_records=0", "steps=30", "logging.every=3",
            "checkpoint.every=100", "logging.progress_bar=false", f"dump_dir={run}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "lmlab", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode != 0
    assert f"{path}:8: malformed JSON" in out.stdout + out.stderr
    assert "over the budget data.max_bad_records=0" in out.stdout + out.stderr
    # the first sync point after the record: step 3 (logging.every=3), checkpointed by both ranks
    assert [p.name for p in rundir.step_checkpoints(run)] == [rundir.step_name(3)]
    state = rundir.read_train_state(run / "checkpoints" / rundir.step_name(3))
    assert state["loader"]["readers"] == 2 and sorted(state["loader"]["streams"]) == ["0", "1"]
    assert state["loader"]["bad_records"]["count"] == 1


@pytest.mark.parametrize("source", ["prepared", "streaming"])
def test_two_processes_stopped_and_resumed_train_what_an_uninterrupted_run_trains(tmp_path, source, request):
    """Each rank reads only its rows (its windows of the prepared shards, or its reader's
    documents of the jsonl); stopped and resumed on two processes, the run ends bitwise where an
    uninterrupted 2-process run ends, and where one process (two readers) ends up to DDP's
    reduction order. Streaming: the session's runs of RECIPES["two_readers"] (two readers shuffling
    blocks of 16 documents, stopped at step 10 of 20; conftest.py), which test_torchrun.py
    compares too."""
    from safetensors.torch import load_file
    import torch

    if source == "prepared":
        runs = prepared_runs(tmp_path)
    else:
        one = request.getfixturevalue("trained_run")("two_readers")
        straight, two = (request.getfixturevalue(name) for name in ("straight_on_two", "resumed_on_two"))
        for launched in (straight, two):
            assert launched.out.returncode == 0, launched.out.stderr[-3000:]
        assert "stopped at step 10/20" in request.getfixturevalue("stopped_on_two").out.stdout
        runs = {"one": one, "straight": straight.run, "two": two.run}
    weights = {run: load_file(str(runs[run] / "checkpoints" / "final" / "model.safetensors"))
               for run in ("one", "straight", "two")}
    assert weights["one"].keys() == weights["two"].keys() == weights["straight"].keys()
    for name, tensor in weights["two"].items():
        assert torch.equal(tensor, weights["straight"][name])  # resumed == uninterrupted, bitwise
        torch.testing.assert_close(tensor, weights["one"][name], rtol=1e-5, atol=1e-6)


def prepared_runs(tmp_path: Path) -> dict[str, Path]:
    """Prepared shards of a jsonl, trained on one process (in this one), on two uninterrupted, and
    on two stopped at step 3 and resumed."""
    from lmlab.cli import main

    corpus = make_source(tmp_path / "root" / "src")
    prepared = tmp_path / "prepared"
    assert main(["data", "prepare", str(corpus), "--out", str(prepared), "--workers", "1", "--quiet"]) == 0
    base = ["train", str(CONFIGS / "debug.yaml"), *TINY_TRANSFORMER, "data.source=prepared", f"data.path={prepared}",
            "data.seq_len=32", "data.batch_size=4", "steps=6", "checkpoint.every=3", "logging.progress_bar=false"]
    assert main([*base, f"dump_dir={tmp_path / 'one'}"]) == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    for run, extra in (("straight", []), ("two", ["training.stop_at=3"]), ("two", [])):
        out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                              "-m", "lmlab", *base, f"dump_dir={tmp_path / run}", *extra], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=180)
        assert out.returncode == 0, out.stderr[-3000:]
    return {run: tmp_path / run for run in ("one", "straight", "two")}


def make_source(folder):
    write_jsonl(folder / "src.chunk.00.jsonl", toy_texts("p", 200))
    write_jsonl(folder / "src.val.jsonl", toy_texts("v", 30))
    return folder
