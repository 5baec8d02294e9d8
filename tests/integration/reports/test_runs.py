"""``list_runs`` finds finished, failed and running runs under a folder and tells them apart."""
from __future__ import annotations

import json
import os
import shutil
import socket

from helpers import CONFIGS, TINY_TRANSFORMER, data_overrides, make_jsonl_root
from lmlab.cli import main
from lmlab.reports.runs import format_runs_table, list_runs


def make_running(run, source):
    """A run in progress: config and a few metrics lines, run_start by this (alive) process."""
    run.mkdir(parents=True)
    shutil.copy(source / "config.yaml", run / "config.yaml")
    lines = [line for line in (source / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["step"] <= 4]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with open(run / "events.jsonl", "w") as handle:
        handle.write(json.dumps({"event": "run_start", "time": "2026-01-01T00:00:00.000Z", "unix": 0,
                                 "pid": os.getpid(), "host": socket.gethostname()}) + "\n")
    return run


def test_list_runs_tells_finished_failed_and_running_apart(tmp_path, tiny_runs, preflight_failure):
    root = tmp_path / "runs"
    shutil.copytree(tiny_runs["base"], root / "done")
    shutil.copytree(preflight_failure, root / "group" / "broken")
    make_running(root / "live", tiny_runs["base"])
    (root / "not_a_run").mkdir()
    # a real run that fails mid-training: the loss diverges at step 2 (exit 2, events record it)
    data = data_overrides(make_jsonl_root(tmp_path / "data"))
    assert main(["train", str(CONFIGS / "debug.yaml"), f"dump_dir={root / 'diverged'}", *TINY_TRANSFORMER,
                 *data, "steps=5", "optim.lr=1e30", "optim.warmup=0", "optim.clip=0"]) == 2

    rows = {r["name"]: r for r in list_runs(root)}
    assert set(rows) == {"done", "group/broken", "live", "diverged"}
    assert (rows["diverged"]["status"], rows["diverged"]["phase"]) == ("failed", "train")
    done, broken, live = rows["done"], rows["group/broken"], rows["live"]
    assert (done["status"], done["model"], done["done"], done["planned"], done["unit"]) == \
        ("finished", "transformer", 12, 12, "steps")
    val = [json.loads(line) for line in (root / "done" / "metrics.jsonl").read_text().splitlines()]
    assert done["best_val_loss"] == min(m["val/loss"] for m in val if "val/loss" in m)
    assert (broken["status"], broken["phase"]) == ("failed", "preflight")
    assert (live["status"], live["done"], live["planned"]) == ("running", 4, 12)

    table = format_runs_table(list_runs(root))
    assert "failed (preflight)" in table and "failed (train)" in table and "12/12 steps" in table and "4/12 steps" in table
    assert table.splitlines()[0].split()[:3] == ["run", "model", "status"]


def test_list_runs_on_an_empty_folder(tmp_path):
    assert list_runs(tmp_path) == []
    assert format_runs_table([]) == "no runs found"
