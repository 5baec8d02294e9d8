"""Shared fixtures: the tiers, the toy corpora, one thread, hand-written runs, and the trained runs
every tier shares (``trained_run``: each tiny recipe of helpers.RECIPES trained once a session).
Plain helpers live in tests/helpers.py."""
from __future__ import annotations

import contextlib
import secrets
import signal
from pathlib import Path

import pytest
import torch

from badinput import build_base
from fakerun import write_fake_run
from helpers import RECIPES, make_jsonl_root, make_wikitext_dir
from lmlab.cli import main
from lmlab.config import load_config
from lmlab.evaluation.loading import load_for_eval, saved_config_file
from lmlab.rundir import resolve_checkpoint

# Three tiers, one folder each: unit/ (no training run), integration/ (runs trained in this process),
# system/ (what starts processes: torchrun, `python -m lmlab`, kill -9, signals, SLURM). The system
# marker follows the folder, so `python -m pytest -q -n auto -m "not system"` is the edit loop and
# README's plain command runs all three.
TESTS = Path(__file__).parent
SYSTEM_TIER = TESTS / "system"

# A test run started in the background (`bash .ci/run &`, a CI runner without job control) has
# SIGINT ignored, as bash sets it for `&` jobs, and every process it starts inherits that: the
# Ctrl-C tests would send SIGINT to processes that never see it. lmlab keeps an ignored SIGINT
# ignored on purpose (`nohup lmlab train &`), so the tests restore the default here, once.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


# README's commands run the tests on every core (pytest-xdist, `-n auto --dist loadgroup`). A worker
# builds its own session fixtures, so the system tests that share costly ones run on one worker:
# the 2-process torchrun runs of RECIPES["two_readers"] (tests/system/distributed/conftest.py) and
# the zygote (tests/zygote.py). Every other system module stays on one worker too (its module
# fixtures start processes); in-process tests are dealt out one by one.
SHARED_SESSION_FIXTURES = {
    "two_readers": ("distributed/test_torchrun.py", "distributed/test_disjoint_readers.py"),
    "zygote": ("training/test_kill_resume.py", "training/test_run_lock.py", "training/test_faults.py"),
}


def xdist_group(path: Path) -> str:
    module = path.relative_to(SYSTEM_TIER).as_posix()
    return next((group for group, modules in SHARED_SESSION_FIXTURES.items() if module in modules), module)


@pytest.hookimpl(tryfirst=True)  # before pytest's -m selection and xdist's grouping read the markers
def pytest_collection_modifyitems(items) -> None:
    for item in items:
        if SYSTEM_TIER in item.path.parents:
            item.add_marker(pytest.mark.system)
            item.add_marker(pytest.mark.xdist_group(xdist_group(item.path)))


@pytest.fixture
def jsonl_root(tmp_path: Path) -> Path:
    """A toy Lingua-layout corpus: sources alpha and beta, two chunk files and a val file each."""
    return make_jsonl_root(tmp_path / "data")


@pytest.fixture
def wikitext_dir(tmp_path: Path) -> Path:
    """A toy corpus in the tokenized WikiText-2 file layout (train.txt, valid.txt): 8 steps an epoch
    of TINY_CONTEXT_VECTOR."""
    return make_wikitext_dir(tmp_path / "wikitext")


@pytest.fixture
def wandb_env(tmp_path, monkeypatch) -> dict[str, str]:
    """Planted fake credentials, and W&B's own folders inside tmp_path (nothing lands in $HOME)."""
    planted = {"WANDB_API_KEY": secrets.token_hex(20), "HF_TOKEN": "hf_" + secrets.token_hex(17)}
    for name, value in planted.items():
        monkeypatch.setenv(name, value)
    for name in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb_home" / name.lower()))
    for name in ("WANDB_MODE", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_RUN_ID", "WANDB_RESUME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    return planted


@contextlib.contextmanager
def single_thread():
    """Tiny models on a busy 2-core machine: a second intra-op thread buys nothing, and its
    spin-waiting made small forwards many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def one_thread():
    """A module on one thread (``single_thread``). Modules opt in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    with single_thread():
        yield


# --------------------------------------------------------------------------- runs written by hand


@pytest.fixture
def make_fake_run():
    """``make_fake_run(path, model_size=..., steps=20)``: see ``fakerun.write_fake_run``."""
    return write_fake_run


@pytest.fixture
def fake_run(tmp_path) -> Path:
    return write_fake_run(tmp_path / "fake")


# --------------------------------------------------------------------------- trained runs


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """The toy jsonl corpus (``make_jsonl_root``) the recipes of helpers.RECIPES train on; never written to."""
    return make_jsonl_root(tmp_path_factory.mktemp("corpus") / "data")


@pytest.fixture(scope="session")
def tiny_wikitext(tmp_path_factory) -> Path:
    """The toy WikiText-2 folder (``make_wikitext_dir``: 8 steps an epoch) the recipes train on."""
    return make_wikitext_dir(tmp_path_factory.mktemp("wikitext") / "wikitext")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, tiny_corpus, tiny_wikitext):
    """``trained_run(name)``: the finished run of ``RECIPES[name]``, trained once a session (in this
    process, on one thread, as every run it is compared with). Tests read it; a test that changes
    a run works on ``copy_run(trained_run(name), ...)``."""
    root = tmp_path_factory.mktemp("trained")
    runs: dict[str, Path] = {}

    def trained(name: str) -> Path:
        if name not in runs:
            with single_thread():
                recipe = RECIPES[name]
                data = {"jsonl": tiny_corpus, "wikitext": tiny_wikitext}.get(recipe.reads)
                assert main(recipe.argv(root / name, data)) == 0, name
            runs[name] = root / name
        return runs[name]

    return trained


@pytest.fixture(scope="session")
def bad_input_base(trained_run, tiny_corpus, tmp_path_factory) -> dict[str, Path]:
    """What the bad-input tables damage copies of (badinput.build_base), made once a session."""
    return build_base(trained_run("transformer"), tiny_corpus, tmp_path_factory.mktemp("bad_inputs"))


def load_run(path: str | Path, overrides: list[str] = (), device: str = "cpu"):
    """A run or checkpoint directory loaded as ``lmlab eval`` / ``lmlab generate`` load it."""
    checkpoint_dir, run_dir = resolve_checkpoint(path)
    cfg = load_config(saved_config_file(checkpoint_dir, run_dir), list(overrides))
    return load_for_eval(checkpoint_dir, run_dir, cfg, device)


@pytest.fixture(scope="session")
def load():
    return load_run
