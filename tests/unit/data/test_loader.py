"""Sources and the packed loader: every file used, exact resume, weights, validation order, errors."""
from __future__ import annotations

import json

import pytest
import torch

from helpers import write_jsonl
from lmlab.data.loader import PackedLoader
from lmlab.data.pipeline import validation_windows
from lmlab.data.sources import DataConfig, DocumentFile, Source, training_sources, validation_sources
from lmlab.data.tokenizers import ByteTokenizer
from lmlab.errors import LmlabError


def jsonl_cfg(root, **kw) -> DataConfig:
    return DataConfig(source="jsonl", root_dir=str(root), sources={"alpha": 1.0, "beta": 2.0}, **kw)


def test_every_training_file_is_used(tmp_path):
    # Five files with one distinct marker document each: all five must come out (the reference
    # tool silently dropped files and looped on one).
    for i in range(5):
        write_jsonl(tmp_path / "src" / f"src.chunk.{i:02d}.jsonl", [f"<doc-from-file-{i}>" * 3])
    cfg = DataConfig(source="jsonl", root_dir=str(tmp_path), sources={"src": 1.0})
    loader = PackedLoader(training_sources(cfg), ByteTokenizer(), batch_size=2, seq_len=16, seed=0)
    rows = [row.tolist() for _ in range(30) for row in loader.next_batch()]
    # consecutive windows share one token: drop it to rebuild the stream
    stream = rows[0] + [t for row in rows[1:] for t in row[1:]]
    seen = bytes(t for t in stream if t < 256)
    assert all(f"<doc-from-file-{i}>".encode() in seen for i in range(5))


def test_resume_from_state_gives_the_same_batches(jsonl_root):
    sources = training_sources(jsonl_cfg(jsonl_root))
    straight = PackedLoader(sources, ByteTokenizer(), batch_size=3, seq_len=64, seed=1)
    expected = [straight.next_batch() for _ in range(25)]
    first = PackedLoader(sources, ByteTokenizer(), batch_size=3, seq_len=64, seed=1)
    for _ in range(10):
        first.next_batch()
    state = json.loads(json.dumps(first.state_dict()))  # it must survive JSON
    resumed = PackedLoader(training_sources(jsonl_cfg(jsonl_root)), ByteTokenizer(), 3, 64, seed=1)
    resumed.load_state_dict(state)
    for want in expected[10:]:
        assert torch.equal(resumed.next_batch(), want)


def test_seed_changes_order_and_windows_are_packed(jsonl_root):
    sources = training_sources(jsonl_cfg(jsonl_root))
    a = PackedLoader(sources, ByteTokenizer(), 4, 32, seed=1).next_batch()
    b = PackedLoader(sources, ByteTokenizer(), 4, 32, seed=2).next_batch()
    assert a.shape == (4, 33) and not torch.equal(a, b)


def test_source_weights_are_respected(jsonl_root):
    loader = PackedLoader(training_sources(jsonl_cfg(jsonl_root)), ByteTokenizer(), 200, 8, seed=0)
    drawn = [0, 0]
    for index, stream in enumerate(loader.streams):  # count the windows each source really serves
        def counting(original=stream.next_window, index=index):
            drawn[index] += 1
            return original()
        stream.next_window = counting
    for _ in range(30):
        loader.next_batch()
    assert sum(drawn) == 6000 and abs(drawn[1] / 6000 - 2 / 3) < 0.03  # weights alpha 1, beta 2


def test_validation_windows_are_deterministic_and_cover_all_sources(jsonl_root):
    cfg = jsonl_cfg(jsonl_root)
    one = validation_windows(validation_sources(cfg), ByteTokenizer(), 64)
    two = validation_windows(validation_sources(cfg), ByteTokenizer(), 64)
    assert torch.equal(one, two) and one.shape[1] == 65
    text = bytes(t for t in one.flatten().tolist() if t < 256)
    assert b"alpha" in text and b"beta" in text
    capped = validation_windows(validation_sources(cfg), ByteTokenizer(), 64, max_windows=3)
    assert torch.equal(capped, one[:3])


def test_text_paragraphs_are_documents(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("first para\nline two\n\n\nsecond\n  \nthird\n")
    doc = DocumentFile.open(path)
    assert list(doc.texts()) == ["first para\nline two", "second", "third\n"]
    assert [r.line for r in doc.records()] == [1, 5, 7]
    # reading on from any record's end position gives the rest, as from the start
    records = list(doc.records())
    assert [r.raw for r in doc.records(records[0].end, records[0].next_line)] == [r.raw for r in records[1:]]


def test_malformed_json_names_file_and_line(tmp_path):
    path = tmp_path / "s" / "s.chunk.00.jsonl"
    path.parent.mkdir()
    path.write_text('{"text": "ok"}\n{"text": broken\n{"no_text": 1}\n')
    doc = DocumentFile.open(path)
    with pytest.raises(LmlabError, match=r"s\.chunk\.00\.jsonl:2: malformed JSON.*skip_bad_lines"):
        list(doc.texts())
    skipping = DocumentFile.open(path, skip_bad_lines=True)
    with pytest.warns(UserWarning, match=r"s\.chunk\.00\.jsonl:2"):  # skipped lines are reported
        assert list(skipping.texts()) == ["ok"] and skipping.bad_lines == 2


def test_bundled_tinyshakespeare_splits():
    cfg = DataConfig(source="tinyshakespeare")
    train, val = training_sources(cfg)[0], validation_sources(cfg)[0]
    train_text, val_text = "".join(train.texts()), "".join(val.texts())
    assert train_text.startswith("First Citizen:") and len(train_text) > 8 * len(val_text) > 0
    assert isinstance(train, Source)
