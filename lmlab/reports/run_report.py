"""Experiment reports: one run (``write_report``) or several side by side (``write_comparison``).

A report is built as a list of blocks (headings, paragraphs, tables, images, code), then rendered
as Markdown or HTML, so both formats and both languages (``en``, ``ja``) say exactly the same
thing. All prose lives in ``STRINGS`` (one dict per language); numbers, config keys, file names
and code are formatted by language-independent helpers, so the Japanese report carries the very
same numbers. Plot labels stay in English: matplotlib's default font has no Japanese glyphs.

Conventions printed with the numbers: ``val/loss`` is nats per predicted token, ``ppl =
exp(loss)``, ``bpb`` is bits per UTF-8 byte of the target text, FLOPs per token follow the model's
own ``flops_per_token`` formula (its name is printed), MFU is defined against a GPU's dense bf16
peak and is n/a on CPU.
"""
from __future__ import annotations

import dataclasses
import html
import math
import re
import shlex
import statistics
from pathlib import Path
from typing import Any, Callable, NamedTuple

from lmlab.reports.runs import (Run, best_validation, duration, format_duration, load_run,
                                median_tokens_per_s, progress, summarize)

LANGS = ("en", "ja")
FORMATS = ("md", "html")
TABLE_MAX_ROWS = 50  # the loss table widens its 10-step stride to stay readable on long runs

# --------------------------------------------------------------------------- strings

