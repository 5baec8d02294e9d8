"""Data at corpus scale: memory, start time and loader speed on synthetic Lingua-layout corpora.

Makes two seeded corpora, ``small`` (default 1 GB) and ``large`` (default 8 GB), each one source
folder holding a single ``*.chunk.00.jsonl`` (the worst case: one huge file) and a small
``*.val.jsonl``, and prints, side by side in one run:

* peak RSS of ``lmlab train`` (a 3-step run of a tiny model) on each corpus, and their difference:
  what grows with the corpus;
* seconds from process start to the end of step 1 on each (streaming), and on prepared shards;
* the loader alone, in tokens/s: jsonl + bytes, jsonl + BPE (a 4,096-token BPE trained on a
  sample), prepared shards; beside the physical limit, raw sequential reads of the same file;
* ``lmlab data prepare`` MB/s with 1 and 2 workers (on a slice of the small corpus).

The corpora are removed afterwards (``--keep`` keeps them). ``--append FILE`` appends a dated
markdown section (benchmarks/RESULTS.md). Nothing here is asserted: tests never assert timings.

    python benchmarks/bench_data.py [--small-gb 1 --large-gb 8 --workdir /tmp/bench_data --append benchmarks/RESULTS.md]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

TINY = ["model.dim=64", "model.n_layers=2", "model.n_heads=2", "data.seq_len=128", "data.batch_size=4",
        "steps=3", "device=cpu", "logging.every=1", "eval.validation.max_steps=1"]
POOL_DOCS, VOCAB_WORDS = 8192, 5000


# --------------------------------------------------------------------------- corpora


def make_corpus(root: Path, name: str, gigabytes: float, seed: int) -> Path:
    """root/name/name.chunk.00.jsonl of about ``gigabytes`` GB (documents of 200 B - 20 kB of
    random words, drawn from a seeded pool) and a 200 kB name.val.jsonl."""
    rng = np.random.default_rng(seed)
    words = [("".join(chr(97 + c) for c in rng.integers(0, 26, rng.integers(2, 10)))) for _ in range(VOCAB_WORDS)]
    lengths = np.clip(rng.lognormal(6.0, 1.0, POOL_DOCS), 30, 3000).astype(int)
    pool = [(json.dumps({"text": " ".join(words[i] for i in rng.integers(0, VOCAB_WORDS, n))}) + "\n").encode()
            for n in lengths]
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    target = int(gigabytes * 1e9)
    with open(folder / f"{name}.chunk.00.jsonl", "wb") as out:
        written = 0
        while written < target:
            chunk = b"".join(pool[i] for i in rng.integers(0, POOL_DOCS, 4096))
            out.write(chunk)
            written += len(chunk)
    (folder / f"{name}.val.jsonl").write_bytes(b"".join(pool[:100]))
    return folder


# --------------------------------------------------------------------------- measurements


def train_run(args: list[str], dump_dir: Path) -> dict:
    """Peak RSS and seconds from spawn to the line of step 1, of one ``lmlab train``. The RSS comes
    from /usr/bin/time (``wait4`` would also count this process's own pages, which a forked child
    starts with on Linux)."""
    shutil.rmtree(dump_dir, ignore_errors=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    rss_file = dump_dir.parent / f"{dump_dir.name}.rss"
    timer = ["/usr/bin/time", "-f", "%M", "-o", str(rss_file)] if Path("/usr/bin/time").exists() else []
    started = time.perf_counter()
    proc = subprocess.Popen([*timer, sys.executable, "-m", "lmlab", "train", *args, f"dump_dir={dump_dir}"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    first_step, lines = None, []
    for line in proc.stdout:
        lines.append(line)
        if first_step is None and line.startswith("step ") and " 1/" in line.split("|")[0]:
            first_step = time.perf_counter() - started
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"lmlab train failed ({status}):\n{''.join(lines[-30:])}")
    kib = int(rss_file.read_text().split()[-1]) if timer else usage.ru_maxrss
    return {"rss_gib": kib / 2**20, "first_step_s": first_step}


def loader_rate(make_loader, seconds: float = 5.0) -> float:
    """Tokens per second of ``next_batch`` for about ``seconds`` (after one warm-up batch)."""
    loader = make_loader()
    batch = loader.next_batch()
    tokens, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        batch = loader.next_batch()
        tokens += batch.shape[0] * (batch.shape[1] - 1)
    return tokens / (time.perf_counter() - started)


def raw_read_rate(path: Path, limit: int = 4 << 30) -> float:
    """MB/s of plain 1 MiB sequential reads of ``path`` (its first ``limit`` bytes)."""
    done, started = 0, time.perf_counter()
    with open(path, "rb") as handle:
        while done < limit:
            chunk = handle.read(1 << 20)
            if not chunk:
                break
            done += len(chunk)
    return done / 1e6 / (time.perf_counter() - started)


def jsonl_loader(root: Path, name: str, tokenizer, batch: int = 32, seq: int = 1024):
    from lmlab.data.loader import PackedLoader
    from lmlab.data.sources import DataConfig, training_sources

    cfg = DataConfig(source="jsonl", root_dir=str(root), sources={name: 1.0})
    return lambda: PackedLoader(training_sources(cfg), tokenizer, batch, seq, seed=0)


def bpe_tokenizer(path: Path):
    from lmlab.data.tokenizers import BPETokenizer

    with open(path, "rb") as handle:
        sample = [json.loads(line)["text"] for line in handle.read(8 << 20).splitlines()[:-1]]
    return BPETokenizer.train(sample, 4096)


def prepare(source: Path, out: Path, workers: int) -> float:
    """MB/s of ``lmlab data prepare`` (bytes tokenizer) over ``source``."""
    shutil.rmtree(out, ignore_errors=True)
    size = sum(p.stat().st_size for p in source.glob("*.jsonl"))
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "lmlab", "data", "prepare", str(source), "--out", str(out),
                    "--workers", str(workers)], cwd=REPO, check=True, capture_output=True)
    return size / 1e6 / (time.perf_counter() - started)


def slice_source(source: Path, dest: Path, nbytes: int) -> Path:
    """The first ``nbytes`` (whole lines) of a source's chunk file, as a source of its own."""
    dest.mkdir(parents=True, exist_ok=True)
    name = dest.name
    with open(next(source.glob("*.chunk.00.jsonl")), "rb") as handle:
        data = handle.read(nbytes)
    (dest / f"{name}.chunk.00.jsonl").write_bytes(data[: data.rfind(b"\n") + 1])
    shutil.copy(next(source.glob("*.val.jsonl")), dest / f"{name}.val.jsonl")
    return dest


