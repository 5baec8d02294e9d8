"""``lmlab data prepare SOURCE --out DIR``: tokenize a corpus once into memory-mapped token shards
(train with ``data.source=prepared data.path=DIR``); ``lmlab data inspect DIR``: what a prepared
folder holds, with a decoded sample.

Ctrl-C stops a preparation with exit 130 (SIGTERM: 143) and keeps every shard already written:
running the same command again continues from there, with the same result as an uninterrupted run.
"""
from __future__ import annotations

import os
import signal
import sys
import time

from lmlab.data.inspection import describe
from lmlab.data.prepare import PrepareOptions, prepare
from lmlab.errors import LmlabError
from lmlab.humanize import duration, si

INTERRUPTED_EXIT = 130  # 128 + SIGINT, as shells report a command stopped by Ctrl-C
PAUSE_AFTER = "LMLAB_PREPARE_PAUSE_AFTER"  # tests: wait for a signal once this many shards are written


def run(args) -> int:
    if args.data_command == "inspect":
        try:
            print(describe(args.folder, args.docs, args.chars, args.verify))
        except OSError as err:  # a name too long, a folder that cannot be read
            raise LmlabError(f"{err.filename or args.folder}: {err.strerror or err}. Fix: give the folder "
                             "`lmlab data prepare SOURCE --out DIR` wrote to.") from None
        return 0
    return _prepare(args)


def _prepare(args) -> int:
    command = " ".join(["lmlab", *args.argv])
    opts = PrepareOptions(
        source=args.source, out=args.out, val=args.val, split=args.split, val_split=args.val_split,
        text_field=args.text_field, tokenizer=args.tokenizer, tokenizer_path=args.tokenizer_path,
        vocab_size=args.vocab_size, bos=args.bos, eos=args.eos, shard_tokens=args.shard_tokens,
        workers=args.workers, max_bad_records=None if args.max_bad_records < 0 else args.max_bad_records,
        command=command)
    started, received = time.perf_counter(), []

    def terminate(signum, frame):  # SIGTERM (kill, a scheduler): the same orderly stop as Ctrl-C
        received.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        manifest = prepare(opts, on_shard=_pause_hook(), progress=False if args.quiet else None)
    except KeyboardInterrupt:
        print(f"lmlab data prepare: interrupted; the shards written so far are kept in {args.out}. Run "
              f"the same command again to continue: {command}", file=sys.stderr)
        return 128 + received[-1] if received else INTERRUPTED_EXIT
    finally:
        signal.signal(signal.SIGTERM, previous)
    train, val = manifest["splits"]["train"], manifest["splits"]["val"]
    size = sum(f["size"] for f in manifest["files"])
    seconds = time.perf_counter() - started
    print(f"prepared {args.out}: train {len(train['shards'])} shard(s), {train['tokens']:,} tokens, "
          f"{train['documents']:,} documents; val {len(val['shards'])} shard(s), {val['tokens']:,} tokens; "
          f"{manifest['tokenizer']['name']} tokenizer, {manifest['dtype']}; {si(size, 'B')} of source"
          + (f" in {duration(seconds)}" if seconds >= 1 else ""))
    if manifest["bad_records"]["count"]:
        print(f"skipped {manifest['bad_records']['count']:,} bad record(s): `lmlab data inspect {args.out}` "
              "lists them")
    print(f"train on it: lmlab train CONFIG data.source=prepared data.path={args.out} "
          f"data.tokenizer.name={manifest['tokenizer']['name']}")
    return 0


def _pause_hook():
    """``LMLAB_PREPARE_PAUSE_AFTER=k``: once k shards are recorded, wait for a signal (so that a test
    can interrupt a real preparation at a known point)."""
    after = os.environ.get(PAUSE_AFTER)
    if not after:
        return None
    written = []

    def hook(split: str, index: int) -> None:
        written.append((split, index))
        if len(written) == int(after):
            while True:
                time.sleep(0.05)
    return hook
