"""Command line: ``lmlab COMMAND ...``. This module only parses; each command is the ``run(args)`` of
its application module in ``lmlab/apps/``, imported when chosen (so ``lmlab runs`` and ``lmlab
report`` start without loading torch).

User errors (``LmlabError``, including every ``ConfigError``) print one message and exit with code 2,
without a traceback; a traceback means a bug in lmlab.
"""
from __future__ import annotations

import argparse
import gc
import importlib
import sys

from lmlab.errors import LmlabError
from lmlab.reports.render import FORMATS
from lmlab.reports.text import LANGS

# command -> (application module in lmlab/apps, help)
COMMANDS = {
    "train": ("train", "train a model (resumes if dump_dir holds checkpoints)"),
    "check": ("check", "validate a config and its data files without training"),
    "info": ("info", "model size, FLOPs per token and tokens per step for a config"),
    "eval": ("evaluate", "evaluate a run or checkpoint: validation + lm-eval tasks (eval.* overrides)"),
    "generate": ("generate", "stream a continuation of --prompt from a run or checkpoint"),
    "report": ("report", "write report.md + plots for a run (--out DIR), or compare several runs "
                         "(--out FILE)"),
    "runs": ("runs", "list the run directories under ROOT with status and best validation loss"),
    "export": ("export", "export a run or checkpoint to a Hugging Face transformers folder"),
    "slurm": ("slurm", "write a SLURM batch script for a run (code snapshot, requeue on preemption) and "
                       "submit it with sbatch"),
    "sweep": ("sweep", "run many trials of one config from a spec (grid / random / seeds), N at a time "
                       "or as a SLURM array; resumable; lmlab report SWEEP_DIR compares them"),
    "data": ("data", "tokenize a corpus once into token shards (data prepare), show what a prepared "
                     "folder holds (data inspect)"),
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
    commands["check"].add_argument("--data", action="store_true",
                                   help="also read every training and validation file and list every "
                                        "bad line (file:line: reason) at once")
    commands["train"].add_argument("--nproc", type=int, default=None, metavar="N",
                                   help="train with N processes on this machine (starts torchrun)")
    _eval_arguments(commands["eval"])
    _generate_arguments(commands["generate"])
    _report_arguments(commands["report"])
    _slurm_arguments(commands["slurm"])
    _data_arguments(commands["data"])
    _sweep_arguments(commands["sweep"])
    commands["runs"].add_argument("root", nargs="?", default="runs", metavar="ROOT")
    export = commands["export"]
    export.add_argument("run", metavar="RUN_DIR_OR_CHECKPOINT")
    export.add_argument("--format", choices=["hf"], default="hf", help="hf: transformers folder")
    export.add_argument("--out", required=True, metavar="DIR", help="the folder to write")
    export.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    export.add_argument("--force", action="store_true",
                        help="replace a previous lmlab export at --out (never a run or other files)")
    return parser


def _eval_arguments(evaluate: argparse.ArgumentParser) -> None:
    evaluate.add_argument("run", metavar="RUN_DIR_OR_CHECKPOINT")
    evaluate.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                          help="e.g. eval.tasks=[piqa,hellaswag] eval.data_dir=../shared/data eval.limit=100")
    evaluate.add_argument("--quiet", action="store_true", help="no progress bars")
    evaluate.add_argument("--out", metavar="DIR", help="write eval_results.json and metrics.eval.jsonl "
                          "to DIR instead of the checkpoint / run directory (e.g. a read-only run)")


def _generate_arguments(gen: argparse.ArgumentParser) -> None:
    gen.add_argument("run", metavar="RUN_DIR_OR_CHECKPOINT")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--max-tokens", type=int, default=128)
    gen.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    gen.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])


def _report_arguments(report: argparse.ArgumentParser) -> None:
    report.add_argument("runs", nargs="+", metavar="RUN_DIR")
    report.add_argument("--lang", choices=LANGS, default="en")
    report.add_argument("--format", choices=FORMATS, default="md")
    report.add_argument("--out", metavar="PATH", help="one run: the folder for its report and plots "
                        "(default: the run directory); several runs: the comparison file "
                        "(default: comparison.md)")


def _slurm_arguments(slurm: argparse.ArgumentParser) -> None:
    slurm.add_argument("config", metavar="CONFIG", help="YAML config file")
    slurm.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides, as for train")
    slurm.add_argument("--nodes", type=int, required=True, metavar="N")
    slurm.add_argument("--gpus-per-node", type=int, required=True, metavar="G",
                       help="GPUs per node, one process each; 0: a CPU job (no GPU requested); with "
                            "device=cpu, G gloo processes per node and no GPU")
    slurm.add_argument("--procs-per-node", type=int, default=None, metavar="P",
                       help="CPU jobs (device=cpu or --gpus-per-node 0): gloo processes per node")
    slurm.add_argument("--partition", metavar="P")
    slurm.add_argument("--account", metavar="A")
    slurm.add_argument("--time", default="24:00:00", metavar="T",
                       help="time limit (default 24:00:00); the job requeues itself before it")
    slurm.add_argument("--cpus-per-task", type=int, metavar="C",
                       help="CPUs per node for its processes (default 4 per GPU, 1 per CPU process, at "
                            "most the largest node of the partition)")
    slurm.add_argument("--port", type=int, default=None,
                       help="rendezvous port on the first node (default: torchrun picks one on one node; "
                            "20000 + job id %% 20000 across nodes)")
    slurm.add_argument("--dry-run", action="store_true", help="write the script, do not submit it")


