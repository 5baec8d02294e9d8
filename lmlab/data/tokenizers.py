"""Tokenizers: bytes, BPE (HF ``tokenizers``) and word-level trained by lmlab, and the field's
tokenizer files (``hf``, ``sentencepiece``, ``tiktoken``: data/field_tokenizers.py), behind one small
protocol.

Every tokenizer is saved as ``tokenizer.json`` in the run directory and reloaded from there, so
evaluation and generation always use the exact vocabulary the model was trained with (the field's
kinds embed their file in it).
"""
from __future__ import annotations

import functools
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Protocol

import tokenizers as hf  # Hugging Face tokenizers (the BPE implementation)

from lmlab.atomic import write_text
from lmlab.data import field_tokenizers
from lmlab.data.field_tokenizers import HFEncoding
from lmlab.data.tokenizer_files import KINDS as FILE_KINDS, WHAT, TokenizerFileError, file_problem, sniff
from lmlab.errors import LmlabError, Problem

TOKENIZERS = ("bytes", "bpe", "word", *FILE_KINDS)


@dataclass
class TokenizerConfig:
    """Which tokenizer turns text into ids."""

    name: str = field(default="bytes", metadata={
        "help": "bytes (256 byte ids + BOS 256 + EOS 257), bpe (trained on the training text with "
                "HF tokenizers), word (lowercased whitespace words, most frequent first), or a "
                "tokenizer file at data.tokenizer.path: hf (a tokenizer.json, or a transformers model "
                "folder holding one), sentencepiece (a .model file) or tiktoken (a BPE ranks file, as "
                "Llama 3's tokenizer.model). A file's vocabulary and BOS / EOS are its own.",
        "choices": list(TOKENIZERS)})
    vocab_size: int = field(default=0, metadata={
        "help": "Vocabulary size for bpe / word (0 = 4096 for bpe, 1000 for word; bytes is 258; "
                "hf / sentencepiece / tiktoken: the file's)."})
    path: str = field(default="", metadata={
        "help": "bpe / word: load this saved tokenizer.json instead of training one. hf / "
                "sentencepiece / tiktoken: the tokenizer file (required)."})
    train_max_bytes: int = field(default=50_000_000, metadata={
        "help": "Read at most this much training text to train a bpe / word tokenizer."})
    bos: str = field(default="", metadata={
        "help": "hf / sentencepiece / tiktoken: the token that starts each document (e.g. <s>); "
                "empty = the tokenizer's own BOS."})
    eos: str = field(default="", metadata={
        "help": "hf / sentencepiece / tiktoken: the token that ends each document (e.g. </s>); "
                "empty = the tokenizer's own EOS."})


DEFAULT_VOCAB = {"bytes": 258, "bpe": 4096, "word": 1000}
PLACEHOLDER_VOCAB = 258  # a file kind whose file cannot be read: its problem is reported by check()


def check(cfg: TokenizerConfig) -> list[Problem]:
    problems = []
    if cfg.name in FILE_KINDS:
        return _check_file(cfg)
    for key in ("bos", "eos"):
        if getattr(cfg, key):
            problems.append(Problem(f"data.tokenizer.{key}", f"only a tokenizer file (hf, sentencepiece, "
                                    f"tiktoken) takes it; {cfg.name} has its own.",
                                    f"remove data.tokenizer.{key}"))
    if cfg.name == "bytes" and cfg.vocab_size not in (0, 258):
        problems.append(Problem("data.tokenizer.vocab_size", f"bytes has vocab 258, got "
                                f"{cfg.vocab_size}.", "remove data.tokenizer.vocab_size"))
    if cfg.name != "bytes" and cfg.vocab_size and cfg.vocab_size < 8:
        problems.append(Problem("data.tokenizer.vocab_size", f"too small: {cfg.vocab_size}.",
                                "set data.tokenizer.vocab_size to at least a few hundred"))
    problem = file_problem(Path(cfg.path)) if cfg.path else None
    if problem:
        problems.append(Problem("data.tokenizer.path", problem,
                                "point it at a tokenizer.json from an lmlab run, or remove it"))
    return problems


