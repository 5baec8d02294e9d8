"""A scaling-law fit for a sweep over model size (or steps, tokens, compute): ``L(x) = E + A x^-alpha``
with an interval for every parameter and for predictions (``fit_power_law``). numpy only.

For a fixed E the law is a line in log space, ``log(L - E) = log A - alpha log x``, solved by least
squares in closed form; E is chosen on a grid in ``[0, min L)`` (refined twice around the best)
to minimise the squared error of L itself. The interval is a parametric bootstrap: the fitted
curve plus Gaussian noise, refitted ``resamples`` times, percentiles of the refits; the noise level
of each resample is drawn too (sigma^2 = SSE / chi^2 with n - 3 degrees of freedom), so that a fit
with few points left over (4 sizes: one) gets the wide interval it deserves rather than one as
narrow as its lucky residuals. Three distinct x determine the three parameters exactly: no
interval then (``interval`` is None), and the text says so.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

GRID, REFINE = 256, 64
PARAMS = 3


@dataclass
class PowerLawFit:
    E: float
    A: float
    alpha: float
    n: int
    rmse: float
    samples: np.ndarray | None = None  # bootstrap refits, rows (E, A, alpha)
    level: float = 0.95

    def predict(self, x: float) -> float:
        return self.E + self.A * x ** (-self.alpha)

    def interval(self, column: str = "alpha") -> tuple[float, float] | None:
        if self.samples is None or not len(self.samples):
            return None
        values = self.samples[:, ("E", "A", "alpha").index(column)]
        tail = 100 * (1 - self.level) / 2
        return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))

    def predict_interval(self, x: float) -> tuple[float, float] | None:
        if self.samples is None or not len(self.samples):
            return None
        values = self.samples[:, 0] + self.samples[:, 1] * x ** (-self.samples[:, 2])
        tail = 100 * (1 - self.level) / 2
        return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))


def _fit_arrays(logx: np.ndarray, y: np.ndarray) -> tuple[float, float, float, float]:
    """(E, A, alpha, sum of squared errors) of the best E on the grid."""
    top = float(y.min())
    low, high = 0.0, top
    best = None
    for size in (GRID, REFINE, REFINE):
        grid = np.linspace(low, high, size + 2)[:-1] if best is None else np.linspace(low, high, size)
        grid = grid[grid < top]
        z = np.log(y[None, :] - grid[:, None])  # (E candidates, points)
        xm, zm = logx.mean(), z.mean(axis=1, keepdims=True)
        dx = logx - xm
        slope = ((z - zm) * dx).sum(axis=1) / max(float((dx * dx).sum()), 1e-300)
        log_a = zm[:, 0] - slope * xm
        pred = grid[:, None] + np.exp(log_a[:, None] + slope[:, None] * logx[None, :])
        sse = ((pred - y[None, :]) ** 2).sum(axis=1)
        i = int(np.nanargmin(sse))
        best = (float(grid[i]), float(math.exp(log_a[i])), float(-slope[i]), float(sse[i]))
        step = (high - low) / (size + 1)
        low, high = max(0.0, grid[i] - step), min(top * (1 - 1e-12), grid[i] + step)
    return best


def fit_power_law(x, y, resamples: int = 1000, seed: int = 0, level: float = 0.95) -> PowerLawFit:
    """Fit ``y = E + A x^-alpha`` (x > 0, y > 0) with a bootstrap interval; needs 3 distinct x."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    x, y = x[keep], y[keep]
    if len(np.unique(x)) < PARAMS:
        raise ValueError(f"a scaling fit needs at least {PARAMS} distinct sizes with a finite metric, "
                         f"got {len(np.unique(x))}")
    logx = np.log(x)
    E, A, alpha, sse = _fit_arrays(logx, y)
    fit = PowerLawFit(E=E, A=A, alpha=alpha, n=len(x), rmse=math.sqrt(sse / len(x)), level=level)
    if len(np.unique(x)) == PARAMS and len(x) == PARAMS:
        return fit  # exact: nothing left to resample
    fitted = E + A * x ** (-alpha)
    df = max(1, len(x) - PARAMS)
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(resamples):
        sigma = math.sqrt(sse / rng.chisquare(df))  # the noise level is itself uncertain
        y_star = fitted + rng.normal(0.0, sigma, size=len(x))
        if (y_star <= 0).any():
            continue
        rows.append(_fit_arrays(logx, y_star)[:3])
    fit.samples = np.array(rows) if rows else None
    return fit


def describe(fit: PowerLawFit, xname: str = "N") -> str:
    """``L(N) = E + A*N^-alpha: alpha = 0.41 (95% interval 0.30 to 0.55), E = ..., A = ...``."""
    pct = f"{100 * fit.level:g}%"
    alpha = fit.interval("alpha")
    span = (f" ({pct} interval {alpha[0]:.3f} to {alpha[1]:.3f})" if alpha else
            " (no interval: 3 points determine the 3 parameters exactly; sweep 4 sizes or more)")
    e = fit.interval("E")
    e_span = f" ({e[0]:.3f} to {e[1]:.3f})" if e else ""
    return (f"L({xname}) = E + A*{xname}^-alpha fitted to {fit.n} points: alpha = {fit.alpha:.3f}{span}, "
            f"E = {fit.E:.3f}{e_span}, A = {fit.A:.4g}, rms error {fit.rmse:.4f}")


def describe_prediction(fit: PowerLawFit, x: float, xname: str = "N") -> str:
    span = fit.predict_interval(x)
    pct = f"{100 * fit.level:g}%"
    text = f" ({pct} interval {span[0]:.4f} to {span[1]:.4f})" if span else ""
    return f"at {xname} = {x:.4g} the fit predicts {fit.predict(x):.4f}{text}"
