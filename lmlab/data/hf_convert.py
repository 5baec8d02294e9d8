"""SentencePiece models and tiktoken ranks as Hugging Face ``tokenizers`` objects that encode as the
original libraries do, for ``lmlab export`` (data/hf_tokenizer.py).

* SentencePiece: the model's own settings, read from its protobuf (as transformers'
  ``SpmConverter`` does): the normalizer (precompiled character map, extra-whitespace removal,
  ``▁`` for spaces, the dummy prefix), a ``Unigram`` model with the piece scores or a ``BPE`` model
  whose merges are ranked by the merged piece's score, byte fallback, user-defined pieces kept
  whole, control pieces (``<s>``, ``</s>``) as special tokens.
* tiktoken: a byte-level ``BPE`` whose vocabulary is the ranks and whose merges are each token's
  splits into two ranked tokens, ordered by rank (transformers' ``TikTokenConverter``), with whole
  words looked up first (``ignore_merges``, as tiktoken does) behind the same split pattern, and
  the special tokens at their ids.
"""
from __future__ import annotations

import re

import tokenizers as hf
from tokenizers import AddedToken, Regex, decoders, normalizers, pre_tokenizers

from lmlab.data.tokenizer_files import byte_chars, optional
from lmlab.errors import LmlabError

NORMAL, CONTROL, USER_DEFINED = 1, 3, 4  # SentencePiece piece types
UNIGRAM, BPE = 1, 2  # SentencePiece model types


def sentencepiece_to_hf(model: bytes) -> hf.Tokenizer:
    optional("sentencepiece", "sentencepiece")
    try:
        from sentencepiece import sentencepiece_model_pb2  # lazy: the optional extra, and protobuf
    except ImportError:
        raise LmlabError("exporting a sentencepiece tokenizer reads its model with protobuf, which is "
                         "not installed. Fix: pip install protobuf (or pip install 'lmlab[tokenizers]', which brings it).") from None
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model)
    spec, norm = proto.trainer_spec, proto.normalizer_spec
    pieces = list(proto.pieces)
    if spec.treat_whitespace_as_suffix or spec.model_type not in (UNIGRAM, BPE):
        raise LmlabError("this SentencePiece model (a word / char model, or whitespace as suffix) has no "
                         "Hugging Face equivalent here. Fix: export a run whose tokenizer is a unigram "
                         "or BPE SentencePiece model.")
    user_defined = [p.piece for p in pieces if p.type == USER_DEFINED]
    if spec.model_type == UNIGRAM:
        tok = hf.Tokenizer(hf.models.Unigram([(p.piece, p.score) for p in pieces], unk_id=spec.unk_id,
                                             byte_fallback=spec.byte_fallback))
    else:
        normal = {p.piece: (p.score, i) for i, p in enumerate(pieces) if p.type == NORMAL}
        ranked = sorted((-score, i, piece[:k], piece[k:]) for piece, (score, i) in normal.items()
                        for k in range(1, len(piece)) if piece[:k] in normal and piece[k:] in normal)
        tok = hf.Tokenizer(hf.models.BPE(
            {p.piece: i for i, p in enumerate(pieces)}, [(a, b) for *_, a, b in ranked],
            unk_token=spec.unk_piece, fuse_unk=True, byte_fallback=spec.byte_fallback,
            ignore_merges=bool(user_defined)))
    space = "▁" if norm.escape_whitespaces else " "
    steps = [normalizers.Precompiled(norm.precompiled_charsmap)] if norm.precompiled_charsmap else []
    if norm.remove_extra_whitespaces:  # spaces only: SentencePiece leaves newlines alone
        steps += [normalizers.Replace(Regex(r"\A +| +\z"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    if norm.escape_whitespaces:
        steps.append(normalizers.Replace(" ", "▁"))
    if norm.add_dummy_prefix:
        steps.append(normalizers.Prepend(space))  # also before text that starts with a space, as spm
    tok.normalizer = normalizers.Sequence(steps)
    if user_defined:  # emitted whole, never merged
        pattern = "|".join(re.escape(p) for p in sorted(user_defined, key=len, reverse=True))
        tok.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    steps = [decoders.Replace("▁", " ")] + ([decoders.ByteFallback()] if spec.byte_fallback else [])
    steps.append(decoders.Fuse())
    if norm.add_dummy_prefix:
        steps.append(decoders.Strip(content=" ", left=1, right=0))
    tok.decoder = decoders.Sequence(steps)
    tok.add_special_tokens([AddedToken(p.piece, special=True, normalized=False)
                            for p in pieces if p.type == CONTROL])
    return tok


def tiktoken_to_hf(ranks: dict[bytes, int], specials: dict[str, int], pattern: str) -> hf.Tokenizer:
    chars = byte_chars()

    def text(token: bytes) -> str:
        return "".join(chars[b] for b in token)

    merges = []
    for token, rank in ranks.items():
        splits = [(ranks[token[:k]], ranks[token[k:]], token[:k], token[k:]) for k in range(1, len(token))
                  if token[:k] in ranks and token[k:] in ranks]
        merges += [(rank, a, b) for *_, a, b in sorted(splits)]
    merges.sort(key=lambda m: m[0])  # stable: a token's own splits keep their order
    try:
        model = hf.models.BPE({text(t): r for t, r in ranks.items()},
                              [(text(a), text(b)) for _, a, b in merges], ignore_merges=True)
    except TypeError:
        raise LmlabError("exporting a tiktoken tokenizer needs tokenizers >= 0.19 (BPE ignore_merges). "
                         "Fix: pip install -U tokenizers.") from None
    tok = hf.Tokenizer(model)
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t in sorted(specials, key=specials.get)])
    wrong = [t for t, i in specials.items() if tok.token_to_id(t) != i]
    if wrong:  # ranks with gaps would shift the specials
        raise LmlabError(f"the tiktoken special tokens would get other ids ({wrong[0]}). Fix: use a "
                         "ranks file whose ranks are 0..N-1.")
    return tok