# One dict per language with the same keys. "{x}" fields are filled with language-independent
# numbers/identifiers; `backticks` mark code (config keys, files, commands) in both renderings.
STRINGS: dict[str, dict[str, str]] = {
    "en": {
        "title": "Run report: {name}",
        "title_compare": "Run comparison",
        "generated": "Generated {time} by lmlab from `{path}`.",
        "h_overview": "Overview", "h_status": "Status", "h_failure": "Failure analysis",
        "h_model": "Model size", "h_loss": "Loss", "h_validation": "Validation",
        "h_plots": "Plots", "h_throughput": "Throughput", "h_checkpoints": "Checkpoints",
        "h_eval": "Evaluation results", "h_runs": "Runs", "h_diff": "Config differences",
        "h_phases": "Phases", "h_warnings": "Warnings",
        "k_item": "item", "k_value": "value",
        "k_name": "run name", "k_dir": "directory", "k_started": "started (UTC)",
        "k_duration": "wall time", "k_status": "status", "k_device": "device", "k_gpu": "GPU",
        "k_platform": "platform", "k_threads": "CPU threads", "k_command": "command",
        "k_git": "git commit", "k_versions": "versions", "k_attempts": "invocations",
        "k_resumed": "last invocation resumed from step",
        "dirty": "with uncommitted changes", "clean": "clean", "unknown": "unknown",
        "none": "none", "approx": "approx., from file times", "yes": "yes", "no": "no",
        "status_line": "Status: **{status}**. {rule}",
        "status.running": "running", "status.finished": "finished", "status.failed": "failed",
        "status.stopped": "stopped (resumable)", "status.stopped early": "stopped early",
        "status.preempted": "preempted", "status.interrupted": "interrupted",
        "rule.run_end": "The run recorded how it ended (`run_end` event).",
        "rule.alive": "No end recorded yet and its process is alive.",
        "rule.recent_files": "No end recorded yet and its files changed recently.",
        "rule.failed_phase": "A phase failed and the process ended without recording an end.",
        "rule.preempted_phase": "A phase was ended by SIGTERM/SIGUSR1 (preemption).",
        "rule.interrupted_phase": "A phase was interrupted (Ctrl-C).",
        "rule.vanished": "Started, but the process is gone without recording an end "
                         "(killed, out of host memory, or the machine was lost).",
        "rule.no_events_recent": "No event log; its files changed recently.",
        "rule.no_events_finished": "No event log; the last checkpoint is marked finished.",
        "rule.no_events_stop_at": "No event log; the last checkpoint is at `training.stop_at`.",
        "rule.no_events_unknown": "No event log and no finished checkpoint.",
        "progress": "Progress: {done}/{planned} {unit}.",
        "unit.steps": "steps", "unit.epochs": "epochs",
        "validations": "Validation ran {n} times (last at step {step}).",
        "no_validation": "No validation results were logged.",
        "ckpt_summary": "{n} checkpoint directories; newest step checkpoint: `{latest}`.",
        "no_ckpt": "No checkpoint was written: a re-run starts from scratch.",
        "resume": "Run the same command again to resume from `{ckpt}`.",
        "phase_failed_at": "Failed in phase `{phase}`.",
        "k_phase": "phase", "k_attempt": "invocation", "k_seconds": "seconds",
        "warnings_n": "{n} warnings recorded; the first distinct ones:",
        "k_exception": "exception", "k_message": "message", "k_where": "raised at (file:line)",
        "k_traceback": "traceback file", "k_cause": "likely cause", "k_fix": "fix",
        "traceback_tail": "End of the traceback:",
        "cause.unknown": "No known failure pattern matched.",
        "fix.unknown": "Read the traceback file; `lmlab check CONFIG` reports configuration and "
                       "data problems with their fixes.",
        "cause.oom": "Out of memory: one step needs more memory than the device has.",
        "fix.oom": "Set `training.grad_accum={accum2}` (micro-batches of {micro} sequences, still "
                   "{batch} sequences per step, same optimisation), or lower `data.batch_size` to "
                   "{half} (then retune `optim.lr`); shorter `data.seq_len` or `precision=bf16` "
                   "also help. Then run the same command again: it resumes from the last checkpoint.",
        "fix.oom_no_accum": "Lower `data.batch_size` to {half} (then retune `optim.lr`, or use "
                            "`optim.lr_scaling`); shorter `data.seq_len` or `precision=bf16` also "
                            "help. Then run the same command again: it resumes.",
        "cause.nonfinite": "The loss or gradient norm became NaN/inf: training diverged.",
        "fix.nonfinite": "Lower `optim.lr` (e.g. {lr_half}), raise `optim.warmup`, keep "
                         "`optim.clip` > 0 (or use bf16 instead of fp16), then run the same command "
                         "again: it resumes from the last good checkpoint.",
        "cause.offline": "The data had to be downloaded, but this machine cannot reach the "
                         "Hugging Face hub (offline, or HF_DATASETS_OFFLINE/HF_HUB_OFFLINE is set).",
        "fix.offline": "Put a local copy in a directory (WikiText-2: `wiki.{{train,valid,test}}.raw` "
                       "or `{{train,valid,test}}.txt`) and set `data.path=DIR`; or install "
                       "`datasets` and run where the hub is reachable.",
        "cause.missing_val": "Validation is enabled but its data is missing.",
        "fix.missing_val": "Add the validation data (jsonl: `<source>/<name>.val.jsonl` next to "
                           "the `*.chunk.*.jsonl` files; text: `data.val_path`; wikitext2: the "
                           "`{val_split}` split in `data.path`), or set "
                           "`eval.validation.enabled=false`. `lmlab check CONFIG` lists every "
                           "missing file.",
        "cause.missing_data": "The training data is not where the config points.",
        "fix.missing_data": "Check `data.root_dir` and `data.sources` (jsonl) or `data.path` "
                            "(text, wikitext2); `lmlab check CONFIG` lists what is missing and "
                            "where to put it.",
        "cause.eval": "The evaluation failed; the trained weights in `checkpoints/` are not "
                      "affected.",
        "fix.eval": "Fix the error above (task name, evaluation data, an offline download), then "
                    "re-run only the evaluation on `checkpoints/final`.",
        "k_params": "parameters", "k_flops_token": "training FLOPs per token",
        "k_formula": "FLOPs formula", "k_vocab": "vocabulary size", "k_seq": "sequence length",
        "k_tokens_step": "tokens per optimizer step", "k_model": "model family",
        "model_error": "Model size unavailable: {error}",
        "loss_intro": "Training loss: cross-entropy of the logged step in nats/token; Δ is the "
                      "change from the previous row (negative is better). One row every {stride} "
                      "steps, plus the first and last logged steps.",
        "loss_intro_epochs": "One row per epoch. Training loss: mean over the epoch's steps "
                             "(nats/token); Δ: change from the previous epoch; lr and grad norm "
                             "at the epoch's last logged step.",
        "val_intro": "`val/loss`: nats per predicted token; ppl = exp(loss); bpb: bits per UTF-8 "
                     "byte of the target text; acc: next-token argmax accuracy.",
        "best_val": "Best validation loss: {loss} nats/token at step {step} (ppl {ppl}, bpb "
                    "{bpb}, accuracy {acc}).",
        "no_train": "No training metrics were logged.",
        "c_step": "step", "c_epoch": "epoch", "c_train": "train loss (nats/token)",
        "c_delta": "Δ", "c_val": "val loss (nats/token)", "c_ppl": "ppl", "c_bpb": "bpb (bits/byte)",
        "c_acc": "acc", "c_lr": "lr", "c_gnorm": "grad norm", "c_tokens": "tokens",
        "plots_intro": "Files in `plots/`. Loss in nats/token; grad norm before clipping.",
        "no_plots": "No plots: nothing was logged.",
        "c_quantity": "quantity", "c_median": "median", "c_last": "last", "c_max": "max",
        "q_tokens_s": "throughput (tokens/s)", "q_flops_s": "achieved FLOP/s",
        "q_mfu": "MFU", "q_data": "data-loading share of step time",
        "q_mem": "peak memory (GiB)", "q_tokens": "tokens trained",
        "mfu_na": "n/a (no GPU peak: CPU or unknown GPU)",
        "throughput_intro": "FLOP/s = tokens/s × {flops} FLOPs/token ({formula}). MFU = FLOP/s ÷ "
                            "the GPU's dense bf16 peak. Memory: torch peak allocated on GPU, process "
                            "peak RSS on CPU. The first logging window (start-up) is left out of "
                            "the medians.",
        "c_ckpt": "checkpoint", "c_finished": "finished", "c_size": "size (MiB)", "c_note": "note",
        "same_files": "same files as `{other}` (hard links)",
        "eval_none": "No downstream evaluation results (`metrics.eval.jsonl` is absent).",
        "c_task": "task", "c_metric": "metric", "c_value": "value", "c_stderr": "± stderr",
        "c_n": "n", "c_seconds": "seconds",
        "c_run": "run", "c_batch": "batch size", "c_lr_eff": "lr (effective)",
        "c_lr_rule": "lr scaling", "c_progress": "steps / epochs", "c_best": "best val loss",
        "c_tps": "tokens/s (median)", "c_wall": "wall time", "c_key": "config key",
        "lr_rule_none": "none (lr as given)",
        "lr_rule": "{rule}: {base_lr} @ batch {base_batch}",
        "diff_intro": "Keys of `config.yaml` (flattened to dotted keys) whose values differ; "
                      "`dump_dir` is left out. `-`: key absent.",
        "diff_none": "The configs are identical (apart from `dump_dir`).",
        "compare_plot": "Loss of every run (solid: training, dashed with dots: validation):",
    },
    "ja": {
        "title": "実行レポート: {name}",
        "title_compare": "実行の比較",
        "generated": "lmlab が `{path}` から {time} に生成しました。",
        "h_overview": "概要", "h_status": "状態", "h_failure": "失敗の分析",
        "h_model": "モデルの規模", "h_loss": "損失", "h_validation": "検証",
        "h_plots": "グラフ", "h_throughput": "スループット", "h_checkpoints": "チェックポイント",
        "h_eval": "評価結果", "h_runs": "実行一覧", "h_diff": "設定の差分",
        "h_phases": "フェーズ", "h_warnings": "警告",
        "k_item": "項目", "k_value": "値",
        "k_name": "実行名", "k_dir": "ディレクトリ", "k_started": "開始 (UTC)",
        "k_duration": "所要時間", "k_status": "状態", "k_device": "デバイス", "k_gpu": "GPU",
        "k_platform": "プラットフォーム", "k_threads": "CPU スレッド数", "k_command": "コマンド",
        "k_git": "git コミット", "k_versions": "バージョン", "k_attempts": "起動回数",
        "k_resumed": "最後の起動で再開したステップ",
        "dirty": "未コミットの変更あり", "clean": "変更なし", "unknown": "不明",
        "none": "なし", "approx": "概算 (ファイルの更新時刻から)", "yes": "はい", "no": "いいえ",
        "status_line": "状態: **{status}**。{rule}",
        "status.running": "実行中 (running)", "status.finished": "完了 (finished)",
        "status.failed": "失敗 (failed)", "status.stopped": "停止・再開可能 (stopped)",
        "status.stopped early": "早期終了 (stopped early)",
        "status.preempted": "プリエンプト (preempted)", "status.interrupted": "中断 (interrupted)",
        "rule.run_end": "実行の終わり方が記録されています (`run_end` イベント)。",
        "rule.alive": "終了はまだ記録されておらず、プロセスは生きています。",
        "rule.recent_files": "終了はまだ記録されておらず、ファイルが最近更新されています。",
        "rule.failed_phase": "フェーズが失敗し、終了を記録しないままプロセスが終わりました。",
        "rule.preempted_phase": "SIGTERM/SIGUSR1 (プリエンプション) でフェーズが終了しました。",
        "rule.interrupted_phase": "フェーズが中断されました (Ctrl-C)。",
        "rule.vanished": "開始後、終了を記録しないままプロセスが消えました (kill、ホストのメモリ不足、"
                         "マシンの喪失など)。",
        "rule.no_events_recent": "イベントログはありませんが、ファイルが最近更新されています。",
        "rule.no_events_finished": "イベントログはありませんが、最後のチェックポイントが完了を示しています。",
        "rule.no_events_stop_at": "イベントログはなく、最後のチェックポイントが `training.stop_at` の位置です。",
        "rule.no_events_unknown": "イベントログも完了したチェックポイントもありません。",
        "progress": "進捗: {done}/{planned} {unit}。",
        "unit.steps": "ステップ", "unit.epochs": "エポック",
        "validations": "検証は {n} 回実行されました (最後はステップ {step})。",
        "no_validation": "検証結果は記録されていません。",
        "ckpt_summary": "チェックポイントのディレクトリは {n} 個、最新のステップのチェックポイントは `{latest}` です。",
        "no_ckpt": "チェックポイントは書かれていません。再実行すると最初からやり直しになります。",
        "resume": "同じコマンドをもう一度実行すると `{ckpt}` から再開します。",
        "phase_failed_at": "フェーズ `{phase}` で失敗しました。",
        "k_phase": "フェーズ", "k_attempt": "起動", "k_seconds": "秒",
        "warnings_n": "警告が {n} 件記録されています。最初の異なるもの:",
        "k_exception": "例外", "k_message": "メッセージ", "k_where": "発生箇所 (file:line)",
        "k_traceback": "トレースバックのファイル", "k_cause": "推定原因", "k_fix": "対処法",
        "traceback_tail": "トレースバックの末尾:",
        "cause.unknown": "既知の失敗パターンには該当しませんでした。",
        "fix.unknown": "トレースバックのファイルを読んでください。`lmlab check CONFIG` は設定とデータの"
                       "問題を対処法とともに報告します。",
        "cause.oom": "メモリ不足: 1 ステップに必要なメモリがデバイスの容量を超えています。",
        "fix.oom": "`training.grad_accum={accum2}` を設定してください (マイクロバッチ {micro} 系列、"
                   "1 ステップあたりは {batch} 系列のままで最適化は変わりません)。または "
                   "`data.batch_size` を {half} に下げてください (その場合 `optim.lr` を再調整)。"
                   "`data.seq_len` を短くするか `precision=bf16` にするのも有効です。その後、同じコマンドを"
                   "再実行すると最後のチェックポイントから再開します。",
        "fix.oom_no_accum": "`data.batch_size` を {half} に下げてください (その場合 `optim.lr` を再調整"
                            "するか `optim.lr_scaling` を使用)。`data.seq_len` を短くするか "
                            "`precision=bf16` にするのも有効です。その後、同じコマンドを再実行すると再開します。",
        "cause.nonfinite": "損失または勾配ノルムが NaN/inf になりました: 学習が発散しています。",
        "fix.nonfinite": "`optim.lr` を下げ (例: {lr_half})、`optim.warmup` を増やし、`optim.clip` を "
                         "0 より大きく保ってください (fp16 の代わりに bf16 も有効)。その後、同じコマンドを"
                         "再実行すると最後の正常なチェックポイントから再開します。",
        "cause.offline": "データのダウンロードが必要でしたが、このマシンから Hugging Face Hub に接続"
                         "できません (オフライン、または HF_DATASETS_OFFLINE/HF_HUB_OFFLINE が設定済み)。",
        "fix.offline": "ローカルのコピーをディレクトリに置き (WikiText-2: `wiki.{{train,valid,test}}.raw` "
                       "または `{{train,valid,test}}.txt`)、`data.path=DIR` を設定してください。あるいは "
                       "`datasets` をインストールし、Hub に接続できる環境で実行してください。",
        "cause.missing_val": "検証が有効ですが、検証データがありません。",
        "fix.missing_val": "検証データを追加してください (jsonl: `*.chunk.*.jsonl` と同じ場所に "
                           "`<source>/<name>.val.jsonl`、text: `data.val_path`、wikitext2: "
                           "`data.path` に `{val_split}` 分割)。または `eval.validation.enabled=false` "
                           "を設定してください。`lmlab check CONFIG` が不足ファイルをすべて列挙します。",
        "cause.missing_data": "学習データが設定の指す場所にありません。",
        "fix.missing_data": "`data.root_dir` と `data.sources` (jsonl)、または `data.path` (text, "
                            "wikitext2) を確認してください。`lmlab check CONFIG` が不足しているものと"
                            "置き場所を示します。",
        "cause.eval": "評価が失敗しました。`checkpoints/` の学習済みの重みには影響ありません。",
        "fix.eval": "上のエラー (タスク名、評価データ、オフラインでのダウンロード) を直してから、"
                    "`checkpoints/final` に対して評価だけを再実行してください。",
        "k_params": "パラメータ数", "k_flops_token": "1 トークンあたりの学習 FLOPs",
        "k_formula": "FLOPs の式", "k_vocab": "語彙サイズ", "k_seq": "系列長",
        "k_tokens_step": "1 最適化ステップあたりのトークン数", "k_model": "モデルの種類",
        "model_error": "モデルの規模を計算できません: {error}",
        "loss_intro": "学習損失: 記録したステップの交差エントロピー (nats/token)。Δ は前の行からの変化"
                      "です (負なら改善)。{stride} ステップごとに 1 行、加えて最初と最後に記録したステップ。",
        "loss_intro_epochs": "エポックごとに 1 行。学習損失: そのエポックの全ステップの平均 "
                             "(nats/token)。Δ: 前のエポックからの変化。lr と勾配ノルムはエポック最後の"
                             "記録ステップの値。",
        "val_intro": "`val/loss`: 予測トークンあたりの nats。ppl = exp(loss)。bpb: 正解テキストの "
                     "UTF-8 1 バイトあたりのビット数。acc: 次トークンの argmax 正解率。",
        "best_val": "最良の検証損失: ステップ {step} で {loss} nats/token (ppl {ppl}、bpb {bpb}、"
                    "正解率 {acc})。",
        "no_train": "学習の指標は記録されていません。",
        "c_step": "ステップ", "c_epoch": "エポック", "c_train": "学習損失 (nats/token)",
        "c_delta": "Δ", "c_val": "検証損失 (nats/token)", "c_ppl": "ppl",
        "c_bpb": "bpb (bits/byte)", "c_acc": "正解率", "c_lr": "lr", "c_gnorm": "勾配ノルム",
        "c_tokens": "トークン数",
        "plots_intro": "ファイルは `plots/` にあります。損失は nats/token、勾配ノルムはクリップ前の値です。",
        "no_plots": "グラフはありません: 何も記録されていません。",
        "c_quantity": "指標", "c_median": "中央値", "c_last": "最後", "c_max": "最大",
        "q_tokens_s": "スループット (tokens/s)", "q_flops_s": "実効 FLOP/s",
        "q_mfu": "MFU", "q_data": "ステップ時間に占めるデータ読み込みの割合",
        "q_mem": "ピークメモリ (GiB)", "q_tokens": "学習したトークン数",
        "mfu_na": "該当なし (GPU のピーク値なし: CPU または未知の GPU)",
        "throughput_intro": "FLOP/s = tokens/s × {flops} FLOPs/token ({formula})。MFU = FLOP/s ÷ "
                            "GPU の dense bf16 ピーク。メモリ: GPU では torch のピーク確保量、CPU では"
                            "プロセスのピーク RSS。最初の記録区間 (起動処理) は中央値から除外しています。",
        "c_ckpt": "チェックポイント", "c_finished": "完了", "c_size": "サイズ (MiB)", "c_note": "備考",
        "same_files": "`{other}` と同じファイル (ハードリンク)",
        "eval_none": "下流タスクの評価結果はありません (`metrics.eval.jsonl` がありません)。",
        "c_task": "タスク", "c_metric": "指標", "c_value": "値", "c_stderr": "± 標準誤差",
        "c_n": "n", "c_seconds": "秒",
        "c_run": "実行", "c_batch": "バッチサイズ", "c_lr_eff": "lr (実効値)",
        "c_lr_rule": "lr のスケーリング", "c_progress": "ステップ / エポック", "c_best": "最良の検証損失",
        "c_tps": "tokens/s (中央値)", "c_wall": "所要時間", "c_key": "設定キー",
        "lr_rule_none": "なし (指定した lr)",
        "lr_rule": "{rule}: {base_lr} @ バッチ {base_batch}",
        "diff_intro": "`config.yaml` のキー (ドット区切りに平坦化) のうち値が異なるもの。"
                      "`dump_dir` は除外しています。`-`: キーなし。",
        "diff_none": "設定は (`dump_dir` を除き) 同一です。",
        "compare_plot": "各実行の損失 (実線: 学習、破線と点: 検証):",
    },
}


