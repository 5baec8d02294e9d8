"""Run reports (en/ja, md/html) and comparisons, on tiny real runs and on synthetic failed runs."""
from __future__ import annotations

import contextlib
import re
import shutil
from types import SimpleNamespace

import pytest
import torch
import yaml

from helpers import CONFIGS
from lmlab.cli import main
from lmlab.info import run_info
from lmlab.reports.events import EventLog
from lmlab.reports.run_report import Text, diagnose, write_comparison, write_report
from lmlab.reports.runs import Run
from lmlab.training.loop import train_step

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SECTIONS_EN = ["## Overview", "## Status", "## Model size", "## Loss", "## Plots", "## Throughput",
               "## Checkpoints", "## Evaluation results"]
SECTIONS_JA = ["## 概要", "## 状態", "## モデルの規模", "## 損失", "## グラフ", "## スループット",
               "## チェックポイント", "## 評価結果"]


def assert_valid_png(path):
    from PIL import Image

    assert path.read_bytes()[:8] == PNG_MAGIC, path
    with Image.open(path) as image:
        image.verify()
        assert image.size[0] > 100 and image.size[1] > 100


def table_numbers(markdown: str) -> list[str]:
    """Numbers in table data cells, skipping label cells (a first column that is not a number),
    so that the same report in two languages gives the same list."""
    numbers, lines = [], markdown.splitlines()
    for i, line in enumerate(lines):
        if not line.startswith("|") or line.startswith("|---"):
            continue
        if i + 1 < len(lines) and lines[i + 1].startswith("|---"):
            continue  # header row
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        for j, cell in enumerate(cells):
            if j == 0 and not re.fullmatch(r"[\d,.]+", cell):
                continue
            numbers += re.findall(r"[-+]?\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?%?", cell)
    return numbers


def test_report_has_every_section_plots_and_conventions(tiny_runs):
    run = tiny_runs["base"]
    report = write_report(run)
    text = report.read_text()
    assert report == run / "report.md"
    for heading in SECTIONS_EN:
        assert heading in text, heading
    params = run_info(run / "config.yaml", [])["params"]  # what `lmlab info` says
    assert f"| parameters | {params:,} " in text
    assert "6N + 12*L*d*T" in text and "nats/token" in text and "ppl = exp(loss)" in text
    assert "bits per UTF-8 byte" in text and "tokens/s" in text and "GiB" in text
    assert "Status: **finished**" in text and "12/12 steps" in text
    # Loss table: first logged step, every 10 steps, the last step; each with its change.
    rows = re.findall(r"^\| (\d+) \| (\d+\.\d{4}) \| ([-+]\d+\.\d{4}|-) \|", text, re.M)
    assert [r[0] for r in rows[:3]] == ["2", "10", "12"] and rows[0][2] == "-" and rows[1][2] != "-"
    assert "`checkpoints/0000000012`" in text and "`checkpoints/final`" in text
    assert "`hellaswag`" in text and "0.2512" in text  # metrics.eval.jsonl
    plots = sorted((run / "plots").glob("*.png"))
    assert len(plots) >= 3
    for plot in plots:
        assert_valid_png(plot)
        assert f"](plots/{plot.name})" in text


def test_japanese_report_has_japanese_headings_and_the_same_numbers(tiny_runs):
    en = write_report(tiny_runs["base"], lang="en").read_text()
    ja_path = write_report(tiny_runs["base"], lang="ja")
    ja = ja_path.read_text()
    assert ja_path.name == "report.ja.md"
    for heading in SECTIONS_JA:
        assert heading in ja, heading
    assert "## Overview" not in ja and "完了 (finished)" in ja
    assert table_numbers(ja) == table_numbers(en) and len(table_numbers(en)) > 50
    best = re.search(r"Best validation loss: (\S+) nats/token", en).group(1)
    assert f"{best} nats/token" in ja


