"""Failure diagnosis: from a recorded exception (type, message) and the phase it happened in, the
likely cause and a fix with numbers from the run's own config (``diagnose``)."""
from __future__ import annotations

import re
from typing import NamedTuple

from lmlab.reports.render import finite
from lmlab.reports.runs import Run
from lmlab.reports.text import Text


class FailureRule(NamedTuple):
    """A known failure class: ``pattern`` is searched in "Type: message" (``{val_split}`` is the
    run's validation split), ``phase`` in the phase name; an empty one matches anything. The
    cause and fix are the strings ``cause.<key>`` / ``fix.<key>`` of the report's language."""

    key: str
    pattern: str = ""
    phase: str = ""


# First match wins, so the specific classes come before the broad "missing data" one.
FAILURE_RULES: tuple[FailureRule, ...] = (
    FailureRule("oom", r"out of memory|OutOfMemoryError|\bMemoryError|can't allocate memory|"
                       r"CUBLAS_STATUS_ALLOC_FAILED"),
    FailureRule("nonfinite", r"non-finite|loss is nan|\bnan loss"),
    FailureRule("offline", r"cannot download|Offline\?|HF_(?:DATASETS|HUB)_OFFLINE|hub is unreachable|"
                           r"ConnectionError|Max retries exceeded|name resolution|LocalEntryNotFound"),
    FailureRule("eval", "", r"^eval|evaluat|downstream"),  # before the data rules: a task file is not data.*
    FailureRule("missing_val", r"validation is enabled but|data\.val_path|\.val\.jsonl|"
                               r"split '{val_split}' not found"),
    FailureRule("missing_data", r"FileNotFoundError|No such file|does not exist|not found|"
                                r"has no training files|has no documents|is not set"),
)


def diagnose(exception: dict | None, phase: str | None, run: Run, t: Text) -> tuple[str, str]:
    """(cause, fix) of a failure from ``FAILURE_RULES``; the 'unknown' texts when none matches."""
    exception = exception or {}
    text = f"{exception.get('type', '')}: {exception.get('message', '')}"
    val_split = str(run.get("data.val_split") or "valid")
    for rule in FAILURE_RULES:
        pattern = rule.pattern.replace("{val_split}", re.escape(val_split))
        if pattern and not re.search(pattern, text, re.IGNORECASE):
            continue
        if rule.phase and not re.search(rule.phase, phase or "", re.IGNORECASE):
            continue
        return t(f"cause.{rule.key}"), _fix_text(rule.key, run, t, val_split)
    return t("cause.unknown"), t("fix.unknown")


def _fix_text(key: str, run: Run, t: Text, val_split: str) -> str:
    """The fix, with numbers from the run's config (e.g. the batch size to try after an OOM)."""
    batch = int(run.get("data.batch_size") or 0)
    accum = int(run.get("training.grad_accum") or 1)
    if key == "oom":
        half = max(1, batch // 2) if batch else "1/2"
        if batch and batch % (2 * accum) == 0:
            return t("fix.oom", accum2=2 * accum, micro=batch // (2 * accum), batch=batch, half=half)
        return t("fix.oom_no_accum", half=half)
    if key == "nonfinite":
        lr = run.get("optim.lr")
        return t("fix.nonfinite", lr_half=f"optim.lr={lr / 2:g}" if finite(lr) else "optim.lr/2")
    if key == "missing_val":
        return t("fix.missing_val", val_split=val_split)
    if key == "eval":
        return t("fix.eval", run=run.path)
    return t(f"fix.{key}")
