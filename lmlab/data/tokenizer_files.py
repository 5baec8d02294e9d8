"""What the field's tokenizer files share: how each kind is named to the user, the error a file that
cannot be used raises, how BOS / EOS / PAD are chosen, and how a file's kind is recognised.

BOS / EOS (``choose_special``): the token named by ``data.tokenizer.bos`` / ``eos`` when set; else
the one the tokenizer itself declares (a transformers folder's ``tokenizer_config.json``, a
SentencePiece model's ``bos_id`` / ``eos_id``, Llama 3's ``<|begin_of_text|>`` / ``<|end_of_text|>``);
else the first of the usual names (``<s>`` / ``</s>``, ``<|begin_of_text|>`` / ``<|end_of_text|>``,
``<|bos|>`` / ``<|eos|>`` ...) among its special tokens. A tokenizer with none is refused, naming
the key to set.
"""
from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

from lmlab.errors import LmlabError

KINDS = ("hf", "sentencepiece", "tiktoken")
WHAT = {"hf": "a Hugging Face tokenizer.json (or a transformers model folder holding one)",
        "sentencepiece": "a SentencePiece .model file",
        "tiktoken": "a tiktoken BPE ranks file (a base64 token and its rank per line, as Llama 3's "
                    "tokenizer.model)"}
INSTALL = "pip install -e '.[tokenizers]' (or pip install sentencepiece tiktoken)"

CANDIDATES = {
    "bos": ("<|begin_of_text|>", "<s>", "<|bos|>", "<bos>", "[BOS]", "<BOS>", "<|startoftext|>",
            "<|endoftext|>"),
    "eos": ("<|end_of_text|>", "</s>", "<|eos|>", "<eos>", "[EOS]", "<EOS>", "<|endoftext|>"),
    "pad": ("<pad>", "<|pad|>", "[PAD]", "<PAD>"),
}
ROLE = {"bos": "starts", "eos": "ends"}


class TokenizerFileError(LmlabError):
    """A tokenizer file that cannot be used: ``what`` is wrong (naming the file), ``fix`` the fix."""

    def __init__(self, what: str, fix: str):
        self.what, self.fix = what, fix
        super().__init__(f"{what} Fix: {fix}")


def optional(module: str, kind: str):
    """``module`` (sentencepiece, tiktoken: the ``tokenizers`` extra), or the install fix."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise TokenizerFileError(f"data.tokenizer.name={kind} needs the {module} package, which is "
                                 "not installed.", INSTALL) from None


def not_a(kind: str, path: Path, why: str) -> TokenizerFileError:
    """The error for ``path`` that is not a tokenizer file of ``kind``: names what it looks like."""
    looks = sniff(path)
    if looks and looks != kind:
        like = WHAT.get(looks, f"the tokenizer.json of an lmlab run with data.tokenizer.name={looks}")
        return TokenizerFileError(f"{path} is not {WHAT[kind]} ({why}); it looks like {like}.",
                                  f"set data.tokenizer.name={looks}, or point data.tokenizer.path at "
                                  f"{WHAT[kind]}")
    return TokenizerFileError(f"{path} is not {WHAT[kind]} ({why}).",
                              f"point data.tokenizer.path at {WHAT[kind]}")


def saved_by_a_run(kind: str, path: Path) -> dict | None:
    """The JSON of ``path`` when it is an lmlab run's tokenizer.json of ``kind`` (to start a new run
    with an earlier run's tokenizer), else None."""
    try:
        with open(path, "rb") as f:
            if f.read(64).lstrip()[:1] != b"{":
                return None
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("lmlab_tokenizer") == kind else None


MAX_FILE_BYTES = 1 << 30  # far above any tokenizer file (Llama 3's: 2 MB; large tokenizer.json: ~40 MB)


