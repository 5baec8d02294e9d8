"""The sections of a run report, each a list of blocks: what ran and how it ended (overview,
status, phases, warnings, failure analysis), then what it built and measured (model size, loss,
plots, throughput, checkpoints, evaluation results).

Conventions printed with the numbers: ``val/loss`` is nats per predicted token, ``ppl =
exp(loss)``, ``bpb`` is bits per UTF-8 byte of the target text, FLOPs per token follow the model's
own ``flops_per_token`` formula (its name is printed), MFU is defined against a GPU's dense bf16
peak and is n/a on CPU.
"""
from __future__ import annotations

import math
import shlex
from pathlib import Path
from typing import Any

from lmlab import humanize, rundir
from lmlab.reports.diagnose import diagnose
from lmlab.reports.render import Block, finite, fmt_delta, fmt_int, fmt_num, fmt_pct, fmt_sci, fmt_si
from lmlab.reports.runs import Run, best_validation, duration, progress, steady_median
from lmlab.reports.text import Text

TABLE_MAX_ROWS = 50  # the loss table widens its 10-step stride to stay readable on long runs


def _ckpt(folder: Path) -> str:
    """``checkpoints/<name>``, as the report names a checkpoint folder."""
    return f"{rundir.CHECKPOINTS_DIR}/{folder.name}"


# --------------------------------------------------------------------------- what ran, how it ended


def _first_event(run: Run, name: str) -> dict:
    return next((e for e in run.events if e.get("event") == name), {})


def overview(run: Run, t: Text) -> list[Block]:
    prov, start = run.provenance, _first_event(run, "run_start")
    machine, git, versions = prov.get("machine") or {}, prov.get("git") or {}, prov.get("versions") or {}
    seconds, approx = duration(run)
    took = humanize.duration(seconds) + (f" ({t('approx')})" if approx and seconds is not None else "")
    command = prov.get("command") or start.get("command")
    sha = git.get("sha")
    dirty = {True: t("dirty"), False: t("clean")}.get(git.get("dirty"), t("unknown"))
    rows = [(t("k_name"), run.get("name") or run.path.name), (t("k_dir"), f"`{run.path}`"),
            (t("k_started"), _utc(start.get("time") or prov.get("time")) or t("unknown")),
            (t("k_duration"), took), (t("k_status"), t.status(run.status.get("status"))),
            (t("k_device"), _device(machine, run))]
    if machine.get("gpu"):
        rows.append((t("k_gpu"), f"{machine['gpu']} × {machine.get('gpu_count', 1)}, "
                                 f"{machine.get('gpu_memory_gib', '?')} GiB, CUDA {machine.get('cuda')}"))
    rows += [(t("k_platform"), machine.get("platform") or "-"),
             (t("k_threads"), machine.get("cpu_threads", "-")),
             (t("k_command"), f"`{shlex.join(map(str, command))}`" if command else "-"),
             (t("k_git"), f"`{sha[:12]}` ({dirty})" if sha else t("unknown")),
             (t("k_versions"), ", ".join(f"{k} {versions[k]}" for k in ("python", "torch", "lmlab")
                                         if versions.get(k)) or "-")]
    if run.status.get("attempts"):
        rows.append((t("k_attempts"), run.status["attempts"]))
    if prov.get("resumed_from_step") is not None:
        rows.append((t("k_resumed"), prov["resumed_from_step"]))
    return [("h", 2, t("h_overview")), ("table", [t("k_item"), t("k_value")], rows)]


def _device(machine: dict, run: Run) -> str:
    """``cpu (`precision=auto`)``: where it ran, from provenance, else as configured."""
    device = machine.get("device") or run.get("device")
    precision = run.get("precision")
    return f"{device or '-'}" + (f" (`precision={precision}`)" if precision else "")


def _utc(iso: str | None) -> str | None:
    """``2026-11-22 22:11:58`` from either timestamp style (the heading says UTC)."""
    return iso[:19].replace("T", " ") if isinstance(iso, str) else None


