"""``lmlab export --out``: never into, over or around a run; ``--force`` replaces only a previous export.

``--force`` once replaced whatever --out named: the run being exported, a folder of runs, a run's
checkpoints. Each such --out is now refused (exit 2, one message naming the folder and the fix,
nothing touched), with or without ``--force``; the refusal advertises ``--force`` only for a
previous export, recognised by its marker and by holding nothing but the files export wrote.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from helpers import copy_run
from lmlab.apps.export import EXPORT_MARKER
from lmlab.cli import main


@pytest.fixture(scope="module")
def runs(trained_run, tmp_path_factory) -> Path:
    """``runs/a`` and ``runs/b``: two copies of the session's tiny transformer run (two runs)."""
    runs = tmp_path_factory.mktemp("export_target") / "runs"
    for name in ("a", "b"):
        copy_run(trained_run("transformer"), runs / name)
    return runs


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else b"<dir>" for p in sorted(root.rglob("*"))}


def export(run: Path, out: Path, *extra: str) -> int:
    return main(["export", str(run), "--out", str(out), *extra])


# --out (relative to the runs folder) -> what the refusal says
DANGEROUS = {
    "a": "is a folder holding",  # the run being exported
    "a/checkpoints": "is a folder holding",
    "a/checkpoints/final": "is {runs}/a/checkpoints/final, the checkpoint being exported",
    ".": "is a folder holding",  # the folder of runs
    "..": "is a folder holding",
    "b": "is the run {runs}/b",  # another run
    "b/checkpoints": "is inside the run {runs}/b",
    "a/hf": "is inside the run {runs}/a",  # a new folder, but inside the run
    "a/config.yaml": "is a file, not a folder",
}


@pytest.mark.parametrize("force", [False, True], ids=["plain", "force"])
@pytest.mark.parametrize("out", sorted(DANGEROUS))
def test_export_never_writes_into_over_or_around_a_run(runs, out, force, capsys):
    before = snapshot(runs.parent)
    assert export(runs / "a", runs / out, *(["--force"] if force else [])) == 2
    err = capsys.readouterr().err
    assert DANGEROUS[out].format(runs=runs) in err and f"--out {runs / out} " in err
    assert "Fix: pick another --out" in err or "Fix: pass the path of a new folder" in err
    assert "--force" not in err and "Traceback" not in err and err.count("error:") == 1
    assert snapshot(runs.parent) == before  # nothing deleted, nothing written


def test_a_folder_of_runs_elsewhere_is_not_replaced(runs, tmp_path, capsys):
    """A folder holding runs, exported into from a run outside it: not an export, so never replaced."""
    shutil.copytree(runs / "b", tmp_path / "held" / "b")
    before = snapshot(tmp_path)
    assert export(runs / "a", tmp_path / "held", "--force") == 2
    err = capsys.readouterr().err
    assert "holds what no lmlab export wrote (b)" in err and "--force" not in err.split("Fix:")[1]
    assert "delete" in err and snapshot(tmp_path) == before


def test_force_replaces_a_previous_export_and_nothing_else(runs, tmp_path, capsys):
    pytest.importorskip("transformers")
    out = tmp_path / "hf"
    assert export(runs / "a", out) == 0
    marker = json.loads((out / EXPORT_MARKER).read_text())
    assert set(marker["files"]) | {EXPORT_MARKER} == {p.name for p in out.iterdir()}
    capsys.readouterr()
    assert export(runs / "a", out) == 2  # a previous export: --force is the fix
    assert "holds a previous lmlab export. Fix: pass --force to replace it" in capsys.readouterr().err
    (out / "README.md").write_text("old card")
    assert export(runs / "a", out, "--force") == 0
    assert (out / "README.md").read_text() != "old card"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]  # no temporary or old copy left
    (out / "notes.txt").write_text("mine")  # a file export did not write: no longer only an export
    capsys.readouterr()
    assert export(runs / "a", out, "--force") == 2
    err = capsys.readouterr().err
    assert "holds what no lmlab export wrote (notes.txt)" in err and "not even with --force" in err
    assert (out / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("out", ["plainfile/x", "/proc/lmlab-export"], ids=["parent-is-a-file", "unwritable"])
def test_an_unwritable_out_is_a_user_error(runs, tmp_path, out, capsys):
    pytest.importorskip("transformers")
    (tmp_path / "plainfile").write_text("x")
    target = tmp_path / out if not out.startswith("/") else Path(out)
    assert export(runs / "a", target) == 2
    err = capsys.readouterr().err
    assert f"cannot write the export to --out {target}" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plainfile"]
