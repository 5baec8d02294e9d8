"""Bad inputs, table-driven: every case exits 2 (one case, a finished run, exits 0 by design) with a
message naming the file / key / line and the fix, shows no traceback, and loses nothing that was
already in the run directory (earlier files still exist; each one's earlier content is a prefix of
its new content, since append-only logs may grow).

Cases (the table: tests/badinput_cases.py) run in-process through ``lmlab.cli.main`` (fast; lets the
disk-full case patch the checkpoint writer); a few representative ones also run through the real
command line in a subprocess: tests/system/test_bad_inputs.py.
How long each case takes is recorded and printed at the end of the module, never asserted (tests
never assert timings); ``pytest --durations=0`` shows the same.
"""
from __future__ import annotations

import pytest

from badinput import Case, durations_reporter, run_case, snapshot
from badinput_cases import CASES
from lmlab.cli import main


_report_durations = durations_reporter("bad-input case durations", CASES)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_bad_input(case: Case, bad_input_base, tmp_path, monkeypatch, capsys):
    result = run_case(case, bad_input_base, tmp_path, monkeypatch, capsys)
    if case.id == "resume_finished_run":  # nothing trained, only the event log grew
        grown = {p for p, old in result.before.items() if p.read_bytes() != old}
        assert {p.name for p in grown} <= {"events.jsonl"}
        assert {p for p in snapshot(result.ctx.watched)} == set(result.before)
        assert main(result.argv) == 0 and capsys.readouterr().out == result.out  # again: the same
    if case.id == "disk_full_while_saving":  # the half-written save is gone, step 3 is intact
        leftovers = [p.name for p in (result.ctx.run / "checkpoints").iterdir() if p.name.startswith(".")]
        assert leftovers == []


def test_the_table_covers_the_issue():
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)
