"""Run reports (en/ja, md/html), on tiny real runs, on synthetic failed runs and on a run
directory written by hand (no training)."""
from __future__ import annotations

import contextlib
import re
import shutil
from types import SimpleNamespace

import pytest
import torch
import yaml

from helpers import copy_run
from lmlab import rundir
from lmlab.apps.info import run_info
from lmlab.reports.report import write_report
from lmlab.runlog import EventLog
from lmlab.training.parts import TrainingParts

SECTIONS_EN = ["## Overview", "## Status", "## Model size", "## Loss", "## Plots", "## Throughput",
               "## Checkpoints", "## Evaluation results"]
SECTIONS_JA = ["## 概要", "## 状態", "## モデルの規模", "## 損失", "## グラフ", "## スループット",
               "## チェックポイント", "## 評価結果"]


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


def test_report_has_every_section_plots_and_conventions(tiny_runs, valid_png):
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
        valid_png(plot)
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


def test_report_of_a_run_dir_written_by_hand(fake_run, valid_png):
    """Everything comes from the run directory: the model size from provenance.json, and only
    complete checkpoints are listed (not an interrupted save, not a folder without a train state)."""
    text = write_report(fake_run).read_text()
    for heading in SECTIONS_EN:
        assert heading in text, heading
    assert "| parameters | 123,456 (0.12 M) |" in text and "| FLOPs formula | `6N + 12*L*d*T` |" in text
    assert "FLOP/s = tokens/s × 987,654 FLOPs/token (`6N + 12*L*d*T`)" in text
    assert "| vocabulary size | 260 |" in text and "| tokens per optimizer step | 64 |" in text
    assert "Status: **finished**" in text and "20/20 steps" in text
    assert "3 checkpoint directories; newest step checkpoint: `checkpoints/0000000020`." in text
    listed = re.findall(r"^\| `(checkpoints/[^`]+)` \|", text, re.M)
    assert listed == ["checkpoints/0000000010", "checkpoints/0000000020", "checkpoints/final"]
    assert "same files as `checkpoints/0000000020` (hard links)" in text
    assert "1.20 GFLOP/s" in text
    for plot in ("loss", "lr", "tokens_per_s", "grad_norm"):
        valid_png(fake_run / rundir.PLOTS_DIR / f"{plot}.png")


def test_model_size_not_recorded_says_how_to_get_it(tmp_path, make_fake_run):
    run = make_fake_run(tmp_path / "old_run", model_size=None)
    text = write_report(run).read_text()
    assert "Model size not recorded" in text and "`model_size`" in text
    assert f"`lmlab info {run / rundir.CONFIG_FILE}`" in text
    assert "FLOP/s = tokens/s × ? FLOPs/token (?)" in text
    ja = write_report(run, lang="ja").read_text()
    assert "モデルの規模は記録されていません" in ja and f"`lmlab info {run / rundir.CONFIG_FILE}`" in ja
    (run / rundir.CONFIG_FILE).unlink()
    assert "`lmlab info CONFIG`" in write_report(run).read_text()


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
                TrainingParts(OutOfMemoryModel(), None, runtime, clip=1.0).step(
                    torch.zeros(16, 33, dtype=torch.long))
    text = write_report(run).read_text()
    assert "| phase | `train` |" in text and "`OutOfMemoryError`" in text
    assert re.search(r"`lmlab/training/\w+\.py:\d+`", text)  # the lmlab line, not torch's
    assert "Out of memory" in text
    assert "`training.grad_accum=2`" in text and "micro-batches of 8 sequences" in text
    assert "lower `data.batch_size` to 8" in text


def test_epoch_mode_report_has_one_row_per_epoch_and_early_stopping_status(tmp_path, valid_png, trained_run):
    run = copy_run(trained_run("context_vector_early_stop"), tmp_path / "run")
    text = write_report(run).read_text()
    assert "Status: **stopped early**" in text and "3/10 epochs" in text
    assert "| epoch | step | train loss (nats/token) |" in text
    epochs = re.findall(r"^\| (\d+) \| (\d+) \| \d+\.\d{4} \|", text, re.M)
    assert epochs == [("1", "8"), ("2", "16"), ("3", "24")]
    assert "`checkpoints/best`" in text and "6N (N = params excluding the input embedding" in text
    valid_png(run / "plots" / "loss.png")
