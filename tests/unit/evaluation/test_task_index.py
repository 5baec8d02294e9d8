"""lm-eval's index of the tasks it ships, cached on disk (``lmlab.evaluation.task_index``): built once,
read back after that, rebuilt when lm-eval changes, and the same index lm-eval's own TaskManager builds.
The "shipped" folder here is a small stand-in for lm-eval's ~14,000 task YAMLs."""
from __future__ import annotations

import json
import os
import shutil
from importlib import metadata
from pathlib import Path

import pytest
from lm_eval.tasks import TaskManager
from lm_eval.tasks._index import TaskIndex

from lmlab.evaluation import catalog, task_index

SHIPPED = {
    "alpha.yaml": "task: alpha\ntag: [letters]\ndataset_path: someorg/alpha\noutput_type: multiple_choice\n",
    "sub/beta.yaml": "include: ../base.inc\ntask: beta\ntag: letters\n",
    "base.inc": "dataset_path: json\ndataset_kwargs: {data_files: {test: /nowhere/beta.jsonl}}\n",
    "greek.yaml": "group: greek\ntask: [alpha, {task: delta, dataset_path: someorg/delta}]\n",
    "pyt.yaml": "task: pyt\nclass: !function utils.PyTask\n",
    "__pycache__/stale.yaml": "task: stale\n",
}
NAMES = {"alpha": "TASK", "beta": "TASK", "letters": "TAG", "greek": "GROUP", "pyt": "PY_TASK"}


def forget() -> None:
    """What this process remembers of the index (as a new process starts)."""
    for memo in (task_index.shipped_names, task_index.shipped_entries, task_index._stamp, catalog.task_manager):
        memo.cache_clear()


