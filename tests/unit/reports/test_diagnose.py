"""Failure rules: a recorded exception and its phase give the likely cause and a fix."""
from __future__ import annotations

import pytest

from lmlab.reports.diagnose import diagnose
from lmlab.reports.runs import Run
from lmlab.reports.text import Text


@pytest.mark.parametrize("exc_type, message, phase, cause", [
    ("LmlabError", "non-finite loss at step 7 (loss nan, grad norm nan).", "train", "diverged"),
    ("LmlabError", "cannot download WikiText-2 (ConnectionError). Offline? WikiText-2 split 'train' "
                   "not found in DIR.", "data", "cannot reach the Hugging Face hub"),
    ("ConfigError", "configuration has 1 problem:\n  - data.root_dir: directory /x does not exist.",
     "preflight", "training data is not where"),
    ("LmlabError", "WikiText-2 split 'valid' not found in /d. Put wiki.valid.raw there.", "data",
     "Validation is enabled"),
    ("KeyError", "'acc_norm'", "eval", "The evaluation failed"),
    ("ValueError", "something else entirely", "train", "No known failure pattern"),
])
def test_failure_rules(tmp_path, exc_type, message, phase, cause):
    run = Run(path=tmp_path, config={"data": {"val_split": "valid", "batch_size": 8},
                                     "optim": {"lr": 0.003}})
    found_cause, fix = diagnose({"type": exc_type, "message": message}, phase, run, Text("en"))
    assert cause in found_cause
    if exc_type == "LmlabError" and "non-finite" in message:
        assert "optim.lr=0.0015" in fix


def test_fix_texts_name_the_run_dir_files(tmp_path):
    run = Run(path=tmp_path / "r")
    for lang in ("en", "ja"):
        cause, fix = diagnose({"type": "KeyError", "message": "'acc'"}, "eval", run, Text(lang))
        assert "`checkpoints/`" in cause and "`checkpoints/final`" in fix and f"lmlab eval {run.path}" in fix