def _check_file(cfg: TokenizerConfig) -> list[Problem]:
    """A tokenizer file of the kind named, readable, with BOS / EOS; its vocabulary is its own."""
    if not cfg.path:
        return [Problem("data.tokenizer.path", f"data.tokenizer.name={cfg.name} reads a tokenizer "
                        "file, and none is given.", f"set data.tokenizer.path to {WHAT[cfg.name]}")]
    try:
        tokenizer = open_configured(cfg)
    except TokenizerFileError as err:
        return [Problem("data.tokenizer.path", err.what, err.fix)]
    if cfg.vocab_size and cfg.vocab_size != tokenizer.vocab_size:
        return [Problem("data.tokenizer.vocab_size", f"{cfg.path} has {tokenizer.vocab_size} ids, and "
                        f"the vocabulary is the file's, not {cfg.vocab_size}.",
                        "remove data.tokenizer.vocab_size")]
    return []


def check_model_vocab(cfg: TokenizerConfig, model_vocab: int) -> list[Problem]:
    """A model whose embedding (``model.vocab_size``, set) has fewer rows than the tokenizer ids."""
    if not model_vocab or (cfg.name in FILE_KINDS and _check_file(cfg)):
        return []  # 0: the model follows the tokenizer; an unreadable file is reported by check()
    vocab = configured_vocab_size(cfg)
    if model_vocab >= vocab:
        return []
    what = cfg.path if cfg.name in FILE_KINDS else f"the {cfg.name} tokenizer"
    return [Problem("model.vocab_size", f"{model_vocab} is smaller than the {vocab} ids of {what}: "
                    "their embeddings would not exist.",
                    f"set model.vocab_size=0 (it follows the tokenizer) or to at least {vocab}")]


def configured_vocab_size(cfg: TokenizerConfig) -> int:
    """Vocabulary size the model is built with, known before any tokenizer is trained (a tokenizer
    file's is read from it; an unreadable one gives a placeholder, its problem being check()'s)."""
    if cfg.name in FILE_KINDS:
        try:
            return open_configured(cfg).vocab_size
        except LmlabError:
            return PLACEHOLDER_VOCAB
    return 258 if cfg.name == "bytes" else (cfg.vocab_size or DEFAULT_VOCAB[cfg.name])


def open_configured(cfg: TokenizerConfig, path: Path | None = None):
    """The tokenizer file ``path`` (default ``cfg.path``) read as the file kind ``cfg.name`` with
    ``cfg``'s BOS / EOS (read once per file version: preflight and the data pipeline share it)."""
    path = Path(cfg.path if path is None else path)
    try:
        stat = path.stat()
        version = (stat.st_size, stat.st_mtime_ns)
    except OSError:
        version = None
    return _open_cached(cfg.name, str(path.resolve()), version, cfg.bos, cfg.eos, str(path))


@functools.lru_cache(maxsize=4)
def _open_cached(kind: str, resolved: str, version, bos: str, eos: str, shown: str):
    return field_tokenizers.open_file(kind, Path(shown), bos, eos)


