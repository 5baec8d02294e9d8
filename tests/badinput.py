"""The machinery of the bad-input tables (tests/integration/test_bad_inputs*.py): a tiny real run to
damage (the session's ``trained_run("transformer")``), fresh copies of it per case, the "nothing lost" snapshot, and the checks every case makes: the
promised exit code, no traceback, the culprit and the fix in the message."""
from __future__ import annotations

import contextlib
import json
import shutil
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable

import pytest

from helpers import CONFIGS, RECIPES, copy_run, write_jsonl
from lmlab.cli import main

DEBUG = str(CONFIGS / "debug.yaml")
BASE = RECIPES["transformer"]  # 6 steps, checkpoints 3 and 6 kept
DURATIONS: dict[str, float] = {}


def train_argv(data: Path, run: Path, *extra: str) -> list[str]:
    """The base run's command on ``data`` into ``run``, plus ``extra``."""
    return BASE.argv(run, data, *extra)


def build_base(finished: Path, data: Path, root: Path) -> dict[str, Path]:
    """The base run, trained once a session on ``data``: ``finished`` (checkpoints 3, 6 and final) and
    ``resumable``, the same run as a run killed after its step-3 checkpoint leaves it (resuming trains
    4..6). Every case works on fresh copies of these (Ctx), never on them."""
    resumable = copy_run(finished, root / "resumable")
    for name in ("0000000006", "final"):
        shutil.rmtree(resumable / "checkpoints" / name)
    metrics = resumable / "metrics.jsonl"
    metrics.write_text("".join(line + "\n" for line in metrics.read_text().splitlines()
                               if json.loads(line).get("step", 0) <= 3))
    return {"root": root, "data": data, "finished": finished, "resumable": resumable}


@dataclass
class Ctx:
    """What a case's setup works on: fresh copies, made on first use, of the base run."""

    base: dict[str, Path]
    tmp: Path
    monkeypatch: pytest.MonkeyPatch
    watched: list[Path] = field(default_factory=list)  # directories checked for "nothing lost"

    def _copy(self, name: str) -> Path:
        """A copy of a base run (copy_run: the base run's own command, aimed at it, is "the same command")."""
        target = copy_run(self.base[name], self.tmp / name)
        self.watched.append(target)
        return target

    @cached_property
    def run(self) -> Path:
        """A run stopped after its step-3 checkpoint; ``train_argv(ctx.data, ctx.run)`` resumes it."""
        return self._copy("resumable")

    @cached_property
    def finished(self) -> Path:
        return self._copy("finished")

    @property
    def data(self) -> Path:
        """The base run's data (shared: a case that needs other data writes it with new_data)."""
        return self.base["data"]

    def new_data(self, files: dict[str, bytes | list[str]]) -> Path:
        """A jsonl root with only ``files`` (relative path -> raw bytes, or texts as JSON lines)."""
        root = self.tmp / "newdata"
        root.mkdir()
        for rel, content in files.items():
            if isinstance(content, list):
                write_jsonl(root / rel, content)
            else:
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                (root / rel).write_bytes(content)
        return root

    def train(self, *extra: str) -> list[str]:
        """Resume ``ctx.run`` with the base run's command plus ``extra``."""
        return train_argv(self.data, self.run, *extra)


def snapshot(directories: list[Path]) -> dict[Path, bytes]:
    return {p: p.read_bytes() for d in directories if d.exists() for p in sorted(d.rglob("*"))
            if p.is_file()}


def assert_nothing_lost(before: dict[Path, bytes], rewrites: tuple[str, ...] = ()) -> None:
    lost = [str(p) for p in before if not p.is_file()]
    assert not lost, f"files that existed before the call are gone: {lost}"
    changed = [str(p) for p, old in before.items()
               if p.name not in rewrites and not p.read_bytes().startswith(old)]
    assert not changed, (f"files whose earlier content was not kept (only appending is allowed): "
                         f"{changed}; a refused invocation must leave the run's files as they were")


@dataclass(frozen=True)
class Case:
    id: str
    setup: Callable[[Ctx], list[str]]
    expect: tuple[str, ...]
    code: int = 2
    rewrites: tuple[str, ...] = ()  # files a run replaces by design once it resumes training
    marks: tuple = ()


