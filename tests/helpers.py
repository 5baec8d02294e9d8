"""Test helpers: a toy Lingua-layout corpus, tiny config overrides, a CLI runner, and comparing two
runs. The named tiny runs built from these overrides (``trained_run``) are in tests/conftest.py."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lmlab.cli import main
from lmlab.rundir import (CONFIG_FILE, METRICS_FILE, MODEL_FILE, OPTIMIZER_FILE, STATE_FILE, checkpoints_root,
                          read_jsonl)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
SHARED_DATA = REPO.parent / "shared" / "data"
# a real web-text chunk (../shared/data), a few MB: what `lmlab data prepare` meets
WEBTEXT = SHARED_DATA / "webtext" / "CC-MAIN-20190717121559-20190717143559-00140.jsonl"

# Shrinks configs/debug.yaml to something that trains in seconds on CPU.
TINY_TRANSFORMER = ["model.dim=64", "model.n_layers=2", "model.n_heads=4", "model.multiple_of=16",
                    "data.seq_len=128", "data.batch_size=4", "optim.warmup=5", "logging.every=1",
                    "eval.validation.max_steps=2", "device=cpu"]
# configs/quickstart.yaml shrunk to seconds: 12 steps, logged every 2, validated and checkpointed every 6.
TINY_QUICKSTART = ["steps=12", "model.dim=32", "model.n_layers=1", "model.n_heads=2",
                   "model.multiple_of=16", "data.seq_len=32", "data.batch_size=2", "logging.every=2",
                   "eval.validation.every=6", "eval.validation.max_steps=1", "checkpoint.every=6"]
# A run of 6 steps keeping checkpoints 3 and 6: a resume has steps to train, a damaged checkpoint a
# predecessor.
SIX_STEPS = ("steps=6", "checkpoint.every=3", "checkpoint.keep=0")
# The context-vector reference (configs/newllm_wikitext2_baseline.yaml) shrunk: on make_wikitext_dir's
# toy corpus, 8 steps an epoch. Dropout, logging and checkpoints are each test's own.
TINY_CONTEXT_VECTOR = ["model.embed_dim=16", "model.hidden_dim=32", "model.n_layers=2",
                       "model.context_dim=8", "data.tokenizer.vocab_size=60", "data.seq_len=16",
                       "data.batch_size=16", "device=cpu", "optim.lr=3e-3"]


@dataclass(frozen=True)
class Recipe:
    """A named tiny run: a file of configs/, its overrides, and which of the session's toy corpora it
    reads (tests/conftest.py's ``tiny_corpora``: "jsonl", make_jsonl_root; "wikitext",
    make_wikitext_dir), or none: the data its config names."""

    config: str
    overrides: tuple[str, ...]
    reads: str = ""

    def argv(self, run: Path, data: Path | None = None, *extra: str) -> list[str]:
        """The ``lmlab train`` command of this recipe on ``data`` into ``run`` (plus ``extra``)."""
        where = {"jsonl": lambda: data_overrides(data), "wikitext": lambda: [f"data.path={data}"],
                 "": lambda: []}[self.reads]()
        return ["train", str(CONFIGS / self.config), *self.overrides, *where, f"dump_dir={run}", *extra]


# The one set of tiny runs. tests/conftest.py's ``trained_run(name)`` trains each once a session;
# a test that changes a run changes a copy of it (copy_run).
RECIPES = {
    # debug.yaml shrunk, 6 steps with checkpoints 3 and 6 kept: the bad-input tables damage copies
    # of it; eval, generate, export and the eval-task tests read it
    "transformer": Recipe("debug.yaml", (*TINY_TRANSFORMER, *SIX_STEPS), reads="jsonl"),
    # the same with the output matrix tied to the embedding
    "tied": Recipe("debug.yaml", (*TINY_TRANSFORMER, "data.seq_len=64", "steps=6", "checkpoint.every=3",
                                  "eval.validation.every=3", "model.weight_tying=true"), reads="jsonl"),
    # the quickstart on its bundled text: reports, and loading a run for evaluation
    "quickstart": Recipe("quickstart.yaml", tuple(TINY_QUICKSTART)),
    "quickstart_low_lr": Recipe("quickstart.yaml", (*TINY_QUICKSTART, "optim.lr=1e-3")),
    # positions up to 1024, so that every piqa request fits one window (lm-eval's HFLM refuses a
    # continuation longer than the context; lmlab's adapter would score it in windows)
    "quickstart_long_context": Recipe("quickstart.yaml", (
        "steps=8", "model.dim=64", "model.max_seq_len=1024", "model.n_layers=2", "data.batch_size=4",
        "logging.every=4", "checkpoint.every=8", "eval.validation.max_steps=2")),
    # WikiText-2 from ../shared/data, its test split standing in for the train split (not bundled);
    # 2 steps of 128 sequences (step mode), then validated
    "wikitext": Recipe("newllm_wikitext2.yaml", (
        f"data.path={SHARED_DATA / 'wikitext-2'}", "data.train_split=test", "data.val_split=valid",
        "data.batch_size=128", "epochs=0", "steps=2", "model.embed_dim=16", "model.hidden_dim=32", "model.n_layers=1",
        "model.context_dim=16", "eval.validation.max_steps=2", "precision=fp32", "device=cpu",
        "logging.every=1")),
    # the context-vector reference in epoch mode, stopped early after 3 of its 10 epochs (no epoch
    # improves on the first by min_delta)
    "context_vector_early_stop": Recipe("newllm_wikitext2_baseline.yaml", (
        *TINY_CONTEXT_VECTOR, "model.dropout=0.1", "logging.every=5", "epochs=10", "training.patience=2",
        "training.min_delta=100.0"), reads="wikitext"),
    # the references several processes must match (tests/system/distributed/test_torchrun.py,
    # test_disjoint_readers.py): 20 steps of a batch of 8, two readers (one per process on two),
    # each shuffling blocks of 16 documents (a resume at step 10 is several blocks in); 2 epochs
    # without dropout
    "two_readers": Recipe("debug.yaml", (*TINY_TRANSFORMER, "data.batch_size=8", "steps=20", "checkpoint.every=10",
                                         "logging.progress_bar=false", "data.readers=2", "data.shuffle_buffer=16"),
                          reads="jsonl"),
    "context_vector_two_epochs": Recipe("newllm_wikitext2_baseline.yaml", (
        *TINY_CONTEXT_VECTOR, "model.dropout=0.0", "logging.every=1", "logging.progress_bar=false", "epochs=2"),
        reads="wikitext"),
}

# What a metrics line holds that depends on the machine's speed, not on what was trained.
TIMING = frozenset({"tokens_per_s", "flops_per_s", "mfu", "data_time_frac", "mem_peak_gib"})
# What one process and several compute alike (within the reduction order of the gradients).
DETERMINISTIC = ("loss", "grad_norm", "lr", "tokens", "val/loss", "val/acc", "train/epoch_loss")


def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return path


def toy_texts(source: str, n: int, seed: int = 0) -> list[str]:
    """Deterministic, somewhat learnable documents."""
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far", source]
    out = []
    for i in range(n):
        k = (i * 7 + seed) % len(words)
        out.append(" ".join(words[(k + j * 3) % len(words)] for j in range(20 + i % 15)) + ".")
    return out


def make_jsonl_root(root: Path) -> Path:
    """root/<source>/*.chunk.*.jsonl (two files each) and *.val.jsonl for sources 'alpha', 'beta'."""
    for source in ("alpha", "beta"):
        write_jsonl(root / source / f"{source}.chunk.00.jsonl", toy_texts(source, 60))
        write_jsonl(root / source / f"{source}.chunk.01.jsonl", toy_texts(source, 40, seed=3))
        write_jsonl(root / source / f"{source}.val.jsonl", toy_texts(source, 30, seed=5))
    return root


def make_wikitext_dir(root: Path) -> Path:
    """A toy corpus in the tokenized WikiText-2 file layout (train.txt, valid.txt)."""
    words = "the of and in to a was on for as with by he at from his an were is".split()
    root.mkdir(parents=True)
    for split, n in (("train", 120), ("valid", 30)):
        lines = [" " + " ".join(words[(i * 3 + j * (i % 5 + 1)) % len(words)] for j in range(6 + i % 9))
                 for i in range(n)]
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def data_overrides(root: Path) -> list[str]:
    return [f"data.root_dir={root}", "data.sources={alpha: 1.0, beta: 2.0}"]


def tiny_args(root: Path, run: Path, *extra: str) -> list[str]:
    """``lmlab train`` of configs/debug.yaml shrunk (TINY_TRANSFORMER) on the corpus at ``root``."""
    return ["train", str(CONFIGS / "debug.yaml"), *TINY_TRANSFORMER, *data_overrides(root),
            f"dump_dir={run}", *extra]


def copy_run(run: Path, target: Path) -> Path:
    """A copy of a finished run whose config.yaml names the copy, so that a command aimed at the copy
    is "the same command" as the one that trained the original (resuming rewrites it identically)."""
    shutil.copytree(run, target)
    config = target / CONFIG_FILE
    config.write_text(config.read_text().replace(str(run), str(target)))
    return target


def run_lmlab(*args: str, timeout: float = 300, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """``python -m lmlab ARGS`` in a subprocess (exit codes, stderr, tracebacks as a user sees them)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    return subprocess.run([sys.executable, "-m", "lmlab", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=env)


def run_main(capsys, *args: str) -> subprocess.CompletedProcess:
    """``lmlab ARGS`` in-process (``lmlab.cli.main``): its exit code, stdout and stderr, for the checks
    that need no more (a traceback a real process would print is ``tests/system``'s to see)."""
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["lmlab", *args], code, out, err)


def torchrun(args: list[str], nproc: int = 2, timeout: float = 120, script: list[str] | None = None,
             **popen) -> subprocess.CompletedProcess | subprocess.Popen:
    """``python -m torch.distributed.run --standalone --nproc_per_node N -m lmlab ARGS`` (or SCRIPT
    ARGS): run to its end, or started in a session of its own with ``popen``'s Popen arguments."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", *(script or ["-m", "lmlab"]), *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    if popen:
        return subprocess.Popen(command, cwd=REPO, env=env, text=True, start_new_session=True, **popen)
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def wait_until(done, proc: subprocess.Popen, what: str, timeout: float = 120) -> None:
    """Poll ``done()`` until it holds; fail naming ``what`` (with the output) if ``proc`` ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if done():
            return
        time.sleep(0.05)
    out, err = proc.communicate(timeout=60) if proc.poll() is not None else ("", "")
    raise AssertionError(f"never saw {what}\nstdout:\n{out}\nstderr:\n{err}")


def logged_steps(run: Path) -> list[int]:
    """The steps whose training loss the run logged."""
    return [m["step"] for m in read_jsonl(run / METRICS_FILE) if "loss" in m]


def files_containing(root: Path, secret: str) -> list[Path]:
    """The files below ``root`` whose bytes hold ``secret``."""
    return [p for p in sorted(root.rglob("*")) if p.is_file() and secret.encode() in p.read_bytes()]


def shard_checksums(folder: Path) -> dict[str, str]:
    """The sha256 of each shard and index file ``lmlab data prepare`` wrote into ``folder``."""
    files = sorted(folder.glob("*.bin")) + sorted(folder.glob("*.idx.npy"))
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def write_piqa(data_dir: Path, n: int = 12) -> Path:
    """A small file set in the upstream PIQA layout (goal, sol1, sol2 + a labels file)."""
    folder = data_dir / "piqa"
    folder.mkdir(parents=True)
    docs = [{"goal": f"How do I open jar {i}?", "sol1": "Twist the lid.", "sol2": "Eat the lid."} for i in range(n)]
    (folder / "valid.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (folder / "valid-labels.lst").write_text("0\n" * n)
    return data_dir


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_valid_png(path: Path) -> None:
    """``path`` is a readable PNG of a real size."""
    from PIL import Image  # lazy: only the report tests draw, and PIL is matplotlib's, not ours

    assert path.read_bytes()[:8] == PNG_MAGIC, path
    with Image.open(path) as image:
        image.verify()
        assert image.size[0] > 100 and image.size[1] > 100


def processes_mentioning(text: str) -> list[int]:
    """The pids whose command line holds ``text`` (what a test left running shows up here)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and text.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


# --------------------------------------------------------------------------- comparing two runs


def untimed_metrics(run: Path) -> list[dict]:
    """The run's metrics lines without their timings: what two runs trained alike share."""
    return [{k: v for k, v in line.items() if k not in TIMING} for line in read_jsonl(run / METRICS_FILE)]


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(checkpoints_root(run) / "final" / MODEL_FILE))


def same_weights(a: Path, b: Path) -> bool:
    """The two runs' final weights are bitwise the same."""
    wa, wb = final_weights(a), final_weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def assert_equal_nested(a, b, where: str) -> None:
    """Tensors (dtype and values), dicts, lists and plain values, all the way down, bitwise."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_equal_nested(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_equal_nested(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def assert_same_run(a: Path, b: Path, checkpoints: tuple[str, ...] = ("final",), rtol: float = 0.0) -> None:
    """``b`` trained what ``a`` trained. Bitwise (``rtol`` 0: one process, whatever stops and resumes
    it): every metric but the timings, and the weights, optimizer and train state of each of
    ``checkpoints``. Within ``rtol`` (processes sum gradients in another order): the DETERMINISTIC
    metrics line by line, and the weights."""
    if rtol:
        assert_close_metrics(a, b, rtol)
    else:
        assert untimed_metrics(b) == untimed_metrics(a)
    for name in checkpoints:
        a_dir, b_dir = checkpoints_root(a) / name, checkpoints_root(b) / name
        assert (b_dir / STATE_FILE).is_file(), f"{name}/ is missing"
        if rtol:
            assert_close_weights(a_dir, b_dir, rtol)
        else:
            assert_same_checkpoint(a_dir, b_dir, name)


def assert_same_checkpoint(a_dir: Path, b_dir: Path, name: str) -> None:
    assert_equal_nested(load_file(str(a_dir / MODEL_FILE)), load_file(str(b_dir / MODEL_FILE)),
                        f"{name}/{MODEL_FILE}")
    assert_equal_nested(json.loads((a_dir / STATE_FILE).read_text()),
                        json.loads((b_dir / STATE_FILE).read_text()), f"{name}/{STATE_FILE}")
    assert_equal_nested(torch.load(a_dir / OPTIMIZER_FILE, weights_only=True),
                        torch.load(b_dir / OPTIMIZER_FILE, weights_only=True), f"{name}/{OPTIMIZER_FILE}")


def assert_close_weights(a_dir: Path, b_dir: Path, rtol: float) -> None:
    wa, wb = load_file(str(a_dir / MODEL_FILE)), load_file(str(b_dir / MODEL_FILE))
    assert sorted(wa) == sorted(wb)
    for key in wa:
        torch.testing.assert_close(wb[key], wa[key], rtol=rtol, atol=1e-6)


def assert_close_metrics(a: Path, b: Path, rtol: float) -> None:
    ma, mb = read_jsonl(a / METRICS_FILE), read_jsonl(b / METRICS_FILE)
    assert [m["step"] for m in ma] == [m["step"] for m in mb]
    for x, y in zip(ma, mb):
        for key in DETERMINISTIC:
            if key in x:
                assert y[key] == pytest.approx(x[key], rel=rtol), (key, x["step"])