# --------------------------------------------------------------------------- report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small-gb", type=float, default=1.0)
    parser.add_argument("--large-gb", type=float, default=8.0)
    parser.add_argument("--prepare-mb", type=int, default=256, help="slice of the small corpus to prepare")
    parser.add_argument("--workdir", default="/tmp/bench_data")
    parser.add_argument("--keep", action="store_true", help="keep the corpora")
    parser.add_argument("--append", help="append a dated markdown section to this file")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, str]] = []
    try:
        rows += run_all(work, args)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    table = "\n".join(["| measurement | figure |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows])
    print(table)
    if args.append:
        cpus = len(os.sched_getaffinity(0))
        head = (f"\n## bench_data.py, {datetime.date.today()}\n\n{cpus} CPUs; corpora: one "
                f"{args.small_gb:g} GB and one {args.large_gb:g} GB single-file jsonl source (seeded "
                f"synthetic text). `python benchmarks/bench_data.py --small-gb {args.small_gb:g} "
                f"--large-gb {args.large_gb:g}`\n\n")
        with open(args.append, "a", encoding="utf-8") as out:
            out.write(head + table + "\n")


def run_all(work: Path, args) -> list[tuple[str, str]]:
    from lmlab.data.tokenizers import ByteTokenizer

    rows = []
    corpora = {"small": (args.small_gb, 1), "large": (args.large_gb, 2)}
    for name, (gb, seed) in corpora.items():
        started = time.perf_counter()
        make_corpus(work, name, gb, seed)
        print(f"made {name} ({gb:g} GB) in {time.perf_counter() - started:.0f} s", flush=True)
    runs = {}
    for name in corpora:
        cfg = [str(REPO / "configs/debug.yaml"), f"data.root_dir={work}", f"data.sources={{{name}: 1.0}}", *TINY]
        runs[name] = train_run(cfg, work / f"run_{name}")
        print(name, runs[name], flush=True)
    small, large = runs["small"], runs["large"]
    rows.append(("peak RSS, 3-step run, streaming: small / large / difference",
                 f"{small['rss_gib']:.2f} / {large['rss_gib']:.2f} GiB / "
                 f"{(large['rss_gib'] - small['rss_gib']) * 1024:+.0f} MiB"))
    rows.append(("start to step 1, streaming: small / large",
                 f"{small['first_step_s']:.1f} s / {large['first_step_s']:.1f} s"))
    big_file = next((work / "large").glob("*.chunk.00.jsonl"))
    raw = raw_read_rate(big_file)
    rows.append(("raw sequential read of the large file (1 MiB reads, first 4 GB)", f"{raw:,.0f} MB/s"))
    byte_rate = loader_rate(jsonl_loader(work, "large", ByteTokenizer()))
    rows.append(("loader alone, jsonl + bytes (one thread)",
                 f"{byte_rate / 1e6:.2f} M tokens/s ({byte_rate / 1e6 / raw:.0%} of the raw read's bytes)"))
    bpe = bpe_tokenizer(big_file)
    bpe_rate = loader_rate(jsonl_loader(work, "large", bpe))
    rows.append(("loader alone, jsonl + BPE 4096 (encode_batch)", f"{bpe_rate / 1e6:.2f} M tokens/s"))
    rows += prepared_rows(work, args)
    return rows


def prepared_rows(work: Path, args) -> list[tuple[str, str]]:
    try:
        from lmlab.data.prepared import PreparedLoader
    except ImportError:
        return [("prepared shards", "not measured: lmlab.data.prepared is missing")]
    rows = []
    part = slice_source(work / "small", work / "part", args.prepare_mb << 20)
    rates = {n: prepare(part, work / f"prepared{n}", n) for n in (1, 2)}
    rows.append((f"lmlab data prepare, bytes tokenizer, {args.prepare_mb} MiB: 1 / 2 workers",
                 f"{rates[1]:.1f} / {rates[2]:.1f} MB/s"))
    large = work / "prepared_large"
    started = time.perf_counter()
    prepare(work / "large", large, 2)
    rows.append(("lmlab data prepare of the large corpus, 2 workers", f"{time.perf_counter() - started:.0f} s"))
    rate = loader_rate(lambda: PreparedLoader(str(large), 32, 1024, seed=0))
    rows.append(("loader alone, prepared shards (memory-mapped)", f"{rate / 1e6:.1f} M tokens/s"))
    run = train_run([str(REPO / "configs/debug.yaml"), "data.source=prepared", f"data.path={large}", *TINY],
                    work / "run_prepared")
    rows.append(("prepared large corpus: peak RSS / start to step 1",
                 f"{run['rss_gib']:.2f} GiB / {run['first_step_s']:.1f} s"))
    return rows


if __name__ == "__main__":
    main()
