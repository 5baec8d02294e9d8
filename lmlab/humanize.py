"""Numbers as people read them: durations and SI prefixes, the same on the console and in reports."""
from __future__ import annotations

import math
from typing import Any

_SI = (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3))


def duration(seconds: float | None) -> str:
    """``1h02m``, ``4m05s``, ``12s``; ``-`` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    seconds = max(0, int(round(seconds)))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def si(value: Any, unit: str = "", sep: str = " ") -> str:
    """``56.51 GFLOP/s`` (``sep`` between number and unit); ``-`` for a missing value."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "-"
    if not math.isfinite(value):
        return str(value)  # nan / inf are the finding, not a formatting error
    for prefix, scale in _SI:
        if abs(value) >= scale:
            return f"{value / scale:.2f}{sep}{prefix}{unit}"
    return f"{value:.1f}{sep}{unit}".rstrip()
