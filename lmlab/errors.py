"""User-facing errors.

Anything a user can fix (a bad config, a missing file, a wrong checkpoint) raises ``LmlabError``;
the CLI prints its message and exits with code 2, without a traceback. ``assert`` is reserved for
internal invariants, so a traceback always means a bug in lmlab.
"""
from __future__ import annotations

import difflib
import sys
from dataclasses import dataclass


class LmlabError(Exception):
    """An error the user can fix; the message says what is wrong and how to fix it."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a run's inputs: where (a config key or a path), what, and the fix."""

    key: str
    message: str
    fix: str = ""

    def render(self) -> str:
        text = f"  - {self.key}: {self.message}"
        if self.fix:
            text += f"\n      fix: {self.fix}"
        return text


class ConfigError(LmlabError):
    """Every problem found in a configuration, reported together."""

    def __init__(self, problems: list[Problem], source: str = ""):
        self.problems = list(problems)
        where = f" ({source})" if source else ""
        count = len(self.problems)
        head = f"configuration has {count} problem{'s' if count != 1 else ''}{where}:"
        super().__init__("\n".join([head] + [p.render() for p in self.problems]))


def did_you_mean(word: str, options) -> str:
    """' Did you mean 'x'?' for the closest option, or '' when nothing is close."""
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


def show_warnings(command: str, warnings: list[Problem]) -> None:
    """``lmlab COMMAND: warning: KEY: what`` and its fix on stderr, one per warning."""
    for w in warnings:
        fix = f"\n  fix: {w.fix}" if w.fix else ""
        print(f"lmlab {command}: warning: {w.key}: {w.message}{fix}", file=sys.stderr, flush=True)
