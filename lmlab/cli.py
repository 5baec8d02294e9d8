"""Command line: ``lmlab SUBCOMMAND ...``. Each subcommand is a plain function of parsed arguments.

User errors (``LmlabError``, including every ``ConfigError``) print one message and exit with code 2,
without a traceback; a traceback means a bug in lmlab.
"""
from __future__ import annotations

import argparse
import json
import sys

from lmlab.errors import LmlabError


def cmd_check(args) -> int:
    from lmlab.preflight import load_and_check

    cfg = load_and_check(args.config, args.overrides)
    print(f"ok: {args.config} passes preflight (model {cfg.model.name}, data {cfg.data.source}, "
          f"dump_dir {cfg.dump_dir})")
    return 0


def cmd_train(args) -> int:
    from lmlab.preflight import load_and_check
    from lmlab.training.loop import train

    cfg = load_and_check(args.config, args.overrides)
    summary = train(cfg, sys.argv[1:])
    return 0 if summary.get("status") in ("finished", "stopped", "stopped early", "preempted") else 1


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
        path = write_report(args.runs[0], lang=args.lang, fmt=args.format)
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
