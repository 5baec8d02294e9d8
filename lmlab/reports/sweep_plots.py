"""A sweep's plots as PNG files: the metric against each axis (log x for a log-uniform axis or a
grid spanning a factor 10 or more; categories as ticks), the loss curves of the best k trials
(``plots.plot_comparison``), and the scaling fit. matplotlib is imported only when drawing."""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from lmlab.reports.plots import _figure, plot_comparison
from lmlab.reports.scaling import PowerLawFit
from lmlab.reports.sweep import SweepView, TrialView


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def axis_file(key: str) -> str:
    return "axis-" + re.sub(r"[^A-Za-z0-9._-]", "_", key) + ".png"


def plot_axis(view: SweepView, axis: dict, path: Path) -> Path | None:
    """Every trial's metric against this axis's value, and the mean per value as a line."""
    key = axis["key"]
    pairs = [(t.values.get(key), t.value) for t in view.trials if key in t.values and t.value is not None]
    if not pairs:
        return None
    fig, ax = _figure()
    numeric = all(_number(x) for x, _ in pairs)
    if numeric:
        xs = [float(x) for x, _ in pairs]
        labels = None
    else:
        labels = sorted({str(x) for x, _ in pairs})
        xs = [labels.index(str(x)) for x, _ in pairs]
    ys = [y for _, y in pairs]
    ax.plot(xs, ys, "o", color="tab:blue", alpha=0.6, label="trial")
    means = {}
    for x, y in zip(xs, ys):
        means.setdefault(x, []).append(y)
    mx = sorted(means)
    ax.plot(mx, [float(np.mean(means[x])) for x in mx], "-", color="tab:orange", label="mean")
    if numeric and axis.get("log") and min(xs) > 0:
        ax.set_xscale("log")
    if labels is not None:
        ax.set_xticks(range(len(labels)), labels)
    ax.set(xlabel=key + (" (log)" if axis.get("log") else ""), ylabel=view.metric,
           title=f"{view.metric} vs {key}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(path)
    return path


def plot_top_k(trials: list[TrialView], path: Path) -> Path | None:
    runs = [t.run for t in trials if t.run is not None]
    return plot_comparison(runs, path) if runs else None


def plot_scaling(fit: PowerLawFit, xs: list[float], ys: list[float], x_name: str, metric: str,
                 predictions: list[float], path: Path) -> Path:
    fig, ax = _figure()
    ax.plot(xs, ys, "o", color="tab:blue", label="trials")
    right = max([*xs, *predictions])
    grid = np.geomspace(min(xs) / 1.5, right * 1.5, 200)
    ax.plot(grid, [fit.predict(x) for x in grid], "-", color="tab:orange",
            label=f"fit: {fit.E:.3f} + {fit.A:.3g} {x_name}^-{fit.alpha:.3f}")
    if fit.samples is not None and len(fit.samples):
        curves = fit.samples[:, 0:1] + fit.samples[:, 1:2] * grid[None, :] ** (-fit.samples[:, 2:3])
        tail = 100 * (1 - fit.level) / 2
        ax.fill_between(grid, np.percentile(curves, tail, axis=0), np.percentile(curves, 100 - tail, axis=0),
                        color="tab:orange", alpha=0.2, label=f"{100 * fit.level:g}% interval")
    ax.axhline(fit.E, color="gray", linestyle=":", label=f"E = {fit.E:.3f}")
    for x in predictions:
        ax.plot([x], [fit.predict(x)], "x", color="tab:red", markersize=9)
    ax.set_xscale("log")
    ax.set(xlabel=x_name, ylabel=metric, title=f"scaling: {metric} vs {x_name}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small")
    fig.savefig(path)
    return path
