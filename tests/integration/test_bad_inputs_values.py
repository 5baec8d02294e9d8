"""Bad values and unwritable places, table-driven like tests/integration/test_bad_inputs.py (same checks: exit
code, no traceback, the culprit and the fix named, nothing that was there lost): non-finite floats
anywhere in a config, a warmup longer than the run (a warning: the run goes on), a read-only run
directory for ``lmlab eval`` / ``lmlab report`` (refused before the work, or results printed when a
write fails after it; ``--out DIR`` for both), and prompts beyond the model's context.

Read-only folders: the tests run as root, which ignores permission bits, so ``read_only`` makes a
folder refuse what creates or changes files in it (``os.open`` for writing, ``open`` in a writing
mode, ``os.mkdir``) with EROFS, as a read-only mount does. tests/system/test_bad_inputs_values.py
checks the same behaviour on a real read-only bind mount, in a private mount namespace
(``unshare -m``), where the machine allows one.
"""
from __future__ import annotations

import builtins
import errno
import io
import json
import os
from pathlib import Path

import pytest

import lmlab.apps.evaluate
from badinput import Case, Ctx, durations_reporter, run_case, train_argv, yaml_file
from helpers import CONFIGS, TINY_CONTEXT_VECTOR, TINY_TRANSFORMER, data_overrides
from lmlab.cli import main
from lmlab.preflight import load_and_check

CONTEXT = 128  # data.seq_len of the base run, so its transformer's context
PROMPT = ("It was the best of times, it was the worst of times, it was the age of wisdom, it was "
          "the age of foolishness, it was the epoch of belief. ")