def yaml_file(ctx: Ctx, text: str) -> Path:
    path = ctx.tmp / "bad.yaml"
    path.write_text(text)
    return path


def with_line(ctx: Ctx, line: bytes) -> Path:
    """A source whose only chunk file has ``line`` as line 3 (a small file: every line is read)."""
    good = b"".join(json.dumps({"text": f"good document {i} " * 8}).encode() + b"\n" for i in range(2))
    return ctx.new_data({"s/s.chunk.00.jsonl": good + line + b"\n" + good,
                         "s/s.val.jsonl": ["validation text " * 20] * 4})


def with_files(ctx: Ctx, files: dict[str, bytes | list[str]]) -> list[str]:
    """Resume the run reading a new data root with only ``files``."""
    return ctx.train(f"data.root_dir={ctx.new_data(files)}")


def bad_line_argv(ctx: Ctx, line: bytes, *extra: str) -> list[str]:
    root = with_line(ctx, line)
    return train_argv(root, ctx.tmp / "newrun", "data.sources={s: 1}", *extra)


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def prepare(case: Case, base, tmp_path, monkeypatch) -> tuple[Ctx, list[str], list[str]]:
    ctx = Ctx(base, tmp_path, monkeypatch)
    argv = case.setup(ctx)
    places = {"tmp": tmp_path, "run": tmp_path / "resumable", "finished": tmp_path / "finished",
              "data": base["data"]}
    expected = [e.format(**places) for e in case.expect]
    return ctx, argv, expected


def check_outcome(case: Case, code: int, out: str, err: str, expected: list[str],
                  logged: str = "") -> None:
    """``logged``: events.jsonl text, where in-process runs find the warnings pytest intercepts."""
    shown = out + err + logged
    assert code == case.code, f"exit {code}, expected {case.code}\nstdout:\n{out}\nstderr:\n{err}"
    assert "Traceback" not in shown
    missing = [e for e in expected if e not in shown]
    assert not missing, f"message lacks {missing}\nstdout:\n{out}\nstderr:\n{err}"
    if case.code == 2:
        assert ": error: " in err and "fix" in err.lower(), err


@dataclass
class Outcome:
    ctx: Ctx
    argv: list[str]
    code: int
    out: str
    before: dict[Path, bytes]  # the watched files before the call


def run_case(case: Case, base: dict[str, Path], tmp_path: Path, monkeypatch, capsys) -> Outcome:
    """One row in-process: its setup, ``lmlab.cli.main``, and every check."""
    ctx, argv, expected = prepare(case, base, tmp_path, monkeypatch)
    before = snapshot(ctx.watched)
    data_before = snapshot([base["data"]])
    capsys.readouterr()
    started = time.perf_counter()
    code = main(argv)
    DURATIONS[case.id] = time.perf_counter() - started
    out, err = capsys.readouterr()
    events = [p / "events.jsonl" for p in [*ctx.watched, tmp_path / "newrun"]
              if (p / "events.jsonl").is_file()]
    check_outcome(case, code, out, err, expected, "".join(p.read_text() for p in events))
    assert_nothing_lost(before, case.rewrites)
    assert snapshot([base["data"]]) == data_before  # the shared data is never touched
    return Outcome(ctx, argv, code, out, before)


def durations_reporter(title: str, cases: list[Case]):
    """A module fixture printing, once the module's cases ran, how long each took (measured, never
    asserted: tests never assert timings; ``pytest --durations=0`` shows the same)."""

    @pytest.fixture(scope="module", autouse=True)
    def _report_durations(request):
        yield
        mine = {c.id: DURATIONS[c.id] for c in cases if c.id in DURATIONS}
        if not mine:
            return
        lines = [f"  {name:<36} {seconds:6.2f} s" for name, seconds in sorted(mine.items(), key=lambda kv: -kv[1])]
        text = f"\n{title} (measured, not asserted):\n" + "\n".join(lines)
        reporter = request.config.pluginmanager.get_plugin("terminalreporter")
        capture = request.config.pluginmanager.get_plugin("capturemanager")
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            (reporter.write_line if reporter is not None else print)(text)

    return _report_durations
