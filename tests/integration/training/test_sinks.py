"""Metric sinks: metrics.jsonl always, W&B / TensorBoard when selected, no secret in any."""
from __future__ import annotations

import importlib.util
import os
import secrets
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from helpers import files_containing, tiny_args
from lmlab.cli import main
from lmlab.config import describe_fields, load_config_collecting
from lmlab.errors import LmlabError
from lmlab.rundir import WANDB_ID_FILE, read_jsonl
from lmlab.training import sinks as sinks_mod
from lmlab.training.metrics import LoggingConfig, TensorBoardConfig, WandbConfig, check
from lmlab.training.sinks import JsonlSink, build_sinks, numeric_only, truncate_metrics

# A CPU-only run logs mfu as None and the loop logs epoch numbers too: both shapes appear here.
METRICS = [{"loss": 2.5, "lr": 1e-3, "mfu": None}, {"loss": 2.0, "lr": 1e-3, "mfu": None},
           {"val/loss": 2.1, "val/ppl": 8.2}]
TENSORBOARD = LoggingConfig(tensorboard=TensorBoardConfig(enabled=True))


def log_all(sinks, metrics=METRICS) -> None:
    for step, m in enumerate(metrics, start=1):
        sinks.log(m, step)


def tensorboard_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


# --------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("seconds_apart", [0, 2], ids=["same_second", "seconds_apart"])
def test_wandb_offline_in_process_gets_a_redacted_config_and_keeps_its_id(tmp_path, wandb_env,
                                                                          monkeypatch, seconds_apart):
    # W&B names an attempt's folder offline-run-<start second>-<id>, and appends "-1" when an attempt
    # of the same id started in the same second (wandb_init.set_sync_dir_suffix). Which case a real
    # clock gives depends on machine load (the old assertion here failed in one full-suite run of
    # two), so both are pinned: the start time is the only clock wandb_init reads.
    import wandb.sdk.wandb_init as wandb_init

    start = [float(int(time.time())) + 0.5]
    monkeypatch.setattr(wandb_init, "time", SimpleNamespace(time=lambda: start[0]))
    run = tmp_path / "run"
    run.mkdir()
    key = wandb_env["WANDB_API_KEY"]
    config = {"name": "t", "data": {"root_dir": f"/data/{key}"}, "hub_token": "hf_plain_in_config"}
    cfg = LoggingConfig(wandb=WandbConfig(mode="offline"))
    ids, notes = [], []
    for _ in range(2):  # the second invocation is a resume of the same run directory
        sinks = build_sinks(cfg, run, "t", config)
        assert list(sinks.optional) == ["W&B"] and sinks.notes[0].startswith("W&B offline run")
        ids.append((run / WANDB_ID_FILE).read_text().strip())
        notes.append(sinks.notes[0])
        assert f"run {ids[-1]}: upload with: wandb sync" in sinks.notes[0]
        log_all(sinks)
        sinks.close()
        start[0] += seconds_apart
    assert ids[0] == ids[1]
    # one folder per invocation, each with this run's transaction log ...
    folders = sorted((run / "wandb").glob("offline-run-*"))
    assert len(folders) == 2 and all((f / f"run-{ids[0]}.wandb").is_file() for f in folders)
    assert folders[1].name.endswith(f"{ids[0]}-1") == (seconds_apart == 0)
    # ... and the sync command the console shows uploads both
    pattern = Path(notes[-1].split("wandb sync ", 1)[1])
    assert sorted(pattern.parent.glob(pattern.name)) == folders
    assert files_containing(tmp_path, key) == []
    assert files_containing(tmp_path, "hf_plain_in_config") == []
    assert len(read_jsonl(run / "metrics.jsonl")) == 2 * len(METRICS)


# --------------------------------------------------------------------------- build_sinks


