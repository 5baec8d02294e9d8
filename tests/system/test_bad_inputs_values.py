"""A really read-only run directory: `lmlab eval` and `lmlab report` on a read-only bind mount in a
private mount namespace (`unshare -m`), where the machine allows one. The table of bad values, with
read-only folders simulated in-process, is tests/integration/test_bad_inputs_values.py."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from helpers import CONFIGS, run_lmlab


_MOUNT_READ_ONLY = 'mount --bind "$RUN" "$RUN" && mount -o remount,ro,bind "$RUN" "$RUN"'


def _unshare_available() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", 'mount --bind / /mnt 2>/dev/null'],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


def test_a_really_read_only_run_directory(bad_input_base, tmp_path):
    """``lmlab eval`` and ``lmlab report`` on a real read-only bind mount of a run: refused before
    any work with the --out fix, then done with --out; the run's files are untouched."""
    if not _unshare_available():
        pytest.skip("no private mount namespace (unshare -m) on this machine")
    run = tmp_path / "run"
    shutil.copytree(bad_input_base["finished"], run)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    out = tmp_path / "out"
    commands = [["eval", str(run), "--quiet"], ["eval", str(run), "--quiet", "--out", str(out)],
                ["report", str(run)], ["report", str(run), "--out", str(out)]]
    # every command inside one namespace, where the run directory is mounted read-only
    script = _MOUNT_READ_ONLY + "".join(
        f' && {{ "$PYTHON" -m lmlab {" ".join(c)}; echo "rc=$?"; }}' for c in commands)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PYTEST")},
           "RUN": str(run), "PYTHON": run_lmlab.__globals__["sys"].executable}
    done = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True,
                          timeout=600, env=env, cwd=CONFIGS.parent)
    codes = [line for line in done.stdout.splitlines() if line.startswith("rc=")]
    assert codes == ["rc=2", "rc=0", "rc=2", "rc=0"], done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert (f"lmlab eval: error: cannot write the evaluation results: {run} is not writable "
            "(Read-only file system)") in done.stderr
    assert f"lmlab report: error: cannot write the report: {run} is not writable" in done.stderr
    assert "could not write" not in done.stderr  # with --out, nothing tries the run directory
    assert (out / "eval_results.json").is_file() and (out / "report.md").is_file()
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