class Text:
    """Looks up ``STRINGS[lang][key]`` and fills its fields."""

    def __init__(self, lang: str):
        if lang not in STRINGS:
            raise ValueError(f"lang must be one of {sorted(STRINGS)}, got {lang!r}")
        self.lang, self.table = lang, STRINGS[lang]

    def __call__(self, key: str, **fields: Any) -> str:
        return self.table[key].format(**fields)

    def status(self, status: str | None) -> str:
        return self.table.get(f"status.{status}", str(status))


# --------------------------------------------------------------------------- numbers (any language)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def fmt_num(x: Any, digits: int = 4) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)  # nan / inf are the finding, not a formatting error
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def fmt_delta(cur: Any, prev: Any) -> str:
    return f"{cur - prev:+.4f}" if _finite(cur) and _finite(prev) else "-"


def fmt_sci(x: Any) -> str:
    return f"{x:.3e}" if _finite(x) else fmt_num(x)


def fmt_int(x: Any) -> str:
    return f"{int(x):,}" if _finite(x) else "-"


def fmt_pct(x: Any) -> str:
    return f"{100 * x:.2f}%" if _finite(x) else "-"


def fmt_si(x: Any, unit: str) -> str:
    """``56.51 GFLOP/s``: SI prefixes on a unit."""
    if not _finite(x):
        return "-"
    for prefix, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.2f} {prefix}{unit}"
    return f"{x:.1f} {unit}"