def status_section(run: Run, t: Text) -> list[Block]:
    st = run.status
    rule = t.get(f"rule.{st.get('rule')}", st.get("reason") or "")
    items = []
    done, planned, unit = progress(run)
    items.append(t("progress", done=done, planned=planned or "?", unit=t(f"unit.{unit}")))
    items.append(t("validations", n=len(run.val), step=run.val[-1]["step"]) if run.val
                 else t("no_validation"))
    steps = rundir.step_checkpoints(run.path)
    count = len(steps) + len(rundir.named_checkpoints(run.path))
    items.append(t("ckpt_summary", n=count, latest=_ckpt(steps[-1])) if steps else t("no_ckpt"))
    if st.get("phase"):
        key = {"failed": "phase_failed_at", "running": "phase_current"}.get(st.get("status"),
                                                                           "phase_ended_in")
        items.append(t(key, phase=st["phase"]))
    if st.get("status") in ("stopped", "preempted", "interrupted", "failed", "cancelled") and steps:
        script = run.path / rundir.SUBMIT_FILE  # a SLURM run resumes by its batch script
        items.append(t("resume_slurm", script=script, ckpt=_ckpt(steps[-1])) if script.is_file() else
                     t("resume", ckpt=_ckpt(steps[-1])))
    blocks = [("h", 2, t("h_status")), ("p", t("status_line", status=t.status(st.get("status")), rule=rule)),
              ("ul", items)]
    return blocks + _phases_table(run, t) + _warnings_list(run, t) + _bad_records_list(run, t)


def _phases_table(run: Run, t: Text) -> list[Block]:
    """One row per (invocation, phase): how often it ran, how each ended, total seconds. A long
    run validates and checkpoints hundreds of times; one row each would bury the table."""
    groups: dict[tuple[int, str], dict] = {}
    attempt = 0
    for e in run.events:
        if e.get("event") == "run_start":
            attempt += 1
        elif e.get("event") == "phase_end":
            row = groups.setdefault((attempt, str(e.get("phase"))), {"n": 0, "statuses": {}, "seconds": 0.0})
            row["n"] += 1
            row["statuses"][e.get("status")] = row["statuses"].get(e.get("status"), 0) + 1
            row["seconds"] += e.get("seconds") or 0.0
    if not groups:
        return []
    rows = [(n, f"`{phase}`", g["n"], ", ".join(f"{k} ×{v}" if v > 1 else str(k) for k, v in g["statuses"].items()),
             fmt_num(g["seconds"], 2)) for (n, phase), g in groups.items()]
    return [("h", 3, t("h_phases")),
            ("table", [t("k_attempt"), t("k_phase"), t("k_count"), t("k_status"), t("k_seconds")], rows)]


def _warnings_list(run: Run, t: Text) -> list[Block]:
    found = [e for e in run.events if e.get("event") == "warning"]
    if not found:
        return []
    distinct = list(dict.fromkeys(f"{e.get('category')}: {e.get('message')} (`{e.get('where')}`)"
                                  for e in found))
    return [("h", 3, t("h_warnings")), ("p", t("warnings_n", n=len(found))), ("ul", distinct[:5])]


def _bad_records_list(run: Run, t: Text, shown: int = 10) -> list[Block]:
    """Data lines training skipped (``bad_record`` events, one per file:line however often read)."""
    found = {(e.get("file"), e.get("line")): e.get("reason") for e in run.events
             if e.get("event") == "bad_record"}
    if not found:
        return []
    counted = max([len(found)] + [e.get("count") or 0 for e in run.events if e.get("event") == "bad_records"])
    budget = run.get("data.max_bad_records")
    limit = t("no_limit") if run.get("data.skip_bad_lines") or budget is None else budget
    items = [f"`{file}:{line}`: {reason}" for (file, line), reason in list(found.items())[:shown]]
    return [("h", 3, t("h_bad_records")),
            ("p", t("bad_records_n", n=counted, budget=limit, events_file=rundir.EVENTS_FILE)), ("ul", items)]


