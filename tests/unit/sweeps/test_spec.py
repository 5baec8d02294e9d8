"""``lmlab sweep``: the spec, its trials and their names, and preflight of every trial before any
starts (no training here: everything is refused or listed)."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from helpers import CONFIGS
from lmlab.cli import main
from lmlab.errors import ConfigError
from lmlab.sweeps.early_stop import MedianRule
from lmlab.sweeps.spec import load_spec
from lmlab.sweeps.trials import expand, override

QUICKSTART = str(CONFIGS / "quickstart.yaml")


def write_spec(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).format(base=QUICKSTART, out=tmp_path / "sweep"))
    return path


def test_grid_times_seeds_gives_stable_names_and_overrides(tmp_path):
    spec = load_spec(write_spec(tmp_path, """
        base: {base}
        out: {out}
        overrides: {{steps: 10, device: cpu}}
        grid: {{optim.lr: [1e-3, 3.0e-3], model.dim: [64, 128]}}
        seeds: 2
    """))
    trials = expand(spec, seed=42)
    assert [t.name for t in trials] == [
        "lr=0.001_dim=64_seed=42", "lr=0.001_dim=64_seed=43", "lr=0.001_dim=128_seed=42",
        "lr=0.001_dim=128_seed=43", "lr=0.003_dim=64_seed=42", "lr=0.003_dim=64_seed=43",
        "lr=0.003_dim=128_seed=42", "lr=0.003_dim=128_seed=43"]
    assert trials[0].point == "lr=0.001_dim=64"
    assert trials[0].overrides(spec) == ["steps=10", "device=cpu", "optim.lr=0.001", "model.dim=64", "seed=42"]
    assert [t.name for t in expand(spec, seed=42)] == [t.name for t in trials]  # stable


@pytest.mark.parametrize("value", [1e-3, 3.0e-05, 128, True, None, "cpu", "3e-4", [1, 2], {"a": 1.5}])
def test_override_values_read_back_as_themselves(value):
    key, _, text = override("k", value).partition("=")
    assert yaml.safe_load(text) == value


def test_random_samples_are_seeded_and_a_larger_n_keeps_the_earlier_ones(tmp_path):
    text = """
        base: {base}
        random:
          n: {n}
          seed: 7
          axes:
            optim.lr: {{log_uniform: [1.0e-4, 1.0e-2]}}
            optim.warmup: {{uniform: [0, 50], int: true}}
            model.n_layers: {{choice: [1, 2, 4]}}
    """
    small = expand(load_spec(write_spec(tmp_path, text.replace("{n}", "3"), "a.yaml")))
    large = expand(load_spec(write_spec(tmp_path, text.replace("{n}", "5"), "b.yaml")))
    assert [t.values for t in large[:3]] == [t.values for t in small]
    for t in large:
        assert 1e-4 <= t.values["optim.lr"] <= 1e-2
        assert isinstance(t.values["optim.warmup"], int) and 0 <= t.values["optim.warmup"] <= 50
        assert t.values["model.n_layers"] in (1, 2, 4)
    assert large[0].name.startswith("r0_lr=")
    assert len({t.name for t in large}) == 5


def run_sweep(capsys, *args) -> tuple[int, str]:
    code = main(["sweep", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_spec_errors_exit_2_naming_each_problem_and_its_fix(tmp_path, capsys):
    spec = write_spec(tmp_path, """
        base: configs/no-such.yaml
        out: {out}
        grid: {{optim.lr: [1e-3]}}
        seedz: 3
    """)
    code, text = run_sweep(capsys, spec)
    assert code == 2
    assert "seedz: unknown sweep spec key. Did you mean 'seeds'?" in text
    assert "base: config file configs/no-such.yaml not found" in text and "fix: set base" in text
    assert not (tmp_path / "sweep").exists()


def test_an_axis_that_makes_an_invalid_config_is_refused_before_anything_trains(tmp_path, capsys):
    spec = write_spec(tmp_path, """
        base: {base}
        out: {out}
        overrides: {{device: cpu}}
        grid: {{model.dim: [64, 66], optim.lrr: [0.1]}}
    """)
    code, text = run_sweep(capsys, spec)
    assert code == 2
    # every trial has the unknown key: said once; only one trial has the bad width
    assert "every trial: optim.lrr: unknown key. Did you mean 'lr'?" in text
    assert "comes from the spec's grid axis optim.lrr" in text
    assert "trial dim=66_lrr=0.1: model: dim (66) must be divisible by n_heads (4)" in text
    assert "comes from the spec's grid axis model.dim" in text
    assert not (tmp_path / "sweep").exists()


@pytest.mark.parametrize("block, message", [
    ("random: {n: 0, axes: {optim.lr: {log_uniform: [0, 1]}}}", "random.n: must be a positive integer"),
    ("random: {n: 2, axes: {optim.lr: {log_uniform: [0, 1]}}}", "log_uniform needs low > 0"),
    ("random: {n: 2, axes: {optim.lr: {normal: [0, 1]}}}", "needs exactly one of uniform, log_uniform, choice"),
    ("grid: {optim.lr: []}", "grid.optim.lr: must be a non-empty list"),
    ("grid: {dump_dir: [a, b]}", "grid.dump_dir: is set by the sweep"),
    ("metric: val/los", "Did you mean 'val/loss'?"),
    ("early_stop: {rule: median, steps: [7]}", "[7] are not validation steps"),
    ("seeds: 0", "seeds: must be a count >= 1"),
])
def test_spec_problems(tmp_path, capsys, block, message):
    spec = write_spec(tmp_path, f"""
        base: {{base}}
        out: {{out}}
        overrides: {{{{device: cpu, steps: 20, eval.validation.every: 10}}}}
        {block.replace("{", "{{").replace("}", "}}")}
    """)
    code, text = run_sweep(capsys, spec)
    assert code == 2 and message in text, text


def test_dry_run_lists_every_trial_and_writes_nothing(tmp_path, capsys):
    spec = write_spec(tmp_path, """
        base: {base}
        out: {out}
        overrides: {{device: cpu}}
        grid: {{optim.lr: [1.0e-3, 3.0e-3]}}
    """)
    code, text = run_sweep(capsys, spec, "--dry-run", "--parallel", "2")
    assert code == 0
    assert "2 trial(s)" in text and "every config passes preflight" in text
    assert f"lr=0.001: lmlab train {QUICKSTART} device=cpu optim.lr=0.001 dump_dir={tmp_path / 'sweep'}/lr=0.001" in text
    assert not (tmp_path / "sweep").exists()


def test_a_folder_of_another_spec_is_refused(tmp_path, capsys):
    spec = write_spec(tmp_path, """
        base: {base}
        out: {out}
        overrides: {{device: cpu, steps: 5}}
        grid: {{optim.lr: [1.0e-3]}}
    """)
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "sweep.yaml").write_text(yaml.safe_dump({
        "name": "old", "base": QUICKSTART, "trials": [{"name": "lr=0.001", "overrides": ["steps=99"]}]}))
    code, text = run_sweep(capsys, spec)
    assert code == 2 and "run with another spec" in text and "steps=99" in text


def test_median_rule():
    rule = MedianRule(steps=[10], min_trials=2)
    rule.observe("a", 10, 3.0)
    rule.observe("b", 10, 2.0)
    assert rule.verdict("a", 10) is None  # one other trial: too few to judge
    rule.observe("c", 10, 2.5)
    assert rule.verdict("b", 10) is None  # better than the median
    assert "3.0000 > median 2.2500 of 2 other" in rule.verdict("a", 10)
    rule.observe("d", 5, 9.0)
    assert rule.verdict("d", 5) is None  # not one of the rule's steps


def test_spec_loader_reports_all_problems_at_once(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_spec(write_spec(tmp_path, """
            base: {base}
            grid: {{optim.lr: 3}}
            random: {{n: 2, sed: 1, axes: {{optim.lr: {{uniform: [1, 0]}}}}}}
            top_k: 0
        """))
    text = str(err.value)
    for part in ("grid.optim.lr: must be a non-empty list", "random.sed: unknown key", "low < high",
                 "top_k: must be a positive integer"):
        assert part in text