# --------------------------------------------------------------------------- blocks and rendering

Block = tuple  # ("h", level, text) | ("p", text) | ("ul", items) | ("table", header, rows)
#               | ("img", relative path, alt) | ("code", text)


def render(title: str, blocks: list[Block], fmt: str) -> str:
    if fmt == "md":
        return _render_md(title, blocks)
    if fmt == "html":
        return _render_html(title, blocks)
    raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")


def _md_cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _render_md(title: str, blocks: list[Block]) -> str:
    out = [f"# {title}", ""]
    for block in blocks:
        kind = block[0]
        if kind == "h":
            out += ["#" * block[1] + " " + block[2], ""]
        elif kind == "p":
            out += [block[1], ""]
        elif kind == "ul":
            out += [f"- {item}" for item in block[1]] + [""]
        elif kind == "table":
            out.append("| " + " | ".join(_md_cell(h) for h in block[1]) + " |")
            out.append("|" + "|".join("---" for _ in block[1]) + "|")
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block[2]] + [""]
        elif kind == "img":
            out += [f"![{block[2]}]({block[1]})", ""]
        elif kind == "code":
            out += ["```", block[1].rstrip("\n"), "```", ""]
    return "\n".join(out)


def _inline_html(text: str) -> str:
    """Escape, then turn the `code` and **bold** of the strings into tags."""
    text = html.escape(str(text))
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)