def failure_section(run: Run, t: Text) -> list[Block]:
    st = run.status
    exc = st.get("exception") or {}
    cause, fix = diagnose(exc, st.get("phase"), run, t)
    message = str(exc.get("message", "-"))
    first = message.splitlines()[0] if message.strip() else "-"
    rows = [(t("k_phase"), f"`{st.get('phase') or '-'}`"), (t("k_exception"), f"`{exc.get('type', '-')}`"),
            (t("k_message"), first + (" …" if "\n" in message.strip() else "")),
            (t("k_where"), f"`{exc.get('where', '-')}`"),
            (t("k_traceback"), f"`{exc['traceback_file']}`" if exc.get("traceback_file") else "-"),
            (t("k_cause"), cause), (t("k_fix"), fix)]
    blocks = [("h", 2, t("h_failure")), ("table", [t("k_item"), t("k_value")], rows)]
    tb = run.path / exc["traceback_file"] if exc.get("traceback_file") else None
    if tb is not None and tb.is_file():
        text = tb.read_text(encoding="utf-8", errors="replace")
        body = text[text.find("Traceback (most recent call last)"):] if "Traceback (" in text else text
        blocks += [("p", t("traceback_tail")), ("code", "\n".join(body.splitlines()[-25:]))]
    elif "\n" in message.strip():  # no traceback file: at least the whole message
        blocks.append(("code", message))
    return blocks


# --------------------------------------------------------------------------- what it built and measured


def model_section(run: Run, t: Text) -> list[Block]:
    size = run.model_size
    if size is None:
        config = run.path / rundir.CONFIG_FILE
        command = f"lmlab info {config}" if config.is_file() else "lmlab info CONFIG"
        return [("h", 2, t("h_model")), ("p", t("model_not_recorded", command=command))]
    params, formula = size.get("params"), size.get("formula")
    rows = [(t("k_model"), f"`{size.get('model', '-')}`"),
            (t("k_params"), f"{fmt_int(params)} ({params / 1e6:.2f} M)" if finite(params) else "-"),
            (t("k_flops_token"), fmt_int(size.get("flops_per_token"))),
            (t("k_formula"), f"`{formula}`" if formula else "-"),  # as code: Markdown would read 12*L*d as emphasis
            (t("k_vocab"), fmt_int(size.get("vocab_size"))), (t("k_seq"), size.get("seq_len", "-")),
            (t("k_tokens_step"), fmt_int(size.get("tokens_per_step")))]
    return [("h", 2, t("h_model")), ("table", [t("k_item"), t("k_value")], rows)]


