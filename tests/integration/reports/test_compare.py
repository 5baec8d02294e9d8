"""Comparisons of several runs: one row each, the config keys that differ, one loss plot."""
from __future__ import annotations

import re

from lmlab.reports.compare import config_differences, flatten, write_comparison
from lmlab.reports.runs import Run


def test_comparison_of_two_learning_rates(tmp_path, tiny_runs, valid_png):
    out = write_comparison([tiny_runs["base"], tiny_runs["low_lr"]], tmp_path / "cmp" / "compare.md")
    text = out.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| base ") or line.startswith("| low_lr ")]
    assert len(rows) == 2
    assert "3.000e-03" in rows[0] and "1.000e-03" in rows[1] and "12/12 steps" in rows[0]
    assert re.search(r"^\| `optim\.lr` \| 0\.003 \| 0\.001 \|$", text, re.M)
    assert "`dump_dir`" not in text.split("## Config differences")[1].split("|", 1)[1].split("## ")[0] \
        .replace("`dump_dir` is left out", "")
    assert "`model.dim`" not in text  # equal keys are not listed
    valid_png(tmp_path / "cmp" / "compare-loss.png")
    ja = write_comparison([tiny_runs["base"], tiny_runs["low_lr"]], tmp_path / "cmp" / "compare.ja.md",
                          lang="ja").read_text()
    assert "## 設定の差分" in ja and "| `optim.lr` | 0.003 | 0.001 |" in ja


def test_comparison_of_runs_written_by_hand(tmp_path, make_fake_run, valid_png):
    runs = [make_fake_run(tmp_path / "a" / "run"), make_fake_run(tmp_path / "b" / "run", steps=30)]
    text = write_comparison(runs, tmp_path / "cmp.html").read_text()
    assert text.startswith("<!DOCTYPE html>") and "<td>a/run</td>" in text and "<td>b/run</td>" in text
    assert "20/20 steps" in text and "30/30 steps" in text and "<code>steps</code>" in text
    valid_png(tmp_path / "cmp-loss.png")


def test_flatten_and_differences():
    assert flatten({"optim": {"lr": 1, "sched": {}}, "steps": 3}) == {"optim.lr": 1, "optim.sched": {},
                                                                       "steps": 3}
    runs = [Run(path=tmp, config=c) for tmp, c in (("x", {"a": {"b": 1.5}, "c": None, "dump_dir": "x"}),
                                                   ("y", {"a": {"b": 2.0}, "dump_dir": "y"}))]
    assert config_differences(runs) == [("`a.b`", "1.5", "2"), ("`c`", "null", "-")]
