"""The field's tokenizer files behind lmlab's ``Tokenizer`` protocol: a Hugging Face tokenizer.json
(``hf``), a SentencePiece ``.model`` (``sentencepiece``, Llama 2 / Mistral style) and a tiktoken BPE
ranks file (``tiktoken``, Llama 3's ``tokenizer.model`` as Lingua reads it).

The vocabulary and BOS / EOS come from the file (``tokenizer_files.choose_special`` says how, and
how ``data.tokenizer.bos`` / ``eos`` override them). ``to_json`` is self-contained, so the run
directory's tokenizer.json alone reloads it: the HF tokenizer's own JSON, or the model file's bytes
in base64, next to the BOS / EOS tokens chosen.

``token_byte_lengths`` (bits per byte): a SentencePiece byte piece ``<0xNN>`` is 1 byte and ``▁`` a
space; a tiktoken rank its bytes; an HF byte-level token one byte per character. A SentencePiece
model that adds a dummy prefix (``add_dummy_prefix``, Llama 2) counts the space it puts before each
document's first word; a normalizing model (NFKC, whitespace removal) counts the normalized text.
Text equal to a special token (``</s>``) is ordinary text for sentencepiece and tiktoken, and the
special token for hf (as the ``tokenizers`` library does).
"""
from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Iterable

import tokenizers as hf

from lmlab.data.tokenizer_files import (TokenizerFileError, byte_chars, choose_special, declared_specials,
                                        existing, not_a, optional, saved_by_a_run, sniff)

_BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")


class HFEncoding:
    """Encoding through an HF ``tokenizers`` object ``self._tok``, without its special tokens
    (lmlab adds BOS / EOS itself); ``encode_batch`` runs in Rust threads, outside the GIL."""

    _tok: hf.Tokenizer

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=True)


class HFTokenizer(HFEncoding):
    """Any Hugging Face ``tokenizers`` tokenizer.json; BOS / EOS among its special tokens."""

    name = "hf"

    def __init__(self, tok: hf.Tokenizer, bos: str = "", eos: str = "", pad: str = "",
                 source: str | Path = "tokenizer.json", declared: dict | None = None):
        tok.no_truncation()  # a tokenizer.json may carry BERT-style truncation / padding settings
        tok.no_padding()
        self._tok = tok
        self._json: dict | None = None
        self._vocab = tok.get_vocab(with_added_tokens=True)
        if not self._vocab:
            raise TokenizerFileError(f"{source} has an empty vocabulary.", "point data.tokenizer.path "
                                     "at a trained tokenizer.json")
        self.vocab_size = max(self._vocab.values()) + 1
        added = tok.get_added_tokens_decoder()
        specials = [t.content for _, t in sorted(added.items()) if t.special]
        declared = declared or {}
        self.bos_token = choose_special("bos", source, bos, declared.get("bos"), specials, self._vocab)
        self.eos_token = choose_special("eos", source, eos, declared.get("eos"), specials, self._vocab)
        self.pad_token = choose_special("pad", source, pad, declared.get("pad"), specials, self._vocab)
        self.bos_id, self.eos_id = self._vocab[self.bos_token], self._vocab[self.eos_token]
        self.pad_id = self._vocab[self.pad_token] if self.pad_token else None

    @classmethod
    def from_path(cls, path: Path, bos: str = "", eos: str = "") -> "HFTokenizer":
        path = existing("hf", path)
        file = path / "tokenizer.json" if path.is_dir() else path
        if path.is_dir() and not file.is_file():
            slow = path / "tokenizer.model"
            kind = sniff(slow) if slow.is_file() else None
            hint = (f"; its tokenizer.model is read with data.tokenizer.name={kind} and "
                    f"data.tokenizer.path={slow}" if kind in ("sentencepiece", "tiktoken") else "")
            raise TokenizerFileError(f"{path} holds no tokenizer.json{hint}.",
                                     "point data.tokenizer.path at a tokenizer.json, or at a folder "
                                     "holding one")
        try:
            tok = hf.Tokenizer.from_str(file.read_text(encoding="utf-8"))
        except Exception as err:  # noqa: BLE001 (OSError, UnicodeDecodeError, the library's parse error)
            raise not_a("hf", file, _short(err)) from None
        return cls(tok, bos, eos, source=file, declared=declared_specials(file.parent))

    @classmethod
    def from_json(cls, data: dict) -> "HFTokenizer":
        tok = hf.Tokenizer.from_str(json.dumps(data["tokenizer"]))
        return cls(tok, data["bos"], data["eos"], data.get("pad") or "", source="the run's tokenizer.json")

    def token_byte_lengths(self) -> list[int]:
        data = self.tokenizer_json()
        model = data.get("model", {})
        byte_level = '"ByteLevel"' in json.dumps([data.get("pre_tokenizer"), data.get("decoder")])
        fallback = bool(model.get("byte_fallback"))
        prefix = model.get("continuing_subword_prefix") or ""
        suffix = model.get("end_of_word_suffix") or ""
        to_byte = set(byte_chars())
        added = {t["id"]: t for t in data.get("added_tokens", [])}
        lengths = [0] * self.vocab_size
        for token, idx in self._vocab.items():
            if idx in added:
                lengths[idx] = 0 if added[idx].get("special") else len(token.encode("utf-8"))
            elif fallback and _BYTE_PIECE.fullmatch(token):
                lengths[idx] = 1
            elif byte_level and all(c in to_byte for c in token):
                lengths[idx] = len(token)
            else:
                if prefix and token.startswith(prefix):
                    token = token[len(prefix):]
                if suffix and token.endswith(suffix):
                    token = token[:-len(suffix)] + " "
                lengths[idx] = len(token.replace("▁", " ").encode("utf-8"))
        return lengths

    def tokenizer_json(self) -> dict:
        if self._json is None:
            self._json = json.loads(self._tok.to_str())
        return self._json

    def to_json(self) -> dict:
        return {"lmlab_tokenizer": "hf", "bos": self.bos_token, "eos": self.eos_token,
                "pad": self.pad_token, "tokenizer": self.tokenizer_json()}

    def __reduce__(self):  # pickled as its JSON: tokenizing worker processes rebuild it from that
        return from_saved, (self.to_json(),)