def test_html_report(tiny_runs):
    page = write_report(tiny_runs["base"], fmt="html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<table>" in page
    assert '<img src="plots/loss.png"' in page and "<h2>Overview</h2>" in page


def test_failed_run_report_for_missing_validation_files(preflight_failure):
    run = preflight_failure
    text = write_report(run).read_text()
    assert "Status: **failed**" in text and "## Failure analysis" in text
    assert "| phase | `preflight` |" in text and "`ConfigError`" in text
    assert re.search(r"\| raised at \(file:line\) \| `lmlab/preflight\.py:\d+` \|", text)
    assert "Validation is enabled but its data is missing." in text
    assert "`eval.validation.enabled=false`" in text and ".val.jsonl" in text
    assert re.search(r"`errors/\d{8}T\d{6}Z-preflight\.txt`", text)
    ja = write_report(run, lang="ja").read_text()
    assert "## 失敗の分析" in ja and "検証が有効ですが、検証データがありません。" in ja


class OutOfMemoryModel(torch.nn.Module):
    def forward(self, tokens):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; "
                                     "79.10 GiB total capacity)")


def test_failed_run_report_for_out_of_memory(tmp_path, tiny_runs):
    run = tmp_path / "run"
    run.mkdir()
    config = yaml.safe_load((tiny_runs["base"] / "config.yaml").read_text())
    config["data"]["batch_size"] = 16
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    shutil.copy(tiny_runs["base"] / "tokenizer.json", run / "tokenizer.json")
    runtime = SimpleNamespace(device=torch.device("cpu"), autocast=contextlib.nullcontext)
    log = EventLog(run)
    with pytest.raises(torch.OutOfMemoryError):
        with log.run():
            with log.phase("train"):
                train_step(OutOfMemoryModel(), torch.zeros(16, 33, dtype=torch.long), None, runtime,
                           None, 1.0, 1, None)
    text = write_report(run).read_text()
    assert "| phase | `train` |" in text and "`OutOfMemoryError`" in text
    assert re.search(r"`lmlab/training/loop\.py:\d+`", text)  # the lmlab line, not torch's
    assert "Out of memory" in text
    assert "`training.grad_accum=2`" in text and "micro-batches of 8 sequences" in text
    assert "lower `data.batch_size` to 8" in text


def test_comparison_of_two_learning_rates(tmp_path, tiny_runs):
    out = write_comparison([tiny_runs["base"], tiny_runs["low_lr"]], tmp_path / "cmp" / "compare.md")
    text = out.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| base ") or line.startswith("| low_lr ")]
    assert len(rows) == 2
    assert "3.000e-03" in rows[0] and "1.000e-03" in rows[1] and "12/12 steps" in rows[0]
    assert re.search(r"^\| `optim\.lr` \| 0\.003 \| 0\.001 \|$", text, re.M)
    assert "`dump_dir`" not in text.split("## Config differences")[1].split("|", 1)[1].split("## ")[0] \
        .replace("`dump_dir` is left out", "")
    assert "`model.dim`" not in text  # equal keys are not listed
    assert_valid_png(tmp_path / "cmp" / "compare-loss.png")
    ja = write_comparison([tiny_runs["base"], tiny_runs["low_lr"]], tmp_path / "cmp" / "compare.ja.md",
                          lang="ja").read_text()
    assert "## 設定の差分" in ja and "| `optim.lr` | 0.003 | 0.001 |" in ja


def test_epoch_mode_report_has_one_row_per_epoch_and_early_stopping_status(tmp_path):
    words = "the of and in to a was on for as with by he at from his an were is".split()
    for split, n in (("train", 120), ("valid", 30)):
        lines = [" " + " ".join(words[(i * 3 + j * (i % 5 + 1)) % len(words)] for j in range(6 + i % 9))
                 for i in range(n)]
        (tmp_path / f"{split}.txt").write_text("\n".join(lines) + "\n")
    run = tmp_path / "run"
    assert main(["train", str(CONFIGS / "newllm_wikitext2_baseline.yaml"), "model.embed_dim=16",
                 "model.hidden_dim=32", "model.n_layers=2", "model.context_dim=8",
                 "data.tokenizer.vocab_size=60", "data.seq_len=16", "data.batch_size=16", "device=cpu",
                 "logging.every=5", f"data.path={tmp_path}", "epochs=10", "training.patience=2",
                 "training.min_delta=100.0", f"dump_dir={run}"]) == 0
    text = write_report(run).read_text()
    assert "Status: **stopped early**" in text and "3/10 epochs" in text
    assert "| epoch | step | train loss (nats/token) |" in text
    epochs = re.findall(r"^\| (\d+) \| (\d+) \| \d+\.\d{4} \|", text, re.M)
    assert epochs == [("1", "8"), ("2", "16"), ("3", "24")]
    assert "`checkpoints/best`" in text and "6N (N = params excluding the input embedding" in text
    assert_valid_png(run / "plots" / "loss.png")


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
