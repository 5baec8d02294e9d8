"""One call on a GPU machine: lmlab's GPU figures as a table, appended to benchmarks/RESULTS.md.

    bash benchmarks/gpu_check.sh [--data ../shared/data] [--smoke]

Rows (each a real ``lmlab`` command or benchmark, run in a subprocess):
* the debug config (``configs/debug.yaml``, 103,306,240 parameters, batch 32 x 2048) eager and
  compiled on the bundled Tiny Shakespeare: steady tokens/s, MFU, data share, peak memory, and the
  compile seconds (lmlab train's "compile" phase in events.jsonl);
* the same on one process launched through torchrun (``--nproc 1``), next to the plain process;
* ``benchmarks/bench_context_vector.py --device cuda`` (fast path vs per-token reference);
* 10 epochs of ``configs/newllm_wikitext2.yaml`` on the offline proxy split (train on test.txt,
  validate on valid.txt) when ``--data`` holds wikitext-2/, with the CUDA graph (auto) and without;
* the three reference eval tasks (piqa, hellaswag, nq_open 5-shot; all items) on the debug
  model when ``--data`` holds them and lm-eval is installed;
* ``pytest -m gpu``.
``--smoke`` shrinks every row to seconds, for rehearsing the script on a CPU.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "RESULTS.md"


def lmlab(*args: str, timeout: float) -> tuple[int, float, str]:
    print(f"gpu_check: lmlab {' '.join(args)[:160]}", flush=True)
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "lmlab", *args], cwd=REPO, capture_output=True,
                         text=True, timeout=timeout)
    return out.returncode, time.perf_counter() - started, out.stdout + out.stderr


def train_row(label: str, run: Path, args: list[str], timeout: float, nproc: bool = False) -> dict:
    code, seconds, log = lmlab("train", *args, f"dump_dir={run}", *(["--nproc", "1"] if nproc else []),
                               timeout=timeout)
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()] if code == 0 else []
    train = [m for m in lines if "loss" in m]
    steady = train[1:] or train

    def median(key):
        values = [m[key] for m in steady if isinstance(m.get(key), (int, float))]
        return statistics.median(values) if values else None

    first = train[0] if train else {}
    events = [json.loads(x) for x in (run / "events.jsonl").read_text().splitlines()] if code == 0 else []
    compile_s = next((e["seconds"] for e in events if e.get("event") == "phase_end"
                      and e.get("phase") == "compile"), None)  # lmlab train's own compile phase
    return {"row": label, "ok": code == 0, "wall_s": seconds, "tokens_per_s": median("tokens_per_s"),
            "mfu": median("mfu"), "data_share": median("data_time_frac"),
            "peak_gib": max((m.get("mem_peak_gib") or 0 for m in train), default=None),
            "compile_s": compile_s, "loss": first.get("loss"), "log_tail": log[-600:] if code else ""}


def debug_rows(tmp: Path, smoke: bool, device: str) -> list[dict]:
    shrink = ["model.dim=64", "model.n_layers=2", "model.n_heads=4", "model.multiple_of=16",
              "data.seq_len=128", "data.batch_size=4", "steps=6"] if smoke else ["steps=60"]
    # logging.every=1 for the first windows: the first step's extra time is the compile time
    common = ["configs/debug.yaml", "data.source=tinyshakespeare", "data.sources={}", f"device={device}",
              "logging.every=1" if smoke else "logging.every=10", "eval.validation.enabled=false",
              "checkpoint.every=100000", "logging.progress_bar=false", *shrink]
    return [train_row("debug eager", tmp / "eager", [*common, "compile=false"], 1800),
            train_row("debug compiled", tmp / "compiled", [*common, "compile=true"], 1800),
            train_row("debug compiled, --nproc 1 (torchrun)", tmp / "nproc1", [*common, "compile=true"],
                      1800, nproc=True)]


def context_vector_rows(tmp: Path, data: Path | None, smoke: bool, device: str) -> list[dict]:
    bench = [sys.executable, "benchmarks/bench_context_vector.py", "--device", device, "--json",
             *(["--batch", "32", "--seq", "16", "--steps", "1"] if smoke else [])]
    print(f"gpu_check: {' '.join(bench[1:])}", flush=True)
    out = subprocess.run(bench, cwd=REPO, capture_output=True, text=True, timeout=1800)
    rows = [{"row": "bench_context_vector", "ok": out.returncode == 0,
             "result": out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr[-600:]}]
    wikitext = data / "wikitext-2" if data else None
    if wikitext and (wikitext / "test.txt").is_file():
        args = ["configs/newllm_wikitext2.yaml", f"data.path={wikitext}", "data.train_split=test",
                f"device={device}", "epochs=10" if not smoke else "epochs=1", "logging.progress_bar=false",
                *(["data.batch_size=64", "precision=fp32"] if smoke or device == "cpu" else [])]
        rows.append(train_row("newllm_wikitext2 10 epochs (proxy split)", tmp / "cv", args, 1800))
        rows.append(train_row("the same, training.cuda_graph=false compile=false", tmp / "cv_eager",
                              [*args, "training.cuda_graph=false", "compile=false"], 1800))
    return rows


def eval_rows(tmp: Path, data: Path | None, smoke: bool, device: str) -> list[dict]:
    if not data or not (data / "piqa").is_dir():
        return [{"row": "eval (piqa, hellaswag, nq_open 5-shot)", "ok": None, "result": "skipped: no --data"}]
    run = tmp / "eager"
    rows = []
    for task, extra in (("piqa", []), ("hellaswag", []), ("nq_open", ["eval.num_fewshot=5"])):
        limit = ["eval.limit=8"] if smoke else []
        code, seconds, log = lmlab("eval", str(run), f"eval.tasks=[{task}]", f"eval.data_dir={data}",
                                   "eval.validation.enabled=false", *extra, *limit, "--quiet", timeout=1800)
        rows.append({"row": f"eval {task}", "ok": code == 0, "wall_s": seconds,
                     "result": "\n".join(l for l in log.splitlines() if l.startswith(task))[:300]})
    return rows


def pytest_row() -> dict:
    print("gpu_check: pytest -m gpu", flush=True)
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider"],
                         cwd=REPO, capture_output=True, text=True, timeout=1800)
    return {"row": "pytest -m gpu", "ok": out.returncode == 0, "wall_s": time.perf_counter() - started,
            "result": out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr[-300:]}


def table(rows: list[dict]) -> str:
    def fmt(x, f):
        return "-" if x is None else format(x, f)

    lines = ["| row | ok | tokens/s | MFU | data share | peak GiB | compile s | wall s | result |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['row']} | {r['ok']} | {fmt(r.get('tokens_per_s'), ',.0f')} | "
                     f"{fmt(r.get('mfu'), '.1%')} | {fmt(r.get('data_share'), '.1%')} | "
                     f"{fmt(r.get('peak_gib'), '.1f')} | {fmt(r.get('compile_s'), '.1f')} | "
                     f"{fmt(r.get('wall_s'), '.0f')} | {str(r.get('result', '')).replace('|', '/')[:160]} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="folder with wikitext-2/, piqa/, ...")
    parser.add_argument("--smoke", action="store_true", help="tiny rows, for a CPU rehearsal")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    import torch

    device_name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        rows = debug_rows(Path(tmp), args.smoke, args.device)
        rows += context_vector_rows(Path(tmp), args.data, args.smoke, args.device)
        rows += eval_rows(Path(tmp), args.data, args.smoke, args.device)
    rows.append(pytest_row())
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip() or "unknown"
    head = (f"\n## gpu_check {datetime.date.today()} on {device_name} (torch {torch.__version__}, "
            f"commit {commit}{', smoke' if args.smoke else ''})\n\n")
    text = head + table(rows) + "\n"
    print(text)
    for r in rows:
        if r.get("log_tail"):
            print(f"--- {r['row']} failed:\n{r['log_tail']}")
    if not args.no_write:
        with open(RESULTS, "a", encoding="utf-8") as handle:
            handle.write(text)
    return 0 if all(r["ok"] is not False for r in rows) else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
