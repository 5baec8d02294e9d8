"""Bad records: data lines that cannot be trained on (malformed JSON, no ``text`` string, bytes that
are not UTF-8). A long run must survive one, and must not hide it: each is skipped, counted and
reported, up to a budget (``data.max_bad_records``); past the budget the run stops and says which
lines and how to fix them.

One ``BadRecords`` is shared by every file a run reads. It knows nothing about where records are
reported: the application hands it ``on_record``, at creation or later with ``attach`` (``lmlab
train`` writes a ``bad_record`` event to ``events.jsonl`` and a console line for the first record of
each file, for those met while the data was prepared as well); ``warn`` makes the first record of
each file a Python warning. A record is counted once however often it is read (the
loader reads every file again each data epoch), and the records seen so far are part of the
loader's checkpointed state, so the budget is the run's, not one invocation's.

Going over the budget never interrupts a batch: ``exceeded`` is raised as a flag, and the owner of
the read decides when to stop (``error()``): the data phase at once, the training loop before it
reads the next batch, once the step whose batch went over is trained and checkpointed.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

from lmlab.errors import LmlabError

SHOWN = 5  # records listed in the over-budget error
REPORTED = 1000  # records handed to on_record per invocation (skip_bad_lines=true has no budget)
SAVED = 10_000  # records kept in the loader state (dedupe across resumes)
CHECK_HINT = "`lmlab check CONFIG --data` lists every bad line at once"


@dataclass(frozen=True)
class BadRecord:
    file: str
    line: int  # 1-based
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


# (record, message): message is the console line for the first record of a file, else None
OnRecord = Callable[[BadRecord, "str | None"], None]


def warn(record: BadRecord, message: str | None) -> None:
    """``on_record`` for commands without an event log: the first record of each file is a warning."""
    if message is not None:
        warnings.warn(message, UserWarning, stacklevel=4)


class BadRecords:
    """The bad records skipped so far, against ``budget`` (None: no limit). Without ``on_record``
    the reports wait for ``attach``."""

    def __init__(self, budget: int | None, on_record: OnRecord | None = None,
                 setting: str = "data.max_bad_records"):
        self.budget, self.on_record, self.setting = budget, on_record, setting
        self.pending: list[tuple[BadRecord, str | None]] = []
        self.count = 0
        self.records: list[BadRecord] = []  # the first SAVED ones, in the order met
        self.per_file: dict[str, int] = {}
        self._seen: set[tuple[str, int]] = set()
        self._told: set[str] = set()  # files whose first record this invocation already showed
        self._reported = 0
        # processes reading different documents (data.readers) each meet their own records: the
        # budget is judged on all of them, as exchanged at the loop's sync points (``absorb``)
        self.shared = False
        self._agreed = False
        self._news: list[BadRecord] = []

    @property
    def exceeded(self) -> bool:
        if self.shared:
            return self._agreed
        return self.budget is not None and self.count > self.budget

    def news(self) -> list[tuple[str, int, str]]:
        """The records met here since the last call (for the other processes)."""
        news, self._news = self._news, []
        return [(r.file, r.line, r.reason) for r in news]

    def absorb(self, records: list[tuple[str, int, str]]) -> None:
        """Every process's news: after it, all processes count the same records and agree on the
        budget."""
        for file, line, reason in records:
            self.add(file, line, reason)
        self._news.clear()
        self._agreed = self.budget is not None and self.count > self.budget

    def add(self, file: str, line: int, reason: str) -> None:
        """Count one skipped record (once per file:line) and report it."""
        if (file, line) in self._seen:
            return
        self._seen.add((file, line))
        record = BadRecord(file, line, reason)
        self._news.append(record)
        self.count += 1
        self.per_file[file] = self.per_file.get(file, 0) + 1
        if len(self.records) < SAVED:
            self.records.append(record)
        first = file not in self._told
        self._told.add(file)
        if self._reported < REPORTED:
            self._reported += 1
            report = (record, self.describe(record) if first else None)
            if self.on_record is None:
                self.pending.append(report)
            else:
                self.on_record(*report)

    def attach(self, on_record: OnRecord) -> None:
        """Report from now on with ``on_record``, starting with the records that waited for it."""
        self.on_record, pending, self.pending = on_record, self.pending, []
        for report in pending:
            on_record(*report)

    def describe(self, record: BadRecord) -> str:
        """The one line shown for the first bad record of a file."""
        limit = f"of at most {self.setting}={self.budget}" if self.budget is not None else \
            "; no limit: data.skip_bad_lines=true"
        return (f"{record}; skipped, not trained on (bad record {self.count} {limit}). Further bad "
                f"records of this file are counted without a line each; {CHECK_HINT}.")

    def summary(self) -> str:
        files = len(self.per_file)
        limit = f"budget {self.setting}={self.budget}" if self.budget is not None else "no limit"
        return (f"skipped {self.count} bad data record{'s' if self.count != 1 else ''} in {files} "
                f"file{'s' if files != 1 else ''} ({limit}); each is a `bad_record` event in "
                f"events.jsonl, and {CHECK_HINT}.")

    def error(self, where: str = "") -> LmlabError:
        """The over-budget error: how many, the first few, and the fix; ``where``: what was saved."""
        shown = "\n".join(f"  {r}" for r in self.records[:SHOWN])
        more = f"\n  ... and {self.count - SHOWN} more" if self.count > SHOWN else ""
        raise_to = max(100, 2 * self.count)
        return LmlabError(
            f"{self.count} bad data record{'s' if self.count != 1 else ''} (lines that are not JSON "
            f"objects with a 'text' string in UTF-8), over the budget {self.setting}={self.budget}:\n"
            f"{shown}{more}\n{where + ' ' if where else ''}Fix: run `lmlab check CONFIG --data` to "
            f"list every bad line at once, fix or delete those lines, or raise the budget (e.g. "
            f"{self.setting}={raise_to}) to skip them.")

    def check(self, where: str = "") -> None:
        if self.exceeded:
            raise self.error(where)

    # ------------------------------------------------------------------ checkpointed state

    def state_dict(self) -> dict:
        return {"count": self.count, "records": [[r.file, r.line, r.reason] for r in self.records]}

    def load_state_dict(self, state: dict, still_bad: Callable[[str, int], bool] | None = None) -> None:
        """Merge the records a checkpoint saw with those this invocation met already; a saved one
        that ``still_bad(file, line)`` finds repaired since no longer counts."""
        mine = self.records
        self.count, self.records, self.per_file, self._seen = 0, [], {}, set()
        saved = [BadRecord(str(f), int(n), str(r)) for f, n, r in state.get("records", [])]
        if still_bad is not None:
            saved = [r for r in saved if still_bad(r.file, r.line)]
        for record in saved + mine:
            if (record.file, record.line) not in self._seen:
                self._seen.add((record.file, record.line))
                self.records.append(record)
                self.per_file[record.file] = self.per_file.get(record.file, 0) + 1
        unsaved = max(0, int(state.get("count", 0)) - len(state.get("records", [])))  # beyond SAVED
        self.count = len(self.records) + unsaved


def merge_bad_records(states: list[dict]) -> dict:
    """One ``state_dict`` from several processes' (each record once)."""
    seen, records, beyond = set(), [], 0
    for state in states:
        for file, line, reason in state.get("records", []):
            if (file, line) not in seen:
                seen.add((file, line))
                records.append([file, line, reason])
        beyond += max(0, int(state.get("count", 0)) - len(state.get("records", [])))
    return {"count": len(records) + beyond, "records": records[:SAVED]}
