"""A run's tokenizer as a Hugging Face ``PreTrainedTokenizerFast`` (tokenizer.json +
tokenizer_config.json + special_tokens_map.json), encoding exactly as lmlab does.

* ``bytes``: a byte-level tokenizer whose ids are the raw UTF-8 byte values 0..255, BOS=256 and
  EOS=257: byte-level pre-tokenization maps each byte to one printable character, and a BPE model
  with no merges maps each such character to its byte value.
* ``bpe``: lmlab's trained HF ``tokenizers`` file as it is.
* ``hf``: the run's tokenizer.json as it is.
* ``sentencepiece`` / ``tiktoken``: the model converted (data/hf_convert.py) so that it encodes as
  the library does (text equal to a special token, e.g. ``</s>``, becomes that special token here).

Either way a post-processor puts BOS first when special tokens are requested (lmlab starts every
document and every evaluation context with BOS), so ``tokenizer(text).input_ids`` equals lmlab's
``[bos] + encode(text)`` and ``add_special_tokens=False`` gives ``encode(text)``.
"""
from __future__ import annotations

import json
from pathlib import Path

import tokenizers as hf

from lmlab.data.field_tokenizers import (LLAMA3_PATTERN, HFTokenizer, SentencePieceTokenizer,
                                         TiktokenTokenizer)
from lmlab.data.hf_convert import sentencepiece_to_hf, tiktoken_to_hf
from lmlab.data.tokenizer_files import byte_chars
from lmlab.data.tokenizers import BPETokenizer, ByteTokenizer, Tokenizer
from lmlab.errors import LmlabError

BYTES_SPECIALS = {"<|bos|>": ByteTokenizer.bos_id, "<|eos|>": ByteTokenizer.eos_id}


def tokenizer_object(tokenizer: Tokenizer) -> tuple[hf.Tokenizer, str, str]:
    """(HF ``tokenizers`` object, BOS token, EOS token) encoding like ``tokenizer``."""
    if isinstance(tokenizer, ByteTokenizer):
        vocab = {char: b for b, char in enumerate(byte_chars())} | BYTES_SPECIALS
        tok = hf.Tokenizer(hf.models.BPE(vocab=vocab, merges=[]))
        tok.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        tok.decoder = hf.decoders.ByteLevel()
        tok.add_special_tokens(list(BYTES_SPECIALS))
        bos, eos = "<|bos|>", "<|eos|>"
    elif isinstance(tokenizer, BPETokenizer):
        tok = hf.Tokenizer.from_str(json.dumps(tokenizer.to_json()))
        bos, eos = BPETokenizer.SPECIALS[tokenizer.bos_id], BPETokenizer.SPECIALS[tokenizer.eos_id]
    elif isinstance(tokenizer, HFTokenizer):
        tok = hf.Tokenizer.from_str(json.dumps(tokenizer.tokenizer_json()))
        bos, eos = tokenizer.bos_token, tokenizer.eos_token
    elif isinstance(tokenizer, SentencePieceTokenizer):
        tok = sentencepiece_to_hf(tokenizer.model)
        bos, eos = tokenizer.bos_token, tokenizer.eos_token
    elif isinstance(tokenizer, TiktokenTokenizer):
        tok = tiktoken_to_hf(tokenizer.ranks, tokenizer.specials, LLAMA3_PATTERN)
        bos, eos = tokenizer.bos_token, tokenizer.eos_token
    else:
        raise LmlabError(f"the {tokenizer.name} tokenizer has no Hugging Face equivalent here. Fix: "
                         "export a run trained with data.tokenizer.name=bytes, bpe, hf, sentencepiece "
                         "or tiktoken.")
    tok.post_processor = hf.processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tokenizer.bos_id)])
    return tok, bos, eos


def save_pretrained(tokenizer: Tokenizer, folder: Path, max_length: int) -> None:
    """Write the three tokenizer files of a ``PreTrainedTokenizerFast`` into ``folder``."""
    from transformers import PreTrainedTokenizerFast  # lazy: transformers (optional extra)

    tok, bos, eos = tokenizer_object(tokenizer)
    pad = getattr(tokenizer, "pad_token", None)  # a tokenizer file's own PAD, when it has one
    specials = {"bos_token": bos, "eos_token": eos} | ({"pad_token": pad} if pad else {})
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **specials, model_max_length=max_length,
                                   clean_up_tokenization_spaces=False)
    fast.save_pretrained(str(folder))
    # Named as the class every transformers version knows (v5 writes its own new alias), and the
    # special tokens also in the older special_tokens_map.json that other tools still read.
    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")
    (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2), encoding="utf-8")
