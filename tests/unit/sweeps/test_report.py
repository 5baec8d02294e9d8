"""The sweep report and the scaling fit, on hand-written run directories (no training): a size
sweep of 4 widths whose validation losses follow L = E + A N^-alpha, as ``lmlab sweep`` (which finds
every trial finished, trains nothing and prints the fit), ``lmlab report`` and ``lmlab runs`` see it."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from helpers import CONFIGS, assert_valid_png
from lmlab import rundir, sweepdir
from lmlab.cli import main
from lmlab.reports.scaling import describe, fit_power_law
from lmlab.sweeps.spec import load_spec
from lmlab.sweeps.trials import expand

E, A, ALPHA = 1.6, 40.0, 0.35


def test_fit_recovers_the_exponent_and_its_interval_covers_it():
    n = np.array([1e5, 3e5, 1e6, 3e6, 1e7])
    rng = np.random.default_rng(0)
    loss = (E + A * n ** -ALPHA) * (1 + 0.002 * rng.standard_normal(len(n)))
    fit = fit_power_law(n, loss)
    low, high = fit.interval("alpha")
    assert low <= ALPHA <= high and abs(fit.alpha - ALPHA) < 0.05
    exact = fit_power_law(n, E + A * n ** -ALPHA)
    assert exact.alpha == pytest.approx(ALPHA, abs=1e-3) and exact.E == pytest.approx(E, abs=1e-3)
    three = fit_power_law(n[:3], E + A * n[:3] ** -ALPHA)
    assert three.interval() is None and "no interval" in describe(three)
    with pytest.raises(ValueError, match="at least 3 distinct"):
        fit_power_law([1, 1, 2], [3, 3, 2])


def fake_run(run: Path, params: int, val_loss: float, steps: int = 20) -> None:
    """A finished run directory as lmlab train leaves it (what the reports read)."""
    run.mkdir(parents=True)
    now = time.time()
    (run / rundir.CONFIG_FILE).write_text(yaml.safe_dump({"name": run.name, "steps": steps, "model": {
        "name": "transformer"}, "optim": {"lr": 1e-3}}))
    (run / rundir.PROVENANCE_FILE).write_text(json.dumps({rundir.MODEL_SIZE_KEY: {
        "model": "transformer", "params": params, "flops_per_token": 6 * params}}))
    lines = [{"step": s, "loss": val_loss + 1 + 1 / s, "tokens": 100 * s} for s in range(2, steps + 1, 2)]
    lines += [{"step": 10, "val/loss": val_loss + 0.5}, {"step": steps, "val/loss": val_loss}]
    (run / rundir.METRICS_FILE).write_text("".join(json.dumps(m) + "\n" for m in lines))
    events = [{"event": "run_start", "unix": now - 5, "time": "t", "pid": 1, "host": "elsewhere"},
              {"event": "run_end", "unix": now, "time": "t", "status": "finished", "step": steps}]
    (run / rundir.EVENTS_FILE).write_text("".join(json.dumps(e) + "\n" for e in events))
    (run / rundir.RUN_MARKER).write_text("lmlab run\n")


@pytest.fixture
def size_sweep(tmp_path) -> tuple[Path, Path]:
    spec_file = tmp_path / "sizes.yaml"
    spec_file.write_text(f"""
name: sizes
base: {CONFIGS / 'quickstart.yaml'}
out: {tmp_path / 'sweep'}
overrides: {{device: cpu, steps: 20}}
grid: {{model.dim: [32, 64, 128, 256]}}
scaling: {{x: params, predict: [1.0e8]}}
""")
    rng = np.random.default_rng(1)
    for trial in expand(load_spec(spec_file)):
        dim = trial.values["model.dim"]
        params = 12 * 4 * dim * dim + 256 * dim  # about a 4-layer transformer's
        loss = (E + A * params ** -ALPHA) * (1 + 0.001 * rng.standard_normal())
        fake_run(trial.run_dir(tmp_path / "sweep"), params, float(loss))
    sweepdir.write_spec(tmp_path / "sweep", {"name": "sizes"})  # as if lmlab sweep had trained them
    return spec_file, tmp_path / "sweep"


def test_a_finished_size_sweep_prints_the_exponent_with_an_interval(size_sweep, capsys):
    spec_file, sweep = size_sweep
    assert main(["sweep", str(spec_file)]) == 0
    out = capsys.readouterr().out
    assert "4 trial(s) (4 finished)" in out and "0 to run" in out  # nothing trained
    assert "L(params) = E + A*params^-alpha fitted to 4 points: alpha = 0.3" in out
    assert "(95% interval " in out and "at params = 1e+08 the fit predicts" in out
    assert main(["report", str(sweep)]) == 0
    report = (sweep / "report.md").read_text()
    for part in ("## Best", "Best trial: **dim=256**", "## Trials", "| 1 | dim=256 |", "## Metric per axis",
                 "plots/axis-model.dim.png", "## Loss curves of the best 3", "## Scaling fit", "plots/scaling.png",
                 "(95% interval"):
        assert part in report, part
    for name in ("axis-model.dim.png", "top-k-loss.png", "scaling.png"):
        assert_valid_png(sweep / "plots" / name)
    assert main(["report", str(sweep), "--format", "html"]) == 0
    html = (sweep / "report.html").read_text()
    assert "<table>" in html and '<img src="plots/scaling.png"' in html


def test_lmlab_runs_lists_the_trials_with_failures_and_pending_ones(size_sweep, capsys):
    spec_file, sweep = size_sweep
    assert main(["sweep", str(spec_file)]) == 0
    rows = sweepdir.read_trials(sweep)
    rows[0].update(status="failed", exit_code=1, crash="failed in phase train: RuntimeError: boom (at x:1)")
    rows.append({"name": "dim=512", "status": "pending", "values": {"model.dim": 512}})
    sweepdir.write_trials(sweep, rows)
    capsys.readouterr()
    assert main(["runs", str(sweep)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("sweep sizes: 5 trials (1 failed, 3 finished, 1 pending)")
    assert lines[2].split()[:3] == ["1", "dim=256", "finished"]
    assert "exit 1: failed in phase train: RuntimeError: boom" in out
    assert any(line.split()[:3] == ["-", "dim=512", "pending"] for line in lines)
