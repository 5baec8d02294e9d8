"""Command line: ``lmlab SUBCOMMAND ...``. Each subcommand is a plain function of parsed arguments.

User errors (``LmlabError``, including every ``ConfigError``) print one message and exit with code 2,
without a traceback; a traceback means a bug in lmlab.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from lmlab.errors import LmlabError


def cmd_check(args) -> int:
    from lmlab.preflight import load_and_check

    cfg = load_and_check(args.config, args.overrides)
    print(f"ok: {args.config} passes preflight (model {cfg.model.name}, data {cfg.data.source}, "
          f"dump_dir {cfg.dump_dir})")
    return 0


def cmd_train(args) -> int:
    """Preflight first: a config that cannot run leaves no trace (not even a run directory). After
    that every phase is recorded in ``<dump_dir>/events.jsonl``; a crash is reported in one line that
    points at the traceback file, and ``lmlab report`` explains it."""
    from lmlab.preflight import load_and_check
    from lmlab.reports.events import EventLog
    from lmlab.training.loop import train

    started = time.perf_counter()
    cfg = load_and_check(args.config, args.overrides)
    events = EventLog(cfg.dump_dir)
    command = " ".join(["lmlab", *sys.argv[1:]])
    try:
        with events.run(command=command):
            # preflight ran before the run directory may exist; recorded now that it does
            events.emit("phase_start", phase="preflight")
            events.emit("phase_end", phase="preflight", status="ok",
                        seconds=time.perf_counter() - started)
            summary = train(cfg, sys.argv[1:], events)
            events.set_result(summary["status"], step=summary.get("step"),
                              failed_evals=summary.get("failed_evals", []))
    except LmlabError:
        raise
    except Exception as err:  # noqa: BLE001 -- recorded above; say where to look instead of a bare crash
        return _report_crash(err, events)
    return 0


def _report_crash(err: Exception, events) -> int:
    summary, phase = events.record_exception(err, "run")  # already recorded: returns that (redacted) record
    traceback_file = summary.get("traceback_file")
    print(f"lmlab train: failed in phase {phase}: {summary['type']}: {summary['message']} "
          f"(at {summary['where']})\n"
          f"  traceback: {events.run_dir / traceback_file if traceback_file else 'not written'}\n"
          f"  explanation and fix: lmlab report {events.run_dir}", file=sys.stderr)
    return 1


def cmd_eval(args) -> int:
    from lmlab.evaluation.runner import evaluate_run, format_rows

    rows, target = evaluate_run(args.run, args.overrides, progress=not args.quiet)
    print(format_rows(rows))
    print(f"results: {target} (also appended to {target.parents[2] / 'metrics.eval.jsonl'})")
    return 0


def cmd_generate(args) -> int:
    from lmlab.evaluation.generation import generate
    from lmlab.evaluation.loading import load_for_eval

    _check_generation_args(args)
    loaded = load_for_eval(args.run, device=args.device)
    print(args.prompt, end="", flush=True)
    generate(loaded.model, loaded.tokenizer, [args.prompt], args.max_tokens, args.temperature,
             args.top_p, args.stop, args.seed, stream=lambda _, piece: print(piece, end="", flush=True))
    print()
    return 0


def _check_generation_args(args) -> None:
    from lmlab.errors import ConfigError, Problem

    problems = []
    if args.max_tokens < 1:
        problems.append(Problem("--max-tokens", f"must be >= 1, got {args.max_tokens}.", "--max-tokens 64"))
    if args.temperature < 0:
        problems.append(Problem("--temperature", f"must be >= 0, got {args.temperature}.",
                                "--temperature 0 (greedy) or e.g. 0.8"))
    if not 0 < args.top_p <= 1:
        problems.append(Problem("--top-p", f"must be in (0, 1], got {args.top_p}.", "--top-p 0.9"))
    if problems:
        raise ConfigError(problems, source="lmlab generate")


def cmd_info(args) -> int:
    from lmlab.info import run_info

    info = run_info(args.config, args.overrides)
    if args.json:
        print(json.dumps(info))
    else:
        width = max(len(k) for k in info)
        for key, value in info.items():
            shown = f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else value
            print(f"{key:<{width}}  {shown}")
    return 0


def cmd_report(args) -> int:
    from lmlab.reports.run_report import write_comparison, write_report

    if len(args.runs) == 1 and not args.out:
        from pathlib import Path

        from lmlab.reports.events import EventLog
        from lmlab.reports.runs import is_run_dir

        run = Path(args.runs[0])
        if not is_run_dir(run):
            raise LmlabError(f"{run} is not a run directory (no config.yaml, events.jsonl or metrics). "
                             "Fix: pass the dump_dir of a training run; `lmlab runs ROOT` lists them.")
        with EventLog(run).phase("report", lang=args.lang, format=args.format):
            path = write_report(run, lang=args.lang, fmt=args.format)
    else:
        suffix = ".html" if args.format == "html" else ".md"
        path = write_comparison(args.runs, args.out or f"comparison{suffix}", lang=args.lang)
    print(f"wrote {path}")
    return 0


def cmd_runs(args) -> int:
    from lmlab.reports.runs import format_runs_table, list_runs

    print(format_runs_table(list_runs(args.root)))
    return 0


COMMANDS = {
    "train": (cmd_train, "train a model (resumes if dump_dir holds checkpoints)"),
    "check": (cmd_check, "validate a config and its data files without training"),
    "info": (cmd_info, "model size, FLOPs per token and tokens per step for a config"),
    "eval": (cmd_eval, "evaluate a run or checkpoint: validation + lm-eval tasks (eval.* overrides)"),
    "generate": (cmd_generate, "stream a continuation of --prompt from a run or checkpoint"),
    "report": (cmd_report, "write report.md + plots for a run, or compare several runs (--out)"),
    "runs": (cmd_runs, "list the run directories under ROOT with status and best validation loss"),
}
CONFIG_COMMANDS = ("train", "check", "info")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmlab", description="Small-language-model research lab.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands = {name: sub.add_parser(name, help=text, description=text)
                for name, (_, text) in COMMANDS.items()}
    for name in CONFIG_COMMANDS:
        commands[name].add_argument("config", metavar="CONFIG", help="YAML config file")
        commands[name].add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                                    help="overrides such as optim.lr=1e-3 or data.sources=[a,b]")
    commands["info"].add_argument("--json", action="store_true", help="print one JSON object")
    evaluate = commands["eval"]
    evaluate.add_argument("run", metavar="RUN_DIR_OR_CHECKPOINT")
    evaluate.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                          help="e.g. eval.tasks=[piqa,hellaswag] eval.data_dir=../shared/data eval.limit=100")
    evaluate.add_argument("--quiet", action="store_true", help="no progress bars")
    gen = commands["generate"]
    gen.add_argument("run", metavar="RUN_DIR_OR_CHECKPOINT")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--max-tokens", type=int, default=128)
    gen.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    gen.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    report = commands["report"]
    report.add_argument("runs", nargs="+", metavar="RUN_DIR")
    report.add_argument("--lang", choices=["en", "ja"], default="en")
    report.add_argument("--format", choices=["md", "html"], default="md")
    report.add_argument("--out", help="comparison file (several runs)")
    commands["runs"].add_argument("root", nargs="?", default="runs", metavar="ROOT")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = COMMANDS[args.command][0]
    try:
        return handler(args)
    except LmlabError as err:
        print(f"lmlab {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