_CSS = ("body{font-family:sans-serif;max-width:70em;margin:2em auto;line-height:1.45}"
        "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.2em .5em;"
        "text-align:left}code{background:#f3f3f3}pre{background:#f6f6f6;padding:.6em;overflow:auto}"
        "img{max-width:48%;margin:.2em}")


def _render_html(title: str, blocks: list[Block]) -> str:
    out = ["<!DOCTYPE html>", "<html><head><meta charset=\"utf-8\">",
           f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
           f"<h1>{html.escape(title)}</h1>"]
    for block in blocks:
        kind = block[0]
        if kind == "h":
            out.append(f"<h{block[1]}>{_inline_html(block[2])}</h{block[1]}>")
        elif kind == "p":
            out.append(f"<p>{_inline_html(block[1])}</p>")
        elif kind == "ul":
            out.append("<ul>" + "".join(f"<li>{_inline_html(i)}</li>" for i in block[1]) + "</ul>")
        elif kind == "table":
            head = "".join(f"<th>{_inline_html(h)}</th>" for h in block[1])
            rows = "".join("<tr>" + "".join(f"<td>{_inline_html(c)}</td>" for c in row) + "</tr>"
                           for row in block[2])
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif kind == "img":
            out.append(f"<img src=\"{html.escape(block[1])}\" alt=\"{html.escape(block[2])}\">")
        elif kind == "code":
            out.append(f"<pre>{html.escape(block[1])}</pre>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- plots


def _figure():
    """A matplotlib Figure drawn by Agg; no pyplot, so no global state or GUI backend is touched
    (and matplotlib is only imported when a report is written)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 3.6), dpi=100, layout="constrained")
    return fig, fig.add_subplot()


def _x_axis(run: Run) -> tuple[Callable[[dict], float], str]:
    """x of a metrics line: the step, or in epoch mode the (fractional) epoch it ended."""
    if run.epoch_mode and run.epochs:
        first = run.epochs[0]
        per_epoch = first["step"] / max(1, int(first.get("epoch") or 1))
        return (lambda m: m["step"] / per_epoch), "epoch"
    return (lambda m: m["step"]), "step"


def _points(lines: list[dict], key: str, x_of) -> tuple[list, list]:
    pairs = [(x_of(m), m[key]) for m in lines if _finite(m.get(key))]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _plot_loss(run: Run, path: Path, title: str) -> Path | None:
    x_of, xlabel = _x_axis(run)
    xs, ys = _points(run.train, "loss", x_of)
    vx, vy = _points(run.val, "val/loss", x_of)
    if not xs and not vx:
        return None
    fig, ax = _figure()
    if xs:
        ax.plot(xs, ys, label="train (logged step)", color="tab:blue", alpha=0.6 if run.epochs else 1)
    if run.epoch_mode and run.epochs:
        ex, ey = _points(run.epochs, "train/epoch_loss", lambda m: m["epoch"])
        ax.plot(ex, ey, "s-", label="train (epoch mean)", color="tab:blue")
    if vx:
        ax.plot(vx, vy, "o--", label="validation", color="tab:orange")
    ax.set(xlabel=xlabel, ylabel="loss (nats/token)", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(path)
    return path


def _plot_series(run: Run, key: str, ylabel: str, path: Path, title: str) -> Path | None:
    x_of, xlabel = _x_axis(run)
    xs, ys = _points(run.train, key, x_of)
    if not xs:
        return None
    fig, ax = _figure()
    ax.plot(xs, ys, ".-", color="tab:green")
    clip = run.get("optim.clip")
    if key == "grad_norm":
        if _finite(clip) and clip > 0:
            ax.axhline(clip, color="tab:red", linestyle=":", label=f"optim.clip = {clip:g}")
            ax.legend()
        if min(ys) > 0 and max(ys) / min(ys) > 100:
            ax.set_yscale("log")  # early spikes would flatten the rest of the curve
    if key == "lr":
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    fig.savefig(path)
    return path


def make_plots(run: Run, out_dir: Path) -> list[Path]:
    """loss, learning rate, tokens/s and grad norm vs step (or epoch) as PNGs in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    name = run.get("name") or run.path.name
    made = [_plot_loss(run, out_dir / "loss.png", f"{name}: loss")]
    for key, ylabel, file in (("lr", "learning rate", "lr.png"),
                              ("tokens_per_s", "throughput (tokens/s)", "tokens_per_s.png"),
                              ("grad_norm", "grad norm (L2, before clipping)", "grad_norm.png")):
        made.append(_plot_series(run, key, ylabel, out_dir / file, f"{name}: {ylabel}"))
    return [p for p in made if p is not None]


def plot_comparison(runs: list[Run], path: Path) -> Path | None:
    """Every run's training (solid) and validation (dashed, dots) loss on one axis."""
    epoch_axis = all(r.epoch_mode and r.epochs for r in runs)  # mixed modes share the step axis
    fig, ax = _figure()
    drawn = False
    for i, run in enumerate(runs):
        x_of = _x_axis(run)[0] if epoch_axis else (lambda m: m["step"])
        color, label = f"C{i % 10}", run.path.name
        xs, ys = _points(run.train, "loss", x_of)
        vx, vy = _points(run.val, "val/loss", x_of)
        if xs:
            ax.plot(xs, ys, "-", color=color, alpha=0.8, label=f"{label} train")
        if vx:
            ax.plot(vx, vy, "o--", color=color, label=f"{label} val")
        drawn = drawn or bool(xs or vx)
    if not drawn:
        return None
    ax.set(xlabel="epoch" if epoch_axis else "step", ylabel="loss (nats/token)", title="loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


# --------------------------------------------------------------------------- model size


def _vocab_size(run: Run) -> int:
    """The vocabulary the model was built with: the run's saved tokenizer, else the configured one."""
    from lmlab.data.tokenizers import TokenizerConfig, configured_vocab_size, load_tokenizer

    if (run.path / "tokenizer.json").is_file():
        return load_tokenizer(run.path / "tokenizer.json").vocab_size
    raw = run.get("data.tokenizer") or {}
    names = {f.name for f in dataclasses.fields(TokenizerConfig)}
    return configured_vocab_size(TokenizerConfig(**{k: v for k, v in raw.items() if k in names}))


def model_size(run: Run) -> dict:
    """Parameters and training FLOPs per token (with the formula's name), computed like
    ``lmlab info``: the model is built on the meta device from config.yaml's model section."""
    from lmlab.models.registry import MODELS, build_on_meta, model_config_class, resolve_model_config

    section = dict(run.get("model") or {})
    name = section.get("name")
    if name not in MODELS:
        return {"error": f"unknown or missing model.name {name!r} in config.yaml"}
    seq_len = int(run.get("data.seq_len") or 0)
    try:
        vocab = _vocab_size(run)
        cls = model_config_class(name)
        known = {f.name for f in dataclasses.fields(cls)}  # tolerate keys of other lmlab versions
        cfg = resolve_model_config(cls(**{k: v for k, v in section.items() if k in known}), vocab, seq_len)
        model = build_on_meta(cfg)
        flops, formula = model.flops_per_token(seq_len)
    except Exception as err:  # a config this version cannot build: say why, report the rest
        return {"error": f"{type(err).__name__}: {err}"}
    batch = int(run.get("data.batch_size") or 0)
    return {"model": name, "params": model.num_params(), "flops_per_token": int(flops),
            "formula": formula, "vocab_size": vocab, "seq_len": seq_len,
            "tokens_per_step": batch * seq_len}


# --------------------------------------------------------------------------- failure diagnosis


class FailureRule(NamedTuple):
    """A known failure class: ``pattern`` is searched in "Type: message" (``{val_split}`` is the
    run's validation split), ``phase`` in the phase name; an empty one matches anything. The
    cause and fix are ``STRINGS[lang]["cause.<key>"]`` / ``["fix.<key>"]``."""

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
    FailureRule("missing_val", r"validation is enabled but|data\.val_path|\.val\.jsonl|"
                               r"split '{val_split}' not found"),
    FailureRule("missing_data", r"FileNotFoundError|No such file|does not exist|not found|"
                                r"has no training files|has no documents|is not set"),
    FailureRule("eval", "", r"^eval|evaluat|downstream"),
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
        return t("fix.nonfinite", lr_half=f"optim.lr={lr / 2:g}" if _finite(lr) else "optim.lr/2")
    if key == "missing_val":
        return t("fix.missing_val", val_split=val_split)
    return t(f"fix.{key}")


# --------------------------------------------------------------------------- report sections


def _first_event(run: Run, name: str) -> dict:
    return next((e for e in run.events if e.get("event") == name), {})


def _overview(run: Run, t: Text) -> list[Block]:
    prov, start = run.provenance, _first_event(run, "run_start")
    machine, git, versions = prov.get("machine") or {}, prov.get("git") or {}, prov.get("versions") or {}
    seconds, approx = duration(run)
    took = format_duration(seconds) + (f" ({t('approx')})" if approx and seconds is not None else "")
    command = prov.get("command") or start.get("command")
    sha = git.get("sha")
    dirty = {True: t("dirty"), False: t("clean")}.get(git.get("dirty"), t("unknown"))
    rows = [(t("k_name"), run.get("name") or run.path.name), (t("k_dir"), f"`{run.path}`"),
            (t("k_started"), (start.get("time") or prov.get("time") or t("unknown")).replace("T", " ")),
            (t("k_duration"), took), (t("k_status"), t.status(run.status.get("status"))),
            (t("k_device"), f"{machine.get('device', run.get('device') or '-')} "
                            f"(`precision={run.get('precision') or '-'}`)")]
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


def _step_checkpoints(run: Run) -> list[Path]:
    root = run.path / "checkpoints"
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))


