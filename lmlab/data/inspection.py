"""``lmlab data inspect DIR``: what a prepared folder holds (manifest, token counts, tokenizer, bad
records, a decoded sample), and with ``verify`` whether every shard still has its recorded sha256."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from lmlab.data import manifest as mf
from lmlab.data.prepare_work import SHOWN_BAD
from lmlab.data.tokenizers import load_tokenizer
from lmlab.errors import LmlabError
from lmlab.humanize import si


def describe(folder: str | Path, documents: int = 2, chars: int = 300, verify: bool = False) -> str:
    """``lmlab data inspect``: the manifest in a few lines, the problems a training would meet, and
    the first ``documents`` training documents decoded (``chars`` characters each)."""
    folder = Path(folder)
    if documents < 0 or chars < 0:
        raise LmlabError(f"--docs {documents} --chars {chars}: both must be >= 0. Fix: e.g. --docs 2 --chars 300.")
    if not folder.exists():
        raise LmlabError(f"{folder} does not exist. Fix: give the folder `lmlab data prepare SOURCE --out DIR` "
                         "wrote to.")
    manifest = mf.read_manifest(folder) if folder.is_dir() else None
    if manifest is None:
        raise LmlabError(f"{folder} is not a prepared folder (no {mf.MANIFEST_FILE}). Fix: prepare it with "
                         f"`{mf.PREPARE.replace('DIR', str(folder))}`, or give the folder --out wrote to.")
    opts, tok = manifest["options"], manifest["tokenizer"]
    state = "complete" if manifest["complete"] else \
        f"INCOMPLETE (interrupted?): re-run `{mf.prepare_command(manifest)}` to finish"
    lines = [f"prepared data {folder}: {state}",
             f"  command: {mf.prepare_command(manifest)}",
             f"  source: {opts['source']}" + (f" (validation: {opts['val']})" if opts["val"] else "")]
    for split in mf.SPLITS:
        files = [f for f in manifest["files"] if f["split"] == split]
        if files:
            lines.append(f"  {split} files: {len(files)}, {si(sum(f['size'] for f in files), 'B')}")
    lines += [f"  tokenizer: {tok['name']}, {tok['vocab_size']:,} ids, BOS {tok['bos_id']} EOS {tok['eos_id']}, "
              f"sha256 {tok['sha256'][:16]} ({folder / mf.TOKENIZER_FILE})",
              f"  dtype: {manifest['dtype']}, each document [BOS] + tokens + [EOS]"]
    for split in mf.SPLITS:
        entry = manifest["splits"][split]
        lines.append(f"  {split}: {len(entry['shards'])} shard(s), {entry.get('tokens', 0):,} tokens "
                     f"({entry.get('text_tokens', 0):,} text tokens), {entry.get('documents', 0):,} documents")
    bad = manifest["bad_records"]
    lines.append(f"  bad records skipped: {bad['count']:,}")
    lines += [f"    {record}" for record in bad["shown"][:10]]
    if bad["count"] > 10:
        lines.append(f"    ... and {bad['count'] - 10:,} more (manifest.json lists up to {SHOWN_BAD} per shard)")
    problems = mf.folder_problems(folder, str(folder)) if manifest["complete"] else []
    lines += [f"  problem: {p.message} Fix: {p.fix}." for p in problems]
    lines += [f"  note: {change} since it was prepared" for change in mf.source_changes(manifest)]
    if verify:
        lines += _verify(folder, manifest)
    if not problems:
        try:
            lines += _samples(folder, manifest, documents, chars)
        except (OSError, ValueError, EOFError, LmlabError) as err:
            lines.append(f"  problem: the first training shard or its document index cannot be read "
                         f"({str(err).splitlines()[0][:160]}). Fix: prepare the data again (delete {folder}, "
                         f"re-run `{mf.prepare_command(manifest)}`).")
    return "\n".join(lines)


def _verify(folder: Path, manifest: dict) -> list[str]:
    bad = []
    for split in mf.SPLITS:
        for shard in manifest["splits"][split]["shards"]:
            digest = hashlib.sha256()
            with open(folder / shard["name"], "rb") as handle:
                for block in iter(lambda: handle.read(1 << 24), b""):
                    digest.update(block)
            if digest.hexdigest() != shard["sha256"]:
                bad.append(f"  problem: {folder / shard['name']}: its sha256 is not the manifest's (damaged). "
                           f"Fix: delete it and re-run `{mf.prepare_command(manifest)}`.")
    return bad or ["  verified: every shard's sha256 matches the manifest"]


def _samples(folder: Path, manifest: dict, documents: int, chars: int) -> list[str]:
    shards = [s for s in manifest["splits"]["train"]["shards"] if s["tokens"] > 0]
    if not shards or documents <= 0:
        return []
    tokenizer = load_tokenizer(folder / mf.TOKENIZER_FILE)
    first = shards[0]
    tokens = np.memmap(folder / first["name"], dtype="<u2" if manifest["dtype"] == "uint16" else "<u4",
                       mode="r", shape=(first["tokens"],))
    starts = list(np.load(folder / first["index"])) + [first["tokens"]]
    lines = []
    for d in range(min(documents, len(starts) - 1)):
        ids = tokens[starts[d]:starts[d + 1]]
        text = tokenizer.decode(int(i) for i in ids)
        shown = text[:chars] + (" ..." if len(text) > chars else "")
        lines.append(f"  train document {d} ({len(ids):,} tokens, ids {', '.join(str(int(i)) for i in ids[:8])}"
                     f"{' ...' if len(ids) > 8 else ''}):\n    {shown!r}")
    return lines
