"""The command line as a user meets it: exit codes, messages, no tracebacks, no wasted compute.

In-process (``lmlab.cli.main``, what ``python -m lmlab`` calls): an exit code and what is printed
are all these check."""
from __future__ import annotations

import json

import pytest

from helpers import CONFIGS, run_main, tiny_args, write_jsonl
from lmlab.cli import main

DEBUG = str(CONFIGS / "debug.yaml")


def test_info_json_reports_the_reference_parameter_count(capsys):
    out = run_main(capsys, "info", DEBUG, "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["params"] == 103_306_240 and info["model"] == "transformer"
    assert isinstance(info["flops_per_token"], int) and "6N" in info["flops_formula"]
    assert info["tokens_per_step"] == 32 * 2048


@pytest.fixture
def missing_val_root(tmp_path):
    """Source 'web' has validation files; source 'wiki' has none (the reference run's crash)."""
    root = tmp_path / "data"
    write_jsonl(root / "wiki" / "wiki.chunk.00.jsonl", ["some training text"] * 10)
    write_jsonl(root / "web" / "web.chunk.00.jsonl", ["more training text"] * 10)
    write_jsonl(root / "web" / "web.val.jsonl", ["validation text"] * 5)
    return root


@pytest.mark.parametrize("command", ["check", "train"])
def test_validation_without_val_files_is_refused_before_any_compute(command, tmp_path, missing_val_root, capsys):
    # (how fast this is gets measured, not asserted: tests never assert timings)
    run = tmp_path / "run"
    out = run_main(capsys, command, DEBUG, f"data.root_dir={missing_val_root}",
                "data.sources={wiki: 1.0, web: 1.0}", f"dump_dir={run}")
    assert out.returncode == 2
    assert "Traceback" not in out.stderr + out.stdout
    assert str(missing_val_root / "wiki") in out.stderr
    assert str(missing_val_root / "web") + " " not in out.stderr  # only the source that lacks them
    assert "add validation files" in out.stderr and "eval.validation.enabled=false" in out.stderr
    assert not run.exists()  # nothing trained, nothing written


def test_many_problems_are_reported_together(tmp_path, capsys):
    out = run_main(capsys, "check", DEBUG, "optim.lrr=1", "steps=0", "data.batch_size=6",
                "training.grad_accum=4", "data.seq_len=-1", "optim.lr=0", "nonsense",
                f"data.root_dir={tmp_path / 'nope'}", f"dump_dir={tmp_path / 'run'}")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    for needle in ("optim.lrr: unknown key. Did you mean 'lr'?", "steps: must be > 0",
                   "not divisible by training.grad_accum=4", "data.seq_len: must be > 0",
                   "optim.lr: must be > 0", "bad override syntax", "data.root_dir"):
        assert needle in out.stderr, needle


def test_unwritable_dump_dir_and_missing_config(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = run_main(capsys, "check", str(CONFIGS / "quickstart.yaml"), f"dump_dir={blocker / 'run'}")
    assert out.returncode == 2 and "dump_dir" in out.stderr and "not a directory" in out.stderr
    out = run_main(capsys, "check", str(tmp_path / "missing.yaml"))
    assert out.returncode == 2 and "config file not found" in out.stderr


def test_empty_data_file_and_cuda_without_gpu(tmp_path, capsys):
    root = tmp_path / "data"
    write_jsonl(root / "s" / "s.chunk.00.jsonl", ["text"])
    (root / "s" / "s.chunk.01.jsonl").write_text("")
    write_jsonl(root / "s" / "s.val.jsonl", ["text"])
    out = run_main(capsys, "check", DEBUG, f"data.root_dir={root}", "data.sources={s: 1}", "device=cuda",
                f"dump_dir={tmp_path / 'run'}")
    assert out.returncode == 2
    assert "s.chunk.01.jsonl: data file is empty" in out.stderr
    import torch
    if not torch.cuda.is_available():
        assert "cuda requested but no CUDA GPU is available" in out.stderr


def test_a_crash_after_preflight_is_recorded_and_reported_in_one_line(tmp_path, jsonl_root, monkeypatch,
                                                                       capsys):
    import lmlab.training.trainer as trainer_module
    from lmlab.reports.status import run_status

    def vanished(cfg, run_dir, on_record=None, rank=0, world_size=1):  # e.g. the data deleted between preflight and loading
        raise FileNotFoundError(2, "No such file or directory", str(jsonl_root / "alpha"))

    monkeypatch.setattr(trainer_module, "build_data", vanished)  # the name the Trainer uses
    run = tmp_path / "run"
    code = main(tiny_args(jsonl_root, run))
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert "failed in phase data: FileNotFoundError" in err and f"lmlab report {run}" in err
    status = run_status(run)
    assert (status["status"], status["phase"]) == ("failed", "data")
    assert (run / status["exception"]["traceback_file"]).is_file()


def test_an_argument_with_bytes_that_are_not_utf8_is_refused_up_front(tmp_path, capsys):
    """A dump_dir named with a stray byte (b"\\xff", as a shell passes it) used to fail halfway
    through writing the run directory; now nothing is written and the message says why."""
    import os

    run = os.fsdecode(os.fsencode(str(tmp_path)) + b"/r\xff")
    assert main(["train", str(CONFIGS / "quickstart.yaml"), f"dump_dir={run}", "steps=1"]) == 2
    err = capsys.readouterr().err
    assert "holds bytes that are not UTF-8 text" in err and "Fix: use a UTF-8 name" in err
    assert not any(tmp_path.iterdir())
