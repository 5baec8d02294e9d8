"""LR schedule and scaling rule as pure functions."""
from __future__ import annotations

import pytest

from lmlab.training.optim import OptimConfig, lr_at, scaled_lr


def test_warmup_then_cosine_to_min_ratio():
    cfg = OptimConfig(lr=1.0, warmup=10, lr_min_ratio=0.1)
    assert lr_at(1, cfg, 110) == pytest.approx(0.1)
    assert lr_at(10, cfg, 110) == pytest.approx(1.0)
    assert lr_at(60, cfg, 110) == pytest.approx(0.55)  # halfway through the cosine
    assert lr_at(110, cfg, 110) == pytest.approx(0.1)


def test_warmup_longer_than_the_run_stays_in_warmup():
    cfg = OptimConfig(lr=3e-4, warmup=2000)  # the debug config: 1000 steps, 2000 warmup
    assert lr_at(1000, cfg, 1000) == pytest.approx(1.5e-4)


def test_linear_and_sqrt_scaling_reference_figures():
    base = dict(base_lr=1e-4, base_batch_size=512)
    assert scaled_lr(OptimConfig(lr_scaling="linear", **base), 2048) == pytest.approx(4e-4)
    assert scaled_lr(OptimConfig(lr_scaling="sqrt", **base), 2048) == pytest.approx(2e-4)
    assert scaled_lr(OptimConfig(lr=3e-4), 2048) == 3e-4
