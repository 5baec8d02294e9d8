"""A hostile user against ``lmlab data prepare`` / ``inspect``, tokenizer files and ``model.init_from``
(issue 20's last paragraph): each case exits 2 with one message naming the culprit and the fix, no
traceback, and nothing that was there before is deleted or changed (a folder lmlab did not write
is never written into). In-process and tiny: the whole table runs in a few seconds."""
from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

from helpers import CONFIGS, TINY_TRANSFORMER, make_jsonl_root
from lmlab.cli import main
from lmlab.data import prepare_inputs
from lmlab.data.documents import _lines


@pytest.fixture
def src(tmp_path) -> Path:
    return make_jsonl_root(tmp_path / "data") / "alpha"


def prep(src: Path, out: Path, *extra: str) -> list[str]:
    return ["data", "prepare", str(src), "--out", str(out), "--quiet", "--workers", "1", *extra]


def folder_with(tmp: Path, name: str, files: dict[str, bytes]) -> Path:
    folder = tmp / name
    folder.mkdir()
    for rel, data in files.items():
        (folder / rel).write_bytes(data)
    return folder


def lines(*records) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


def prepared(src: Path, tmp: Path) -> Path:
    assert main(prep(src, tmp / "prepared")) == 0
    return tmp / "prepared"


def edit_manifest(folder: Path, change) -> Path:
    manifest = json.loads((folder / "manifest.json").read_text())
    change(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def train_init_from(tmp: Path, src: Path, folder: Path) -> list[str]:
    return ["train", str(CONFIGS / "debug.yaml"), *TINY_TRANSFORMER, f"data.root_dir={src.parent}",
            "data.sources={alpha: 1}", "steps=1", f"model.init_from=hf:{folder}", f"dump_dir={tmp / 'run'}"]


CASES = {  # id: setup(tmp, src) -> argv, what the message names
    # --out: never a folder of someone else's files (they would be deleted or replaced)
    "out_nanogpt_folder": (lambda t, s: prep(s, folder_with(t, "ng", {"train.bin": b"x", "val.bin": b"y"})),
                           ["train.bin, val.bin", "did not write", "new or empty folder"]),
    "out_user_tokenizer": (lambda t, s: prep(s, folder_with(t, "tk", {"tokenizer.json": b'{"mine": 1}'})),
                           ["tokenizer.json", "did not write"]),
    "out_foreign_manifest": (lambda t, s: prep(s, folder_with(t, "fm", {"manifest.json": b'{"a": 1}'})),
                             ["not an lmlab prepared-data manifest", "new or empty folder"]),
    "out_is_the_source": (lambda t, s: prep(s, s), ["alpha.chunk.00.jsonl", "did not write"]),
    "out_is_a_file": (lambda t, s: prep(s, s / "alpha.val.jsonl"), ["alpha.val.jsonl is a file"]),
    "out_name_too_long": (lambda t, s: prep(s, t / ("x" * 300)), ["File name too long"]),
    "out_not_utf8": (lambda t, s: prep(s, Path(os.fsdecode(bytes(t) + b"/pu\xff"))), ["not UTF-8", "rename"]),
    # numbers
    "workers_negative": (lambda t, s: prep(s, t / "o", "--workers", "-3"), ["--workers -3", ">= 0"]),
    "shard_tokens_zero": (lambda t, s: prep(s, t / "o", "--shard-tokens", "0"), ["--shard-tokens 0"]),
    # SOURCE: what is not text is refused by name, never prepared into zero documents
    "source_gzip": (lambda t, s: prep(folder_with(t, "gz", {"a.jsonl": gzip.compress(lines({"text": "hi"}))}),
                                      t / "o"), ["a.jsonl is gzip-compressed", "gunzip"]),
    "source_binary": (lambda t, s: prep(folder_with(t, "b", {"a.txt": bytes(range(256)) * 8}), t / "o"),
                      ["a.txt holds NUL bytes"]),
    "source_json_arrays": (lambda t, s: prep(folder_with(t, "arr", {"a.jsonl": b"[1, 2]\n[\"x\"]\n"}), t / "o"),
                           ["holds no training text", "2 bad record(s)", "not a JSON object"]),
    "source_whitespace_lines": (lambda t, s: prep(folder_with(t, "ws", {"a.jsonl": b" " * 20 + b"\n\t\t\n"}),
                                                  t / "o"), ["holds no training text"]),
    "source_empty_texts": (lambda t, s: prep(folder_with(t, "e", {"a.jsonl": lines({"text": ""})}), t / "o"),
                           ["holds no training text"]),
    "source_folder_named_jsonl": (lambda t, s: prep(s, t / "o") if (s / "x.chunk.00.jsonl").mkdir() is None
                                  else None, ["x.chunk.00.jsonl is a folder"]),
    "source_broken_link": (lambda t, s: prep(s, t / "o") if os.symlink(t / "gone", s / "b.chunk.00.jsonl")
                           is None else None, ["b.chunk.00.jsonl cannot be read: a broken link"]),
    "source_fifo": (lambda t, s: prep(t / "fifo", t / "o") if os.mkfifo(t / "fifo") is None else None,
                    ["not a regular file or a folder"]),
    "source_fake_parquet": (lambda t, s: prep(folder_with(t, "pq", {"a.parquet": b"not parquet"}), t / "o"),
                            ["a.parquet is not a readable parquet file"]),
    "source_bad_state_json": (lambda t, s: prep(folder_with(t, "ds", {"state.json": b"[1]"}), t / "o"),
                              ["state.json is not the state.json"]),
    # tokenizer files that are not one
    "tokenizer_empty_file": (lambda t, s: prep(s, t / "o", "--tokenizer", "sentencepiece", "--tokenizer-path",
                                               str(folder_with(t, "tk", {"sp.model": b""}) / "sp.model")),
                             ["sp.model is empty"]),
    "tokenizer_folder_for_tiktoken": (lambda t, s: prep(s, t / "o", "--tokenizer", "tiktoken", "--tokenizer-path",
                                                        str(folder_with(t, "tk", {}))), ["tk is a folder"]),
    "tokenizer_gzip": (lambda t, s: prep(s, t / "o", "--tokenizer-path", str(folder_with(
        t, "tk", {"t.json.gz": gzip.compress(b'{"model": {}}')}) / "t.json.gz")), ["t.json.gz is not a tokenizer"]),
    "tokenizer_fifo": (lambda t, s: prep(s, t / "o", "--tokenizer", "hf", "--tokenizer-path", str(t / "ff"))
                       if os.mkfifo(t / "ff") is None else None, ["ff is not a regular file"]),
    # inspect
    "inspect_missing": (lambda t, s: ["data", "inspect", str(t / "nowhere")], ["nowhere does not exist"]),
    "inspect_manifest_missing_keys": (lambda t, s: ["data", "inspect", str(edit_manifest(
        prepared(s, t), lambda m: m.pop("options")))], ["manifest.json is damaged"]),
    "inspect_shard_name_outside": (lambda t, s: ["data", "inspect", str(edit_manifest(
        prepared(s, t), lambda m: m["splits"]["train"]["shards"][0].update(name="../x.bin")))],
        ["manifest.json is damaged", "../x.bin"]),
    "inspect_negative_chars": (lambda t, s: ["data", "inspect", str(prepared(s, t)), "--chars", "-5"],
                               ["--chars -5"]),
    # model.init_from: not a Llama export, or a damaged one
    "init_from_corrupt_weights": (lambda t, s: train_init_from(t, s, folder_with(t, "hf", {
        "config.json": json.dumps({"model_type": "llama"}).encode(), "model.safetensors": b"junk"})),
        ["weights in", "cannot be read", "export it again"]),
    "init_from_config_not_json": (lambda t, s: train_init_from(t, s, folder_with(t, "hf", {
        "config.json": b"nope", "model.safetensors": b"junk"})), ["config.json is not a transformers config"]),
    "init_from_bad_index": (lambda t, s: train_init_from(t, s, folder_with(t, "hf", {
        "config.json": b"{}", "model.safetensors.index.json": b"[]"})), ["is not a safetensors index"]),
}


def snapshot(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("case", sorted(CASES))
def test_a_hostile_input_is_refused_by_name_and_loses_nothing(case, tmp_path, src, capsys):
    setup, needles = CASES[case]
    argv = setup(tmp_path, src)
    before = snapshot(tmp_path)
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert "fix" in err.lower() and all(n in err for n in needles), err
    lost = [str(p) for p, data in before.items() if not p.is_file() or p.read_bytes() != data]
    assert not lost, lost
    if case.startswith(("out_", "source_", "tokenizer_", "workers", "shard")):
        assert not (tmp_path / "o").exists() or "no training text" in err  # refused before --out exists


def test_a_folder_a_preparation_started_is_continued(tmp_path, src):
    """The lock file is the first thing written: a preparation stopped before its manifest (its
    tokenizer.json already there) is continued, not refused as someone else's folder."""
    out = tmp_path / "o"
    out.mkdir()
    (out / ".prepare.lock").touch()
    (out / "tokenizer.json").write_text('{"lmlab_tokenizer": "bytes"}')
    assert main(prep(src, out)) == 0
    (out / "train.bin").write_bytes(b"a user's file, dropped in later")
    assert main(prep(src, out)) == 0  # continuing deletes only the names a preparation writes
    assert (out / "train.bin").read_bytes() == b"a user's file, dropped in later"


def test_a_200_mb_like_line_is_read_in_linear_time():
    """A line longer than a read block is gathered once (it once was re-copied per block: a single
    200 MB line took ~10 minutes to align and minutes to stream). Checked on the pieces directly."""
    chunks = [b"x" * 1000] * 500 + [b"y\nz"]
    got = list(_lines(iter(chunks), 0))
    assert got == [(b"x" * 500_000 + b"y\n", 500_002), (b"z", 500_003)]


def test_align_on_a_long_line_and_on_paragraphs(tmp_path):
    """``align`` scans without gathering lines (linear however long a line is); the boundaries are
    those the line-gathering version gave (checked against it on 120k random cases when rewritten)."""
    path = tmp_path / "a"
    data = b"a" * 200_000 + b"\nb\n\nc\n \t\nd"
    path.write_bytes(data)
    with open(path, "rb") as handle:
        assert prepare_inputs.align(handle, 5, len(data), "jsonl") == 200_001
        assert prepare_inputs.align(handle, 5, len(data), "text") == 200_004  # after the blank line
        assert prepare_inputs.align(handle, 200_003, len(data), "text") == 200_004
        assert prepare_inputs.align(handle, 200_006, len(data), "text") == 200_009
        assert prepare_inputs.align(handle, 200_011, len(data), "jsonl") == len(data)