def _status_section(run: Run, t: Text) -> list[Block]:
    st = run.status
    rule = t.table.get(f"rule.{st.get('rule')}", st.get("reason") or "")
    items = []
    done, planned, unit = progress(run)
    items.append(t("progress", done=done, planned=planned or "?", unit=t(f"unit.{unit}")))
    items.append(t("validations", n=len(run.val), step=run.val[-1]["step"]) if run.val
                 else t("no_validation"))
    steps = _step_checkpoints(run)
    items.append(t("ckpt_summary", n=len(list((run.path / "checkpoints").iterdir())),
                   latest=f"checkpoints/{steps[-1].name}") if steps else t("no_ckpt"))
    if st.get("status") == "failed" and st.get("phase"):
        items.append(t("phase_failed_at", phase=st["phase"]))
    if st.get("status") in ("stopped", "preempted", "interrupted", "failed") and steps:
        items.append(t("resume", ckpt=f"checkpoints/{steps[-1].name}"))
    blocks = [("h", 2, t("h_status")), ("p", t("status_line", status=t.status(st.get("status")), rule=rule)),
              ("ul", items)]
    return blocks + _phases_table(run, t) + _warnings_list(run, t)


def _phases_table(run: Run, t: Text) -> list[Block]:
    rows, attempt = [], 0
    for e in run.events:
        if e.get("event") == "run_start":
            attempt += 1
        elif e.get("event") == "phase_end":
            rows.append((attempt, f"`{e.get('phase')}`", e.get("status"), fmt_num(e.get("seconds"), 2)))
    if not rows:
        return []
    return [("h", 3, t("h_phases")),
            ("table", [t("k_attempt"), t("k_phase"), t("k_status"), t("k_seconds")], rows)]


