"""The streaming reader: files read front to back in blocks, exact resume at any batch, memory that
does not grow with the file, and a file changed under a run stopped rather than trained on."""
from __future__ import annotations

import json
import re
import tracemalloc

import pytest
import torch

from helpers import CONFIGS, TINY_TRANSFORMER, toy_texts, write_jsonl
from lmlab import rundir
from lmlab.cli import main
from lmlab.data import loader as loader_module
from lmlab.data.documents import DataChanged, DocumentFile
from lmlab.data.loader import PackedLoader
from lmlab.data.sources import DataConfig, training_sources
from lmlab.data.tokenizers import ByteTokenizer
from lmlab.errors import LmlabError


def corpus(root, bad_line: int | None = None):
    """Source 's': three files of 7, 11 and 5 documents (one line bad when asked)."""
    for i, n in enumerate((7, 11, 5)):
        write_jsonl(root / "s" / f"s.chunk.{i:02d}.jsonl", toy_texts(f"f{i}", n, seed=i))
    if bad_line is not None:
        path = root / "s" / "s.chunk.01.jsonl"
        lines = path.read_text().splitlines(keepends=True)
        lines[bad_line - 1] = '{"text": "cut off\n'
        path.write_text("".join(lines))
    return DataConfig(source="jsonl", root_dir=str(root), sources={"s": 1.0}, skip_bad_lines=True)


def make(cfg, block_docs=4, batch=3, seq=16, seed=1):
    return PackedLoader(training_sources(cfg), ByteTokenizer(), batch, seq, seed, block_docs=block_docs)


@pytest.mark.filterwarnings("ignore:.*malformed JSON.*skipped, not trained on:UserWarning")  # the planted bad line
def test_resume_at_any_batch_gives_the_same_batches(tmp_path):
    cfg = corpus(tmp_path, bad_line=4)
    straight = make(cfg)
    expected = [straight.next_batch() for _ in range(60)]  # several passes over the source
    for stop in (1, 7, 13, 29, 44):
        first = make(cfg)
        for _ in range(stop):
            first.next_batch()
        state = json.loads(json.dumps(first.state_dict()))
        resumed = make(corpus(tmp_path, bad_line=4))
        resumed.load_state_dict(state)
        for want in expected[stop:stop + 12]:
            assert torch.equal(resumed.next_batch(), want), stop


def test_each_block_is_a_permutation_of_consecutive_documents(tmp_path):
    """Documents are read in file order; only a block of them is shuffled (never across the file)."""
    path = write_jsonl(tmp_path / "s" / "s.chunk.00.jsonl", [f"<{i:03d}>" for i in range(40)])
    cfg = DataConfig(source="jsonl", root_dir=str(tmp_path), sources={"s": 1.0})
    stream = make(cfg, block_docs=8, seq=4).streams[0]
    order = []
    while len(order) < 40:
        ids = stream._next_document()
        order.append(int(bytes(ids[1:-1].tolist())[1:4]))
    blocks = [order[i:i + 8] for i in range(0, 40, 8)]
    assert [sorted(b) for b in blocks] == [list(range(i, i + 8)) for i in range(0, 40, 8)]
    assert order != sorted(order)
    in_order = make(cfg, block_docs=1, seq=4).streams[0]
    assert [int(bytes(in_order._next_document()[1:-1].tolist())[1:4]) for _ in range(40)] == list(range(40))
    assert path.exists()


