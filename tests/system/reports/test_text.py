"""Importing the report strings is cheap: a fresh interpreter that imports lmlab.reports.text loads
neither torch nor matplotlib (only a new process shows what an import pulls in)."""
from __future__ import annotations

import subprocess
import sys


def test_importing_text_is_cheap():
    code = "import sys, lmlab.reports.text; print(sorted(m for m in ('torch', 'matplotlib') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