def _warnings_list(run: Run, t: Text) -> list[Block]:
    found = [e for e in run.events if e.get("event") == "warning"]
    if not found:
        return []
    distinct = list(dict.fromkeys(f"{e.get('category')}: {e.get('message')} (`{e.get('where')}`)"
                                  for e in found))
    return [("h", 3, t("h_warnings")), ("p", t("warnings_n", n=len(found))), ("ul", distinct[:5])]


def _failure_section(run: Run, t: Text) -> list[Block]:
    st = run.status
    exc = st.get("exception") or {}
    cause, fix = diagnose(exc, st.get("phase"), run, t)
    rows = [(t("k_phase"), f"`{st.get('phase') or '-'}`"), (t("k_exception"), f"`{exc.get('type', '-')}`"),
            (t("k_message"), exc.get("message", "-")), (t("k_where"), f"`{exc.get('where', '-')}`"),
            (t("k_traceback"), f"`{exc['traceback_file']}`" if exc.get("traceback_file") else "-"),
            (t("k_cause"), cause), (t("k_fix"), fix)]
    blocks = [("h", 2, t("h_failure")), ("table", [t("k_item"), t("k_value")], rows)]
    tb = run.path / exc["traceback_file"] if exc.get("traceback_file") else None
    if tb is not None and tb.is_file():
        tail = tb.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
        blocks += [("p", t("traceback_tail")), ("code", "\n".join(tail))]
    return blocks


