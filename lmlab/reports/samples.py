"""The report's samples section: the greedy continuations ``lmlab eval`` wrote to ``samples.jsonl``
(the report has no model: it only reads them)."""
from __future__ import annotations

from lmlab import rundir
from lmlab.reports.render import Block
from lmlab.reports.runs import Run
from lmlab.reports.text import Text


def samples_section(run: Run, t: Text) -> list[Block]:
    """Each prompt, then a code block of prompt + continuation (the model's text kept verbatim)."""
    rows = rundir.read_jsonl(run.path / rundir.SAMPLES_FILE)
    blocks: list[Block] = [("h", 2, t("h_samples"))]
    if not rows:
        return blocks + [("p", t("samples_none", run=run.path))]
    blocks.append(("p", t("samples_intro", step=rows[0].get("step", "?"), tokens=rows[0].get("max_tokens", "?"))))
    for i, row in enumerate(rows, 1):
        prompt, text = str(row.get("prompt", "")), str(row.get("text", ""))
        blocks += [("p", f"{i}. `{prompt}`"), ("code", prompt + text)]
    return blocks
