"""What the data yields, said before training and refused when it is nothing.

A source whose every ``text`` is empty trains on BOS/EOS alone; validation text shorter than one
window gives no validation windows, so every validation measures nothing. Both used to pass
silently. The data phase now states, per source, how many text tokens and ``seq_len + 1`` windows
training and validation get, and raises naming the source and its files when that is zero.

Training sources are streamed, possibly larger than anyone wants to tokenize up front: their
documents are read in file order up to ``SAMPLE_BYTES``, and past that only until the first token.
A source read to its end gets exact numbers; a larger one an estimate scaled by its bytes. The
reading here is silent about bad records (``DocumentFile.peek``): they are skipped and reported
when training actually reaches them.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from lmlab.data.sources import Source
from lmlab.data.tokenizers import Tokenizer, encode_batch
from lmlab.errors import LmlabError
from lmlab.humanize import si

SAMPLE_BYTES = 1 << 20  # per training source
SHOWN_FILES = 3


@dataclass
class Yield:
    role: str  # training | validation
    source: str
    files: list[str]
    bytes: int
    documents: int
    tokens: int | None  # text tokens, without BOS/EOS (None: fixed sequences)
    windows: int  # seq_len + 1 windows (training: per pass over the source), or sequences
    window: int  # tokens per window
    exact: bool  # False: estimated from the first ``sampled`` bytes
    sampled: int = 0
    note: str = ""
    read: bool = True  # False: a validation source that eval.validation.max_steps left unread

    def line(self) -> str:
        if self.tokens is None:  # fixed sequences (WikiText-2)
            return (f"data: {self.role} {self.source} ({self.files[0]}): {self.windows:,} sequences "
                    f"of {self.window} tokens")
        about = "" if self.exact else "~"
        files = f"{len(self.files)} file{'s' if len(self.files) != 1 else ''}"
        if not self.read:
            return (f"data: {self.role} source {self.source}: {files}, {si(self.bytes, 'B')}: not read "
                    "(eval.validation.max_steps was reached before it)")
        per = " per pass" if self.role == "training" else ""
        how = "" if self.exact else f", estimated from its first {si(self.sampled, 'B')}"
        return (f"data: {self.role} source {self.source}: {files}, {si(self.bytes, 'B')} -> "
                f"{about}{self.tokens:,} tokens, {about}{self.windows:,} windows of {self.window} "
                f"tokens{per}{how}{self.note}")

    def record(self) -> dict:
        """The ``data_yield`` event's fields."""
        fields = asdict(self)
        fields["files"] = fields["files"][:SHOWN_FILES * 4]
        return fields


def _names(files: list[str]) -> str:
    shown = ", ".join(files[:SHOWN_FILES])
    return shown + (f" and {len(files) - SHOWN_FILES} more" if len(files) > SHOWN_FILES else "")


def _file_bytes(source: Source) -> int:
    return sum(f.size for f in source.files)


def training_yield(source: Source, tokenizer: Tokenizer, seq_len: int, key: str,
                   sample_bytes: int = SAMPLE_BYTES) -> Yield:
    """Text tokens and windows per pass of one training source; raises when it has no token at all
    (``key``: the config key that names the source, for the message)."""
    total, read, docs, tokens, bad = _file_bytes(source), 0, 0, 0, 0
    complete = True
    batch: list[str] = []
    for doc_file in source.files:
        for record in doc_file.records():
            if len(batch) >= 256 or read >= sample_bytes:
                tokens += sum(len(ids) for ids in encode_batch(tokenizer, batch))
                batch = []
            if read >= sample_bytes and tokens:  # enough for an estimate (and not zero)
                complete = False
                break
            text = doc_file.peek(record)
            read += len(record.raw)
            if text is None:
                bad += 1
                continue
            docs += 1
            batch.append(text)
        if not complete:
            break
    tokens += sum(len(ids) for ids in encode_batch(tokenizer, batch))
    files = [f.name for f in source.files]
    if tokens == 0:
        why = ("it holds no document that can be read" if not docs else
               "its one document has empty text" if docs == 1 else f"its {docs:,} documents have empty text")
        if bad:
            why += f" ({bad:,} bad record{'s' if bad != 1 else ''})"
        raise LmlabError(
            f"{key}: training source {source.name!r} ({_names(files)}) yields 0 tokens: {why}, so "
            f"training would see only the BOS/EOS markers. Fix: put the text in the 'text' fields "
            f"(`lmlab check CONFIG --data` counts empty and bad lines per source), or remove the source.")
    scale = total / read if not complete and read else 1.0
    est_tokens, est_docs = round(tokens * scale), round(docs * scale)
    windows = max(0, (est_tokens + 2 * est_docs - 1) // seq_len)  # consecutive windows share a token
    return Yield("training", source.name, files, total, est_docs, est_tokens, windows, seq_len + 1,
                 complete, read)


def validation_yields(sources: list[Source], tally: dict, seq_len: int) -> list[Yield]:
    """Per source, what ``pipeline.validation_windows`` built (its ``tally``); raises naming the files
    when the whole set, or a source read to its end, gives no window."""
    out = []
    for source in sources:
        files = [f.name for f in source.files]
        count = tally.get(source.name)
        if count is None:
            out.append(Yield("validation", source.name, files, _file_bytes(source), 0, 0, 0, seq_len + 1,
                             True, read=False))
            continue
        note = "" if count["complete"] else " (eval.validation.max_steps reached here)"
        out.append(Yield("validation", source.name, files, _file_bytes(source), 0, count["tokens"],
                         count["windows"], seq_len + 1, True, note=note))
    # each read to its end (a source cut by max_steps has a window)
    empty = [y for y in out if y.windows == 0 and y.read]
    if empty or not out:
        what = "yields" if empty else "has no source, so it yields"
        y = empty[0] if empty else Yield("validation", "-", [], 0, 0, 0, 0, seq_len + 1, True)
        alone = "" if len(out) > len(empty) else ", so validation would measure nothing"
        raise LmlabError(
            f"validation source {y.source!r} ({_names(y.files) or 'no files'}) {what} 0 windows of "
            f"{y.window} tokens: it holds {y.tokens:,} text tokens, less than one window (data.seq_len="
            f"{seq_len}){alone}. Fix: add validation text (at least {y.window} tokens), lower "
            f"data.seq_len, or set eval.validation.enabled=false.")
    return out


def sequence_yield(role: str, split: str, path: Path | None, sequences: int, seq_len: int) -> Yield:
    """WikiText-2: the fixed sequences of one split; raises naming the file when there is none."""
    where = str(path) if path is not None else f"Hugging Face wikitext-2-raw-v1 {split}"
    if sequences == 0:
        key = "data.train_split" if role == "training" else "data.val_split"
        raise LmlabError(
            f"WikiText-2 {role} split {split!r} ({where}) yields 0 sequences: no line has at least "
            f"5 words. Fix: point data.path at a complete copy of the split, or set {key} to another "
            "split.")
    return Yield(role, f"split {split}", [where], 0, sequences, None, sequences, seq_len, True)