def _data_arguments(data: argparse.ArgumentParser) -> None:
    sub = data.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    text = ("tokenize SOURCE with N processes into token shards in DIR (train on them with "
            "data.source=prepared data.path=DIR); interrupted, the same command continues")
    prepare = sub.add_parser("prepare", help=text, description=text)
    prepare.add_argument("source", metavar="SOURCE", help="a Lingua source folder (*.chunk.*.jsonl train, "
                         "*.val.jsonl validation), a jsonl or text file or folder of them (*.txt: "
                         "paragraphs), or a local Hugging Face dataset (save_to_disk folder, *.parquet, "
                         "*.arrow)")
    prepare.add_argument("--out", required=True, metavar="DIR", help="the folder to write (or to finish)")
    prepare.add_argument("--val", default="", metavar="PATH",
                         help="validation data for a source without its own (a file or folder)")
    prepare.add_argument("--tokenizer", default="", metavar="NAME",
                         help="bytes (default), bpe / word (trained on SOURCE), hf, sentencepiece, tiktoken")
    prepare.add_argument("--tokenizer-path", default="", metavar="PATH",
                         help="a tokenizer file (a run's tokenizer.json, or hf / sentencepiece / tiktoken)")
    prepare.add_argument("--vocab-size", type=int, default=0, metavar="N", help="bpe / word: vocabulary size")
    prepare.add_argument("--bos", default="", metavar="TOKEN", help="tokenizer files: the BOS token")
    prepare.add_argument("--eos", default="", metavar="TOKEN", help="tokenizer files: the EOS token")
    prepare.add_argument("--workers", type=int, default=0, metavar="N",
                         help="tokenizing processes (default: one per CPU); the shards do not depend on it")
    prepare.add_argument("--shard-tokens", type=int, default=100_000_000, metavar="N",
                         help="tokens per shard (a shard closes at the first unit of work past it)")
    prepare.add_argument("--max-bad-records", type=int, default=100, metavar="N",
                         help="bad records to skip and count before stopping (-1: no limit)")
    prepare.add_argument("--split", default="train", metavar="NAME", help="Hugging Face datasets: training split")
    prepare.add_argument("--val-split", default="validation", metavar="NAME",
                         help="Hugging Face datasets: validation split, if the dataset has it")
    prepare.add_argument("--text-field", default="text", metavar="NAME",
                         help="Hugging Face datasets: the column holding the text")
    prepare.add_argument("--quiet", action="store_true", help="no progress bar")
    text = "show what a prepared folder holds: manifest, token counts, tokenizer, bad records, a sample"
    inspect = sub.add_parser("inspect", help=text, description=text)
    inspect.add_argument("folder", metavar="DIR")
    inspect.add_argument("--docs", type=int, default=2, metavar="N", help="training documents to decode")
    inspect.add_argument("--chars", type=int, default=300, metavar="N", help="characters shown of each")
    inspect.add_argument("--verify", action="store_true", help="also check every shard's sha256")


def _sweep_arguments(sweep: argparse.ArgumentParser) -> None:
    sweep.add_argument("spec", metavar="SPEC", help="sweep spec (YAML): base, overrides, grid, random, seeds")
    sweep.add_argument("--parallel", type=int, metavar="N", help="trials at a time (default: 1 on CPU, "
                       "whose cores they share; one per GPU); with --slurm, the array's %%N limit")
    sweep.add_argument("--dry-run", action="store_true", help="preflight every trial and list them; with "
                       "--slurm, write the scripts without submitting")
    sweep.add_argument("--out", metavar="DIR", help="the sweep folder (default: the spec's out:)")
    sweep.add_argument("--retry-failed", action="store_true", help="run failed trials again")
    sweep.add_argument("--quiet", action="store_true", help="no progress bars")
    sweep.add_argument("--slurm", action="store_true", help="write (and submit) one SLURM job array, a task per trial")
    sweep.add_argument("--gpus-per-trial", type=int, metavar="G", help="--slurm: GPUs (processes) per trial; 0: CPU")
    sweep.add_argument("--partition", metavar="P")
    sweep.add_argument("--account", metavar="A")
    sweep.add_argument("--time", default="24:00:00", metavar="T", help="--slurm: time limit per task")
    sweep.add_argument("--cpus-per-task", type=int, metavar="C", help="--slurm: CPUs per task (default 4 per GPU)")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # the command as typed: provenance and the resume hint repeat it
    try:
        _check_utf8(argv)
        app = importlib.import_module(f"lmlab.apps.{COMMANDS[args.command][0]}")
        return app.run(args)
    except LmlabError as err:
        print(f"lmlab {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def entry() -> int:
    """The ``lmlab`` command (the console script, ``python -m lmlab``): ``main``, then ready to exit."""
    code = main()
    exit_soon()
    return code


def exit_soon() -> None:
    """Just before the process exits: collect cyclic garbage once (finalizers that are due still
    run), then freeze what is left, so that the interpreter's shutdown does not walk the object
    graph of torch (and torch._dynamo, which its optimizers import) collection after collection:
    that took 0.6-0.8 s of every command that trained, on 2 CPU cores, each torchrun worker too.
    Only for a process that ends now: frozen objects are never collected."""
    gc.collect()
    gc.freeze()


def _check_utf8(argv: list[str]) -> None:
    """Bytes that are not UTF-8 in an argument (a path, a value) cannot be written to the run's
    config, events or provenance: refused up front, instead of failing halfway."""
    for word in argv:
        try:
            word.encode("utf-8")
        except UnicodeEncodeError:
            shown = word.encode("utf-8", "backslashreplace").decode("ascii", "replace")
            raise LmlabError(f"the argument {shown!r} holds bytes that are not UTF-8 text. Fix: use a "
                             "UTF-8 name (rename the file or folder it names).") from None


if __name__ == "__main__":
    sys.exit(main())
