"""Prepared token shards on disk: the folder layout, its manifest, and the checks every reader makes.

A prepared folder, written by ``lmlab data prepare`` (``data/prepare.py``), read by training with
``data.source=prepared data.path=DIR`` (``data/prepared.py``)::

    DIR/manifest.json          what is here, how it was made, whether it is complete
        tokenizer.json         the tokenizer the shards were encoded with (its sha256 is in the manifest)
        train.00000.bin        token ids, raw little-endian uint16 (uint32 above 65,536 ids): np.memmap
        train.00000.idx.npy    int64 start offset of each document in that shard
        val.00000.bin ...      the validation split, the same way

Each document is ``[BOS] + tokens + [EOS]``, documents back to back in input order. A shard is
written to a temporary name and renamed, then recorded in the manifest (itself replaced
atomically): a shard the manifest lists is whole, and ``complete`` is true only once every split is.

Nothing here imports torch or ``data.sources`` (which calls ``check_prepared`` from its preflight).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from lmlab.atomic import write_text
from lmlab.data.tokenizers import Tokenizer, load_tokenizer
from lmlab.errors import ConfigError, LmlabError, Problem

FORMAT, VERSION = "lmlab-prepared", 1
MANIFEST_FILE, TOKENIZER_FILE = "manifest.json", "tokenizer.json"
SPLITS = ("train", "val")
PREPARE = "lmlab data prepare SOURCE --out DIR"


def shard_name(split: str, index: int) -> str:
    return f"{split}.{index:05d}.bin"


def index_name(split: str, index: int) -> str:
    return f"{split}.{index:05d}.idx.npy"


def token_dtype(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


def tokenizer_hash(tokenizer: Tokenizer) -> str:
    """sha256 of the canonical JSON of ``tokenizer.to_json()``: equal hashes, equal encodings."""
    canonical = json.dumps(tokenizer.to_json(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def read_manifest(folder: Path) -> dict | None:
    """The manifest of ``folder``, or None when it has none; raises when it is not one of ours."""
    path = Path(folder) / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise LmlabError(f"{path} cannot be read ({err}). Fix: prepare the folder again (delete it and "
                         f"re-run `{PREPARE}`).") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise LmlabError(f"{path} is not an lmlab prepared-data manifest. Fix: point at a folder "
                         f"written by `{PREPARE}`.")
    if manifest.get("version") != VERSION:
        raise LmlabError(f"{path} has format version {manifest.get('version')}; this lmlab reads "
                         f"version {VERSION}. Fix: prepare the data again with this lmlab (`{PREPARE}`).")
    damage = _structure_problem(manifest)
    if damage:
        raise LmlabError(f"{path} is damaged ({damage}). Fix: prepare the folder again (delete it and "
                         f"re-run `{PREPARE}`).")
    return manifest


SHARD_NAME = re.compile(r"(train|val)\.\d{5}\.bin")


def _structure_problem(manifest: dict) -> str:
    """What a manifest edited by hand (or by another tool) lacks that readers rely on; '' if none.
    Shard names must be the names a preparation writes: a reader never opens another path."""
    tok = manifest.get("tokenizer")
    if not isinstance(manifest.get("options"), dict) or not isinstance(manifest.get("files"), list):
        return "no 'options' or 'files'"
    if manifest.get("dtype") not in ("uint16", "uint32"):
        return f"dtype {manifest.get('dtype')!r}"
    if not isinstance(tok, dict) or not all(isinstance(tok.get(k), int) for k in ("vocab_size", "bos_id", "eos_id")) \
            or not isinstance(tok.get("sha256"), str) or not isinstance(tok.get("name"), str):
        return "no tokenizer record"
    if not isinstance(manifest.get("bad_records"), dict) or not isinstance(manifest.get("complete"), bool):
        return "no 'complete' or 'bad_records'"
    splits = manifest.get("splits")
    if not isinstance(splits, dict) or any(not isinstance(splits.get(s), dict) or
                                           not isinstance(splits[s].get("shards"), list) for s in SPLITS):
        return "no 'splits' with their shards"
    for split in SPLITS:
        for shard in splits[split]["shards"]:
            if not isinstance(shard, dict) or not isinstance(shard.get("name"), str) \
                    or not SHARD_NAME.fullmatch(shard["name"]) or not shard["name"].startswith(split + ".") \
                    or shard.get("index") != shard["name"][:-len(".bin")] + ".idx.npy" \
                    or not isinstance(shard.get("tokens"), int) or shard["tokens"] < 0:
                return f"a {split} shard record that no preparation writes: {str(shard)[:80]}"
    return ""


def prepared_vocab_size(folder: str | Path) -> int | None:
    """The vocabulary of the tokenizer ``folder`` was prepared with (None: no readable manifest;
    ``check_prepared`` says why)."""
    try:
        manifest = read_manifest(Path(folder)) if folder else None
    except LmlabError:
        return None
    return int(manifest["tokenizer"]["vocab_size"]) if manifest else None


def write_manifest(folder: Path, manifest: dict) -> None:
    write_text(Path(folder) / MANIFEST_FILE, json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")


def prepare_command(manifest: dict) -> str:
    """The command that wrote the folder: re-running it continues an interrupted preparation."""
    return manifest.get("command") or PREPARE


def shard_size(manifest: dict, shard: dict) -> int:
    return int(shard["tokens"]) * (2 if manifest["dtype"] == "uint16" else 4)


# --------------------------------------------------------------------------- checks


def folder_problems(folder: str | Path, key: str = "data.path") -> list[Problem]:
    """What keeps training from reading prepared ``folder`` (``key``: where the user named it):
    no folder, no manifest, an unfinished preparation, a missing or truncated shard, a tokenizer
    file that is not the one the shards were made with. Reads the manifest; only stats the shards."""
    if not str(folder).strip():
        return [Problem(key, "is empty: data.source=prepared reads the folder written by "
                        "`lmlab data prepare`.", f"set {key}=DIR, after `{PREPARE}`")]
    folder = Path(folder)
    if not folder.is_dir():
        return [Problem(key, f"{folder} does not exist.", f"prepare it first: `{PREPARE.replace('DIR', str(folder))}`")]
    try:
        manifest = read_manifest(folder)
    except LmlabError as err:
        return [Problem(key, str(err).split(" Fix: ")[0], str(err).split(" Fix: ")[-1])]
    if manifest is None:
        return [Problem(key, f"{folder} holds no {MANIFEST_FILE}: it is not a prepared folder (or "
                        "its preparation stopped before writing one).",
                        f"prepare it: `{PREPARE.replace('DIR', str(folder))}`")]
    command = prepare_command(manifest)
    if not manifest.get("complete"):
        done = {s: len(manifest["splits"][s]["shards"]) for s in SPLITS if s in manifest.get("splits", {})}
        return [Problem(key, f"{folder / MANIFEST_FILE}: the preparation did not finish (interrupted? "
                        f"{done.get('train', 0)} training shard(s) written so far).",
                        f"re-run `{command}` to finish it (it continues where it stopped)")]
    problems = []
    for split in SPLITS:
        for shard in manifest["splits"].get(split, {}).get("shards", []):
            path, want = folder / shard["name"], shard_size(manifest, shard)
            size = path.stat().st_size if path.is_file() else None
            if size != want:
                what = "is missing" if size is None else f"has {size:,} bytes, the manifest says {want:,} (truncated or replaced)"
                problems.append(Problem(key, f"shard {path} {what}.", f"re-run `{command}`: it keeps the "
                                        "intact shards and writes this one and those after it again"))
                break  # one per split: the rest would say the same
    problems += tokenizer_file_problems(folder, manifest, key)
    return problems


def tokenizer_file_problems(folder: Path, manifest: dict, key: str) -> list[Problem]:
    path, command = folder / TOKENIZER_FILE, prepare_command(manifest)
    want = manifest["tokenizer"]["sha256"]
    try:
        have = tokenizer_hash(load_tokenizer(path))
    except LmlabError as err:
        return [Problem(key, f"{path}: {str(err).split(' Fix: ')[0]}",
                        f"restore it, or prepare the data again (delete {folder}, re-run `{command}`)")]
    if have != want:
        return [Problem(key, f"{path} is not the tokenizer the shards were encoded with (sha256 "
                        f"{have[:12]}, the manifest says {want[:12]}).",
                        f"restore that tokenizer.json, or prepare the data again (delete {folder}, "
                        f"re-run `{command}`)")]
    return []


def tokenizer_config_problems(manifest: dict, tcfg, folder: Path) -> list[Problem]:
    """``data.tokenizer`` set to something else than the tokenizer the shards were made with."""
    made = manifest["tokenizer"]
    again = (f"prepare the data again with that tokenizer (`lmlab data prepare SOURCE --out NEW_DIR "
             f"--tokenizer-path {tcfg.path or 'TOKENIZER'}`)")
    if tcfg.path:
        try:
            have = tokenizer_hash(load_tokenizer(Path(tcfg.path), tcfg))
        except LmlabError as err:
            return [Problem("data.tokenizer.path", str(err).split(" Fix: ")[0], "point it at a tokenizer "
                            f"file, or remove it to use {folder / TOKENIZER_FILE}")]
        if have != made["sha256"]:
            return [Problem("data.tokenizer.path", f"{tcfg.path} (sha256 {have[:12]}) is not the "
                            f"tokenizer {folder} was prepared with ({made['name']}, {made['vocab_size']:,} "
                            f"ids, sha256 {made['sha256'][:12]}).",
                            f"remove data.tokenizer.path (training uses {folder / TOKENIZER_FILE}), or {again}")]
        return []
    problems = []
    if tcfg.name != made["name"]:
        problems.append(Problem("data.tokenizer.name", f"{tcfg.name} is not the tokenizer {folder} was "
                                f"prepared with ({made['name']}, {made['vocab_size']:,} ids).",
                                f"set data.tokenizer.name={made['name']}, or {again}"))
    elif tcfg.vocab_size and tcfg.vocab_size != made["vocab_size"]:
        problems.append(Problem("data.tokenizer.vocab_size", f"{tcfg.vocab_size:,} is not the vocabulary "
                                f"of the tokenizer {folder} was prepared with ({made['vocab_size']:,} ids).",
                                f"set data.tokenizer.vocab_size={made['vocab_size']} (or 0), or {again}"))
    return problems


def check_prepared(cfg, validation_enabled: bool = False) -> list[Problem]:
    """Preflight of ``data.source=prepared`` (``cfg``: a DataConfig; ``cfg.path`` is the folder):
    the folder and its shards (``folder_problems``), ``data.tokenizer`` against the tokenizer the
    shards were made with, and, with validation on, a validation split to read. Stats files and
    reads the manifest and tokenizer only."""
    problems = folder_problems(cfg.path)
    if problems:
        return problems
    folder = Path(cfg.path)
    manifest = read_manifest(folder)
    problems += tokenizer_config_problems(manifest, cfg.tokenizer, folder)
    if validation_enabled and not manifest["splits"].get("val", {}).get("shards"):
        problems.append(Problem("data.path", f"{folder} has no validation split (its source had no "
                                "validation files), so validation would measure nothing.",
                                "prepare it with validation data (a Lingua source's *.val.jsonl, or "
                                "--val PATH), or set eval.validation.enabled=false"))
    return problems


def open_prepared(folder: str | Path, key: str = "data.path") -> dict:
    """The manifest of a prepared folder fit to train on; raises ``ConfigError`` with every problem."""
    problems = folder_problems(folder, key)
    if problems:
        raise ConfigError(problems, source=str(folder))
    return read_manifest(Path(folder))


def source_changes(manifest: dict) -> list[str]:
    """The source files that changed (size or mtime) since they were prepared; a file that is gone
    is not one (sources are often removed once prepared)."""
    changed = []
    for item in manifest.get("files", []):
        try:
            st = os.stat(item["path"])
        except OSError:
            continue
        if st.st_size != item["size"]:
            changed.append(f"{item['path']} changed size from {item['size']:,} to {st.st_size:,} bytes")
        elif st.st_mtime_ns != item["mtime_ns"]:
            changed.append(f"{item['path']} was modified (its mtime changed)")
    return changed


def prepared_warnings(cfg) -> list[Problem]:
    """For preflight's warnings (training goes on): source files changed since they were prepared.
    The shards are still what was prepared, so training on them is valid; only continuing a
    preparation would mix versions (``lmlab data prepare`` refuses that)."""
    try:
        manifest = read_manifest(Path(cfg.path)) if str(cfg.path).strip() and Path(cfg.path).is_dir() else None
    except LmlabError:
        return []  # check_prepared reports it
    if manifest is None:
        return []
    return [Problem("data.path", f"{change} since {cfg.path} was prepared; training reads the shards as "
                    "they were prepared.", "to train on the source as it is now, prepare it again into a "
                    "new folder (`lmlab data prepare SOURCE --out NEW_DIR`)") for change in source_changes(manifest)]
