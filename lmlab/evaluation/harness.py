"""lm-evaluation-harness on lmlab models: an ``lm_eval`` LM that reads any model through the protocol.

Scoring rules (``loglikelihood``):

* The context is encoded with BOS prepended (every training document started with BOS), the
  continuation on its own, so the scored tokens are exactly the continuation's: nothing of the
  context is scored and no token straddles the boundary. Whitespace at the end of the context is
  moved to the start of the continuation first (lm-eval's convention; BPE merges a leading space into
  the next word's token, and bytes/word tokens are unaffected).
* Requests are scored in batches sorted by length (longest first), right-padded: the models are causal,
  so padding after a sequence never changes the logits of its real positions.
* Context limit: a transformer sees at most ``max_seq_len`` tokens. A longer request is left-truncated
  (the oldest context tokens are dropped, as lm-eval's own models do); a continuation longer than the
  window is scored in consecutive windows, each token once, with as much preceding context as fits.
  The recurrent model has no limit and always sees the whole sequence.

``loglikelihood_rolling`` uses the same windows over BOS + the whole text (lm-eval's rolling rule:
every token predicted exactly once, the last window with full context). ``generate_until`` runs
``generation.generate`` (prompts left-truncated, BOS kept, to leave room for the answer); what the
context cut is logged as one warning per evaluation (per ``LmlabLM``), not one per request.
"""
from __future__ import annotations

import json
import logging
from typing import Any

import torch
import torch.nn.functional as F
from lm_eval.api.model import LM
from tqdm import tqdm

from lmlab.evaluation.config import EvalConfig
from lmlab.evaluation.generation import eval_mode, generate, model_device
from lmlab.evaluation.tasks import FEWSHOT_SOURCE, build_tasks

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- scoring windows


def split_context(context: str, continuation: str) -> tuple[str, str]:
    """Move the context's trailing whitespace to the continuation (lm-eval's boundary convention)."""
    n = len(context) - len(context.rstrip())
    return (context[:-n], context[-n:] + continuation) if n else (context, continuation)


def score_windows(seq: list[int], start: int, max_len: int | None) -> list[tuple[list[int], list[int]]]:
    """(inputs, targets) pairs that score ``seq[start:]``, each target exactly once.

    ``targets`` are predicted by the last ``len(targets)`` input positions. With ``max_len`` None the
    whole sequence is one window; otherwise targets are cut into chunks of at most ``max_len``, each
    fed the ``max_len`` tokens before its last target (left truncation). ``start`` >= 1 (BOS first).
    """
    if start >= len(seq):
        return []
    if max_len is None:
        return [(seq[:-1], seq[start:])]
    windows = []
    for a in range(start, len(seq), max_len):
        b = min(a + max_len, len(seq))
        windows.append((seq[max(0, b - 1 - max_len):b - 1], seq[a:b]))
    return windows


# --------------------------------------------------------------------------- the lm-eval model


