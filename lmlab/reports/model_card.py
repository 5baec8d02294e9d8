"""The README.md (model card) of an exported model: what it is, what it was trained on, how well it
did, what produced it, and how to load it. Read from the run directory only."""
from __future__ import annotations

from pathlib import Path

from lmlab.reports.runs import Run, best_validation, load_run, progress
from lmlab.reports.render import fmt_int, fmt_num

_DATA_KEYS = ("data.source", "data.root_dir", "data.path", "data.sources", "data.train_split",
              "data.val_split", "data.seq_len", "data.batch_size", "data.tokenizer.name")


def model_card(run_dir: Path, checkpoint: Path, loads_with: str, command: str) -> str:
    """Markdown for the export of ``checkpoint`` of the run at ``run_dir``; ``loads_with`` is the
    Python snippet that loads the export (or says that nothing in transformers does)."""
    run = load_run(run_dir)
    size = run.model_size or {}
    best = best_validation(run) or {}
    done, planned, unit = progress(run)
    git = run.provenance.get("git") or {}
    lines = [f"# {run.get('name') or run_dir.name}", "",
             f"Exported by lmlab from `{checkpoint}` with `{command}`.", "", "## Model", "",
             f"- family: `{run.get('model.name')}`, {fmt_int(size.get('params'))} parameters",
             f"- training FLOPs per token: {fmt_int(size.get('flops_per_token'))} ({size.get('formula', '?')})",
             "", "## Training", "", f"- {done}/{planned or '?'} {unit}",
             *(f"- `{key}`: {_show(run, key)}" for key in _DATA_KEYS if run.get(key) not in (None, "", {})),
             f"- optimizer: `{run.get('optim.name')}`, lr {run.get('optim.lr')}, "
             f"warmup {run.get('optim.warmup')}, schedule {run.get('optim.scheduler')}", "",
             "## Validation (best)", "", *_validation_lines(best), "", "## Provenance", "",
             f"- lmlab git `{(git.get('sha') or 'unknown')[:12]}`"
             f"{' (dirty)' if git.get('dirty') else ''}; versions: {_versions(run)}",
             f"- trained with: `{' '.join(run.provenance.get('command') or [])}`", "",
             "## Loading", "", "```python", loads_with.strip(), "```", ""]
    return "\n".join(lines)


def _show(run: Run, key: str) -> str:
    value = run.get(key)
    return f"`{value}`" if not isinstance(value, dict) else ", ".join(f"`{k}`: {v}" for k, v in value.items())


def _validation_lines(best: dict) -> list[str]:
    if not best:
        return ["- no validation was recorded"]
    return [f"- step {best.get('step')}: loss {fmt_num(best.get('val/loss'))}, perplexity "
            f"{fmt_num(best.get('val/ppl'), 2)}, bits per byte {fmt_num(best.get('val/bpb'))}, "
            f"next-token accuracy {fmt_num(best.get('val/acc'))}"]


def _versions(run: Run) -> str:
    versions = run.provenance.get("versions") or {}
    return ", ".join(f"{k} {versions[k]}" for k in ("python", "torch", "lmlab") if versions.get(k)) or "unknown"
