"""Bad inputs through the real command line (``python -m lmlab``, a subprocess): a mid-training and a
resume error of the table (tests/badinput_cases.py) show no traceback, exit 2 with the message and
lose nothing, as a user sees them. Every row runs in-process in tests/integration/test_bad_inputs.py."""
from __future__ import annotations

import pytest

from badinput import assert_nothing_lost, check_outcome, prepare, snapshot
from badinput_cases import CASES
from helpers import run_lmlab

REAL_CLI = ["malformed_json_line", "checkpoint_of_another_shape"]  # a mid-training and a resume error


@pytest.mark.parametrize("case_id", REAL_CLI)
def test_real_command_line_shows_no_traceback(case_id, bad_input_base, tmp_path, monkeypatch):
    case = next(c for c in CASES if c.id == case_id)
    ctx, argv, expected = prepare(case, bad_input_base, tmp_path, monkeypatch)
    before = snapshot(ctx.watched)
    out = run_lmlab(*argv, timeout=120)
    check_outcome(case, out.returncode, out.stdout, out.stderr, expected)
    if case.code == 2:
        assert out.stderr.startswith(f"lmlab {argv[0]}: error: ")
    assert_nothing_lost(before, case.rewrites)
