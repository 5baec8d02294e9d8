"""One run's report: ``write_report`` puts ``report.md`` (or ``.html``, or ``report.<lang>.*``) and
``plots/*.png`` into the run directory (or another folder), from what the run directory holds
(nothing is rebuilt)."""
from __future__ import annotations

from pathlib import Path

from lmlab import rundir
from lmlab.reports import sections
from lmlab.reports.plots import make_plots
from lmlab.reports.render import FORMATS, Block, render
from lmlab.reports.runs import load_run
from lmlab.reports.samples import samples_section
from lmlab.reports.text import Text


def report_path(run_dir: str | Path, lang: str = "en", fmt: str = "md") -> Path:
    """``report.md`` / ``report.html``; other languages get ``report.<lang>.md`` so that writing
    the Japanese report does not overwrite the English one."""
    return Path(run_dir) / (rundir.REPORT_STEM + ("" if lang == "en" else f".{lang}") + f".{fmt}")


def write_report(run_dir: str | Path, lang: str = "en", fmt: str = "md",
                 out_dir: str | Path | None = None) -> Path:
    """Write the run's report (and ``plots/*.png``) into ``out_dir`` (default: ``run_dir`` itself;
    another folder when the run directory is read-only); returns the report's path."""
    t = Text(lang)
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    run = load_run(run_dir)
    folder = Path(out_dir) if out_dir is not None else run.path
    plots = make_plots(run, folder / rundir.PLOTS_DIR)
    blocks: list[Block] = [("p", t("generated", path=run.path))]
    blocks += sections.overview(run, t) + sections.status_section(run, t)
    if run.status.get("status") == "failed":
        blocks += sections.failure_section(run, t)
    blocks += sections.model_section(run, t) + sections.loss_section(run, t)
    blocks += sections.plots_section(plots, run, t, base=folder) + sections.throughput_section(run, t)
    blocks += sections.checkpoints_section(run, t) + sections.eval_section(run, t) + samples_section(run, t)
    out = report_path(folder, lang, fmt)
    out.write_text(render(t("title", name=run.get("name") or run.path.name), blocks, fmt), encoding="utf-8")
    return out
