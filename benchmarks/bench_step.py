"""A training step through ``lmlab train`` against the bare model step, same model and batch shape.

Issue 24 asks that the loop stay lean: what a step costs through lmlab (the batch from the data
reader, the step, the metrics, the checks of what is due) against the bare step nanoGPT runs
(forward, loss, backward, clip, AdamW, zero_grad) on the same model, within 5 %.

* **lmlab**: the marginal cost of one step of the real command, in this process as a user runs it
  (``lmlab train configs/debug.yaml ...``): ``(wall(N_LONG steps) - wall(N_SHORT steps)) /
  (N_LONG - N_SHORT)``, so the start (preflight, building, the first steps' warm-up) cancels out and
  everything a step does is in.
* **bare**: the model lmlab builds from the same config, one fixed batch of the same shape, the
  optimizer lmlab builds, ``N_LONG - N_SHORT`` steps timed after a warm-up.

The shape is nanoGPT's CPU "baby GPT" (4 layers, d 128, 4 heads, batch 12 x 64, bytes tokenizer),
on the real web text of ``../shared/data/webtext``. Each side runs ``--repeats`` times, interleaved
(the machine's drift hits both); the medians are compared. Figures go to benchmarks/RESULTS.md by
hand (or ``--append``).

    python benchmarks/bench_step.py [--repeats 3] [--append benchmarks/RESULTS.md]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from lmlab.cli import main
from lmlab.data.sources import vocab_size
from lmlab.models.registry import build_model, resolve_model_config
from lmlab.preflight import load_and_check
from lmlab.training.optim import build_optimizer

REPO = Path(__file__).resolve().parents[1]
WEBTEXT = REPO.parent / "shared" / "data" / "webtext"
SHAPE = ["model.dim=128", "model.n_layers=4", "model.n_heads=4", "model.multiple_of=32",
         "data.seq_len=64", "data.batch_size=12", "device=cpu", "eval.validation.enabled=false",
         "checkpoint.every=100000", "logging.progress_bar=false", "optim.warmup=10"]
N_SHORT, N_LONG = 10, 110


def corpus(tmp: Path) -> Path:
    """The web text as a one-source Lingua-layout root."""
    source = tmp / "data" / "web"
    source.mkdir(parents=True)
    for path in sorted(WEBTEXT.glob("*.jsonl")):
        shutil.copy(path, source / "web.chunk.00.jsonl")
    return source.parent


def args(root: Path, run: Path, steps: int) -> list[str]:
    return [str(REPO / "configs" / "debug.yaml"), *SHAPE, f"data.root_dir={root}", "data.sources={web: 1.0}",
            f"steps={steps}", f"dump_dir={run}"]


def lmlab_train(root: Path, tmp: Path, steps: int) -> float:
    run = tmp / f"run-{steps}"
    shutil.rmtree(run, ignore_errors=True)
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = main(["train", *args(root, run, steps)])
    seconds = time.perf_counter() - started
    assert code == 0, f"lmlab train exited {code}"
    return seconds


def lmlab_step(root: Path, tmp: Path) -> float:
    """Seconds per step of the real command, start cancelled out."""
    return (lmlab_train(root, tmp, N_LONG) - lmlab_train(root, tmp, N_SHORT)) / (N_LONG - N_SHORT)


def bare_step(root: Path, tmp: Path) -> float:
    """Seconds per step of forward, loss, backward, clip, optimizer step and zero_grad alone."""
    config, *overrides = args(root, tmp / "bare", N_LONG)
    cfg = load_and_check(config, overrides)
    vocab = vocab_size(cfg.data)  # the bytes tokenizer's: no file to read
    torch.manual_seed(cfg.seed)
    model = build_model(resolve_model_config(cfg.model, vocab, cfg.data.seq_len))
    optimizer = build_optimizer(model, cfg.optim, torch.device("cpu"))
    batch = torch.randint(vocab, (cfg.data.batch_size, cfg.data.seq_len + 1))
    inputs, targets = batch[:, :-1], batch[:, 1:]

    def step() -> None:
        logits = model(inputs)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()  # the loop reads the loss too (logging)

    for _ in range(N_SHORT):
        step()
    started = time.perf_counter()
    for _ in range(N_LONG - N_SHORT):
        step()
    return (time.perf_counter() - started) / (N_LONG - N_SHORT)


def main_(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--append", type=Path, help="append the figures to this Markdown file")
    opts = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-step-") as name:
        tmp = Path(name)
        root = corpus(tmp)
        lmlab_train(root, tmp, 2)  # warm the process (imports, first allocations) for both sides
        through, bare = [], []
        for _ in range(opts.repeats):
            through.append(lmlab_step(root, tmp))
            bare.append(bare_step(root, tmp))
    t, b = statistics.median(through), statistics.median(bare)
    lines = [f"## bench_step.py, {time.strftime('%Y-%m-%d')}",
             "",
             f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU; baby-GPT shape "
             f"(4 x d128, batch 12 x 64, bytes), {opts.repeats} interleaved repeats, medians:",
             "",
             "| step | ms / step | runs (ms) |",
             "|---|---:|---|",
             f"| through `lmlab train` (marginal, {N_SHORT} -> {N_LONG} steps) | {t * 1e3:.1f} | "
             f"{', '.join(f'{x * 1e3:.1f}' for x in through)} |",
             f"| bare model step | {b * 1e3:.1f} | {', '.join(f'{x * 1e3:.1f}' for x in bare)} |",
             "",
             f"lmlab / bare = **{t / b:.3f}** ({(t / b - 1) * 100:+.1f} %)", ""]
    print("\n".join(lines))
    if opts.append:
        with opts.append.open("a", encoding="utf-8") as out:
            out.write("\n" + "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main_())
