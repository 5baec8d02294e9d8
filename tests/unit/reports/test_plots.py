"""Report plots are drawn once per set of inputs (``lmlab.reports.plots``): a report written again (in
another language or format, or with nothing new logged) keeps its PNGs; a change to what a plot
shows draws that plot, and only that one, again; a PNG lmlab did not draw is never taken for one."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from matplotlib.figure import Figure

from helpers import assert_valid_png
from lmlab import rundir
from lmlab.reports import plots
from lmlab.reports.report import write_report
from lmlab.reports.runs import load_run

PLOTS = ["grad_norm.png", "loss.png"]  # the fake run's metrics cut to loss and grad norm: two plots


@pytest.fixture
def drawn(monkeypatch) -> list[str]:
    """The file names matplotlib saves a figure to, in order."""
    saved, real = [], Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda self, path, *a, **kw: saved.append(Path(path).name)
                        or real(self, path, *a, **kw))
    return saved


def png_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


def test_a_report_written_again_keeps_its_plots_and_draws_what_changed(fake_run, drawn):
    metrics = [{k: v for k, v in m.items() if k not in ("lr", "tokens_per_s")}
               for m in rundir.read_jsonl(fake_run / rundir.METRICS_FILE)]
    (fake_run / rundir.METRICS_FILE).write_text("".join(json.dumps(m) + "\n" for m in metrics))
    folder = fake_run / rundir.PLOTS_DIR
    write_report(fake_run)
    first = png_bytes(folder)
    assert sorted(drawn) == list(first) == PLOTS
    for name in first:
        assert_valid_png(folder / name)
    drawn.clear()
    write_report(fake_run, lang="ja")
    write_report(fake_run, fmt="html")
    assert drawn == [] and png_bytes(folder) == first

    config = yaml.safe_load((fake_run / rundir.CONFIG_FILE).read_text())
    config["optim"]["clip"] = 0.5  # drawn as a line in the grad norm plot only
    (fake_run / rundir.CONFIG_FILE).write_text(yaml.safe_dump(config))
    write_report(fake_run)
    assert drawn == ["grad_norm.png"]
    drawn.clear()
    with (fake_run / rundir.METRICS_FILE).open("a") as metrics:  # one more logged step: in every plot
        metrics.write(json.dumps({"step": 22, "loss": 2.7, "grad_norm": 1.4, "tokens": 64 * 22}) + "\n")
    write_report(fake_run)
    assert sorted(drawn) == PLOTS
    figure = Figure()
    figure.add_subplot().plot([0, 1], [1, 0])
    figure.savefig(folder / "loss.png")  # a PNG lmlab did not draw (no digest) under a plot's name
    (folder / "grad_norm.png").write_bytes(b"not a png")
    drawn.clear()
    write_report(fake_run)
    assert sorted(drawn) == PLOTS
    assert_valid_png(folder / "grad_norm.png")


def test_a_comparison_plot_is_drawn_again_only_for_other_runs(make_fake_run, tmp_path, drawn):
    a, b, c = (load_run(make_fake_run(tmp_path / name)) for name in ("a", "b", "c"))
    out = tmp_path / "cmp" / "loss.png"
    assert plots.plot_comparison([a, b], out) == out
    assert plots.plot_comparison([a, b], out) == out
    assert drawn == ["loss.png"]
    plots.plot_comparison([a, c], out)  # another run's name in the legend
    assert drawn == ["loss.png", "loss.png"]
