"""Bad data, table-driven like tests/integration/test_bad_inputs.py (same checks: exit code, no traceback, the
culprit and the fix named, nothing that was there lost): bad records within and over the budget
``data.max_bad_records``, ``lmlab check CONFIG --data``, data that yields nothing (every text empty,
validation text shorter than one window, in training and in ``lmlab eval``), and a file that is in
both the training and the validation set (jsonl, text files, WikiText-2 splits)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from badinput import DEBUG, Case, Ctx, run_case, train_argv
from helpers import SIX_STEPS, TINY_TRANSFORMER, make_wikitext_dir, toy_texts
from lmlab import rundir


def lines(*texts) -> bytes:
    """JSON lines for texts (str) and raw lines (bytes) as given."""
    return b"".join((t if isinstance(t, bytes) else json.dumps({"text": t}).encode()) + b"\n" for t in texts)


GOOD = [f"good document {i} " * 8 for i in range(4)]
VAL = ["validation text " * 20] * 4


def one_source(ctx: Ctx, chunk: bytes, val: bytes | None = None, **more: bytes) -> Path:
    """A data root with source ``s``: ``s.chunk.00.jsonl`` = ``chunk``, a good validation file."""
    return ctx.new_data({"s/s.chunk.00.jsonl": chunk, "s/s.val.jsonl": val or lines(*VAL), **more})


def train_s(ctx: Ctx, root: Path, *extra: str) -> list[str]:
    """A new run on source ``s`` of ``root``."""
    return train_argv(root, ctx.tmp / "newrun", "data.sources={s: 1}", *extra)


def check_data(ctx: Ctx, root: Path, *extra: str) -> list[str]:
    return ["check", DEBUG, f"data.root_dir={root}", "data.sources={s: 1}",
            f"dump_dir={ctx.tmp / 'newrun'}", "optim.warmup=10", *extra, "--data"]


def text_run(ctx: Ctx, train: Path, val: Path, *extra: str) -> list[str]:
    return ["train", DEBUG, *TINY_TRANSFORMER, "data.source=text", f"data.path={train}",
            f"data.val_path={val}", *SIX_STEPS, f"dump_dir={ctx.tmp / 'newrun'}", *extra]


def text_folder(ctx: Ctx, val_text: str = "validation text " * 40) -> Path:
    folder = ctx.tmp / "text"
    folder.mkdir()
    (folder / "train.txt").write_text("\n\n".join(toy_texts("t", 40)))
    (folder / "val.txt").write_text(val_text)
    return folder


def setup_eval_tiny_validation(ctx: Ctx) -> list[str]:
    """``lmlab eval`` of a finished run, pointed at data whose validation files are one word each."""
    files = {}
    for name in ("alpha", "beta"):
        files[f"{name}/{name}.chunk.00.jsonl"] = toy_texts(name, 5)
        files[f"{name}/{name}.val.jsonl"] = ["tiny"]
    return ["eval", str(ctx.finished), f"data.root_dir={ctx.new_data(files)}", "--quiet"]


def wikitext_run(ctx: Ctx, train_split: str, val_split: str) -> list[str]:
    folder = make_wikitext_dir(ctx.tmp / "wt")
    return ["train", DEBUG, *TINY_TRANSFORMER, "data.source=wikitext2", f"data.path={folder}",
            f"data.train_split={train_split}", f"data.val_split={val_split}", "data.tokenizer.name=word",
            "data.tokenizer.vocab_size=300", *SIX_STEPS, f"dump_dir={ctx.tmp / 'newrun'}"]


S_CHUNK = "{tmp}/newdata/s/s.chunk.00.jsonl"

CASES = [
    # ---- bad records during training: skipped, counted, reported; over the budget: stop
    Case("bad_record_within_budget",
         lambda c: train_s(c, one_source(c, lines(*GOOD[:2], b'{"text": "half a line', *GOOD[2:]))),
         (S_CHUNK + ":3: malformed JSON", "skipped, not trained on (bad record 1 of at most "
          "data.max_bad_records=100)", "skipped 1 bad data record in 1 file"), code=0),
    Case("bad_records_over_budget",
         lambda c: train_s(c, one_source(c, lines(GOOD[0], b"{oops", GOOD[1], b'{"text": null}', GOOD[2],
                                                  b"[1, 2]", GOOD[3])), "data.max_bad_records=2"),
         ("3 bad data records", "over the budget data.max_bad_records=2", S_CHUNK + ":2: malformed JSON",
          S_CHUNK + ":4: not a JSON object with a 'text' string", S_CHUNK + ":6: not a JSON object",
          "Stopped after step 2, checkpointed in {tmp}/newrun", "e.g. data.max_bad_records=100")),
    Case("negative_max_bad_records", lambda c: c.train("data.max_bad_records=-1"),
         ("data.max_bad_records: must be >= 0, got -1", "fix: set data.max_bad_records=0")),
    # ---- lmlab check CONFIG --data: every bad line at once
    Case("check_data_lists_every_bad_line",
         lambda c: check_data(c, one_source(c, lines(GOOD[0], b"{oops", GOOD[1], b'{"txt": "x"}'),
                                            lines(VAL[0], b'{"text": "caf\xe9"}'))),
         ("data: scanned 2 files (1 training, 1 validation): 6 lines", "3 bad lines in 2 files",
          S_CHUNK + ":2: malformed JSON", S_CHUNK + ":4: no 'text' field",
          "{tmp}/newdata/s/s.val.jsonl:2: bytes that are not UTF-8", "Fix: repair or delete those lines")),
    Case("check_data_clean",
         lambda c: check_data(c, c.data, "data.sources={alpha: 1, beta: 2}"),
         ("data: scanned 6 files (4 training, 2 validation): 260 lines", "ok: no bad lines"), code=0),
    Case("check_data_empty_texts",
         lambda c: check_data(c, one_source(c, lines("", "", " "))),
         ("training data.sources.s: every one of its 3 documents has empty text, so it yields 0 tokens",
          "Fix: fill the empty sources with text")),
    # ---- zero yield: refused, naming the source and its files
    Case("every_text_empty", lambda c: train_s(c, one_source(c, lines("", "", ""))),
         ("data.sources.s: training source 's' (" + S_CHUNK + ") yields 0 tokens",
          "its 3 documents have empty text", "only the BOS/EOS markers", "Fix: put the text in the 'text' fields")),
    Case("text_validation_shorter_than_a_window",
         lambda c: text_run(c, text_folder(c, "hi") / "train.txt", c.tmp / "text" / "val.txt"),
         ("validation source 'text' ({tmp}/text/val.txt) yields 0 windows of 129 tokens",
          "it holds 2 text tokens", "validation would measure nothing", "lower data.seq_len")),
    Case("eval_zero_validation_windows", setup_eval_tiny_validation,
         ("validation source 'alpha' ({tmp}/newdata/alpha/alpha.val.jsonl) yields 0 windows",
          "Fix: add validation text", "eval.validation.enabled=false")),
    # ---- the same file in the training and the validation set
    Case("text_validation_file_inside_training_folder",
         lambda c: text_run(c, text_folder(c), c.tmp / "text" / "val.txt"),
         ("{tmp}/text/val.txt: is both a training file (data.path) and a validation file (data.val_path)",
          "the model would train on its validation text", "fix: move the validation text out")),
    Case("jsonl_file_matching_both_patterns",
         lambda c: train_s(c, one_source(c, lines(*GOOD), **{"s/s.chunk.00.val.jsonl": lines(*VAL)})),
         ("{tmp}/newdata/s/s.chunk.00.val.jsonl: is both a training file (data.sources.s) and a validation "
          "file (data.sources.s)", "fix: rename it")),
    Case("wikitext_same_split", lambda c: wikitext_run(c, "valid", "valid"),
         ("data.val_split: 'valid' is also the training split (data.train_split=valid)",
          "fix: validate on another split")),
    Case("wikitext_same_split_two_names", lambda c: wikitext_run(c, "validation", "valid"),
         ("data.val_split: 'valid' is also the training split (data.train_split=validation)",)),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_bad_data(case: Case, bad_input_base, tmp_path, monkeypatch, capsys):
    result = run_case(case, bad_input_base, tmp_path, monkeypatch, capsys)
    run = tmp_path / "newrun"
    if case.id == "bad_record_within_budget":  # recorded as an event, file and line
        events = rundir.read_jsonl(run / rundir.EVENTS_FILE)
        found = [(e["file"], e["line"]) for e in events if e["event"] == "bad_record"]
        assert found == [(str(tmp_path / "newdata/s/s.chunk.00.jsonl"), 3)]
        assert any(e["event"] == "data_yield" for e in events)
    if case.id == "bad_records_over_budget":  # the step whose batch went over is checkpointed
        # (the streaming reader's order meets the third bad record in the batch of step 2)
        assert [p.name for p in rundir.step_checkpoints(run)] == ["0000000002"]
        state = rundir.read_train_state(run / "checkpoints/0000000002")
        assert state["loader"]["bad_records"]["count"] == 3  # the budget is the run's: it survives a resume
    if case.id.startswith(("every_text", "text_validation_shorter", "text_validation_file", "jsonl_file",
                           "wikitext")):
        assert not rundir.step_checkpoints(run)  # refused before training
    assert result.code == case.code


def test_the_table_covers_the_brief():
    assert len(CASES) >= 12 and len({c.id for c in CASES}) == len(CASES)
