"""Test helpers: a toy Lingua-layout corpus, tiny config overrides, a CLI runner."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
SHARED_DATA = REPO.parent / "shared" / "data"

# Shrinks configs/debug.yaml to something that trains in seconds on CPU.
TINY_TRANSFORMER = ["model.dim=64", "model.n_layers=2", "model.n_heads=4", "model.multiple_of=16",
                    "data.seq_len=128", "data.batch_size=4", "optim.warmup=5", "logging.every=1",
                    "eval.validation.max_steps=2", "device=cpu"]


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


def run_lmlab(*args: str, timeout: float = 300, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """``python -m lmlab ARGS`` in a subprocess (exit codes, stderr, tracebacks as a user sees them)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    return subprocess.run([sys.executable, "-m", "lmlab", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=env)


def write_piqa(data_dir: Path, n: int = 12) -> Path:
    """A small file set in the upstream PIQA layout (goal, sol1, sol2 + a labels file)."""
    folder = data_dir / "piqa"
    folder.mkdir(parents=True)
    docs = [{"goal": f"How do I open jar {i}?", "sol1": "Twist the lid.", "sol2": "Eat the lid."} for i in range(n)]
    (folder / "valid.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (folder / "valid-labels.lst").write_text("0\n" * n)
    return data_dir


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
