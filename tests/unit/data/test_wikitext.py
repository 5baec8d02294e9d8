"""WikiText-2 sequences follow the reference rules; missing data is a preflight error saying where."""
from __future__ import annotations

import pytest
import torch

from helpers import CONFIGS, SHARED_DATA, run_main
from lmlab.data.tokenizers import WordTokenizer
from lmlab.data.wikitext import SequenceLoader, build_sequences, read_split_lines

WIKITEXT = SHARED_DATA / "wikitext-2"
needs_wikitext = pytest.mark.skipif(not (WIKITEXT / "valid.txt").is_file(),
                                    reason="../shared/data/wikitext-2 not present")


@needs_wikitext
def test_validation_split_gives_exactly_5272_sequences():
    lines = read_split_lines(str(WIKITEXT), "valid")
    tokenizer = WordTokenizer.train(read_split_lines(str(WIKITEXT), "test"), 1000)
    sequences = build_sequences(lines, tokenizer, 64)
    assert sequences.shape == (5272, 64)
    kept_lines = sum(1 for line in lines if len(line.split()) >= 5)
    assert int((sequences[:, 0] == tokenizer.bos_id).sum()) == kept_lines  # one BOS-led row per line


def test_sequence_rules_on_a_toy_text():
    tok = WordTokenizer(["a", "b", "c"])  # ids 4, 5, 6
    lines = ["", "a b", "a b c a b", "a " * 13]
    seqs = build_sequences(lines, tok, 8).tolist()
    # "a b" is under 5 words: skipped; 5 words -> BOS + 5 + EOS = 7 tokens, padded to 8
    assert seqs[0] == [2, 4, 5, 6, 4, 5, 3, 0]
    # 13 words -> 15 tokens -> windows of 8 with stride 4 at 0, 4 (full windows only)
    assert seqs[1:] == [[2] + [4] * 7, [4] * 8]


def test_sequence_loader_resumes_and_reshuffles_per_epoch():
    data = torch.arange(50).reshape(10, 5)
    straight = SequenceLoader(data, 3, seed=0)
    batches = [straight.next_batch() for _ in range(9)]  # 4 batches per epoch (last has 1)
    assert [len(b) for b in batches[:4]] == [3, 3, 3, 1]
    first_epoch = torch.cat(batches[:4])[:, 0].sort().values
    assert torch.equal(first_epoch, data[:, 0])  # every sequence exactly once per epoch
    assert not torch.equal(torch.cat(batches[:4]), torch.cat(batches[4:8]))
    resumed = SequenceLoader(data, 3, seed=0)
    probe = SequenceLoader(data, 3, seed=0)
    for _ in range(6):
        probe.next_batch()
    resumed.load_state_dict(probe.state_dict())
    assert all(torch.equal(resumed.next_batch(), b) for b in batches[6:])


def test_offline_without_local_copy_is_a_preflight_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")  # lmlab reads it at the check: never downloads
    out = run_main(capsys, "check", str(CONFIGS / "newllm_wikitext2_baseline.yaml"), f"dump_dir={tmp_path / 'r'}")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "data.path" in out.stderr and "wiki.{train,valid,test}.raw" in out.stderr
    out = run_main(capsys, "check", str(CONFIGS / "newllm_wikitext2_baseline.yaml"), f"data.path={tmp_path}",
                   f"dump_dir={tmp_path / 'r'}")
    assert out.returncode == 2
    assert f"Put wiki.train.raw (raw) or train.txt (tokenized) there, e.g. {tmp_path / 'train.txt'}" in out.stderr


@needs_wikitext
def test_info_counts_sequences_from_local_data(capsys):
    import json
    out = run_main(capsys, "info", str(CONFIGS / "newllm_wikitext2.yaml"), f"data.path={WIKITEXT}",
                   "data.train_split=test", "--json")
    info = json.loads(out.stdout)
    assert info["params"] == 2_739_432 and info["val_sequences"] == 5272
    assert info["train_sequences"] == 5920 and info["lr"] == pytest.approx(4e-4)
