"""Hostile inputs in a real process: what a user sees for a gzip source (in-process tests cannot see
sys.excepthook). The refusals themselves are tests/unit/data/test_hostile_inputs.py."""
from __future__ import annotations

import gzip
import json

from helpers import run_lmlab


def test_no_traceback_in_a_real_process(tmp_path):
    """One subprocess: what a user sees for a gzip source (in-process tests cannot see sys.excepthook)."""
    source = tmp_path / "a.jsonl"
    source.write_bytes(gzip.compress(json.dumps({"text": "hello"}).encode() + b"\n"))
    done = run_lmlab("data", "prepare", str(source), "--out", str(tmp_path / "o"), "--quiet", timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr and "gzip-compressed" in done.stderr
    assert not (tmp_path / "o").exists()
