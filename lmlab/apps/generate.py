"""``lmlab generate RUN --prompt TEXT``: stream a continuation of the prompt from the model of a run
(or of one of its checkpoints), greedy by default, sampled with ``--temperature`` / ``--top-p``.
A prompt that leaves too little room in the model's context keeps its BOS and its last tokens; what
was cut is said once on stderr (``lmlab generate: warning: ...``)."""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from lmlab.config import load_config
from lmlab.errors import ConfigError, Problem
from lmlab.evaluation.generation import generate
from lmlab.evaluation.loading import load_for_eval, saved_config_file
from lmlab.rundir import resolve_checkpoint


def run(args: argparse.Namespace) -> int:
    """``args``: ``run``, ``prompt``, ``max_tokens``, ``temperature``, ``top_p``, ``seed``,
    ``stop`` (list of strings), ``device`` (cpu | cuda | auto)."""
    _check_args(args)
    checkpoint_dir, run_dir = resolve_checkpoint(args.run)
    cfg = load_config(saved_config_file(checkpoint_dir, run_dir))
    # a run still training may prune the checkpoint chosen for a run directory: then its newest
    loaded = load_for_eval(checkpoint_dir, run_dir, cfg, args.device,
                           newest_if_gone=Path(args.run) == run_dir)
    echo = [args.prompt]  # echoed with the first piece: a warning about the context comes first

    def show(piece: str) -> None:
        print(*echo, piece, sep="", end="", flush=True)
        echo.clear()

    generate(loaded.model, loaded.tokenizer, [args.prompt], args.max_tokens, args.temperature,
             args.top_p, args.stop, args.seed, stream=lambda _, piece: show(piece),
             warn=lambda text: print(f"lmlab generate: warning: {text}", file=sys.stderr, flush=True))
    print(*echo)  # the prompt too when nothing was generated
    return 0


def _check_args(args: argparse.Namespace) -> None:
    """Every bad option at once, before the (slow) model load."""
    problems = []
    if args.max_tokens < 1:
        problems.append(Problem("--max-tokens", f"must be >= 1, got {args.max_tokens}.", "--max-tokens 64"))
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        problems.append(Problem("--temperature", f"must be a finite number >= 0, got {args.temperature}.",
                                "--temperature 0 (greedy) or e.g. 0.8"))
    if not 0 < args.top_p <= 1:
        problems.append(Problem("--top-p", f"must be in (0, 1], got {args.top_p}.", "--top-p 0.9"))
    if problems:
        raise ConfigError(problems, source="lmlab generate")