def test_memory_does_not_grow_with_the_file(tmp_path, monkeypatch):
    """A 24 MB file: a few batches hold a block of documents, never the file or an index of it."""
    doc = json.dumps({"text": "word " * 200}) + "\n"
    path = tmp_path / "s" / "s.chunk.00.jsonl"
    path.parent.mkdir()
    with open(path, "w") as out:
        for _ in range(24):
            out.write(doc * (1_000_000 // len(doc)))
    cfg = DataConfig(source="jsonl", root_dir=str(tmp_path), sources={"s": 1.0})
    tracemalloc.start()
    loader = make(cfg, block_docs=64, batch=8, seq=256)
    for _ in range(20):
        loader.next_batch()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 4_000_000, peak  # one 1 MiB read block and 64 documents, with room to spare


def test_a_file_rewritten_under_the_reader_stops_it_at_its_position(tmp_path):
    cfg = corpus(tmp_path)
    loader = make(cfg, block_docs=2)
    for _ in range(3):
        loader.next_batch()
    for path in (tmp_path / "s").glob("*.jsonl"):  # every file: whichever is being read
        path.write_text(path.read_text()[:50])
    with pytest.raises(DataChanged, match=r"s\.chunk\.0\d\.jsonl changed size from .* while this run"):
        for _ in range(30):
            before = json.dumps(loader.state_dict())
            loader.next_batch()
    assert json.dumps(loader.state_dict()) == before  # the position of the last batch served


@pytest.mark.filterwarnings("ignore:.*malformed JSON.*skipped, not trained on:UserWarning")  # the planted bad line
def test_a_repaired_line_moves_offsets_and_the_resume_finds_its_line(tmp_path):
    cfg = corpus(tmp_path, bad_line=2)
    straight = make(cfg, block_docs=2)
    expected = [straight.next_batch() for _ in range(60)]
    first, stop = make(cfg, block_docs=2), 0
    stream = first.streams[0]
    while not (stream.cursor.file_index == 1 and stream.cursor.block_start[1] > 3):  # past the bad line's block
        first.next_batch()
        stop += 1
    state = json.loads(json.dumps(first.state_dict()))
    path = tmp_path / "s" / "s.chunk.01.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    lines[1] = json.dumps({"text": "repaired, and longer than the broken line was"}) + "\n"
    path.write_text("".join(lines))
    resumed = make(cfg, block_docs=2)
    resumed.load_state_dict(state)
    # the rest of this pass over the source is what it was (the repaired line is behind it)
    for want in expected[stop:stop + 10]:
        assert torch.equal(resumed.next_batch(), want)


def test_line_offset_counts_lines_across_read_blocks(tmp_path, monkeypatch):
    from lmlab.data import documents
    monkeypatch.setattr(documents, "READ_BYTES", 7)
    path = tmp_path / "t.jsonl"
    path.write_text("".join(f'{{"text": "{i}"}}\n' for i in range(30)))
    doc = DocumentFile.open(path)
    starts = {r.line: sum(len(x) + 1 for x in path.read_bytes().split(b"\n")[: r.line - 1])
              for r in doc.records()}
    assert all(doc.line_offset(line) == offset for line, offset in starts.items())
    assert [r.raw for r in doc.records()] == path.read_bytes().splitlines()


def test_a_training_file_changed_during_a_run_stops_it_with_a_checkpoint(tmp_path, monkeypatch, capsys):
    """Exit 2 naming the file, the last step trained checkpointed, no traceback; then restored,
    the same command finishes."""
    root = tmp_path / "data"
    texts = toy_texts("s", 400)
    path = write_jsonl(root / "s" / "s.chunk.00.jsonl", texts)
    write_jsonl(root / "s" / "s.val.jsonl", toy_texts("v", 30))
    original = path.read_bytes()
    calls = {"n": 0}
    real = PackedLoader.next_batch

    def rewriting(self):
        calls["n"] += 1
        if calls["n"] == 5:
            path.write_bytes(original[: len(original) // 3])
        return real(self)

    monkeypatch.setattr(PackedLoader, "next_batch", rewriting)
    run = tmp_path / "run"
    argv = ["train", str(CONFIGS / "debug.yaml"), *TINY_TRANSFORMER, f"data.root_dir={root}",
            "data.sources={s: 1}", "data.seq_len=32", "data.shuffle_buffer=8", "steps=40",
            "checkpoint.every=100", f"dump_dir={run}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{path} changed size from" in err and "Traceback" not in err
    done = int(re.search(r"Stopped after step (\d+), checkpointed", err).group(1))
    assert done >= 4 and rundir.latest_checkpoint(run).name == rundir.step_name(done)
    monkeypatch.setattr(PackedLoader, "next_batch", real)
    path.write_bytes(original)
    assert main(argv) == 0


def marked_corpus(root, n_files=3, per_file=40):
    """Every document a distinct marker <fFdDDD> (so a window tells which documents it holds)."""
    for f in range(n_files):
        write_jsonl(root / "s" / f"s.chunk.{f:02d}.jsonl", [f"<f{f}d{d:03d}>" for d in range(per_file)])
    return DataConfig(source="jsonl", root_dir=str(root), sources={"s": 1.0})


def documents_of(batches) -> list[str]:
    text = bytes(t for b in batches for row in b for t in row[1:].tolist() if t < 256).decode()
    return re.findall(r"<f\d+d\d{3}>", text)


def test_two_ranks_read_disjoint_documents_that_cover_the_source_once(tmp_path):
    """Each process runs its reader: its rows hold its documents only, none of the other's, and
    together one pass over the source; the rows equal those of one process running both readers."""
    cfg = marked_corpus(tmp_path)
    common = dict(block_docs=16, readers=2, world_size=2)
    rank = [PackedLoader(training_sources(cfg), ByteTokenizer(), 4, 9, 1, rank=r, **common) for r in (0, 1)]
    both = PackedLoader(training_sources(cfg), ByteTokenizer(), 4, 9, 1, block_docs=16, readers=2)
    assert rank[0].disjoint and not both.disjoint
    steps = 24  # 24 x 2 rows x 8 tokens of 11-byte documents per reader: ~ 35 of its 60 documents
    mine = [[], []]
    for _ in range(steps):
        whole = both.next_batch()
        for r in (0, 1):
            batch = rank[r].next_batch()
            rows = slice(2 * r, 2 * r + 2)  # what the step gives rank r (tensor_split of 4 rows)
            assert torch.equal(batch[rows], whole[rows])
            mine[r].append(batch[rows])
    docs = [set(documents_of(m)) for m in mine]
    assert docs[0] and docs[1] and not docs[0] & docs[1]
    # one pass (a data epoch) of each reader covers its share; the two shares are the whole source
    passes = []
    for r in (0, 1):
        stream = PackedLoader(training_sources(cfg), ByteTokenizer(), 4, 9, 1, rank=r, **common).streams[0]
        seen = []
        while stream.cursor.epoch == 0:
            seen.append(bytes(stream._next_document()[1:-1].tolist()).decode())
        passes.append(seen[:-1] if stream.cursor.epoch else seen)  # the last one opened epoch 1
    assert not set(passes[0]) & set(passes[1])
    assert sorted(passes[0] + passes[1]) == sorted(f"<f{f}d{d:03d}>" for f in range(3) for d in range(40))


def test_the_ranks_positions_merge_into_one_that_any_process_count_resumes(tmp_path):
    cfg = marked_corpus(tmp_path)
    straight = PackedLoader(training_sources(cfg), ByteTokenizer(), 4, 9, 1, block_docs=16, readers=2)
    expected = [straight.next_batch() for _ in range(30)]
    ranks = [PackedLoader(training_sources(cfg), ByteTokenizer(), 4, 9, 1, block_docs=16, readers=2,
                          rank=r, world_size=2) for r in (0, 1)]
    for _ in range(11):
        for loader in ranks:
            loader.next_batch()
    state = json.loads(json.dumps(loader_module.merge_states([r.state_dict() for r in ranks])))
    one = PackedLoader(training_sources(cfg), ByteTokenizer(), 4, 9, 1, block_docs=16, readers=None)
    one.load_state_dict(state)
    assert one.readers == 2
    for want in expected[11:]:
        assert torch.equal(one.next_batch(), want)
    fixed = PackedLoader(training_sources(cfg), ByteTokenizer(), 4, 9, 1, block_docs=16, readers=1)
    with pytest.raises(LmlabError, match=r"checkpoint was written with data.readers=2.*Fix: set data.readers=2"):
        fixed.load_state_dict(state)


def test_a_lone_surrogate_is_a_bad_record_not_a_crash(tmp_path):
    """JSON can spell "\\ud800", which no tokenizer can encode: it is counted, named and skipped."""
    path = tmp_path / "s" / "s.chunk.00.jsonl"
    path.parent.mkdir()
    path.write_text('{"text": "fine"}\n{"text": "half a pair \\ud800"}\n{"text": "a pair \\ud83d\\ude00"}\n')
    cfg = DataConfig(source="jsonl", root_dir=str(tmp_path), sources={"s": 1.0}, skip_bad_lines=True)
    loader = make(cfg, block_docs=1, batch=1, seq=8)
    with pytest.warns(UserWarning, match=r"s\.chunk\.00\.jsonl:2: a lone surrogate escape"):
        text = bytes(t for _ in range(8) for t in loader.next_batch()[0, 1:].tolist() if t < 256)
    assert "😀".encode() in text and b"half a pair" not in text


def test_a_long_document_left_over_is_read_again_not_saved(tmp_path, monkeypatch):
    """The tokens left over from a long document go into the position as a count: a resumed
    loader reads the document again and gives the same batches; the state stays small."""
    monkeypatch.setattr(loader_module, "INLINE_TOKENS", 64)
    write_jsonl(tmp_path / "s" / "s.chunk.00.jsonl", ["short one", "x" * 5000 + "END", "after it"] * 3)
    cfg = DataConfig(source="jsonl", root_dir=str(tmp_path), sources={"s": 1.0})
    straight = make(cfg, block_docs=2, batch=2, seq=100)
    expected = [straight.next_batch() for _ in range(60)]
    for stop in (3, 11, 30):
        first = make(cfg, block_docs=2, batch=2, seq=100)
        for _ in range(stop):
            first.next_batch()
        state = json.loads(json.dumps(first.state_dict()))
        assert len(json.dumps(state)) < 3000
        resumed = make(cfg, block_docs=2, batch=2, seq=100)
        resumed.load_state_dict(state)
        for want in expected[stop:stop + 20]:
            assert torch.equal(resumed.next_batch(), want), stop
    assert "buffer_tail" in json.dumps(state)
