"""``lmlab runs`` and ``lmlab report`` read run directories only: neither they nor any module of
``lmlab.reports`` may import torch (it takes seconds to load, and a report must not need it)."""
from __future__ import annotations

import os
import pkgutil
import subprocess
import sys

import pytest

import lmlab.reports
from helpers import REPO


def imported_modules(*args: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run ``python -X importtime -m lmlab ARGS``; the names of every module it imported."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "lmlab", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120, env=env)
    names = {line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines()
             if line.startswith("import time:") and "|" in line}
    return done, names - {"imported package"}


def assert_no_torch(names: set[str]) -> None:
    assert names, "no -X importtime output"
    torch = sorted(n for n in names if n == "torch" or n.startswith("torch."))
    assert not torch, torch[:10]


def test_lmlab_runs_does_not_import_torch(tmp_path, make_fake_run):
    make_fake_run(tmp_path / "runs" / "a")
    done, names = imported_modules("runs", str(tmp_path / "runs"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "finished" in done.stdout and "20/20 steps" in done.stdout
    assert "lmlab.reports.runs" in names
    assert_no_torch(names)


def test_lmlab_report_does_not_import_torch(tmp_path, make_fake_run):
    run = make_fake_run(tmp_path / "run")
    done, names = imported_modules("report", str(run), "--lang", "ja")
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"wrote {run / 'report.ja.md'}" in done.stdout
    assert "lmlab.reports.report" in names and "matplotlib" in names  # the plots were drawn
    assert_no_torch(names)


@pytest.mark.parametrize("module", sorted(m.name for m in pkgutil.iter_modules(lmlab.reports.__path__)))
def test_reports_modules_do_not_import_torch(module):
    code = f"import sys, lmlab.reports.{module}; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