@pytest.fixture
def shipped(tmp_path, monkeypatch) -> Path:
    """A small shipped folder standing in for lm-eval's, and a cache folder of this test's own."""
    folder = tmp_path / "shipped"
    for name, text in SHIPPED.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    monkeypatch.setenv(task_index.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(task_index, "shipped_folder", lambda: folder)
    forget()
    yield folder
    forget()


@pytest.fixture
def builds(monkeypatch) -> list:
    """The folders lm-eval's index was built for, one item a build."""
    seen, real = [], TaskIndex.build
    monkeypatch.setattr(TaskIndex, "build", staticmethod(lambda paths, **kw: seen.append(list(paths))
                                                          or real(paths, **kw)))
    return seen


def entries(index: dict) -> dict:
    return {name: (e.kind, e.yaml_path, e.cfg, e.tags) for name, e in index.items()}


def test_the_index_is_built_once_then_read_from_the_cache(shipped, builds, monkeypatch):
    assert task_index.shipped_names() == NAMES
    built = entries(task_index.shipped_entries())
    assert builds == [[shipped]]
    assert built == entries(TaskIndex.build([shipped]))
    cache = task_index.cache_folder()
    assert json.loads(task_index.cache_file(shipped, task_index.NAMES).read_text())["data"] == NAMES
    forget()
    monkeypatch.setattr(TaskIndex, "build", staticmethod(lambda *a, **kw: pytest.fail("rebuilt")))
    assert task_index.shipped_names() == NAMES
    assert entries(task_index.shipped_entries()) == built
    assert catalog.is_known("letters") and not catalog.is_known("gamma")
    assert catalog.hub_datasets("greek") == ["someorg/alpha", "someorg/delta"]
    assert catalog.missing_local_files("letters") == ["/nowhere/beta.jsonl"]
    assert not list(cache.glob(".*tmp*"))  # written through a temporary file, renamed


def test_an_edited_task_file_or_another_lm_eval_rebuilds_the_index(shipped, builds, monkeypatch):
    assert "alpha" in task_index.shipped_names()
    (shipped / "alpha.yaml").write_text(SHIPPED["alpha.yaml"].replace("task: alpha", "task: alpha_two"))
    os.utime(shipped / "alpha.yaml", ns=(1, 1))
    forget()
    assert set(task_index.shipped_names()) == set(NAMES) - {"alpha"} | {"alpha_two"}
    assert "alpha_two" in task_index.shipped_entries()
    version = metadata.version
    monkeypatch.setattr(metadata, "version", lambda name: "99.0" if name == "lm_eval" else version(name))
    forget()
    assert "alpha_two" in task_index.shipped_names()
    assert len(builds) == 3


def test_two_installs_sharing_the_cache_folder_keep_their_own_files(shipped, builds, tmp_path, monkeypatch):
    other = tmp_path / "other_env" / "tasks"
    other.mkdir(parents=True)
    (other / "gamma.yaml").write_text("task: gamma\n")
    assert task_index.shipped_names() == NAMES
    monkeypatch.setattr(task_index, "shipped_folder", lambda: other)
    forget()
    assert task_index.shipped_names() == {"gamma": "TASK"}
    monkeypatch.setattr(task_index, "shipped_folder", lambda: shipped)
    forget()
    assert task_index.shipped_names() == NAMES
    assert builds == [[shipped], [other]]  # the first install's files were still there
    other_files = [task_index.cache_file(other, kind) for kind in (task_index.NAMES, task_index.ENTRIES)]
    assert all(f.is_file() for f in other_files)
    shutil.rmtree(other.parent)  # that environment deleted: its files go with the next build
    (shipped / "alpha.yaml").write_text(SHIPPED["alpha.yaml"] + "# edited\n")
    forget()
    assert task_index.shipped_entries() and not any(f.exists() for f in other_files)
    assert task_index.cache_file(shipped, task_index.ENTRIES).is_file()


def test_a_damaged_cache_is_rebuilt_and_an_unwritable_one_is_skipped(shipped, builds, tmp_path, monkeypatch):
    cache = task_index.cache_folder()
    cache.mkdir()
    for kind in (task_index.NAMES, task_index.ENTRIES):
        task_index.cache_file(shipped, kind).write_text('{"stamp": "')
    assert task_index.shipped_names() == NAMES
    assert json.loads(task_index.cache_file(shipped, task_index.ENTRIES).read_text())["data"]["beta"][0] == "TASK"
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    monkeypatch.setenv(task_index.CACHE_ENV, str(not_a_folder))
    forget()
    assert task_index.shipped_names() == NAMES
    assert len(builds) == 2


def test_a_manager_from_the_cache_indexes_what_lm_evals_own_does(shipped, tmp_path):
    local = tmp_path / "local"
    local.mkdir()
    (local / "beta.yaml").write_text("task: beta\ndataset_path: someorg/local_beta\n")  # overrides the shipped beta
    (local / "gamma.yaml").write_text("task: gamma\ntag: [letters, local_tag]\n")
    task_index.shipped_entries()  # the cache written, then read back as a new process would
    forget()
    ours = catalog.task_manager(str(local), True)
    theirs = TaskManager(include_path=[shipped, local], include_defaults=False)
    assert entries(ours.task_index) == entries(theirs.task_index)
    for names in ("all_tasks", "all_subtasks", "all_groups", "all_tags"):
        assert getattr(ours, names) == getattr(theirs, names), names
    assert catalog.all_names(str(local))[3:] == theirs.all_tasks
    assert catalog.hub_datasets("beta", str(local)) == ["someorg/local_beta"]


def test_the_cache_folder_is_lmlab_cache_dir_else_xdg_cache_home_else_home(tmp_path, monkeypatch):
    monkeypatch.setenv(task_index.CACHE_ENV, str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert task_index.cache_folder() == tmp_path / "mine"
    monkeypatch.delenv(task_index.CACHE_ENV)
    assert task_index.cache_folder() == tmp_path / "xdg" / "lmlab"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert task_index.cache_folder() == tmp_path / "home" / ".cache" / "lmlab"