class LmlabLM(LM):
    """Any lmlab ``LanguageModel`` plus its tokenizer, as an lm-eval model (uses only the protocol)."""

    def __init__(self, model, tokenizer, batch_size: int = 32, max_gen_toks: int = 64,
                 progress: bool = True, seed: int = 1234):
        super().__init__()
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.max_gen_toks = batch_size, max_gen_toks
        self.progress, self.seed = progress, seed
        self._device = model_device(model)
        self.context_notices: list[str] = []  # what generate_until's context limit cut, said once

    @property
    def max_length(self) -> int | None:
        return self.model.max_seq_len

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_id

    # ----------------------------------------------------------------- lm-eval API
    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        bos = self.tokenizer.bos_id
        seqs = []
        for req in requests:
            context, continuation = split_context(*req.args[:2])
            ctx = [bos] + self.tokenizer.encode(context)
            seqs.append((ctx + self.tokenizer.encode(continuation), len(ctx)))
        results = self.score_sequences(seqs, "loglikelihood", disable_tqdm)
        for req, res in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", req.args, res)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        seqs = [([self.tokenizer.bos_id] + self.tokenizer.encode(req.args[0]), 1) for req in requests]
        results = [lp for lp, _ in self.score_sequences(seqs, "loglikelihood_rolling", disable_tqdm)]
        for req, res in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, res)
        return results

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        # one generate() call per distinct set of generation settings (a task has one)
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(json.dumps(req.args[1], sort_keys=True, default=str), []).append(i)
        out = [""] * len(requests)
        bar = tqdm(total=len(requests), desc="generate_until", unit="req",
                   disable=disable_tqdm or not self.progress)
        notices: list[str] = []
        for g, rows in enumerate(groups.values()):
            settings = self.generation_settings(requests[rows[0]].args[1])
            texts = generate(self.model, self.tokenizer, [requests[i].args[0] for i in rows],
                             seed=self.seed + g, batch_size=self.batch_size,
                             on_rows_done=bar.update, warn=notices.append, **settings)
            for i, text in zip(rows, texts):
                out[i] = text
                self.cache_hook.add_partial("generate_until", requests[i].args, text)
        bar.close()
        if notices and not self.context_notices:
            log.warning("generate_until: %s (said once per evaluation)", "; ".join(notices))
        self.context_notices += notices
        return out

    # ----------------------------------------------------------------- helpers
    def generation_settings(self, gen_kwargs: dict | None) -> dict[str, Any]:
        """lm-eval/HF generation kwargs -> generate() arguments. Greedy unless sampling is asked for:
        do_sample=False means greedy whatever the temperature (HF semantics)."""
        kwargs = dict(gen_kwargs or {})
        until = kwargs.pop("until", None) or []
        max_tokens = kwargs.pop("max_gen_toks", None)
        max_tokens = kwargs.pop("max_new_tokens", None) or max_tokens  # HF's name for it
        temperature = float(kwargs.pop("temperature", 0.0) or 0.0)
        top_p = kwargs.pop("top_p", None)
        do_sample = kwargs.pop("do_sample", None)
        if do_sample is False:
            temperature = 0.0
        elif do_sample and temperature == 0.0:
            temperature = 1.0  # HF's default temperature when sampling is switched on
        if kwargs:
            log.warning("generation settings ignored by lmlab: %s", sorted(kwargs))
        return {"stop": [until] if isinstance(until, str) else list(until),
                "max_tokens": int(max_tokens or self.max_gen_toks), "temperature": temperature,
                "top_p": 1.0 if top_p is None else float(top_p)}

    def score_sequences(self, seqs: list[tuple[list[int], int]], desc: str = "score",
                        disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """(sum of log-probs of ``seq[start:]``, all of them greedy) for each (seq, start)."""
        jobs, owner = [], []
        for i, (seq, start) in enumerate(seqs):
            for window in score_windows(seq, start, self.max_length):
                jobs.append(window)
                owner.append(i)
        totals = [[0.0, True] for _ in seqs]  # an empty continuation: log 1 = 0, trivially greedy
        for i, (logprob, greedy) in zip(owner, self._score_jobs(jobs, desc, disable_tqdm, len(seqs))):
            totals[i][0] += logprob
            totals[i][1] = totals[i][1] and greedy
        return [(lp, greedy) for lp, greedy in totals]

    def _score_jobs(self, jobs, desc, disable_tqdm, n_requests) -> list[tuple[float, bool]]:
        order = sorted(range(len(jobs)), key=lambda j: -len(jobs[j][0]))  # longest first
        results: list[tuple[float, bool]] = [(0.0, True)] * len(jobs)
        pad = self.tokenizer.pad_id if self.tokenizer.pad_id is not None else 0
        # a request is one window unless it overflows the context: count windows then
        bar = tqdm(total=len(jobs), desc=desc, unit="req" if len(jobs) == n_requests else "window",
                   disable=disable_tqdm or not self.progress)
        with eval_mode(self.model):
            for k in range(0, len(order), self.batch_size):
                batch = order[k:k + self.batch_size]
                width = len(jobs[batch[0]][0])
                rows = [jobs[j][0] + [pad] * (width - len(jobs[j][0])) for j in batch]
                logits = self.model(torch.tensor(rows, dtype=torch.long, device=self._device))
                sums, greedy = [], []
                for r, j in enumerate(batch):
                    inputs, targets = jobs[j]
                    scored = F.log_softmax(logits[r, len(inputs) - len(targets):len(inputs)].float(), -1)
                    target = torch.tensor(targets, device=scored.device)
                    sums.append(scored.gather(-1, target[:, None]).sum())
                    greedy.append((scored.argmax(-1) == target).all())
                # one device->host copy per batch, not one per request
                for j, lp, g in zip(batch, torch.stack(sums).tolist(), torch.stack(greedy).tolist()):
                    results[j] = (lp, bool(g))
                bar.update(len(batch))
        bar.close()
        return results


# --------------------------------------------------------------------------- tasks


def task_specs(cfg: EvalConfig, names: list[str]) -> tuple[list, Any, str]:
    """(tasks for ``lm_eval.simple_evaluate``, the TaskManager to pass with them, few-shot source).

    With ``data_dir`` the offline definitions in ``lmlab.evaluation.tasks`` are built as Task objects
    and an empty TaskManager is passed (the default one scans all of lm-eval's task configs, ~18 s).
    Without it the standard lm-eval tasks are loaded by name (they download from the hub).
    """
    from lm_eval.tasks import TaskManager  # lazy: lm-eval

    if cfg.data_dir:
        return build_tasks(names, cfg.data_dir), TaskManager(include_defaults=False), FEWSHOT_SOURCE
    return list(names), TaskManager(), "train (the standard task's few-shot split)"