class ModelFile:
    """A tokenizer made from one model file's bytes (sentencepiece, tiktoken), which the run's
    tokenizer.json embeds (base64), so the run directory alone rebuilds it."""

    name: str

    @classmethod
    def from_path(cls, path: Path, bos: str = "", eos: str = ""):
        path = existing(cls.name, path)
        if path.is_dir():
            raise not_a(cls.name, path, "it is a folder")
        return cls(path.read_bytes(), bos, eos, source=path)

    @classmethod
    def from_json(cls, data: dict):
        return cls(base64.b64decode(data["model_b64"]), data["bos"], data["eos"],
                   source="the run's tokenizer.json")


class SentencePieceTokenizer(ModelFile):
    """A SentencePiece model (unigram or BPE, byte fallback or not) run by the sentencepiece library."""

    name = "sentencepiece"

    def __init__(self, model: bytes, bos: str = "", eos: str = "", source: str | Path = "the model"):
        spm = optional("sentencepiece", self.name)
        try:
            self._sp = spm.SentencePieceProcessor(model_proto=model)
        except Exception:  # noqa: BLE001 (the library raises RuntimeError / OSError)
            raise not_a("sentencepiece", Path(str(source)), "the sentencepiece library cannot parse "
                        "it as a model") from None
        self.model = model
        sp = self._sp
        self.vocab_size = sp.get_piece_size()
        pieces = [sp.id_to_piece(i) for i in range(self.vocab_size)]
        specials = [p for i, p in enumerate(pieces) if sp.is_control(i)]
        known = set(pieces)
        own = {role: pieces[i] if 0 <= i < self.vocab_size else None
               for role, i in (("bos", sp.bos_id()), ("eos", sp.eos_id()), ("pad", sp.pad_id()))}
        self.bos_token = choose_special("bos", source, bos, own["bos"], specials, known)
        self.eos_token = choose_special("eos", source, eos, own["eos"], specials, known)
        self.bos_id, self.eos_id = sp.piece_to_id(self.bos_token), sp.piece_to_id(self.eos_token)
        self.pad_token = own["pad"]
        self.pad_id = sp.pad_id() if own["pad"] else None

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self._sp.encode(list(texts))

    def decode(self, ids: Iterable[int]) -> str:
        return self._sp.decode([int(i) for i in ids])

    def token_byte_lengths(self) -> list[int]:
        sp = self._sp
        lengths = [0] * self.vocab_size
        for i in range(self.vocab_size):
            if sp.is_byte(i):
                lengths[i] = 1
            elif not (sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i)):
                lengths[i] = len(sp.id_to_piece(i).replace("▁", " ").encode("utf-8"))
        return lengths

    def to_json(self) -> dict:
        return {"lmlab_tokenizer": "sentencepiece", "bos": self.bos_token, "eos": self.eos_token,
                "model_b64": base64.b64encode(self.model).decode("ascii")}

    def __reduce__(self):  # pickled as its JSON: tokenizing worker processes rebuild it from that
        return from_saved, (self.to_json(),)


# Llama 3's tokenizer (meta-llama/llama3 tokenizer.py; Lingua's tiktoken tokenizer is the same).
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
RESERVED_SPECIALS = 256
MAX_ENCODE_CHARS, MAX_RUN_CHARS = 400_000, 25_000  # Llama 3 encodes longer text in slices
# a maximal run (the lookbehind starts it at the run's first character) longer than MAX_RUN_CHARS
_LONG_RUN = re.compile(r"(?<!\s)\s{%d,}|(?<!\S)\S{%d,}" % (MAX_RUN_CHARS + 1, MAX_RUN_CHARS + 1))


def llama3_specials() -> list[str]:
    """Llama 3's 256 special tokens, in id order after the ranks."""
    named = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
             "<|reserved_special_token_1|>", "<|reserved_special_token_2|>", "<|reserved_special_token_3|>",
             "<|start_header_id|>", "<|end_header_id|>", "<|reserved_special_token_4|>", "<|eot_id|>"]
    return named + [f"<|reserved_special_token_{i}|>" for i in range(5, RESERVED_SPECIALS - 5)]


