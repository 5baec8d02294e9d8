"""lm-evaluation-harness on lmlab models: an ``lm_eval`` LM that reads any model through the protocol.

Scoring rules (``loglikelihood``):

* The context is encoded with BOS prepended (every training document started with BOS), the
  continuation on its own, so the scored tokens are exactly the continuation's: nothing of the
  context is scored and no token straddles the boundary. Whitespace at the end of the context is
  moved to the start of the continuation first (lm-eval's convention; BPE merges a leading space into
  the next word's token, and bytes/word tokens are unaffected).
* Requests are scored by ``scoring.SequenceScorer``: batches filled up to a token budget
  (``eval.max_batch_tokens``, at most ``eval.batch_size`` rows), the context of a multiple-choice
  item run once for all its choices, bf16 autocast on CUDA only; exact (to float rounding) against
  scoring each request alone.
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

from lm_eval.api.model import LM
from tqdm import tqdm

from lmlab.evaluation import catalog
from lmlab.evaluation.config import EvalConfig
from lmlab.evaluation.generation import generate, model_device
from lmlab.evaluation.scoring import SequenceScorer, eval_autocast
from lmlab.evaluation.tasks import KNOWN_TASKS, build_tasks

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- scoring windows


def split_context(context: str, continuation: str) -> tuple[str, str]:
    """Move the context's trailing whitespace to the continuation (lm-eval's boundary convention)."""
    n = len(context) - len(context.rstrip())
    return (context[:-n], context[-n:] + continuation) if n else (context, continuation)


# --------------------------------------------------------------------------- the lm-eval model


class LmlabLM(LM):
    """Any lmlab ``LanguageModel`` plus its tokenizer, as an lm-eval model (uses only the protocol)."""

    def __init__(self, model, tokenizer, batch_size: int = 32, max_gen_toks: int = 64,
                 progress: bool = True, seed: int = 1234, max_batch_tokens: int = 16384,
                 precision: str = "auto"):
        super().__init__()
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.max_gen_toks = batch_size, max_gen_toks
        self.progress, self.seed = progress, seed
        self.scorer = SequenceScorer(
            model, batch_size, max_batch_tokens, pad_id=tokenizer.pad_id if tokenizer.pad_id is not None else 0,
            autocast=eval_autocast(model_device(model), precision), progress=progress)
        self.context_notices: list[str] = []  # what generate_until's context limit cut, said once

    @property
    def max_length(self) -> int | None:
        return self.model.max_seq_len

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_id

    # ----------------------------------------------------------------- lm-eval API
    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        results = self.scorer.score(self.encode_pairs(requests), "loglikelihood", disable_tqdm)
        for req, res in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", req.args, res)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        seqs = [([self.tokenizer.bos_id] + self.tokenizer.encode(req.args[0]), 1) for req in requests]
        results = [lp for lp, _ in self.scorer.score(seqs, "loglikelihood_rolling", disable_tqdm)]
        for req, res in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, res)
        return results

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        # one generate() call per sampling setting (temperature, top_p): each request keeps its
        # own stop strings and token budget inside the shared, length-sorted batches
        parsed: dict[str, dict] = {}  # parsed (and any ignored setting warned about) once per task
        settings = []
        for req in requests:
            key = json.dumps(req.args[1], sort_keys=True, default=str)
            if key not in parsed:
                parsed[key] = self.generation_settings(req.args[1])
            settings.append(parsed[key])
        groups: dict[tuple, list[int]] = {}
        for i, s in enumerate(settings):
            groups.setdefault((s["temperature"], s["top_p"]), []).append(i)
        out = [""] * len(requests)
        bar = tqdm(total=len(requests), desc="generate_until", unit="req",
                   disable=disable_tqdm or not self.progress)
        notices: list[str] = []
        for g, ((temperature, top_p), rows) in enumerate(groups.items()):
            texts = generate(self.model, self.tokenizer, [requests[i].args[0] for i in rows],
                             max_tokens=[settings[i]["max_tokens"] for i in rows],
                             stop=[settings[i]["stop"] for i in rows], temperature=temperature,
                             top_p=top_p, seed=self.seed + g, batch_size=self.batch_size,
                             on_rows_done=bar.update, warn=notices.append)
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

    def encode_pairs(self, requests) -> list[tuple[list[int], int]]:
        """(BOS + context + continuation, index of the continuation's first token) per request."""
        seqs = []
        for req in requests:
            context, continuation = split_context(*req.args[:2])
            ctx = [self.tokenizer.bos_id] + self.tokenizer.encode(context)
            seqs.append((ctx + self.tokenizer.encode(continuation), len(ctx)))
        return seqs


# --------------------------------------------------------------------------- tasks


def task_specs(cfg: EvalConfig, names: list[str]) -> tuple[list, Any, set[str]]:
    """(tasks for ``lm_eval.simple_evaluate``, the TaskManager to pass with them, the names run from
    lmlab's offline definitions).

    With ``data_dir`` lmlab's offline piqa/hellaswag/nq_open are built as Task objects (unless
    ``include_path`` defines a task of the same name); every other name is passed as a name, with
    the cheapest ``catalog`` manager that knows it (the local folder alone, else lm-eval's whole
    index, read from its cache on disk). The standard tasks download from the hub.
    """
    offline = {n for n in names if cfg.data_dir and n in KNOWN_TASKS
               and not (cfg.include_path and n in catalog.task_manager(cfg.include_path, False).task_index)}
    others = [n for n in names if n not in offline]
    tasks = build_tasks([n for n in names if n in offline], cfg.data_dir) + others
    manager = catalog.manager_for(others, cfg.include_path) if others else catalog.task_manager("", False)
    return tasks, manager, offline
