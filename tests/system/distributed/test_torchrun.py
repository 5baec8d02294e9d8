"""Several processes (torchrun, gloo on CPU) train exactly what one process trains.

N processes == 1 process: the same losses and weights for DDP and FSDP2 (transformer, step mode)
and for DDP (context-vector model, epoch mode); a stopped 2-process run resumes on 2 or on 1
process as if uninterrupted; SIGTERM to one rank stops all at the same step with one checkpoint;
a rank that raises ends the job, named, without orphans; preflight refuses what cannot work.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import RECIPES, REPO, assert_same_run, copy_run, processes_mentioning, torchrun
from lmlab.cli import main
from lmlab.reports.status import run_status
from lmlab.rundir import METRICS_FILE, read_jsonl, step_checkpoints

pytestmark = pytest.mark.slow
RTOL = 1e-5  # measured: about 1e-7 for DDP, 4e-7 for FSDP (reduction order of the gradients)
STEPS = 20
# two readers on one process, one each on two: the processes read disjoint documents
TWO_READERS = RECIPES["two_readers"]


def transformer_args(corpus: Path, run: Path, *extra: str) -> list[str]:
    return TWO_READERS.argv(run, corpus, *extra)


@pytest.fixture(scope="module")
def one_process(trained_run) -> Path:
    """The reference: the same run on one process (in this process, the session's)."""
    return trained_run("two_readers")


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_train_what_one_process_trains(one_process, tiny_corpus, tmp_path, strategy, request):
    if strategy == "ddp":  # the session's (conftest.py), which test_disjoint_readers.py compares too
        shared = request.getfixturevalue("straight_on_two")
        run, out = shared.run, shared.out
    else:
        run = tmp_path / "run"
        out = torchrun(transformer_args(tiny_corpus, run, f"distributed.strategy={strategy}"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert_same_run(one_process, run, rtol=RTOL)
    provenance = json.loads((run / "provenance.json").read_text())
    assert provenance["distributed"]["world_size"] == 2
    assert provenance["distributed"]["strategy"] == strategy
    assert out.stdout.count("step     20/20") == 1  # rank 0 alone prints
    assert "tokens_per_s_per_device" in read_jsonl(run / METRICS_FILE)[0]


def test_context_vector_epoch_mode_on_two_processes(trained_run, tiny_wikitext, tmp_path):
    out = torchrun(RECIPES["context_vector_two_epochs"].argv(tmp_path / "two", tiny_wikitext))
    assert out.returncode == 0, out.stderr[-3000:]
    assert_same_run(trained_run("context_vector_two_epochs"), tmp_path / "two", rtol=RTOL)


def test_a_stopped_run_resumes_on_two_or_on_one_process(one_process, stopped_on_two, resumed_on_two, tiny_corpus,
                                                          tmp_path):
    """The loader position is global: a resume on another number of processes continues the same
    data order, and (no dropout here) the same numbers. One 2-process run stopped at step 10 (the
    session's, conftest.py), resumed on 2 processes (the session's) and, in a copy, on 1."""
    out = stopped_on_two.out
    assert out.returncode == 0 and "stopped at step 10/20" in out.stdout, out.stderr[-3000:]
    for resumed_on in (2, 1):
        if resumed_on == 2:
            run, again = resumed_on_two.run, resumed_on_two.out
        else:
            run = copy_run(stopped_on_two.run, tmp_path / f"resumed-on-{resumed_on}")
            again = torchrun(transformer_args(tiny_corpus, run), nproc=resumed_on)
        assert again.returncode == 0 and "resuming" in again.stdout, again.stderr[-3000:]
        assert_same_run(one_process, run, rtol=RTOL)


def test_sigterm_to_one_rank_stops_every_rank_at_one_checkpoint(one_process, tiny_corpus, tmp_path):
    run = tmp_path / "run"
    # --nproc: lmlab starts torchrun itself
    proc = subprocess.Popen([sys.executable, "-m", "lmlab", *transformer_args(tiny_corpus, run), "--nproc", "2"],
                            cwd=REPO, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        wait_for(lambda: len([m for m in read_jsonl(run / METRICS_FILE) if "loss" in m]) >= 3, proc)
        os.kill(worker_pid(proc.pid, rank=1), signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        kill_group(proc)
    assert proc.returncode == 0, err[-3000:]
    assert "received" in out and "resume with the same command" in out
    assert run_status(run)["status"] == "preempted"
    saved = step_checkpoints(run)
    assert len(saved) == 1 and 3 <= int(saved[0].name) < STEPS
    again = torchrun(transformer_args(tiny_corpus, run))
    assert again.returncode == 0, again.stderr[-3000:]
    assert_same_run(one_process, run, rtol=RTOL)


def test_a_rank_that_raises_ends_the_job_naming_it(tiny_corpus, tmp_path):
    run = tmp_path / "run"
    started = time.monotonic()
    out = torchrun(transformer_args(tiny_corpus, run), script=[str(Path(__file__).with_name("raise_on_rank.py"))],
                   timeout=90)
    took = time.monotonic() - started
    assert out.returncode != 0 and took < 60
    assert "rank 1 of 2" in out.stderr and "RuntimeError: injected failure at step 5" in out.stderr
    assert not processes_mentioning(str(run))  # no orphan keeps training


@pytest.mark.parametrize("extra, nproc, key, fix", [
    (["data.batch_size=8"], 3, "data.batch_size", "make data.batch_size a multiple of 3"),
    (["distributed.strategy=fsdp", "model.name=context_vector"], 2, "distributed.strategy",
     "set distributed.strategy=ddp"),
    (["distributed.backend=nccl"], 2, "distributed.backend", "set distributed.backend=gloo"),
])
def test_preflight_refuses_what_several_processes_cannot_run(tiny_corpus, tmp_path, capsys, extra, nproc, key, fix):
    if "nccl" in extra[0] and torch.cuda.is_available():
        pytest.skip("this machine has GPUs")
    code = main([*transformer_args(tiny_corpus, tmp_path / "run", *extra), "--nproc", str(nproc)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"- {key}:" in err and fix in err
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- processes


def wait_for(condition, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if proc.poll() is not None:
            raise AssertionError(f"exited early: {proc.communicate()[1][-3000:]}")
        time.sleep(0.05)
    raise AssertionError("timed out")


def descendants(pid: int) -> list[int]:
    direct = []  # each thread's children: the launcher's agent starts the workers from a thread
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            direct += [int(c) for c in children.read_text().split()]
        except OSError:
            continue
    return direct + [d for c in direct for d in descendants(c)]


def worker_pid(launcher: int, rank: int) -> int:
    """The training process of ``rank`` below ``launcher`` (its environment says RANK=rank)."""
    for pid in descendants(launcher):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env and b"LOCAL_RANK" in b"".join(env):
            return pid
    raise AssertionError(f"no rank {rank} under {launcher}")


def kill_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