class TiktokenTokenizer(ModelFile):
    """A tiktoken BPE ranks file with Llama 3's split pattern and its 256 specials after the ranks
    (BOS ``<|begin_of_text|>``, EOS ``<|end_of_text|>``), run by the tiktoken library."""

    name = "tiktoken"

    def __init__(self, model: bytes, bos: str = "", eos: str = "", source: str | Path = "the file"):
        tiktoken = optional("tiktoken", self.name)
        self.model = model
        self.ranks = parse_ranks(model, Path(str(source)))
        base = max(self.ranks.values()) + 1
        self.specials = {token: base + i for i, token in enumerate(llama3_specials())}
        self._enc = tiktoken.Encoding(name="lmlab", pat_str=LLAMA3_PATTERN, mergeable_ranks=self.ranks,
                                      special_tokens=self.specials)
        self.vocab_size = base + RESERVED_SPECIALS
        names = list(self.specials)
        self.bos_token = choose_special("bos", source, bos, names[0], names, self.specials)
        self.eos_token = choose_special("eos", source, eos, names[1], names, self.specials)
        self.bos_id, self.eos_id = self.specials[self.bos_token], self.specials[self.eos_token]
        self.pad_id = None
        self._ordinary = set(self.ranks.values())

    def encode(self, text: str) -> list[int]:
        out: list[int] = []
        for piece in _slices(text):
            out += self._enc.encode_ordinary(piece)
        return out

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        if all(len(t) <= MAX_RUN_CHARS for t in texts):
            return self._enc.encode_ordinary_batch(list(texts))
        return [self.encode(t) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        return self._enc.decode([i for i in ids if i in self._ordinary])

    def token_byte_lengths(self) -> list[int]:
        lengths = [0] * self.vocab_size
        for token, rank in self.ranks.items():
            lengths[rank] = len(token)
        return lengths

    def to_json(self) -> dict:
        return {"lmlab_tokenizer": "tiktoken", "bos": self.bos_token, "eos": self.eos_token,
                "model_b64": base64.b64encode(self.model).decode("ascii")}

    def __reduce__(self):  # pickled as its JSON: tokenizing worker processes rebuild it from that
        return from_saved, (self.to_json(),)


def parse_ranks(data: bytes, source: Path) -> dict[bytes, int]:
    """A tiktoken BPE file's ``{token bytes: rank}``; refuses anything else naming ``source``."""
    ranks: dict[bytes, int] = {}
    try:
        lines = data.decode("ascii").splitlines()
    except UnicodeDecodeError:
        raise not_a("tiktoken", source, "it is not a text file of base64 lines") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            if len(parts) != 2:
                raise ValueError
            token, rank = base64.b64decode(parts[0], validate=True), int(parts[1])
        except ValueError:
            raise not_a("tiktoken", source, f"line {number} is not 'BASE64TOKEN RANK': {line[:60]!r}") from None
        if token in ranks or rank < 0:
            raise not_a("tiktoken", source, f"line {number}: token {parts[0]} repeated or rank negative")
        ranks[token] = rank
    if len(set(ranks.values())) != len(ranks):
        raise not_a("tiktoken", source, "two tokens share a rank")
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise not_a("tiktoken", source, f"{len(missing)} of the 256 single bytes have no rank "
                                        f"(e.g. byte {missing[0]}), so some text could not be encoded")
    return ranks


def _slices(text: str) -> list[str]:
    """Llama 3's slicing: 400k-character slices, and runs of whitespace / non-whitespace longer
    than 25k characters cut every 25k characters (tiktoken recurses on them)."""
    if len(text) <= MAX_RUN_CHARS:
        return [text]
    out = []
    for start in range(0, len(text), MAX_ENCODE_CHARS):
        part, cuts = text[start:start + MAX_ENCODE_CHARS], [0]
        for run in _LONG_RUN.finditer(part):
            cuts += range(run.start() + MAX_RUN_CHARS, run.end(), MAX_RUN_CHARS)
        out += [part[a:b] for a, b in zip(cuts, cuts[1:] + [len(part)])]
    return out


KIND_CLASSES = {"hf": HFTokenizer, "sentencepiece": SentencePieceTokenizer, "tiktoken": TiktokenTokenizer}


def open_file(kind: str, path: Path, bos: str = "", eos: str = ""):
    """The tokenizer of ``kind`` read from the user's file ``path`` (or from an earlier run's
    tokenizer.json of that kind)."""
    saved = saved_by_a_run(kind, Path(path)) if Path(path).is_file() else None
    if saved is not None:
        return from_saved({**saved, "bos": bos or saved["bos"], "eos": eos or saved["eos"]})
    return KIND_CLASSES[kind].from_path(Path(path), bos, eos)


def from_saved(data: dict):
    """A tokenizer of the field's kinds from its ``to_json`` (a run directory's tokenizer.json)."""
    return KIND_CLASSES[data["lmlab_tokenizer"]].from_json(data)


def _short(err: Exception) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 160 else text[:157] + "..."
