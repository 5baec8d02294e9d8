"""The import-layering contracts hold: `lint-imports` (import-linter, the contracts in pyproject.toml) run as
CI runs it, on this checkout and on a copy that breaks a contract. The checks of the package's shape
that need no process are tests/unit/test_architecture.py."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO


LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    if not LINT_IMPORTS.exists():
        pytest.fail(f"{LINT_IMPORTS} is missing: pip install -e '.[dev]' installs import-linter")
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={"PYTHONPATH": str(cwd), "PATH": "/usr/bin:/bin"})


def test_import_contracts_hold():
    out = lint_imports(REPO)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout


def test_a_forbidden_import_breaks_a_contract(tmp_path):
    """The contracts can fail: reports reaching for the training code (and so torch) is caught."""
    copy = tmp_path / "repo"
    shutil.copytree(REPO / "lmlab", copy / "lmlab", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", copy / "pyproject.toml")
    runs = copy / "lmlab" / "reports" / "runs.py"
    runs.write_text(runs.read_text() + "\nfrom lmlab.training import checkpoint  # noqa\n")
    out = lint_imports(copy)
    assert out.returncode != 0
    assert "Reports only read run directories" in out.stdout and "BROKEN" in out.stdout
    assert "lmlab.reports.runs -> lmlab.training.checkpoint" in out.stdout
