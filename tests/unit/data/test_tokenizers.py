"""Tokenizers: ids, round trips, save/load, the word tokenizer's reference rules."""
from __future__ import annotations

from lmlab.data.tokenizers import (ByteTokenizer, TokenizerConfig, WordTokenizer, load_tokenizer,
                                   save_tokenizer, train_tokenizer)


def test_bytes_ids_and_round_trip():
    tok = ByteTokenizer()
    assert (tok.vocab_size, tok.bos_id, tok.eos_id) == (258, 256, 257)
    text = "héllo, wörld ✓"
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8")) and max(ids) < 256
    assert tok.decode([tok.bos_id] + ids + [tok.eos_id]) == text
    assert sum(tok.token_byte_lengths()[i] for i in ids) == len(text.encode("utf-8"))


def test_bpe_trains_saves_and_reloads(tmp_path):
    texts = ["the quick brown fox jumps over the lazy dog"] * 50 + ["héllo wörld"] * 20
    tok = train_tokenizer(TokenizerConfig(name="bpe", vocab_size=300), texts)
    assert tok.vocab_size <= 300 and len(tok.encode("the quick brown fox")) < 19
    save_tokenizer(tok, tmp_path / "tokenizer.json")
    again = load_tokenizer(tmp_path / "tokenizer.json")
    for text in ("the lazy dog", "héllo wörld", "unseen ✓ text"):
        assert again.encode(text) == tok.encode(text)
        assert again.decode(again.encode(text)) == text
    lengths = tok.token_byte_lengths()
    ids = tok.encode("héllo wörld")
    assert sum(lengths[i] for i in ids) == len("héllo wörld".encode("utf-8"))
    assert lengths[tok.bos_id] == lengths[tok.eos_id] == 0


def test_word_tokenizer_reference_rules(tmp_path):
    texts = ["b a c", "A b <unk> d", "e e"]  # counts: b 2, a 2, e 2, c 1, d 1 (case-folded)
    tok = train_tokenizer(TokenizerConfig(name="word", vocab_size=7), texts)
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2, 3)
    assert tok.itos[4:] == ["b", "a", "e"]  # ties keep first-occurrence order; <unk> is no entry
    assert tok.encode("B <unk> zzz e") == [4, 1, 1, 6]
    save_tokenizer(tok, tmp_path / "t.json")
    assert isinstance(load_tokenizer(tmp_path / "t.json"), WordTokenizer)
    assert load_tokenizer(tmp_path / "t.json").encode("a e q") == [5, 6, 1]
