"""Prepared token shards: ``lmlab data prepare`` (any worker count, interrupted or not: the same
bytes), ``lmlab data inspect``, the reader (every window once per pass, exact resume, validation in
order), and each refusal: exit 2, the file named, the fix, no traceback."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import CONFIGS, TINY_TRANSFORMER, make_jsonl_root, same_weights, shard_checksums, toy_texts, write_jsonl
from lmlab.cli import main
from lmlab.data import manifest as mf, sources
from lmlab.data.badrecords import BadRecords
from lmlab.data.prepare import PrepareOptions, prepare
from lmlab.data import prepare_inputs
from lmlab.data.prepare_inputs import find_inputs, plan_units, read_unit
from lmlab.data.prepared import PreparedLoader, TokenStream, permute, validation_data
from lmlab.data.sources import DataConfig
from lmlab.data.tokenizers import BPETokenizer, ByteTokenizer, WordTokenizer, save_tokenizer



def prep(source: Path, out: Path, **options) -> dict:
    opts = PrepareOptions(source=str(source), out=str(out), **{"shard_tokens": 1500, "workers": 1, **options})
    return prepare(opts, progress=False, log=lambda line: None)


def stream(folder: Path, split: str = "train") -> np.ndarray:
    manifest = mf.read_manifest(folder)
    s = TokenStream(folder, manifest, split)
    return np.concatenate([s.shard(i) for i in range(len(s.paths))]).astype(np.int64)


@pytest.fixture
def source(tmp_path) -> Path:
    """One Lingua source: two chunk files (with blank lines and a bad record) and a val file."""
    root = make_jsonl_root(tmp_path / "data") / "alpha"
    chunk = root / "alpha.chunk.01.jsonl"
    lines = chunk.read_bytes().splitlines(keepends=True)
    chunk.write_bytes(b"".join(lines[:5]) + b"\n  \r\n" + b'{"text": 5}\n' + b"".join(lines[5:])
                      + b'{"text": "lone \\ud800 surrogate"}\n')
    return root


@pytest.fixture
def prepared(tmp_path, source) -> Path:
    out = tmp_path / "prepared"
    prep(source, out)
    return out


# --------------------------------------------------------------------------- writing


def test_any_worker_count_writes_the_same_shards(tmp_path, source, prepared):
    manifest = mf.read_manifest(prepared)
    assert manifest["complete"] and manifest["dtype"] == "uint16"
    assert len(manifest["splits"]["train"]["shards"]) > 3 and manifest["splits"]["val"]["shards"]
    assert prep(source, tmp_path / "two", workers=2)["splits"] == manifest["splits"]
    assert shard_checksums(tmp_path / "two") == shard_checksums(prepared)
    # every document is [BOS] + bytes + [EOS], in input order, the bad record skipped and counted
    texts = [json.loads(line)["text"] for f in ("alpha.chunk.00.jsonl", "alpha.chunk.01.jsonl")
             for line in (source / f).read_text().splitlines() if line.strip() and "5}" not in line
             and "ud800" not in line]
    expected = np.concatenate([[256, *t.encode(), 257] for t in texts])
    assert np.array_equal(stream(prepared), expected)
    assert manifest["bad_records"]["count"] == 2
    assert manifest["bad_records"]["shown"] == [
        f"{source.resolve() / 'alpha.chunk.01.jsonl'}:8: not a JSON object with a 'text' string",
        f"{source.resolve() / 'alpha.chunk.01.jsonl'}:44: a lone surrogate escape (\\ud800-\\udfff) in "
        "'text', which is not UTF-8 text"]
    starts = np.load(prepared / "train.00000.idx.npy")
    tokens = np.fromfile(prepared / "train.00000.bin", dtype="<u2")
    assert (tokens[starts] == 256).all() and starts[0] == 0


def test_units_read_the_documents_training_reads(tmp_path):
    assert (prepare_inputs.TRAIN_GLOB, prepare_inputs.VAL_GLOB) == (sources.TRAIN_GLOB, sources.VAL_GLOB)
    """Cut anywhere, units give the whole file's documents (jsonl lines; text paragraphs with blank
    lines of spaces and CRs, a final paragraph without a newline) and its bad lines."""
    text = tmp_path / "t" / "a.txt"
    text.parent.mkdir()
    text.write_bytes(b"first para\nstill first\n\n \r\n\nsecond \xc3\xa9\n\t\n\nthird\n \nx\xffbad\n\n\n"
                     b"fourth\nlast line no newline")
    counted = BadRecords(None, lambda record, message: None)
    whole = list(sources.DocumentFile.open(text, bad=counted).texts())  # what data.source=text trains on
    for unit_bytes in (1, 3, 7, 1000):
        files = find_inputs(str(text))
        got, bad, line = [], [], 1
        for unit in plan_units(files, unit_bytes)["train"]:
            read = read_unit(files[0], unit)
            got += [t for t in read.texts if t is not None]
            bad += [line + number for number, _ in read.bad]
            line += read.lines
        assert got == ["first para\nstill first", "second é", "third", "fourth\nlast line no newline"], unit_bytes
        assert got == whole and bad == [r.line for r in counted.records] == [11]


def test_hugging_face_datasets_give_the_documents_of_the_same_jsonl(tmp_path):
    datasets = pytest.importorskip("datasets")
    texts = toy_texts("hf", 50)
    write_jsonl(tmp_path / "j" / "j.chunk.00.jsonl", texts)
    write_jsonl(tmp_path / "j" / "j.val.jsonl", texts[:5])
    prep(tmp_path / "j", tmp_path / "from_jsonl")
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": texts, "n": list(range(50))}),
                               "validation": datasets.Dataset.from_dict({"text": texts[:5]})})
    dd.save_to_disk(str(tmp_path / "saved"))
    dd["train"].to_parquet(str(tmp_path / "pq" / "train-00000-of-00001.parquet"), batch_size=7)
    dd["validation"].to_parquet(str(tmp_path / "pq" / "validation-00000-of-00001.parquet"))
    for name in ("saved", "pq"):
        prep(tmp_path / name, tmp_path / f"from_{name}", workers=2)
        for split in ("train", "val"):
            assert np.array_equal(stream(tmp_path / f"from_{name}", split), stream(tmp_path / "from_jsonl", split))


def test_bpe_and_a_vocabulary_past_uint16(tmp_path, source):
    manifest = prep(source, tmp_path / "bpe", tokenizer="bpe", vocab_size=300, workers=2)
    assert manifest["tokenizer"]["name"] == "bpe" and manifest["dtype"] == "uint16"
    bpe = BPETokenizer.from_json(json.loads((tmp_path / "bpe" / "tokenizer.json").read_text()))
    first = stream(tmp_path / "bpe")[: 1 + len(bpe.encode(toy_texts("alpha", 1)[0])) + 1]
    assert bpe.decode(first.tolist()) == toy_texts("alpha", 1)[0]
    words = WordTokenizer([f"w{i}" for i in range(70_000)] + toy_texts("alpha", 60)[0].lower().split())
    save_tokenizer(words, tmp_path / "words.json")
    manifest = prep(source, tmp_path / "wide", tokenizer_path=str(tmp_path / "words.json"))
    assert manifest["dtype"] == "uint32" and stream(tmp_path / "wide").max() >= 70_000
    loader = PreparedLoader(tmp_path / "wide", 2, 16, seed=0)
    assert loader.next_batch().max() < words.vocab_size


def test_interrupted_and_rerun_gives_the_same_bytes(tmp_path, source, prepared):
    want = shard_checksums(prepared)
    out = tmp_path / "again"
    for stop in (("train", 0), ("train", 3), ("val", 0)):  # after that shard is recorded
        def interrupt(split, index, stop=stop):
            if (split, index) == stop:
                raise KeyboardInterrupt
        opts = PrepareOptions(source=str(source), out=str(out), shard_tokens=1500, workers=2)
        with pytest.raises(KeyboardInterrupt):
            prepare(opts, on_shard=interrupt, progress=False)
        manifest = mf.read_manifest(out)
        assert not manifest["complete"] and not list(out.glob(".*.tmp-*"))
        assert mf.check_prepared(DataConfig(source="prepared", path=str(out)))[0].fix.startswith("re-run `")
    prep(source, out, workers=2)
    assert shard_checksums(out) == want
    # a truncated recorded shard and a stray temporary file: redone / removed
    (out / "train.00002.bin").write_bytes((out / "train.00002.bin").read_bytes()[:100])
    (out / ".train.00004.bin.tmp-1").write_bytes(b"x")
    prep(source, out)
    assert shard_checksums(out) == want and not list(out.glob(".*.tmp-*"))


def test_inspect_shows_counts_tokenizer_bad_records_and_a_sample(prepared, capsys):
    assert main(["data", "inspect", str(prepared), "--verify"]) == 0
    out = capsys.readouterr().out
    manifest = mf.read_manifest(prepared)
    for needle in ("complete", f"{manifest['splits']['train']['tokens']:,} tokens", "tokenizer: bytes, 258 ids",
                   "dtype: uint16", "bad records skipped: 2", "alpha.chunk.01.jsonl:8:", "sha256 matches",
                   "train document 0", repr(toy_texts("alpha", 1)[0])[:40]):
        assert needle in out, needle


# --------------------------------------------------------------------------- reading


@pytest.mark.parametrize("n", [1, 2, 3, 5, 64, 1000, 4097])
def test_the_window_order_is_a_permutation(n):
    keys = np.random.SeedSequence([3, 1]).generate_state(4, np.uint64)
    order = permute(np.arange(n), n, keys)
    assert sorted(order.tolist()) == list(range(n))
    if n >= 64:
        assert not np.array_equal(order, np.arange(n))


def test_the_blocked_order_of_a_large_corpus_is_a_permutation_read_in_runs(prepared):
    """10,001 windows: 157 blocks of 64 in 3 buffers; a pass is every window once, and a batch's
    rows come from few blocks of consecutive windows (what the disk reads in runs)."""
    from lmlab.data.prepared import BLOCK_WINDOWS

    loader = PreparedLoader(prepared, 32, 32, seed=5)
    loader.windows = 10_001
    loader.blocks = -(-loader.windows // BLOCK_WINDOWS)
    loader.positions = loader.blocks * BLOCK_WINDOWS
    order = loader._at(0, np.arange(loader.positions))
    assert sorted(order[order >= 0].tolist()) == list(range(10_001))
    assert (order < 0).sum() == loader.positions - 10_001
    batch = loader._windows_at(0, 32)
    assert len(set((batch // BLOCK_WINDOWS).tolist())) <= 32 and not np.array_equal(np.sort(batch), batch)
    assert not np.array_equal(loader._at(1, np.arange(loader.positions)), order)


def test_loader_visits_every_window_once_per_pass_and_resumes_exactly(prepared):
    tokens = stream(prepared)
    loader = PreparedLoader(prepared, 5, 32, seed=1)
    windows = loader.windows
    assert windows == (len(tokens) - 1) // 32
    rows = torch.cat([loader.next_batch() for _ in range(-(-windows // 5) * 2)])  # two passes and a bit
    order = PreparedLoader(prepared, 5, 32, seed=1)._windows_at(0, 2 * windows)
    assert sorted(order[:windows].tolist()) == list(range(windows))  # one pass: every window once
    assert sorted(order[windows:].tolist()) == list(range(windows))
    assert not np.array_equal(order[:windows], order[windows:])  # the next pass: another order
    for row, window in zip(rows, order):
        assert torch.equal(row, torch.from_numpy(tokens[window * 32:window * 32 + 33]))
    straight = PreparedLoader(prepared, 5, 32, seed=1)
    expected = [straight.next_batch() for _ in range(40)]
    first = PreparedLoader(prepared, 5, 32, seed=1)
    for _ in range(17):
        first.next_batch()
    state = json.loads(json.dumps(first.state_dict()))
    resumed = PreparedLoader(prepared, 5, 32, seed=1)
    resumed.load_state_dict(state)
    assert all(torch.equal(resumed.next_batch(), want) for want in expected[17:])
    ordered = PreparedLoader(prepared, 3, 32, seed=1, shuffle=False).next_batch()
    assert torch.equal(ordered[1], torch.from_numpy(tokens[32:65]))  # consecutive windows share a token


def test_validation_windows_in_order(prepared):
    val = stream(prepared, "val")
    data = DataConfig(source="prepared", path=str(prepared), seq_len=16)
    windows, found = validation_data(data, ByteTokenizer(), None)
    assert windows.shape == ((len(val) - 1) // 16, 17)
    assert torch.equal(windows[2], torch.from_numpy(val[32:49]))
    assert validation_data(data, ByteTokenizer(), 3)[0].shape == (3, 17)
    assert found[0].windows == len(windows) and found[0].role == "validation"


# --------------------------------------------------------------------------- training


def test_training_on_prepared_shards_resumes_bitwise(tmp_path, prepared):
    def train(run: Path, *extra: str) -> int:
        return main(["train", str(CONFIGS / "debug.yaml"), *TINY_TRANSFORMER, "data.source=prepared",
                     f"data.path={prepared}", "data.seq_len=32", "steps=6", "checkpoint.every=3",
                     "eval.validation.every=3", f"dump_dir={run}", *extra])
    assert train(tmp_path / "straight") == 0
    assert train(tmp_path / "resumed", "training.stop_at=3") == 0
    assert train(tmp_path / "resumed") == 0
    assert same_weights(tmp_path / "straight", tmp_path / "resumed")
    assert (tmp_path / "straight" / "tokenizer.json").read_text() == (prepared / "tokenizer.json").read_text()


# --------------------------------------------------------------------------- refusals


def damage_manifest(folder: Path, **changes) -> None:
    manifest = mf.read_manifest(folder)
    manifest.update(changes)
    mf.write_manifest(folder, manifest)


def bpe_file(tmp_path: Path) -> Path:
    path = tmp_path / "other_tokenizer.json"
    save_tokenizer(BPETokenizer.train(toy_texts("x", 40), 300), path)
    return path


REFUSALS = {  # id: (damage(tmp_path, prepared) -> extra train args, what the message names)
    "no_folder": (lambda t, p: [f"data.path={t / 'nowhere'}"], ["nowhere", "lmlab data prepare"]),
    "no_manifest": (lambda t, p: (p / mf.MANIFEST_FILE).unlink(), ["no manifest.json", "prepare it"]),
    "incomplete": (lambda t, p: damage_manifest(p, complete=False),
                   ["did not finish", "re-run `lmlab data prepare"]),
    "missing_shard": (lambda t, p: (p / "train.00001.bin").unlink(), ["train.00001.bin is missing", "re-run"]),
    "truncated_shard": (lambda t, p: (p / "val.00000.bin").write_bytes(b"\0" * 10),
                        ["val.00000.bin has 10 bytes", "re-run"]),
    "tokenizer_file_swapped": (lambda t, p: save_tokenizer(WordTokenizer(["a"]), p / "tokenizer.json"),
                               ["tokenizer.json is not the tokenizer the shards were encoded with", "restore"]),
    "config_tokenizer_name": (lambda t, p: ["data.tokenizer.name=word"],
                              ["data.tokenizer.name", "set data.tokenizer.name=bytes"]),
    "config_tokenizer_path": (lambda t, p: ["data.tokenizer.name=bpe", f"data.tokenizer.path={bpe_file(t)}"],
                              ["other_tokenizer.json", "remove data.tokenizer.path"]),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_training_refuses_a_bad_prepared_folder(case, tmp_path, prepared, capsys):
    damage, needles = REFUSALS[case]
    extra = damage(tmp_path, prepared)
    extra = extra if isinstance(extra, list) else []
    run = tmp_path / "run"
    code = main(["train", str(CONFIGS / "debug.yaml"), *TINY_TRANSFORMER, "data.source=prepared",
                 f"data.path={prepared}", "data.seq_len=32", "steps=2", f"dump_dir={run}", *extra])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "fix" in err.lower(), err
    assert all(n in err for n in needles), err
    assert not (run / "checkpoints").exists()  # refused before training


def test_resuming_with_data_prepared_by_another_tokenizer_is_refused(tmp_path, source, prepared, capsys):
    other = tmp_path / "bpe_prepared"
    prep(source, other, tokenizer="bpe", vocab_size=300)
    args = ["train", str(CONFIGS / "debug.yaml"), *TINY_TRANSFORMER, "data.source=prepared", "data.seq_len=32",
            "steps=4", "checkpoint.every=2", f"dump_dir={tmp_path / 'run'}"]
    assert main([*args, f"data.path={prepared}", "training.stop_at=2"]) == 0
    capsys.readouterr()
    code = main([*args, f"data.path={other}", "data.tokenizer.name=bpe"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert str(other) in err and "this run's tokenizer" in err and "Fix:" in err


def test_a_source_changed_since_preparing(tmp_path, source, prepared, capsys):
    chunk = source / "alpha.chunk.00.jsonl"
    chunk.write_bytes(chunk.read_bytes() + b'{"text": "one more"}\n')
    # training on the shards is still valid: said, not refused
    code = main(["train", str(CONFIGS / "debug.yaml"), *TINY_TRANSFORMER, "data.source=prepared",
                 f"data.path={prepared}", "data.seq_len=32", "steps=1", f"dump_dir={tmp_path / 'run'}"])
    assert code == 0 and "alpha.chunk.00.jsonl changed size" in capsys.readouterr().out
    # continuing a preparation would mix two versions of the file: refused
    damage_manifest(prepared, complete=False)
    code = main(["data", "prepare", str(source), "--out", str(prepared), "--shard-tokens", "1500"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "alpha.chunk.00.jsonl changed size" in err and "Fix: prepare into a new --out" in err
    os.utime(chunk, ns=(0, 0))  # the same size, another mtime
    chunk.write_bytes(chunk.read_bytes()[: -len(b'{"text": "one more"}\n')])
    os.utime(chunk, ns=(0, 0))
    code = main(["data", "prepare", str(source), "--out", str(prepared), "--shard-tokens", "1500"])
    assert code == 2 and "was modified (its mtime changed)" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["foreign_folder", "other_options", "tokenizer_not_a_file", "no_source"])
def test_prepare_refuses(case, tmp_path, source, prepared, capsys):
    out, extra = prepared, []
    if case == "foreign_folder":
        out = tmp_path / "mine"
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    elif case == "other_options":
        extra = ["--tokenizer", "bpe"]
    elif case == "tokenizer_not_a_file":
        out = tmp_path / "new"
        (tmp_path / "junk.model").write_bytes(b"\x00\x01 not a tokenizer")
        extra = ["--tokenizer-path", str(tmp_path / "junk.model")]
    src = tmp_path / "missing" if case == "no_source" else source
    code = main(["data", "prepare", str(src), "--out", str(out), "--shard-tokens", "1500", *extra])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "Fix" in err, err
    named = {"foreign_folder": "notes.txt", "other_options": "tokenizer: '' then, 'bpe' now",
             "tokenizer_not_a_file": "junk.model", "no_source": "missing"}[case]
    assert named in err, err


@pytest.mark.parametrize("micro_batches", [1, 2])
def test_two_processes_gather_disjoint_windows_that_make_the_one_process_batch(prepared, micro_batches):
    """Each process reads only the rows the step gives it (never the other's), and together they
    are the batch one process reads; ``own_rows`` deals rows exactly as the step does."""
    from lmlab.data.loader import own_rows
    from lmlab.training.distributed import Dist, shard_rows

    one = PreparedLoader(prepared, 8, 16, seed=3, micro_batches=micro_batches)
    ranks = [PreparedLoader(prepared, 8, 16, seed=3, rank=r, world_size=2, micro_batches=micro_batches,
                            fill=ByteTokenizer.bos_id) for r in (0, 1)]
    index = torch.arange(8)
    for r in (0, 1):
        d = Dist(rank=r, local_rank=r, world_size=2, backend="gloo")
        dealt = torch.cat([shard_rows(chunk, d) for chunk in index.chunk(micro_batches)])
        assert sorted(dealt.tolist()) == np.flatnonzero(own_rows(8, micro_batches, r, 2)).tolist()
    for _ in range(5):
        whole = one.next_batch()
        parts = [loader.next_batch() for loader in ranks]
        for r, part in enumerate(parts):
            own = torch.from_numpy(ranks[r].own)
            assert torch.equal(part[own], whole[own])
            assert (part[~own] == ByteTokenizer.bos_id).all()  # the other's rows were never read
        assert not (ranks[0].own & ranks[1].own).any() and (ranks[0].own | ranks[1].own).all()
    assert ranks[0].state_dict() == ranks[1].state_dict() == one.state_dict()