class Tokenizer(Protocol):
    name: str
    vocab_size: int
    bos_id: int
    eos_id: int
    pad_id: int | None

    def encode(self, text: str) -> list[int]:
        """Text -> ids, without BOS/EOS."""
        ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def token_byte_lengths(self) -> list[int]:
        """UTF-8 bytes of text each id stands for (0 for specials); the denominator of bits/byte."""
        ...

    def to_json(self) -> dict: ...


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255, then BOS=256 and EOS=257 (vocab 258). Needs no training."""

    name = "bytes"
    vocab_size = 258
    bos_id, eos_id, pad_id = 256, 257, None

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def token_byte_lengths(self) -> list[int]:
        return [1] * 256 + [0, 0]

    def to_json(self) -> dict:
        return {"lmlab_tokenizer": "bytes"}


class WordTokenizer:
    """Lowercased whitespace words: PAD=0, UNK=1, BOS=2, EOS=3, then the most frequent words.

    Ties in frequency keep first-occurrence order; a literal ``<unk>`` (WikiText's rare-word marker)
    maps to UNK and is never a vocabulary entry.
    """

    name = "word"
    SPECIALS = ("<pad>", "<unk>", "<bos>", "<eos>")
    pad_id, unk_id, bos_id, eos_id = 0, 1, 2, 3

    def __init__(self, words: list[str]):
        self.itos = list(self.SPECIALS) + list(words)
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        self.stoi["<unk>"] = self.unk_id
        self.vocab_size = len(self.itos)

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> "WordTokenizer":
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(text.lower().split())
        counts.pop("<unk>", None)
        for special in cls.SPECIALS:
            counts.pop(special, None)
        # most_common sorts stably, so equal counts keep first-occurrence order
        return cls([w for w, _ in counts.most_common(vocab_size - len(cls.SPECIALS))])

    def encode(self, text: str) -> list[int]:
        unk = self.unk_id
        return [self.stoi.get(w, unk) for w in text.lower().split()]

    def decode(self, ids: Iterable[int]) -> str:
        return " ".join(self.itos[i] for i in ids if i >= len(self.SPECIALS) or i == self.unk_id)

    def token_byte_lengths(self) -> list[int]:
        # A word stands for its UTF-8 bytes plus the separating space; EOS for the newline.
        return [0, len("<unk>") + 1, 0, 1] + [len(w.encode("utf-8")) + 1 for w in self.itos[4:]]

    def to_json(self) -> dict:
        return {"lmlab_tokenizer": "word", "words": self.itos[len(self.SPECIALS):]}


class BPETokenizer(HFEncoding):
    """Byte-level BPE trained with HF ``tokenizers``; specials <|bos|>=0, <|eos|>=1, <|pad|>=2."""

    name = "bpe"
    SPECIALS = ("<|bos|>", "<|eos|>", "<|pad|>")
    bos_id, eos_id, pad_id = 0, 1, 2

    def __init__(self, hf_tokenizer):
        self._tok = hf_tokenizer
        self.vocab_size = hf_tokenizer.get_vocab_size()

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> "BPETokenizer":
        tok = hf.Tokenizer(hf.models.BPE())
        tok.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = hf.decoders.ByteLevel()
        trainer = hf.trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=list(cls.SPECIALS), show_progress=False,
            initial_alphabet=hf.pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok)

    @classmethod
    def from_json(cls, data: dict) -> "BPETokenizer":
        return cls(hf.Tokenizer.from_str(json.dumps(data)))

    def token_byte_lengths(self) -> list[int]:
        # Byte-level BPE maps every byte to one printable character, so a token's string length
        # is the number of bytes it stands for.
        lengths = [0] * self.vocab_size
        for token, idx in self._tok.get_vocab().items():
            lengths[idx] = 0 if token in self.SPECIALS else len(token)
        return lengths

    def to_json(self) -> dict:
        return json.loads(self._tok.to_str())


def tokenizer_from_json(data: dict) -> Tokenizer:
    kind = data.get("lmlab_tokenizer")
    if kind == "bytes":
        return ByteTokenizer()
    if kind == "word":
        return WordTokenizer(list(data["words"]))
    if kind in FILE_KINDS:
        return field_tokenizers.from_saved(data)
    if "model" in data:  # HF tokenizers' own format: lmlab's trained BPE, else any other
        if _is_lmlab_bpe(data):
            return BPETokenizer.from_json(data)
        return field_tokenizers.HFTokenizer(hf.Tokenizer.from_str(json.dumps(data)))
    raise LmlabError(f"unrecognised tokenizer file (lmlab_tokenizer={kind!r}).")


def _is_lmlab_bpe(data: dict) -> bool:
    """A tokenizer.json that BPETokenizer.train wrote (its three specials at ids 0, 1, 2)."""
    added = [(t.get("id"), t.get("content")) for t in data.get("added_tokens") or []]
    return added[:3] == list(enumerate(BPETokenizer.SPECIALS))


def save_tokenizer(tokenizer: Tokenizer, path: Path) -> None:
    # atomic: a run killed while writing it must not find a truncated tokenizer on restart
    write_text(path, json.dumps(tokenizer.to_json(), ensure_ascii=False))


def load_tokenizer(path: Path, cfg: TokenizerConfig | None = None) -> Tokenizer:
    """The tokenizer saved at ``path`` (a run's tokenizer.json), or read from a tokenizer file.

    ``cfg``: the tokenizer config whose ``path`` this is; for hf / sentencepiece / tiktoken its
    name says how to read the file and its bos / eos apply. Without it, a file that is not JSON (a
    SentencePiece or tiktoken model, a transformers folder) is read as the kind it looks like, and
    a tokenizer.json not written by lmlab's bpe as an hf tokenizer with its own BOS / EOS."""
    path = Path(path)
    if cfg is not None and cfg.name in FILE_KINDS:
        return open_configured(cfg, path)
    if path.is_dir():
        return field_tokenizers.open_file("hf", path)
    problem = file_problem(path)
    if problem:
        raise LmlabError(f"{problem} Fix: point data.tokenizer.path at a tokenizer file (a run's "
                         "tokenizer.json, or hf / sentencepiece / tiktoken with data.tokenizer.name its kind).")
    try:
        raw = path.read_bytes()
        if raw.lstrip()[:1] != b"{":
            looks = sniff(path)
            if looks in ("sentencepiece", "tiktoken"):
                return field_tokenizers.open_file(looks, path)
            raise LmlabError(f"{path} is not a tokenizer file: neither a tokenizer.json nor a "
                             "SentencePiece or tiktoken model. Fix: point data.tokenizer.path at a "
                             "tokenizer file, with data.tokenizer.name its kind (hf, sentencepiece, "
                             "tiktoken; bpe / word for a tokenizer.json written by lmlab).")
        data = json.loads(raw.decode("utf-8"))
    except (OSError, ValueError) as err:
        raise LmlabError(f"cannot read tokenizer {path}: {err}. Fix: point data.tokenizer.path at "
                         "a tokenizer.json written by lmlab.") from None
    if isinstance(data, dict) and "model" in data and "lmlab_tokenizer" not in data \
            and not _is_lmlab_bpe(data):
        return field_tokenizers.open_file("hf", path)  # reads its folder's tokenizer_config.json too
    return tokenizer_from_json(data)


def train_tokenizer(cfg: TokenizerConfig, texts: Iterable[str]) -> Tokenizer:
    """A new tokenizer of kind ``cfg.name``; bytes ignores ``texts``, and a tokenizer file kind
    reads its file."""
    if cfg.name == "bytes":
        return ByteTokenizer()
    if cfg.name in FILE_KINDS:
        return open_configured(cfg)
    vocab = configured_vocab_size(cfg)
    trainer = {"bpe": BPETokenizer.train, "word": WordTokenizer.train}[cfg.name]
    return trainer(_capped(texts, cfg.train_max_bytes), vocab)


def _capped(texts: Iterable[str], max_bytes: int) -> Iterable[str]:
    seen = 0
    for text in texts:
        yield text
        seen += len(text)
        if seen >= max_bytes:
            return


def encode_batch(tokenizer: Tokenizer, texts: list[str]) -> list[list[int]]:
    """Encode many texts at once (HF tokenizers batch in Rust threads)."""
    batch = getattr(tokenizer, "encode_batch", None)
    return batch(texts) if batch else [tokenizer.encode(t) for t in texts]