def _model_section(size: dict, t: Text) -> list[Block]:
    if "error" in size:
        return [("h", 2, t("h_model")), ("p", t("model_error", error=size["error"]))]
    rows = [(t("k_model"), f"`{size['model']}`"),
            (t("k_params"), f"{size['params']:,} ({size['params'] / 1e6:.2f} M)"),
            (t("k_flops_token"), f"{size['flops_per_token']:,}"), (t("k_formula"), size["formula"]),
            (t("k_vocab"), f"{size['vocab_size']:,}"), (t("k_seq"), size["seq_len"]),
            (t("k_tokens_step"), f"{size['tokens_per_step']:,}")]
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
                     fmt_num(v["val/loss"]) if v else "", fmt_sci(m.get("lr")), fmt_num(m.get("grad_norm"), 3)))
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
                     fmt_num(v.get("val/loss")), fmt_delta(v.get("val/loss"), prev_val and prev_val.get("val/loss")),
                     fmt_num(v.get("val/ppl"), 2), fmt_pct(v.get("val/acc")),
                     fmt_sci(last.get("lr")), fmt_num(last.get("grad_norm"), 3)))
        prev, prev_val = e, v or prev_val
    header = [t("c_epoch"), t("c_step"), t("c_train"), t("c_delta"), t("c_val"), t("c_delta"),
              t("c_ppl"), t("c_acc"), t("c_lr"), t("c_gnorm")]
    return [("p", t("loss_intro_epochs")), ("p", t("val_intro")), ("table", header, rows)]


def _loss_section(run: Run, t: Text) -> list[Block]:
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


def _plots_section(plots: list[Path], run: Run, t: Text) -> list[Block]:
    if not plots:
        return [("h", 2, t("h_plots")), ("p", t("no_plots"))]
    return [("h", 2, t("h_plots")), ("p", t("plots_intro"))] + [
        ("img", p.relative_to(run.path).as_posix(), p.stem) for p in plots]


def _stats(run: Run, key: str) -> tuple[Any, Any, Any]:
    """(median without the start-up window, last, max) of a training metric."""
    values = [m[key] for m in run.train if _finite(m.get(key))]
    if not values:
        return None, None, None
    steady = values[1:] if len(values) > 1 else values
    return statistics.median(steady), values[-1], max(values)


def _throughput_section(run: Run, size: dict, t: Text) -> list[Block]:
    if not run.train:
        return []
    rows = []
    for label, key, fmt in (("q_tokens_s", "tokens_per_s", lambda x: fmt_si(x, "tokens/s")),
                            ("q_flops_s", "flops_per_s", lambda x: fmt_si(x, "FLOP/s")),
                            ("q_mfu", "mfu", fmt_pct), ("q_data", "data_time_frac", fmt_pct),
                            ("q_mem", "mem_peak_gib", lambda x: f"{x:.3f} GiB" if _finite(x) else "-")):
        stats = _stats(run, key)
        if key == "mfu" and stats[0] is None:
            rows.append((t(label), t("mfu_na"), "", ""))
            continue
        rows.append((t(label), *(fmt(x) for x in stats)))
    rows.append((t("q_tokens"), "", fmt_int(run.train[-1].get("tokens")), ""))
    intro = t("throughput_intro", flops=f"{size['flops_per_token']:,}" if "flops_per_token" in size else "?",
              formula=size.get("formula", "?"))
    header = [t("c_quantity"), t("c_median"), t("c_last"), t("c_max")]
    return [("h", 2, t("h_throughput")), ("p", intro), ("table", header, rows)]