def file_problem(path: Path, folder_ok: bool = False) -> str | None:
    """Why ``path`` cannot be a tokenizer file at all (missing, a folder, a pipe, empty, or as big as
    a corpus: it would be read whole), or None. Nothing is opened: a pipe would block the read."""
    path = Path(path)
    if not path.exists():
        return f"{path} does not exist."
    if path.is_dir():
        return None if folder_ok else f"{path} is a folder, not a tokenizer file."
    if not path.is_file():
        return f"{path} is not a regular file (a pipe or device)."
    size = path.stat().st_size
    if size == 0:
        return f"{path} is empty (0 bytes): not a tokenizer file."
    if size > MAX_FILE_BYTES:
        return (f"{path} has {size:,} bytes, far more than any tokenizer file (a corpus or a model?); "
                "it is not read.")
    return None


def existing(kind: str, path: Path) -> Path:
    path = Path(path)
    problem = file_problem(path, folder_ok=kind == "hf")
    if problem:
        raise TokenizerFileError(problem, f"point data.tokenizer.path at {WHAT[kind]}")
    return path


def choose_special(role: str, source: str | Path, configured: str, declared: str | None,
                   specials: list[str], known) -> str | None:
    """The token string for ``role`` (bos / eos / pad; see the module doc). ``known``: every token
    string the tokenizer has; ``specials``: its special ones, in id order. PAD may be None."""
    key = f"data.tokenizer.{role}"
    if configured:
        if configured not in known:
            raise TokenizerFileError(
                f"{key}={configured!r} is not a token of {source}.",
                f"set {key} to one of its special tokens ({shown(specials)}), or remove it to take "
                "the tokenizer's own")
        return configured
    if declared and declared in known:
        return declared
    special = set(specials)
    found = next((c for c in CANDIDATES[role] if c in special), None)
    if found is None and role != "pad":
        raise TokenizerFileError(
            f"{source} has no {role.upper()} token: none of {', '.join(CANDIDATES[role][:4])} ... is "
            f"among its special tokens ({shown(specials)}).",
            f"set {key}=TOKEN, the token of this tokenizer that {ROLE[role]} a document")
    return found


def shown(tokens: list[str], limit: int = 8) -> str:
    if not tokens:
        return "none"
    more = f" and {len(tokens) - limit} more" if len(tokens) > limit else ""
    return ", ".join(tokens[:limit]) + more


def declared_specials(folder: Path) -> dict[str, str]:
    """bos_token / eos_token / pad_token of a transformers folder's tokenizer_config.json (or
    special_tokens_map.json), as {"bos": ..., "eos": ..., "pad": ...}."""
    found: dict[str, str] = {}
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        try:
            data = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        for role in ("bos", "eos", "pad"):
            value = data.get(f"{role}_token") if isinstance(data, dict) else None
            value = value.get("content") if isinstance(value, dict) else value
            if isinstance(value, str) and role not in found:
                found[role] = value
    return found


_RANK_LINE = re.compile(rb"[A-Za-z0-9+/]+={0,2}[ \t]+[0-9]+\r?")


def sniff(path: Path) -> str | None:
    """Which kind of tokenizer file ``path`` looks like: hf, sentencepiece, tiktoken, an lmlab run's
    own (bytes / bpe / word, by its ``lmlab_tokenizer`` key or HF format), or None."""
    path = Path(path)
    if path.is_dir():
        return "hf" if (path / "tokenizer.json").is_file() else None
    if file_problem(path):
        return None
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except OSError:
        return None
    if head.lstrip()[:1] == b"{":
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if isinstance(data, dict):
            return data.get("lmlab_tokenizer") or ("hf" if "model" in data else None)
        return None
    first = head.split(b"\n", 1)[0]
    if _RANK_LINE.fullmatch(first):
        return "tiktoken"
    try:
        spm = importlib.import_module("sentencepiece")
        model = spm.SentencePieceProcessor(model_proto=Path(path).read_bytes())
        return "sentencepiece" if model.get_piece_size() > 0 else None
    except Exception:  # noqa: BLE001 (not installed, or not a model: either way not recognised)
        return None


def byte_chars() -> list[str]:
    """GPT-2's byte -> printable character table, the one ``pre_tokenizers.ByteLevel`` uses."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]