_WRITING = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def read_only(ctx: Ctx, *folders: Path) -> None:
    """Writes into ``folders`` (and below) fail with EROFS until the case ends; reads work."""
    roots = [os.path.realpath(f) for f in folders]
    real_os_open, real_open, real_mkdir = os.open, builtins.open, os.mkdir

    def inside(path) -> bool:
        if isinstance(path, int):
            return False
        where = os.path.realpath(os.fspath(path))
        return any(where == r or where.startswith(r + os.sep) for r in roots)

    def refuse(path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))

    def os_open(path, flags, *args, **kwargs):
        if flags & _WRITING and inside(path):
            refuse(path)
        return real_os_open(path, flags, *args, **kwargs)

    def open_(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and inside(file):
            refuse(file)
        return real_open(file, mode, *args, **kwargs)

    def mkdir(path, *args, **kwargs):
        if inside(path):
            refuse(path)
        return real_mkdir(path, *args, **kwargs)

    for module, name, fake in ((os, "open", os_open), (builtins, "open", open_), (io, "open", open_),
                               (os, "mkdir", mkdir)):
        ctx.monkeypatch.setattr(module, name, fake)


def setup_eval_read_only(ctx: Ctx, *extra: str) -> list[str]:
    read_only(ctx, ctx.finished)
    return ["eval", str(ctx.finished), "--quiet", *extra]


def setup_eval_turns_read_only(ctx: Ctx) -> list[str]:
    """The run directory becomes read-only while the evaluation runs (after the probe passed)."""
    real = lmlab.apps.evaluate.run_evaluation

    def evaluate_then_lock(*args, **kwargs):
        rows = real(*args, **kwargs)
        read_only(ctx, ctx.finished)
        return rows

    ctx.monkeypatch.setattr(lmlab.apps.evaluate, "run_evaluation", evaluate_then_lock)
    return ["eval", str(ctx.finished), "--quiet"]


def setup_report_read_only(ctx: Ctx, *extra: str) -> list[str]:
    read_only(ctx, ctx.finished)
    return ["report", str(ctx.finished), *extra]


def setup_generate(ctx: Ctx, prompt: str = PROMPT, *extra: str) -> list[str]:
    return ["generate", str(ctx.finished), "--prompt", prompt, "--max-tokens", "200", *extra]


CUT = (f"lmlab generate: warning: the model's context is {CONTEXT} tokens: the prompt "
       f"({len(PROMPT.encode())} tokens after BOS) was cut to BOS + its last 96 tokens, to leave "
       "room for 32 of the 200 new tokens asked for")

CASES = [
    # ---- non-finite floats: every float field, also inside mappings, from overrides or YAML
    Case("lr_nan", lambda c: c.train("optim.lr=nan"),
         ("optim.lr: must be a finite number, got nan.",
          "fix: set optim.lr to a finite number, e.g. optim.lr=0.0003 (its default)")),
    Case("lr_inf", lambda c: c.train("optim.lr=inf"),
         ("optim.lr: must be a finite number, got inf.", "fix: set optim.lr to a finite number")),
    Case("nan_source_weight", lambda c: c.train("data.sources={alpha: .nan, beta: 1.0}"),
         ("data.sources.alpha: must be a finite number, got nan.",
          "fix: set data.sources.alpha to a finite number, e.g. data.sources.alpha=1.0")),
    Case("weight_decay_inf", lambda c: c.train("optim.weight_decay=inf"),
         ("optim.weight_decay: must be a finite number, got inf.",
          "fix: set optim.weight_decay to a finite number, e.g. optim.weight_decay=0.1")),
    Case("nan_and_minus_inf_in_yaml",
         lambda c: ["train", str(yaml_file(c, "optim:\n  eps: .nan\n  clip: -.inf\nmodel:\n"
                                              "  rope_theta: .inf\n")), *data_overrides(c.data),
                    f"dump_dir={c.tmp / 'new'}"],
         ("optim.eps: must be a finite number, got nan.", "optim.clip: must be a finite number, got -inf.",
          "model.rope_theta: must be a finite number, got inf.", "configuration has 3 problems")),
    Case("nan_temperature", lambda c: setup_generate(c, "Hi", "--temperature", "nan"),
         ("--temperature: must be a finite number >= 0, got nan.", "fix: --temperature 0")),
    # ---- a warmup longer than the run: a warning, and the run goes on
    Case("warmup_longer_than_the_run",
         lambda c: train_argv(c.data, c.tmp / "newrun", "optim.warmup=100"),
         ("lmlab train: warning: optim.warmup: warmup of 100 steps is longer than the run (steps=6): "
          "the learning rate rises the whole run, reaches 6% of its peak",
          "fix: set optim.warmup to a small part of the run", "finished after 6 steps"), code=0),
    Case("warmup_longer_than_the_run_in_check",
         lambda c: ["check", *train_argv(c.data, c.tmp / "newrun", "optim.warmup=6")[1:]],
         ("lmlab check: warning: optim.warmup: warmup of 6 steps is as long as the run (steps=6)",
          "reaches its peak only at the last step", "passes preflight", "1 warning above"), code=0),
    # ---- a read-only run directory: refused before the work, with the --out fix ...
    Case("eval_read_only_run_dir", setup_eval_read_only,
         ("cannot write the evaluation results: {finished} is not writable (Read-only file system); "
          "{finished}/checkpoints/final is not writable (Read-only file system)", "Nothing was evaluated",
          "Fix: make it writable, or write the results to another folder: lmlab eval {finished} --out DIR")),
    Case("report_read_only_run_dir", setup_report_read_only,
         ("cannot write the report: {finished} is not writable (Read-only file system)",
          "Fix: make it writable, or write the report elsewhere: lmlab report {finished} --out DIR")),
    # ... results printed (table and JSON) when a write fails after the work, then exit 2
    Case("eval_run_dir_turns_read_only", setup_eval_turns_read_only,
         ("validation   loss", '"results": [', '"metric": "loss"',
          "could not write {finished}/checkpoints/final/eval_results.json: Read-only file system",
          "Nothing computed is lost: the results are printed above on stdout",
          "lmlab eval {finished} --out DIR")),
    # ... and --out writes elsewhere, leaving the read-only run directory alone
    Case("eval_out_dir", lambda c: setup_eval_read_only(c, "--out", str(c.tmp / "evals")),
         ("validation   loss", "results: {tmp}/evals/eval_results.json (also appended to "
          "{tmp}/evals/metrics.eval.jsonl)"), code=0),
    Case("report_out_dir", lambda c: setup_report_read_only(c, "--out", str(c.tmp / "report")),
         ("wrote {tmp}/report/report.md",), code=0),
    # ---- eval --out inside a run (another run, or this run's checkpoints): never written into
    Case("eval_out_another_run", lambda c: ["eval", str(c.finished), "--quiet", "--out", str(c.run)],
         ("--out {tmp}/resumable is the run {tmp}/resumable; eval --out never writes into a run",
          "Fix: leave out --out to write the results into {finished}, or pick a folder outside every run")),
    Case("eval_out_in_checkpoints", lambda c: ["eval", str(c.finished), "--quiet", "--out",
                                               str(c.finished / "checkpoints" / "evals")],
         ("--out {finished}/checkpoints/evals is inside the run {finished}",)),
    # ---- eval overrides that a checkpoint fixes (the model, its tokenizer, training settings)
    Case("eval_model_override", lambda c: ["eval", str(c.finished), "model.dim=8", "optim.lr=0.1",
                                           "data.tokenizer.name=bytes", "--quiet"],
         ("configuration has 3 problems", "model.dim: does not apply to evaluation",
          "optim.lr: does not apply", "data.tokenizer.name: does not apply",
          "fix: drop it; eval takes eval.*, report.*, data.* (validation data), device, precision")),
    # ---- a prompt and --max-tokens beyond the context: BOS + the prompt's end kept, said once
    Case("generate_beyond_the_context", setup_generate, (CUT,), code=0),
]


_report_durations = durations_reporter("bad-value case durations", CASES)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_bad_value(case: Case, bad_input_base, tmp_path, monkeypatch, capsys):
    result = run_case(case, bad_input_base, tmp_path, monkeypatch, capsys)
    finished = tmp_path / "finished"
    if case.id in ("eval_out_dir", "report_out_dir"):  # nothing new in the read-only run either
        assert set(result.before) == {p for p in finished.rglob("*") if p.is_file()}
    if case.id == "eval_out_dir":
        saved = json.loads((tmp_path / "evals" / "eval_results.json").read_text())
        assert {r["metric"] for r in saved["results"]} >= {"loss", "ppl"}
    if case.id == "report_out_dir":
        report = (tmp_path / "report" / "report.md").read_text()
        plots = sorted((tmp_path / "report" / "plots").glob("*.png"))
        assert plots and all(f"](plots/{p.name})" in report for p in plots)
    if case.id == "eval_run_dir_turns_read_only":  # the printed JSON holds every row, in full
        printed = json.loads(result.out[result.out.index("{"):])
        assert {r["metric"] for r in printed["results"]} >= {"loss", "ppl"}
    if case.id == "warmup_longer_than_the_run":  # recorded in the run's event log too
        events = (tmp_path / "newrun" / "events.jsonl").read_text()
        assert '"category": "ConfigWarning"' in events and "optim.warmup" in events


def test_the_table_covers_the_issue():
    assert len({c.id for c in CASES}) == len(CASES) >= 14


# --------------------------------------------------------------------------- beyond the table


def test_a_non_finite_weight_is_the_only_problem_reported(bad_input_base, tmp_path):
    """The invalid mapping falls back to its default (no sources); that default's own problem
    ("data.sources: no sources given") would only mislead, so it is not added."""
    from lmlab.errors import ConfigError

    args = [*TINY_TRANSFORMER, *data_overrides(bad_input_base["data"]), f"dump_dir={tmp_path / 'r'}"]
    with pytest.raises(ConfigError) as caught:
        load_and_check(CONFIGS / "debug.yaml", [*args, "data.sources={alpha: .nan, beta: .inf}"])
    assert [p.key for p in caught.value.problems] == ["data.sources.alpha", "data.sources.beta"]


def sharpen(run: Path) -> None:
    """After 6 steps the base run's model gives nearly the same logits whatever it reads, so every
    prompt would continue alike; wider weights (as tests/unit/evaluation's peaked models) make its
    output depend on the prompt."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    for weights in run.glob("checkpoints/*/model.safetensors"):
        with safe_open(str(weights), "pt") as handle:
            meta = handle.metadata()
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
        save_file({k: v * 15 if v.ndim > 1 else v for k, v in tensors.items()}, str(weights), meta)


def test_generate_beyond_the_context_keeps_each_prompt(bad_input_base, tmp_path, monkeypatch, capsys):
    """Two prompts that end alike but differ in their last 96 tokens: cut to their last token (the
    old behaviour, BOS dropped) they gave the same output; now each keeps BOS and its own end."""
    ctx = Ctx(bad_input_base, tmp_path, monkeypatch)
    sharpen(ctx.finished)
    outputs = []
    for prompt in (PROMPT + "In short, the period was so far like the present.",
                   PROMPT + "We had everything before us, we had nothing before us."):
        assert main(setup_generate(ctx, prompt)) == 0
        out, err = capsys.readouterr()
        assert err.count("warning") == 1 and "was cut to BOS + its last 96 tokens" in err
        assert out.startswith(prompt)
        outputs.append(out[len(prompt):])
    assert outputs[0] != outputs[1]


def test_generate_with_a_prompt_that_fits_says_only_the_cap(bad_input_base, tmp_path, monkeypatch, capsys):
    ctx = Ctx(bad_input_base, tmp_path, monkeypatch)
    assert main(setup_generate(ctx, "Hello")) == 0
    err = capsys.readouterr().err
    assert err.count("warning") == 1
    assert (f"the model's context is {CONTEXT} tokens: after the prompt (5 tokens after BOS) there "
            f"is room for {CONTEXT - 5} of the 200 new tokens asked for") in err


def test_epoch_mode_warns_once_the_planned_steps_are_known(tmp_path, capsys):
    """Epoch mode's step count needs the data read: `lmlab check` cannot say it cheaply (no warning),
    `lmlab train` says it after its data phase, with the planned steps, and trains."""
    from helpers import make_wikitext_dir

    args = [str(CONFIGS / "newllm_wikitext2_baseline.yaml"), *TINY_CONTEXT_VECTOR,
            f"data.path={make_wikitext_dir(tmp_path / 'wt')}",
            "epochs=1", "optim.warmup=1000", f"dump_dir={tmp_path / 'run'}"]
    assert main(["check", *args]) == 0
    assert "warning" not in capsys.readouterr().err
    assert main(["train", *args]) == 0
    err = capsys.readouterr().err
    assert err.count("lmlab train: warning: optim.warmup: warmup of 1000 steps is longer than the run (") == 1
    assert " steps for epochs=1)" in err
