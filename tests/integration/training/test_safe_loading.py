"""Safe loading: checkpoints never run code. Weights are safetensors; the one pickled file, the
optimizer state, is read with ``torch.load(weights_only=True)``, and one carrying a malicious
pickle is refused with a clear error while its payload never runs."""
from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import pytest
import torch

from helpers import REPO, tiny_args
from lmlab.cli import main
from lmlab.errors import LmlabError
from lmlab.rundir import OPTIMIZER_FILE
from lmlab.training.checkpoint import load_optimizer


class Payload:
    """Unpickling this runs ``touch <marker>``: what a booby-trapped checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def plant_payload(file: Path, marker: Path) -> None:
    """Replace an optimizer state with one that looks normal but carries the payload."""
    state = torch.load(file, weights_only=True)
    state["param_groups"][0]["note"] = Payload(marker)
    torch.save(state, file)


@pytest.fixture
def stopped_run(tmp_path, jsonl_root):
    """A tiny run stopped after its step-2 checkpoint (the same command resumes it)."""
    run = tmp_path / "run"
    argv = tiny_args(jsonl_root, run, "steps=4", "checkpoint.every=2", "training.stop_at=2",
                     "eval.validation.enabled=false")
    assert main(argv) == 0
    checkpoint = run / "checkpoints" / "0000000002"
    assert json.loads((checkpoint / "train_state.json").read_text())["finished"] is False
    return argv, checkpoint


def test_resuming_from_a_malicious_optimizer_state_is_refused(stopped_run, tmp_path, capsys):
    argv, checkpoint = stopped_run
    marker = tmp_path / "PWNED"
    plant_payload(checkpoint / OPTIMIZER_FILE, marker)
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert not marker.exists(), "the pickled payload ran"
    assert "Traceback" not in err
    assert f"refused to load optimizer state {checkpoint / OPTIMIZER_FILE}" in err
    assert "weights_only=True" in err and "Fix: do not use this file" in err
    assert "weights_only=False" not in err  # torch's own advice, which would run the payload
    assert f"delete {checkpoint}" in err


def test_load_optimizer_refuses_the_payload_directly(stopped_run, tmp_path):
    _, checkpoint = stopped_run
    marker = tmp_path / "PWNED"
    plant_payload(checkpoint / OPTIMIZER_FILE, marker)
    model = torch.nn.Linear(2, 2)
    with pytest.raises(LmlabError, match="refused to load optimizer state"):
        load_optimizer(model, torch.optim.AdamW(model.parameters()), checkpoint)
    assert not marker.exists()


def torch_load_calls(tree: ast.AST) -> list[ast.Call]:
    """Calls of ``torch.load`` / ``torch.serialization.load`` / a bare ``load`` imported from torch."""
    from_torch = {alias.asname or alias.name for node in ast.walk(tree)
                  if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("torch")
                  for alias in node.names if alias.name == "load"}
    calls = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        dotted = ast.unparse(func)
        if dotted in ("torch.load", "torch.serialization.load") or \
                (isinstance(func, ast.Name) and func.id in from_torch):
            calls.append(node)
    return calls


def test_every_torch_load_in_lmlab_passes_weights_only_true():
    found, unsafe, pickles = 0, [], []
    for path in sorted((REPO / "lmlab").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for call in torch_load_calls(tree):
            found += 1
            flag = next((k.value for k in call.keywords if k.arg == "weights_only"), None)
            if not (isinstance(flag, ast.Constant) and flag.value is True):
                unsafe.append(f"{path.relative_to(REPO)}:{call.lineno}")
        for node in ast.walk(tree):  # plain pickle loading would bypass weights_only entirely
            if isinstance(node, ast.Call) and ast.unparse(node.func) in (
                    "pickle.load", "pickle.loads", "pickle.Unpickler"):
                pickles.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert found >= 1  # the optimizer state is loaded somewhere: the scan sees it
    assert unsafe == [], f"torch.load without weights_only=True at {unsafe}"
    assert pickles == [], f"pickle loading at {pickles}"
