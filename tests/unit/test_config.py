"""Config loading: precedence, type checks, did-you-mean, override syntax, YAML errors."""
from __future__ import annotations

import dataclasses

import pytest

from lmlab.config import RunConfig, describe_fields, dump_config, load_config, load_config_collecting
from lmlab.errors import ConfigError


def write(tmp_path, text: str):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_defaults_then_yaml_then_overrides(tmp_path):
    path = write(tmp_path, "steps: 50\noptim:\n  lr: 1e-3\n  warmup: 7\n")
    cfg = load_config(path, ["optim.lr=2e-3", "data.sources={a: 1, b: 0.5}"])
    assert cfg.steps == 50                      # from YAML
    assert cfg.optim.lr == 2e-3                 # CLI beats YAML ("1e-3" without a dot is a YAML string)
    assert cfg.optim.warmup == 7                # YAML beats default
    assert cfg.optim.clip == RunConfig().optim.clip  # untouched default
    assert cfg.data.sources == {"a": 1.0, "b": 0.5}


def test_list_override_and_model_family_by_name(tmp_path):
    cfg = load_config(None, ["model.name=context_vector", "model.embed_dim=32"])
    assert cfg.model.name == "context_vector" and cfg.model.embed_dim == 32


def test_unknown_key_suggests_the_close_one(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "optim:\n  lrr: 0.1\n"))
    assert "optim.lrr" in str(err.value) and "Did you mean 'lr'" in str(err.value)


def test_wrong_type_names_key_and_expected_type(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "steps: ten\nmodel:\n  dim: 1.5\n"))
    text = str(err.value)
    assert "steps: expected integer, got string 'ten'" in text
    assert "model.dim: expected integer, got number 1.5" in text
    assert "2 problems" in text


@pytest.mark.parametrize("override", ["steps", "=3", "a..b=1", ".x=2"])
def test_bad_override_syntax(override):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert "bad override syntax" in str(err.value) and "KEY=VALUE" in str(err.value)


def test_unknown_choice_suggests(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(None, ["data.tokenizer.name=byts", "model.name=transfomer"])
    assert "Did you mean 'bytes'" in str(err.value)
    assert "Did you mean 'transformer'" in str(err.value)


def test_yaml_syntax_error_gives_line_and_column(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "steps: 10\nname: a: b\n"))
    assert "line 2, column 8" in str(err.value)


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(None, ["model.dim=96", "optim.lr=0.01", "data.sources={x: 2}"])
    dump_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert dataclasses.asdict(again) == dataclasses.asdict(cfg)


def test_every_field_is_documented():
    rows = describe_fields()
    assert len(rows) > 30
    undocumented = [key for key, _, help_text in rows if not help_text]
    assert undocumented == []


def test_steps_on_the_command_line_of_an_epoch_config_is_refused_not_ignored(tmp_path):
    """epochs > 0 decides the run's length: steps=N given with it would be dropped silently."""
    config = tmp_path / "epochs.yaml"
    config.write_text("epochs: 5\n")
    _, problems = load_config_collecting(config, ["steps=2"])
    assert [(p.key, p.fix) for p in problems] == [("steps", "add epochs=0 to train 2 steps, or drop steps=")]
    assert "epochs=5 sets the run's length" in problems[0].message
    assert load_config_collecting(config, ["steps=2", "epochs=0"])[1] == []
    saved = tmp_path / "saved.yaml"  # a run's config.yaml holds both keys: not the user's request
    dump_config(load_config(config), saved)
    assert load_config_collecting(saved, [])[1] == []
