"""Report prose as data: every language has the same keys and fields, and LANGS comes from the files."""
from __future__ import annotations

import string

import pytest

from lmlab import rundir
from lmlab.reports.text import LANGS, RUN_DIR_NAMES, Text, strings


def fields(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def test_langs_come_from_the_string_files():
    assert LANGS[0] == "en" and set(LANGS) == {"en", "ja"}


def test_every_language_has_the_same_keys_and_fields():
    en = strings("en")
    for lang in LANGS:
        table = strings(lang)
        assert set(table) == set(en), lang
        for key, text in table.items():
            assert fields(text) == fields(en[key]), (lang, key)
            Text(lang)(key, **{name: "x" for name in fields(text) - set(RUN_DIR_NAMES)})  # formats


def test_run_dir_names_are_filled_from_rundir():
    assert f"`{rundir.EVAL_METRICS_FILE}`" in Text("en")("eval_none")
    assert f"`{rundir.PLOTS_DIR}/`" in Text("ja")("plots_intro")
    assert Text("ja").status("finished") == "完了 (finished)" and Text("en").status("odd") == "odd"


def test_unknown_language():
    with pytest.raises(ValueError, match="lang must be one of"):
        Text("fr")