def test_jsonl_is_always_written_and_nothing_else_by_default(tmp_path):
    sinks = build_sinks(LoggingConfig(), tmp_path, "t", {})
    log_all(sinks)
    sinks.close()
    sinks.close()  # the loop's exit paths may close twice
    assert sinks.optional == {} and sinks.notes == []
    assert read_jsonl(tmp_path / "metrics.jsonl") == [
        {"step": i, **m} for i, m in enumerate(METRICS, start=1)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


def test_tensorboard_sink_writes_numeric_scalars(tmp_path):
    sinks = build_sinks(TENSORBOARD, tmp_path, "t", {})
    log_all(sinks)
    sinks.close()
    scalars = tensorboard_scalars(tmp_path / "tensorboard")
    assert set(scalars) == {"loss", "lr", "val/loss", "val/ppl"}  # mfu=None is not a number
    assert scalars["loss"] == [(1, 2.5), (2, 2.0)]
    assert len(read_jsonl(tmp_path / "metrics.jsonl")) == len(METRICS)


def test_tensorboard_resume_replaces_what_a_killed_attempt_logged_after_the_checkpoint(tmp_path):
    first = build_sinks(TENSORBOARD, tmp_path, "t", {})
    for step in (1, 2, 3):  # killed after step 3; its last checkpoint was at step 2
        first.log({"loss": 10.0 + step}, step)
    first.close()
    resumed = build_sinks(TENSORBOARD, tmp_path, "t", {}, resume_step=2)
    for step in (3, 4):
        resumed.log({"loss": 20.0 + step}, step)
    resumed.close()
    assert tensorboard_scalars(tmp_path / "tensorboard")["loss"] == [
        (1, 11.0), (2, 12.0), (3, 23.0), (4, 24.0)]


def test_tensorboard_log_dir_is_configurable(tmp_path):
    log_dir = tmp_path / "elsewhere"
    cfg = LoggingConfig(tensorboard=TensorBoardConfig(enabled=True, log_dir=str(log_dir)))
    (tmp_path / "run").mkdir()
    sinks = build_sinks(cfg, tmp_path / "run", "t", {})
    log_all(sinks)
    sinks.close()
    assert "loss" in tensorboard_scalars(log_dir)
    assert not (tmp_path / "run" / "tensorboard").exists()


def test_a_sink_failing_at_log_is_disabled_with_one_warning_and_jsonl_goes_on(tmp_path,
                                                                              monkeypatch):
    secret = "s3cr3t-" + secrets.token_hex(8)
    monkeypatch.setenv("SOME_SERVICE_TOKEN", secret)

    def broken_log(self, metrics, step):
        raise OSError(f"disk full while writing {secret}")

    monkeypatch.setattr(sinks_mod.TensorBoardSink, "log", broken_log)
    sinks = build_sinks(TENSORBOARD, tmp_path, "t", {})
    match = "TensorBoard sink disabled after an error at log"
    with pytest.warns(RuntimeWarning, match=match) as caught:
        log_all(sinks)
    assert len(caught) == 1 and secret not in str(caught[0].message)
    assert sinks.optional == {}
    sinks.close()
    assert [m["step"] for m in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2, 3]


def test_a_sink_failing_at_start_or_close_is_skipped_with_a_warning(tmp_path):
    class CloseFails:
        note = "closes badly"

        def log(self, metrics, step):
            self.last = (metrics, step)

        def close(self):
            raise ConnectionError("network is unreachable")

    def cannot_start():
        raise ConnectionError("no route to host")

    sinks = build_sinks(LoggingConfig(), tmp_path, "t", {})
    with pytest.warns(RuntimeWarning, match="Remote sink disabled after an error at start"):
        sinks.start("Remote", cannot_start)
    sinks.start("Flaky", CloseFails)
    log_all(sinks)
    assert sinks.optional["Flaky"].last == ({"val/loss": 2.1, "val/ppl": 8.2}, 3)
    with pytest.warns(RuntimeWarning, match="Flaky sink disabled after an error at close"):
        sinks.close()
    assert len(read_jsonl(tmp_path / "metrics.jsonl")) == len(METRICS)


def test_numeric_only_drops_none_text_and_booleans():
    assert numeric_only({"loss": 1, "mfu": None, "name": "x", "finished": True, "lr": 1e-3}) == {
        "loss": 1.0, "lr": 1e-3}


# --------------------------------------------------------------------------- config and check


def without(*missing: str):
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name in missing else real(name, *args, **kwargs)

    return find_spec


def test_defaults_have_no_problems_and_probe_no_package(monkeypatch):
    def find_spec(name, *args, **kwargs):
        raise AssertionError(f"probed {name} although no sink is selected")

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    assert check(LoggingConfig()) == []


@pytest.mark.parametrize("cfg, key, package", [
    (LoggingConfig(wandb=WandbConfig(mode="offline")), "logging.wandb.mode", "wandb"),
    (LoggingConfig(tensorboard=TensorBoardConfig(enabled=True)), "logging.tensorboard.enabled",
     "tensorboard"),
])
def test_selected_sink_with_missing_package_names_the_pip_install(monkeypatch, cfg, key, package):
    monkeypatch.setattr(importlib.util, "find_spec", without("wandb", "tensorboard"))
    problems = check(cfg)
    assert [(p.key, p.fix) for p in problems] == [(key, f"pip install {package}")]
    assert "not installed" in problems[0].message


def test_installed_sinks_pass_the_check(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", secrets.token_hex(20))
    assert check(LoggingConfig(wandb=WandbConfig(mode="online"),
                               tensorboard=TensorBoardConfig(enabled=True))) == []


def test_online_mode_needs_the_key_in_the_environment(monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    problems = check(LoggingConfig(wandb=WandbConfig(mode="online")))
    assert [p.key for p in problems] == ["logging.wandb.mode"]
    assert "WANDB_API_KEY" in problems[0].message and "mode=offline" in problems[0].fix


def test_bad_values_are_problems():
    problems = check(LoggingConfig(every=0, wandb=WandbConfig(mode="onlin")))
    assert [p.key for p in problems] == ["logging.every", "logging.wandb.mode"]
    assert "'onlin' is not one of" in problems[1].message
    bad_project = check(LoggingConfig(wandb=WandbConfig(mode="offline", project="team/proj")))
    assert [p.key for p in bad_project] == ["logging.wandb.project"]


def test_sink_config_loads_from_overrides_and_rejects_an_unknown_mode():
    cfg, problems = load_config_collecting(None, [
        "logging.wandb.mode=offline", "logging.wandb.project=lab", "logging.wandb.entity=me",
        "logging.wandb.run_name=r1", "logging.tensorboard.enabled=true",
        "logging.tensorboard.log_dir=tb"])
    assert problems == []
    assert cfg.logging.wandb == WandbConfig(mode="offline", project="lab", entity="me",
                                            run_name="r1")
    assert cfg.logging.tensorboard == TensorBoardConfig(enabled=True, log_dir="tb")
    _, problems = load_config_collecting(None, ["logging.wandb.mode=ofline"])
    assert [p.key for p in problems] == ["logging.wandb.mode"] and "offline" in problems[0].message


def test_every_sink_field_is_documented():
    rows = [row for row in describe_fields() if row[0].startswith(("logging.wandb.",
                                                                    "logging.tensorboard."))]
    assert len(rows) == 7 and all(help_text for _, _, help_text in rows)


# --------------------------------------------------------------------------- metrics.jsonl tampered with


def _swap_in(path: Path, text: str) -> None:
    """Replace ``path`` by another file, as an editor's save or a sync tool does (a new inode)."""
    other = path.with_name("other.tmp")
    other.write_text(text)
    os.replace(other, path)


def test_metrics_file_removed_mid_run_is_recreated_with_every_line(tmp_path):
    path, said = tmp_path / "metrics.jsonl", []
    sink = JsonlSink(path, warn=said.append)
    sink.log({"loss": 2.0}, 1)
    sink.log({"loss": 1.9}, 2)
    path.unlink()
    sink.log({"loss": 1.8}, 3)
    path.unlink()  # after the last line: still restored when the run closes its sinks
    sink.close()
    sink.close()
    assert [m["step"] for m in read_jsonl(path)] == [1, 2, 3]
    assert len(said) == 2 and all("was removed while the run trained" in s for s in said)
    assert "re-created it with the 2 lines logged so far" in said[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


@pytest.mark.parametrize("edited", [False, True], ids=["other_file", "edited_copy"])
def test_metrics_file_replaced_mid_run_is_appended_to_and_no_line_is_lost(tmp_path, edited):
    path, said = tmp_path / "metrics.jsonl", []
    sink = JsonlSink(path, warn=said.append)
    sink.log({"loss": 2.0}, 1)
    before = path.read_text()
    _swap_in(path, before + '{"note": "mine"}\n' if edited else '{"note": "mine"}\n')
    sink.log({"loss": 1.9}, 2)
    sink.close()
    assert [m.get("step") for m in read_jsonl(path)] == ([1, None, 2] if edited else [None, 2])
    kept = sorted(tmp_path.glob("metrics.replaced-*.jsonl"))
    assert len(said) == 1 and "was replaced while the run trained" in said[0]
    if edited:  # the new file holds every earlier line: nothing to keep beside it
        assert kept == [] and "no line logged before is lost" in said[0]
    else:
        assert [p.read_text() for p in kept] == [before] and str(kept[0]) in said[0]


def test_metrics_path_turned_into_a_folder_stops_with_the_fix(tmp_path):
    path = tmp_path / "metrics.jsonl"
    sink = JsonlSink(path, warn=pytest.fail)
    sink.log({"loss": 2.0}, 1)
    path.unlink()
    path.mkdir()
    with pytest.raises(LmlabError, match="Training metrics would be lost, so the run stops. Fix: "):
        sink.log({"loss": 1.9}, 2)
    sink.close()  # says nothing more: the error above is the message


LMLAB_LINES = b'{"step": 3, "loss": 1.0}\n{"step": 9, "loss": 0.5}\n'  # resumed from step 4


@pytest.mark.parametrize("content, kept", [
    (b'[1, 2]\n7\n{"step": "x"}\n{"step": null}\n\xff\xfe not text\n' + LMLAB_LINES + b'{"step": 10, "lo',
     b'[1, 2]\n7\n{"step": "x"}\n{"step": null}\n\xff\xfe not text\n{"step": 3, "loss": 1.0}\n'),
    (LMLAB_LINES + b"a last line without a newline",
     b'{"step": 3, "loss": 1.0}\na last line without a newline\n'),
], ids=["not_lmlab_lines_and_a_cut_off_line", "foreign_last_line"])
def test_truncating_foreign_content_keeps_it_and_never_raises(tmp_path, content, kept):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(content)
    truncate_metrics(path, 4)
    assert path.read_bytes() == kept


def _tiny_run(jsonl_root: Path, run: Path, steps: int) -> list[str]:
    return tiny_args(jsonl_root, run, f"steps={steps}", "checkpoint.every=4", "eval.validation.enabled=false",
                     "logging.progress_bar=false")


def _loss_steps(*files: Path) -> list[int]:
    return sorted(m["step"] for f in files for m in read_jsonl(f) if "loss" in m)


def test_metrics_removed_then_replaced_mid_run_then_resumed_lose_nothing(tmp_path, jsonl_root,
                                                                        monkeypatch, capsys):
    run = tmp_path / "run"
    real_log = JsonlSink.log

    def tamper(self, metrics, step):  # just before the sink writes these steps' lines
        if step == 3:
            self.path.unlink()
        if step == 6:
            _swap_in(self.path, '{"note": "the researcher\'s own file"}\n')
        real_log(self, metrics, step)

    monkeypatch.setattr(JsonlSink, "log", tamper)
    assert main(_tiny_run(jsonl_root, run, 8)) == 0
    monkeypatch.setattr(JsonlSink, "log", real_log)
    assert main(_tiny_run(jsonl_root, run, 12)) == 0  # resumes from step 8
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.count("was removed while the run trained") == 1
    assert err.count("was replaced while the run trained") == 1
    assert err.count("lmlab train: warning: ") == 2  # the resume has no gap to report
    kept = list(run.glob("metrics.replaced-*.jsonl"))
    assert _loss_steps(run / "metrics.jsonl") == list(range(6, 13))
    assert _loss_steps(*kept) == [1, 2, 3, 4, 5]  # every step once, in one file or the other


@pytest.mark.parametrize("damage", ["removed", "replaced_by_other_data", "shorter"])
def test_resume_with_a_damaged_metrics_file_goes_on_with_one_warning(tmp_path, jsonl_root, capsys,
                                                                     damage):
    run = tmp_path / "run"
    assert main(_tiny_run(jsonl_root, run, 8)) == 0
    metrics = run / "metrics.jsonl"
    lines = metrics.read_bytes().splitlines(keepends=True)
    foreign = b'[1, 2]\n{"step": "x"}\n\xff\xfe\n'
    if damage == "removed":
        metrics.unlink()
    else:
        metrics.write_bytes(foreign if damage == "replaced_by_other_data" else b"".join(lines[:2]))
    capsys.readouterr()
    assert main(_tiny_run(jsonl_root, run, 12)) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("lmlab train: warning: ") == 1
    first = {"removed": 1, "replaced_by_other_data": 1, "shorter": 3}[damage]
    assert f"the metrics of steps {first}-8 are missing" in err
    assert _loss_steps(metrics) == ([1, 2] if damage == "shorter" else []) + list(range(9, 13))
    if damage == "replaced_by_other_data":
        assert metrics.read_bytes().startswith(foreign)  # not this run's to delete