def _every(lines: list[dict], stride: int) -> list[dict]:
    """The first line, the first line at or past each multiple of ``stride``, and the last."""
    chosen, mark = [], 0
    for i, m in enumerate(lines):
        if i == 0 or m["step"] >= mark or i == len(lines) - 1:
            chosen.append(m)
            mark = (m["step"] // stride + 1) * stride
    return chosen


def _thin(lines: list[dict], limit: int = TABLE_MAX_ROWS) -> list[dict]:
    """At most about ``limit`` evenly spaced lines, always keeping the last."""
    if len(lines) <= limit:
        return lines
    every = math.ceil(len(lines) / limit)
    return lines[::every] + ([lines[-1]] if (len(lines) - 1) % every else [])


def _loss_table_steps(run: Run, t: Text) -> list[Block]:
    last = run.train[-1]["step"]
    stride = 10 * max(1, math.ceil(last / 10 / TABLE_MAX_ROWS))
    val_at = {m["step"]: m for m in run.val}
    rows, prev = [], None
    for m in _every(run.train, stride):
        v = val_at.get(m["step"])
        rows.append((m["step"], fmt_num(m.get("loss")), fmt_delta(m.get("loss"), prev and prev.get("loss")),
                     fmt_num(v["val/loss"]) if v else "", fmt_sci(m.get("lr")),
                     fmt_num(m.get("grad_norm"), 3)))
        prev = m
    header = [t("c_step"), t("c_train"), t("c_delta"), t("c_val"), t("c_lr"), t("c_gnorm")]
    return [("p", t("loss_intro", stride=stride)), ("table", header, rows)]


def _validation_table(run: Run, t: Text) -> list[Block]:
    rows, prev = [], None
    for m in _thin(run.val):
        rows.append((m["step"], fmt_num(m["val/loss"]), fmt_delta(m["val/loss"], prev and prev["val/loss"]),
                     fmt_num(m.get("val/ppl"), 2), fmt_num(m.get("val/bpb")), fmt_pct(m.get("val/acc")),
                     fmt_int(m.get("val/tokens"))))
        prev = m
    header = [t("c_step"), t("c_val"), t("c_delta"), t("c_ppl"), t("c_bpb"), t("c_acc"), t("c_tokens")]
    return [("h", 3, t("h_validation")), ("p", t("val_intro")), ("table", header, rows)]


def _loss_table_epochs(run: Run, t: Text) -> list[Block]:
    val_at = {m["step"]: m for m in run.val}
    rows, prev, prev_val = [], None, None
    for e in run.epochs:
        v = val_at.get(e["step"], {})
        last = next((m for m in reversed(run.train) if m["step"] <= e["step"]), {})
        rows.append((e.get("epoch"), e["step"], fmt_num(e["train/epoch_loss"]),
                     fmt_delta(e["train/epoch_loss"], prev and prev["train/epoch_loss"]),
                     fmt_num(v.get("val/loss")),
                     fmt_delta(v.get("val/loss"), prev_val and prev_val.get("val/loss")),
                     fmt_num(v.get("val/ppl"), 2), fmt_pct(v.get("val/acc")),
                     fmt_sci(last.get("lr")), fmt_num(last.get("grad_norm"), 3)))
        prev, prev_val = e, v or prev_val
    header = [t("c_epoch"), t("c_step"), t("c_train"), t("c_delta"), t("c_val"), t("c_delta"),
              t("c_ppl"), t("c_acc"), t("c_lr"), t("c_gnorm")]
    return [("p", t("loss_intro_epochs")), ("p", t("val_intro")), ("table", header, rows)]


def loss_section(run: Run, t: Text) -> list[Block]:
    blocks: list[Block] = [("h", 2, t("h_loss"))]
    if run.epoch_mode and run.epochs:
        blocks += _loss_table_epochs(run, t)
    elif run.train:
        blocks += _loss_table_steps(run, t)
        if run.val:
            blocks += _validation_table(run, t)
    else:
        blocks.append(("p", t("no_train")))
    best = best_validation(run)
    if best:
        blocks.append(("p", t("best_val", loss=fmt_num(best["val/loss"]), step=best["step"],
                              ppl=fmt_num(best.get("val/ppl"), 2), bpb=fmt_num(best.get("val/bpb")),
                              acc=fmt_pct(best.get("val/acc")))))
    return blocks


def plots_section(plots: list[Path], run: Run, t: Text, base: Path | None = None) -> list[Block]:
    """``base``: the report's folder, which the image links are relative to (the run's by default)."""
    if not plots:
        return [("h", 2, t("h_plots")), ("p", t("no_plots"))]
    return [("h", 2, t("h_plots")), ("p", t("plots_intro"))] + [
        ("img", p.relative_to(base or run.path).as_posix(), p.stem) for p in plots]


def _stats(run: Run, key: str) -> tuple[Any, Any, Any]:
    """(median without the start-up window, last, max) of a training metric."""
    values = [m[key] for m in run.train if finite(m.get(key))]
    if not values:
        return None, None, None
    return steady_median(run, key), values[-1], max(values)


def throughput_section(run: Run, t: Text) -> list[Block]:
    if not run.train:
        return []
    rows = []
    for label, key, fmt in (("q_tokens_s", "tokens_per_s", lambda x: f"{fmt_int(x)} tokens/s"),
                            ("q_flops_s", "flops_per_s", lambda x: fmt_si(x, "FLOP/s")),
                            ("q_mfu", "mfu", fmt_pct), ("q_data", "data_time_frac", fmt_pct),
                            ("q_mem", "mem_peak_gib", lambda x: f"{x:.3f} GiB" if finite(x) else "-")):
        stats = _stats(run, key)
        if key == "mfu" and stats[0] is None:
            rows.append((t(label), t("mfu_na"), "", ""))
            continue
        rows.append((t(label), *(fmt(x) for x in stats)))
    rows.append((t("q_tokens"), "", fmt_int(run.train[-1].get("tokens")), ""))
    size = run.model_size or {}
    intro = t("throughput_intro", flops=f"{size['flops_per_token']:,}" if finite(size.get("flops_per_token")) else "?",
              formula=f"`{size['formula']}`" if size.get("formula") else "?")
    header = [t("c_quantity"), t("c_median"), t("c_last"), t("c_max")]
    return [("h", 2, t("h_throughput")), ("p", intro), ("table", header, rows)]


def _mib(folder: Path) -> str:
    """Size of the files in a checkpoint folder (MiB); ``-`` if a live run removed it meanwhile."""
    try:
        return f"{sum(f.stat().st_size for f in folder.iterdir() if f.is_file()) / 2**20:.2f}"
    except OSError:
        return "-"


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return False


def checkpoints_section(run: Run, t: Text) -> list[Block]:
    """Every complete checkpoint (the step ones, then ``best``/``final`` with the step they link)."""
    steps, named = rundir.step_checkpoints(run.path), rundir.named_checkpoints(run.path)
    blocks: list[Block] = [("h", 2, t("h_checkpoints"))]
    if not steps and not named:
        return blocks + [("p", t("no_ckpt"))]
    rows = []
    for folder in steps + named:
        state = rundir.read_json(folder / rundir.STATE_FILE)
        note = ""
        if folder in named:  # best/ and final/ hard-link a step's files
            model = folder / rundir.MODEL_FILE
            twin = next((s for s in steps if _same_file(s / rundir.MODEL_FILE, model)), None)
            note = t("same_files", other=_ckpt(twin)) if twin else ""
        finished = {True: t("yes"), False: t("no")}.get(state.get("finished"), "-")
        rows.append((f"`{_ckpt(folder)}`", state.get("step", "-"), finished, _mib(folder), note))
    header = [t("c_ckpt"), t("c_step"), t("c_finished"), t("c_size"), t("c_note")]
    return blocks + [("table", header, rows)]


def eval_section(run: Run, t: Text) -> list[Block]:
    blocks: list[Block] = [("h", 2, t("h_eval"))] + _failed_evals(run, t)
    if not run.evals:
        return blocks + [("p", t("eval_none"))]
    rows = [(f"`{m.get('task', '-')}`", m.get("metric", "-"),
             fmt_num(m.get("value")) + (f" ± {fmt_num(m['stderr'])}" if finite(m.get("stderr")) else ""),
             fmt_int(m.get("n")), fmt_int(m.get("num_fewshot")), m.get("step", "-")) for m in run.evals]
    header = [t("c_task"), t("c_metric"), t("c_value_stderr"), t("c_n"), t("c_fewshot"), t("c_step")]
    return blocks + [("p", t("eval_intro")), ("table", header, rows)]


def _failed_evals(run: Run, t: Text) -> list[Block]:
    """Evaluations that raised during training (the run itself went on): what, where, and the fix."""
    failed = [e for e in run.events if e.get("event") == "phase_end" and e.get("phase") == "eval"
              and e.get("status") == "failed"]
    if not failed:
        return []
    rows = []
    for e in failed:
        exc = e.get("exception") or {}
        cause, fix = diagnose(exc, "eval", run, t)
        message = str(exc.get("message", "-")).splitlines()[0] if exc.get("message") else "-"
        rows.append((e.get("step", "-"), f"`{exc.get('type', '-')}`", message, f"`{exc.get('where', '-')}`",
                     f"`{exc['traceback_file']}`" if exc.get("traceback_file") else "-", cause, fix))
    header = [t("c_step"), t("k_exception"), t("k_message"), t("k_where"), t("k_traceback"), t("k_cause"),
              t("k_fix")]
    return [("p", t("eval_failed", n=len(failed))), ("table", header, rows)]
