"""Metric sinks in a real process: a planted W&B key reaches no run file and no output of `lmlab
train`, and a fresh interpreter imports no optional sink unless it is selected. The sinks
themselves are tests/integration/training/test_sinks.py."""
from __future__ import annotations

import subprocess
import sys

from helpers import CONFIGS, TINY_TRANSFORMER, data_overrides, files_containing, run_lmlab
from lmlab.rundir import WANDB_ID_FILE, read_jsonl


def test_planted_key_is_in_no_run_file_and_not_on_stdout(tmp_path, jsonl_root, wandb_env):
    run = tmp_path / "run"
    result = run_lmlab("train", str(CONFIGS / "debug.yaml"), *TINY_TRANSFORMER,
                       *data_overrides(jsonl_root), "steps=4", "checkpoint.every=2",
                       "eval.validation.every=2", f"dump_dir={run}", "logging.wandb.mode=offline",
                       "logging.tensorboard.enabled=true", timeout=240)
    assert result.returncode == 0, result.stderr[-4000:]
    wandb_files = list((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(wandb_files) == 1, sorted(p.name for p in run.rglob("*"))
    assert b"val/loss" in wandb_files[0].read_bytes()  # the metrics went to W&B
    assert (run / WANDB_ID_FILE).read_text().strip() in wandb_files[0].name
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert [m["step"] for m in read_jsonl(run / "metrics.jsonl") if "loss" in m] == [1, 2, 3, 4]
    for name, secret in wandb_env.items():
        # tmp_path holds the run directory (with <run>/wandb) and W&B's cache/config/data folders.
        assert files_containing(tmp_path, secret) == [], name
        assert secret not in result.stdout + result.stderr, name


def test_optional_sinks_are_not_imported_unless_selected(tmp_path):
    code = ("import sys; from lmlab.training.sinks import build_sinks; "
            "from lmlab.training.metrics import LoggingConfig; "
            f"s = build_sinks(LoggingConfig(), {str(tmp_path)!r}, 't', {{}}); s.close(); "
            "print(sorted(m for m in ('wandb', 'tensorboard', 'torch.utils.tensorboard') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
