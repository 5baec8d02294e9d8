"""``lmlab eval`` on a WikiText-2 run reads and tokenizes the validation split only, with the run's
saved tokenizer, and reproduces the validation metrics training logged."""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from helpers import SHARED_DATA, copy_run
from lmlab.apps import evaluate as evaluate_app
from lmlab.data import wikitext
from lmlab.data.tokenizers import WordTokenizer
from lmlab.rundir import EVAL_RESULTS_FILE, METRICS_FILE, read_json, read_jsonl, resolve_checkpoint

WIKITEXT = SHARED_DATA / "wikitext-2"
pytestmark = pytest.mark.skipif(not all((WIKITEXT / f"{s}.txt").is_file() for s in ("test", "valid")),
                                reason="../shared/data/wikitext-2 (test.txt, valid.txt) not present")


@pytest.fixture(scope="module")
def wikitext_run(trained_run, tmp_path_factory) -> Path:
    """A copy of the session's tiny WikiText-2 run: evaluating it writes its results into it."""
    return copy_run(trained_run("wikitext"), tmp_path_factory.mktemp("wikitext_eval") / "run")


def test_eval_reads_and_tokenizes_only_the_validation_split(wikitext_run, monkeypatch, capsys):
    train_file = wikitext.local_split_file(str(WIKITEXT), "test").resolve()
    valid_lines = set(wikitext.read_split_lines(str(WIKITEXT), "valid"))
    # lines only the train split has (and that build_sequences would encode): none may be encoded
    train_only = {line for line in wikitext.read_split_lines(str(WIKITEXT), "test")
                  if line not in valid_lines and len(line.split()) >= wikitext.MIN_WORDS}
    splits, files, encoded = [], [], []
    read_lines, read_text, encode = wikitext.read_split_lines, Path.read_text, WordTokenizer.encode
    monkeypatch.setattr(wikitext, "read_split_lines",
                        lambda path, split: splits.append(split) or read_lines(path, split))
    monkeypatch.setattr(Path, "read_text",
                        lambda self, *a, **kw: files.append(self.resolve()) or read_text(self, *a, **kw))
    monkeypatch.setattr(WordTokenizer, "encode",
                        lambda self, text: encoded.append(text) or encode(self, text))

    assert evaluate_app.run(argparse.Namespace(run=str(wikitext_run), overrides=[], quiet=True)) == 0

    assert splits == ["valid"] and train_file not in files
    assert encoded and not train_only & set(encoded)
    got = {row["metric"]: row["value"] for row in _eval_rows(capsys.readouterr().out, wikitext_run)}
    logged = [r for r in read_jsonl(wikitext_run / METRICS_FILE) if "val/loss" in r][-1]
    assert set(got) == {"loss", "ppl", "bpb", "acc"}
    for metric, value in got.items():
        assert value == pytest.approx(logged[f"val/{metric}"], rel=1e-5), metric


def _eval_rows(out: str, run: Path) -> list[dict]:
    """The validation rows written beside the final checkpoint (after the table was printed)."""
    assert "validation" in out and "results:" in out
    checkpoint, _ = resolve_checkpoint(run)
    return [r for r in read_json(checkpoint / EVAL_RESULTS_FILE)["results"] if r["task"] == "validation"]
