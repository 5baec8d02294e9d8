"""Several runs side by side (``write_comparison``): one row per run, the config keys whose values
differ, and every run's loss on one plot."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lmlab import humanize
from lmlab.reports.plots import plot_comparison
from lmlab.reports.render import Block, fmt_int, fmt_num, fmt_pct, fmt_sci, render
from lmlab.reports.runs import Run, load_run, summarize
from lmlab.reports.text import Text


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys (``optim.lr``); an empty mapping stays one value."""
    if not isinstance(config, dict) or (not config and prefix):
        return {prefix.rstrip("."): config}
    out: dict[str, Any] = {}
    for key, value in config.items():
        out.update(flatten(value, f"{prefix}{key}."))
    return out


def config_differences(runs: list[Run], skip: tuple[str, ...] = ("dump_dir",)) -> list[tuple]:
    """(key, value per run) for every dotted config key whose values are not all equal."""
    flat = [flatten(r.config) for r in runs]
    keys = sorted({k for f in flat for k in f} - set(skip))
    missing = object()
    rows = []
    for key in keys:
        values = [f.get(key, missing) for f in flat]
        if any(v != values[0] for v in values[1:]):
            rows.append((f"`{key}`", *("-" if v is missing else _show(v) for v in values)))
    return rows


def _show(value: Any) -> str:
    """A config value as it would be written in YAML or an override (null, true, "")."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, float):
        return f"{value:g}"
    return '""' if value == "" else str(value)


def _labels(runs: list[Run]) -> list[str]:
    """Directory names, or paths below the common parent where two names collide."""
    names = [r.path.name for r in runs]
    if len(set(names)) == len(names):
        return names
    common = Path(os.path.commonpath([str(r.path.resolve()) for r in runs]))
    return [r.path.resolve().relative_to(common).as_posix() or r.path.name for r in runs]


def _comparison_row(run: Run, label: str, t: Text) -> tuple:
    summary = summarize(run)
    best = summary["best"] or {}
    machine = run.provenance.get("machine") or {}
    rule = run.get("optim.lr_scaling") or "none"
    lr_rule = t("lr_rule_none") if rule == "none" else t(
        "lr_rule", rule=rule, base_lr=_show(run.get("optim.base_lr")),
        base_batch=run.get("optim.base_batch_size"))
    planned = f"/{summary['planned']}" if summary["planned"] else ""
    seconds, approx = summary["duration_s"], summary["duration_approx"]
    return (label, machine.get("gpu") or machine.get("device") or run.get("device") or "-",
            run.get("data.batch_size", "-"), fmt_sci(run.get("optim.lr")), lr_rule,
            f"{summary['done']}{planned} {t('unit.' + summary['unit'])}",
            fmt_num(best.get("val/loss")), fmt_num(best.get("val/ppl"), 2), fmt_pct(best.get("val/acc")),
            fmt_int(summary["tokens_per_s"]),
            ("~" if approx and seconds is not None else "") + humanize.duration(seconds))


def write_comparison(run_dirs: list[str | Path], out_path: str | Path, lang: str = "en") -> Path:
    """One table row per run, the config keys that differ, and an overlaid loss plot saved next to
    ``out_path`` (``<stem>-loss.png``). HTML when ``out_path`` ends in .html, else Markdown."""
    t = Text(lang)
    out = Path(out_path)
    fmt = "html" if out.suffix.lower() in (".html", ".htm") else "md"
    runs = [load_run(d) for d in run_dirs]
    labels = _labels(runs)
    header = [t("c_run"), t("k_device"), t("c_batch"), t("c_lr_eff"), t("c_lr_rule"), t("c_progress"),
              t("c_best"), t("c_ppl"), t("c_acc"), t("c_tps"), t("c_wall")]
    blocks: list[Block] = [("h", 2, t("h_runs")),
                           ("table", header, [_comparison_row(r, lbl, t) for r, lbl in zip(runs, labels)]),
                           ("p", t("val_intro")), ("h", 2, t("h_diff"))]
    diff = config_differences(runs)
    if diff:
        blocks += [("p", t("diff_intro")), ("table", [t("c_key"), *labels], diff)]
    else:
        blocks.append(("p", t("diff_none")))
    out.parent.mkdir(parents=True, exist_ok=True)
    plot = plot_comparison(runs, out.with_name(f"{out.stem}-loss.png"))
    if plot is not None:
        blocks += [("h", 2, t("h_plots")), ("p", t("compare_plot")), ("img", plot.name, "loss")]
    out.write_text(render(t("title_compare"), blocks, fmt), encoding="utf-8")
    return out
