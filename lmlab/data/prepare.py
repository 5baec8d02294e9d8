"""``lmlab data prepare``: a corpus tokenized once into memory-mapped token shards (``manifest.py``).

The work is a fixed list of units (``prepare_inputs``), tokenized by N processes and written in
input order: a shard closes at the first unit boundary after ``shard_tokens`` tokens, so what lands
in which shard depends on the input and the options only, never on N or on interruptions.

Each shard is written under a temporary name, renamed, then recorded in the manifest. Interrupted
(Ctrl-C, kill, a crash) and run again with the same command, a preparation keeps the shards the
manifest records (checking their sizes) and redoes the rest; the result is byte for byte that of an
uninterrupted run. A source file that changed since (size or mtime) is refused: the shards would
mix two versions of it. Bad records are skipped and counted as training counts them (file:line,
``--max-bad-records``), and listed in the manifest.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from lmlab.data import manifest as mf
from lmlab.data.badrecords import BadRecords
from lmlab.data.prepare_inputs import InputFile, Unit, find_inputs, plan_units, read_unit, unit_bytes_of
from lmlab.data.prepare_target import LOCK_FILE, check_out, locked, make_out, ours, refuse_out_in_source
from lmlab.data.prepare_work import SHOWN_BAD, Piece, Runner, Shard, cpu_count
from lmlab.data.tokenizers import (TOKENIZERS, Tokenizer, TokenizerConfig, check as check_tokenizer,
                                   load_tokenizer, save_tokenizer, train_tokenizer)
from lmlab.errors import ConfigError, LmlabError, Problem, did_you_mean
from lmlab.humanize import si

FLAGS = {"name": "--tokenizer", "path": "--tokenizer-path", "vocab_size": "--vocab-size", "bos": "--bos",
         "eos": "--eos"}


@dataclass
class PrepareOptions:
    source: str
    out: str
    val: str = ""  # validation data (a file or folder) for a source without its own
    split: str = "train"  # Hugging Face dataset splits
    val_split: str = "validation"
    text_field: str = "text"
    tokenizer: str = ""  # bytes (default), bpe, word, ... ('' with tokenizer_path: the file's kind)
    tokenizer_path: str = ""
    vocab_size: int = 0
    bos: str = ""  # hf / sentencepiece / tiktoken: the BOS / EOS tokens (default: the file's own)
    eos: str = ""
    shard_tokens: int = 100_000_000
    workers: int = 0  # 0: one per CPU
    max_bad_records: int | None = 100
    command: str = ""  # the command line, recorded so that an unfinished folder says how to finish

    def unit_bytes(self) -> int:
        """Input bytes per unit of work: a shard overshoots shard_tokens by one unit at most."""
        return int(min(4 << 20, max(1 << 10, self.shard_tokens // 8)))

    def recorded(self) -> dict:
        """What must match when a preparation continues (not workers, budget or the command)."""
        return {"source": str(Path(self.source).resolve()),
                "val": str(Path(self.val).resolve()) if self.val else "",
                "split": self.split, "val_split": self.val_split, "text_field": self.text_field,
                "tokenizer": self.tokenizer, "tokenizer_path": str(Path(self.tokenizer_path).resolve())
                if self.tokenizer_path else "", "vocab_size": self.vocab_size, "bos": self.bos, "eos": self.eos,
                "shard_tokens": self.shard_tokens, "unit_bytes": self.unit_bytes()}


def prepare(opts: PrepareOptions, on_shard: Callable[[str, int], None] | None = None,
            progress: bool | None = None, log: Callable[[str], None] = print) -> dict:
    """Prepare (or finish preparing) ``opts.out``; returns the manifest. ``on_shard(split, index)``
    runs after each shard is recorded (tests interrupt there)."""
    try:
        return _prepare(opts, on_shard, progress, log)
    except OSError as err:  # a full disk, a name too long, a source file removed while it was read
        where = err.filename or opts.out
        raise LmlabError(f"{where}: {err.strerror or err}. Fix: give paths that exist and can be read, an "
                         "--out on a disk with free space; shards already written are kept, and the same "
                         "command continues from them.") from None


def _utf8_names(opts: PrepareOptions, files: list[InputFile]) -> None:
    """The manifest records every path as UTF-8 JSON: a name that is not UTF-8 is refused up front."""
    named = [("--out", opts.out), ("SOURCE", opts.source), ("--val", opts.val),
             ("--tokenizer-path", opts.tokenizer_path)] + [("source file", f.path) for f in files]
    for flag, name in named:
        try:
            str(name).encode("utf-8")
        except UnicodeEncodeError:
            shown = str(name).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            raise LmlabError(f"{flag} {shown}: its name holds bytes that are not UTF-8, which the manifest "
                             "cannot record. Fix: rename it with a UTF-8 name.") from None


def _prepare(opts: PrepareOptions, on_shard, progress, log) -> dict:
    _check_numbers(opts)
    _utf8_names(opts, [])
    out = Path(opts.out)
    fresh = check_out(out)
    # everything that can be refused from the inputs alone is, before anything is created at --out
    files = find_inputs(opts.source, opts.val, opts.split, opts.val_split, opts.text_field)
    _refuse_overlap(files)
    _utf8_names(opts, files)
    refuse_out_in_source(out, {"SOURCE": opts.source, "--val": opts.val})
    plan = plan_units(files, opts.unit_bytes())
    given = None
    if fresh:
        tokenizer_config(opts)
        if opts.tokenizer_path:  # a file that is not a tokenizer: refused before --out exists
            given = _new_tokenizer(opts, files, plan)
    make_out(out)
    try:
        with locked(out):
            check_out(out)  # again, under the lock (another process may have written there meanwhile)
            manifest = mf.read_manifest(out)
            if manifest is None:
                tokenizer = given or _new_tokenizer(opts, files, plan)
                save_tokenizer(tokenizer, out / mf.TOKENIZER_FILE)
                manifest = _new_manifest(opts, files, load_tokenizer(out / mf.TOKENIZER_FILE))
                mf.write_manifest(out, manifest)
            else:
                _check_continue(out, manifest, opts, files)
            manifest["command"] = opts.command or manifest.get("command", "")
            _keep_intact(out, manifest, plan)
            if manifest["complete"]:
                log(f"{out} is already prepared (complete): nothing to do.")
                return manifest
            _Writer(out, manifest, files, plan, opts, on_shard, log).run(progress)
            _refuse_no_text(out, manifest, opts)
            return manifest
    except OSError as err:  # a full disk, a source file removed or unreadable while it was read
        where = err.filename or out
        raise LmlabError(f"{where}: {err.strerror or err}. The shards written so far are kept in {out}. "
                         f"Fix: free space / restore the file, then run the same command again to "
                         "continue.") from None


def _check_numbers(opts: PrepareOptions) -> None:
    if opts.workers < 0:
        raise LmlabError(f"--workers {opts.workers}: must be >= 0 (0: one process per CPU). Fix: e.g. "
                         "--workers 4, or drop --workers.")
    if opts.shard_tokens < 1:
        raise LmlabError(f"--shard-tokens {opts.shard_tokens}: must be >= 1. Fix: e.g. --shard-tokens "
                         "100000000 (the default), or drop --shard-tokens.")
    if opts.vocab_size < 0:
        raise LmlabError(f"--vocab-size {opts.vocab_size}: must be >= 0. Fix: e.g. --vocab-size 32000, "
                         "or drop --vocab-size.")


def _refuse_overlap(files: list[InputFile]) -> None:
    train = {f.path for f in files if f.split == "train"}
    both = [f.path for f in files if f.split == "val" and f.path in train]
    if both:
        raise LmlabError(f"{both[0]} is both a training and a validation file: validation would measure "
                         "memorisation. Fix: give --val data that is not part of the training source.")


def tokenizer_config(opts: PrepareOptions) -> TokenizerConfig:
    """The tokenizer options as a ``data.tokenizer`` config; refuses what it would refuse."""
    name = opts.tokenizer or ("" if opts.tokenizer_path else "bytes")
    if name and name not in TOKENIZERS:
        raise LmlabError(f"--tokenizer {name} is not one of {', '.join(TOKENIZERS)}.{did_you_mean(name, TOKENIZERS)} "
                         "Fix: --tokenizer NAME with one of those.")
    fields = {f.name for f in dataclasses.fields(TokenizerConfig)}
    given = {"name": name or "bpe", "vocab_size": opts.vocab_size, "path": opts.tokenizer_path,
             "bos": opts.bos, "eos": opts.eos}
    unknown = [FLAGS[k] for k, v in given.items() if v and k not in fields]
    if unknown:
        raise LmlabError(f"{', '.join(unknown)} is not supported by this lmlab. Fix: drop it.")
    cfg = TokenizerConfig(**{k: v for k, v in given.items() if k in fields})
    problems = [Problem(FLAGS.get(p.key.rsplit(".", 1)[-1], p.key), p.message,
                        _flags(p.fix)) for p in check_tokenizer(cfg)]
    if problems:
        raise ConfigError(problems, source="lmlab data prepare")
    return cfg


def _flags(text: str) -> str:
    for key, flag in FLAGS.items():
        text = text.replace(f"data.tokenizer.{key}=", f"{flag} ").replace(f"data.tokenizer.{key}", flag)
    return text


def _new_tokenizer(opts: PrepareOptions, files: list[InputFile], plan: dict) -> Tokenizer:
    cfg = tokenizer_config(opts)
    if opts.tokenizer_path:
        tokenizer = load_tokenizer(Path(opts.tokenizer_path), cfg) if opts.tokenizer else \
            load_tokenizer(Path(opts.tokenizer_path))
        if opts.tokenizer and opts.tokenizer != tokenizer.name:
            raise LmlabError(f"--tokenizer-path {opts.tokenizer_path} is a {tokenizer.name} tokenizer, not "
                             f"{opts.tokenizer}. Fix: drop --tokenizer, or give a {opts.tokenizer} file.")
        return tokenizer

    def texts():
        for unit in plan["train"]:
            yield from (t for t in read_unit(files[unit.file], unit, opts.text_field).texts if t is not None)
    return train_tokenizer(cfg, texts())


def _new_manifest(opts: PrepareOptions, files: list[InputFile], tokenizer: Tokenizer) -> dict:
    return {"format": mf.FORMAT, "version": mf.VERSION, "complete": False, "command": opts.command,
            "options": opts.recorded(), "dtype": mf.token_dtype(tokenizer.vocab_size),
            "tokenizer": {"name": tokenizer.name, "vocab_size": tokenizer.vocab_size,
                          "bos_id": tokenizer.bos_id, "eos_id": tokenizer.eos_id,
                          "sha256": mf.tokenizer_hash(tokenizer), "file": mf.TOKENIZER_FILE},
            "files": [asdict(f) for f in files],
            "splits": {s: {"shards": [], "done": False} for s in mf.SPLITS},
            "bad_records": {"count": 0, "shown": []}}


def _check_continue(out: Path, manifest: dict, opts: PrepareOptions, files: list[InputFile]) -> None:
    """Refuse to continue what would mix: other options, another tokenizer, changed source files."""
    again = f"give the options it was started with (`{mf.prepare_command(manifest)}`), or prepare into a " \
            f"new --out (or delete {out}) to start over"
    was, now = manifest["options"], opts.recorded()
    differ = [k for k in now if was.get(k) != now[k]]
    if differ:
        shown = "; ".join(f"{k}: {was.get(k)!r} then, {now[k]!r} now"
                          for k in differ if k != "unit_bytes" or differ == [k])  # derived from shard_tokens
        raise LmlabError(f"{out} was prepared with other options ({shown}). Fix: {again}.")
    problems = mf.tokenizer_file_problems(out, manifest, "--out")
    if problems:
        raise LmlabError(f"{problems[0].message} Fix: {problems[0].fix}.")
    before = {f["path"]: f for f in manifest["files"]}
    for f in files:
        old = before.pop(f.path, None)
        if old is None:
            raise LmlabError(f"{f.path} was not part of the source when {out} was started: continuing "
                             f"would mix two versions of the source. Fix: {again}.")
        if (old["size"], old["mtime_ns"]) != (f.size, f.mtime_ns):
            what = f"changed size from {old['size']:,} to {f.size:,} bytes" if old["size"] != f.size else \
                "was modified (its mtime changed)"
            raise LmlabError(f"source file {f.path} {what} since {out} was started: continuing would mix "
                             f"shards of two versions of it. Fix: prepare into a new --out (or delete {out}) "
                             "to start over from the source as it is now.")
    if before:
        raise LmlabError(f"{next(iter(before))} is gone from the source since {out} was started. Fix: {again}.")


def _refuse_no_text(out: Path, manifest: dict, opts: PrepareOptions) -> None:
    """A source whose training split has no text token (every record bad, blank or empty) is not
    text to train on: said with exit 2, not reported as prepared."""
    train = manifest["splits"]["train"]
    if train.get("text_tokens", 0) > 0:
        return
    bad = manifest["bad_records"]
    shown = f" (e.g. {bad['shown'][0]})" if bad["shown"] else ""
    raise LmlabError(f"SOURCE {opts.source} holds no training text: {train.get('documents', 0):,} document(s) "
                     f"with text, {bad['count']:,} bad record(s) skipped{shown}. {out} holds nothing to train "
                     f"on. Fix: point at the text itself (jsonl lines with a {opts.text_field!r} string, plain "
                     f"text, or a dataset column via --text-field), then prepare into a new --out.")


def _keep_intact(out: Path, manifest: dict, plan: dict) -> None:
    """Drop the recorded shards from the first missing or damaged one on (they are redone), and
    files no shard records (an interrupted run's temporary or unrecorded shards)."""
    for split in mf.SPLITS:
        entry = manifest["splits"][split]
        shards, first_unit = entry["shards"], 0
        for i, shard in enumerate(shards):
            path = out / shard["name"]
            ok = path.is_file() and path.stat().st_size == mf.shard_size(manifest, shard) and \
                (out / shard["index"]).is_file() and shard["units"][0] == first_unit
            if not ok:
                del shards[i:]
                entry["done"] = manifest["complete"] = False
                break
            first_unit = shard["units"][1]
    keep = {s[k] for split in mf.SPLITS for s in manifest["splits"][split]["shards"] for k in ("name", "index")}
    for path in out.iterdir():
        if ours(path.name) and path.name not in keep and path.name not in (mf.TOKENIZER_FILE, LOCK_FILE):
            path.unlink(missing_ok=True)
    _summarize(manifest)
    mf.write_manifest(out, manifest)


def _summarize(manifest: dict) -> None:
    """Totals per split and per source file, and the bad records, from the recorded shards."""
    per_file = [{"shards": [], "bytes_done": 0} for _ in manifest["files"]]
    bad_count, shown = 0, []
    for split in mf.SPLITS:
        entry = manifest["splits"][split]
        entry["tokens"] = sum(s["tokens"] for s in entry["shards"])
        entry["documents"] = sum(s["documents"] for s in entry["shards"])
        entry["text_tokens"] = entry["tokens"] - 2 * entry["documents"]
        for shard in entry["shards"]:
            for index, (_, nbytes) in shard["files"].items():
                per_file[int(index)]["shards"].append(shard["name"])
                per_file[int(index)]["bytes_done"] += nbytes
            bad_count += shard["bad_count"]
            shown += [f"{manifest['files'][f]['path']}:{line}: {why}" for f, line, why in shard["bad"]]
    for item, done in zip(manifest["files"], per_file):
        item.update(done)
    manifest["bad_records"] = {"count": bad_count, "shown": shown[:SHOWN_BAD]}


class _Writer:
    """The units not yet in a recorded shard, tokenized and written in order, shard by shard."""

    def __init__(self, out, manifest, files, plan, opts: PrepareOptions, on_shard, log):
        self.out, self.manifest, self.files, self.plan, self.opts = out, manifest, files, plan, opts
        self.on_shard, self.log = on_shard or (lambda split, index: None), log
        self.bad = BadRecords(opts.max_bad_records, self._report_bad, setting="--max-bad-records")
        recorded = [[manifest["files"][f]["path"], line, why] for s in mf.SPLITS
                    for shard in manifest["splits"][s]["shards"] for f, line, why in shard["bad"]]
        self.bad.load_state_dict({"count": manifest["bad_records"]["count"], "records": recorded})
        self.next_line = [1] * len(files)  # where each file's next unit starts, in lines (rows)
        for s in mf.SPLITS:
            for shard in manifest["splits"][s]["shards"]:
                for f, (lines, _) in shard["files"].items():
                    self.next_line[int(f)] += lines
        self.bar = None

    def _report_bad(self, record, message) -> None:
        if message is not None:
            shown = self.bar is not None and not self.bar.disable
            (self.bar.write if shown else self.log)(f"warning: {message}")

    def run(self, progress: bool | None) -> None:
        todo = {s: self.manifest["splits"][s]["shards"][-1]["units"][1]
                if self.manifest["splits"][s]["shards"] else 0 for s in mf.SPLITS}
        units = [(s, u) for s in mf.SPLITS for u in self.plan[s][todo[s]:]]
        done_bytes = sum(f["bytes_done"] for f in self.manifest["files"])
        total = sum(unit_bytes_of(self.files[u.file], u) for s in mf.SPLITS for u in self.plan[s])
        runner = Runner(self.opts.workers or cpu_count(), (str(self.out / mf.TOKENIZER_FILE), self.files,
                                                            self.opts.text_field, self.manifest["dtype"]))
        shard = None
        try:  # the pool is forked before the bar starts its monitor thread
            self.bar = tqdm(total=total, initial=done_bytes, unit="B", unit_scale=True, unit_divisor=1024,
                            desc=f"preparing {self.out.name}", disable=None if progress is None else not progress)
            started, tokens = time.perf_counter(), 0
            current = {s: len(self.manifest["splits"][s]["shards"]) for s in mf.SPLITS}
            for unit, piece in runner.results([u for _, u in units]):
                if shard is not None and shard.name.split(".")[0] != unit.split:
                    shard = self._close(shard, current)
                if shard is None:
                    shard = Shard(self.out, unit.split, current[unit.split], todo[unit.split])
                bad = self._bad(unit, piece)
                shard.add(unit, piece, bad)
                todo[unit.split] += 1
                tokens += len(piece.tokens)
                self.bar.update(piece.nbytes)
                self.bar.set_postfix_str(f"{si(tokens / max(time.perf_counter() - started, 1e-9), 'tokens/s')}")
                if shard.tokens >= self.opts.shard_tokens:
                    shard = self._close(shard, current)
            if shard is not None:
                shard = self._close(shard, current)
        finally:
            runner.close()
            if shard is not None:
                shard.abort()
            self.bar.close()
        for split in mf.SPLITS:
            self.manifest["splits"][split]["done"] = True
        self.manifest["complete"] = True
        _summarize(self.manifest)
        mf.write_manifest(self.out, self.manifest)

    def _bad(self, unit: Unit, piece: Piece) -> list:
        first = self.next_line[unit.file]
        self.next_line[unit.file] += piece.lines
        path = self.files[unit.file].path
        for number, why in piece.bad:
            self.bad.add(path, first + number, why)
        if self.bad.exceeded:
            written = sum(len(self.manifest["splits"][s]["shards"]) for s in mf.SPLITS)
            raise self.bad.error(f"Stopped with {written} shard(s) written to {self.out}; fixing the lines "
                                 "changes the source, so prepare into a new --out then.")
        return [[unit.file, first + number, why] for number, why in piece.bad]

    def _close(self, shard: Shard, current: dict) -> None:
        split = shard.name.split(".")[0]
        if shard.tokens == 0 and not shard.bad_count:  # units without a single record: nothing to keep
            shard.abort()
            return None
        self.manifest["splits"][split]["shards"].append(shard.close())
        current[split] += 1
        _summarize(self.manifest)
        mf.write_manifest(self.out, self.manifest)
        self.on_shard(split, current[split] - 1)
        return None
