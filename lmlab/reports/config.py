"""``report.*``: what a run's report shows beyond what training logged.

A plain dataclass (no torch): the config layer composes it into ``RunConfig``; ``lmlab eval``
generates the samples (it has the model), the report only reads them (``rundir.SAMPLES_FILE``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from lmlab.errors import Problem

DEFAULT_SAMPLES = ("Once upon a time", "The meaning of life is", "ROMEO:")


@dataclass
class ReportConfig:
    """Greedy samples from fixed prompts, shown in the report."""

    samples: list[str] = field(default_factory=lambda: list(DEFAULT_SAMPLES), metadata={
        "help": "Prompts that `lmlab eval` continues greedily at the checkpoint it evaluates; the "
                "report shows the latest continuations (empty: no samples)."})
    sample_tokens: int = field(default=64, metadata={
        "help": "Most new tokens per sample (it also stops at EOS and at the context limit)."})


def check(cfg: ReportConfig, prefix: str = "report") -> list[Problem]:
    if cfg.sample_tokens < 1:
        return [Problem(f"{prefix}.sample_tokens", f"must be >= 1, got {cfg.sample_tokens}.",
                        f"set {prefix}.sample_tokens to an integer >= 1")]
    return []
