"""Text generation through the ``LanguageModel`` protocol only: one ``step`` call prefills the prompt,
then every new token is one more ``step`` call on the returned state.

Prompts of different lengths. The protocol's ``step`` takes no attention mask, and the transformer's
KV cache keeps one position for the whole batch, so left padding would let real tokens attend to the
pad tokens (and would feed the pads into the recurrent model's context). Prompts are therefore grouped
by token length: each group is prefilled and decoded as one exact, unpadded batch (split into chunks of
``batch_size``). Real prompts of similar length (few-shot templates, chat turns) share lengths often
enough for this to batch well, and no result depends on which prompts happened to share a batch,
except which random numbers a sampled row draws.

Every prompt starts with the tokenizer's BOS, as every training document did. When a prompt plus
``max_tokens`` does not fit ``model.max_seq_len``, room is kept for ``min(max_tokens, context // 4)``
new tokens (at least 1) and the prompt keeps its BOS and as many of its last tokens as fit (its end
is what the next token depends on most); generation stops at the context limit. Whatever was cut is
said once per ``generate`` call (``warn``), never silently.
"""
from __future__ import annotations

import contextlib
import logging
import random
from collections import defaultdict
from typing import Callable, Iterator, Sequence

import torch
from torch import Tensor

#: stream(prompt_index, new_text): called as soon as a piece of a row's output is final
StreamFn = Callable[[int, str], None]
log = logging.getLogger(__name__)


@contextlib.contextmanager
def eval_mode(model) -> Iterator[None]:
    """Eval mode (no dropout) and no autograd inside; the caller's train/eval mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def encode_prompt(tokenizer, text: str) -> list[int]:
    """BOS + the prompt's tokens: the model saw every training document begin with BOS."""
    return [tokenizer.bos_id] + tokenizer.encode(text)


def fit_prompt(ids: list[int], max_seq_len: int | None, max_tokens: int) -> tuple[list[int], int]:
    """Fit a prompt (``ids``, BOS first) and its new tokens into the context; returns (ids, tokens
    to generate).

    The last generated token is never fed back, so a prompt of P tokens leaves room for
    ``max_seq_len - P + 1`` new ones. A prompt too long for that keeps room for ``min(max_tokens,
    max_seq_len // 4)`` new tokens (at least 1): it keeps its first token (BOS) and as many of its
    last tokens as fit. Recurrent models (``max_seq_len=None``) are never truncated.
    """
    if max_seq_len is None:
        return list(ids), max_tokens
    reserve = max(1, min(max_tokens, max_seq_len // 4))
    keep = max_seq_len + 1 - reserve  # >= 1: BOS always fits
    if len(ids) > keep:
        ids = ids[:1] + ids[len(ids) - keep + 1:]
    return list(ids), max(0, min(max_tokens, max_seq_len - len(ids) + 1))


def context_notice(lengths: Sequence[int], fitted: Sequence[tuple[list[int], int]],
                   max_seq_len: int | None, max_tokens: int) -> str | None:
    """What ``fit_prompt`` cut, over prompts of ``lengths`` tokens (with BOS), in one sentence; None
    when every prompt and all its ``max_tokens`` fitted."""
    cut = [(n, len(ids)) for n, (ids, _) in zip(lengths, fitted) if len(ids) < n]
    steps = [k for _, k in fitted]
    capped = [k for k in steps if k < max_tokens]
    if max_seq_len is None or not (cut or capped):
        return None
    head = f"the model's context is {max_seq_len} tokens: "
    if len(fitted) == 1:
        room = (f"all {max_tokens}" if steps[0] == max_tokens else f"{steps[0]} of the {max_tokens}") + \
            " new tokens asked for"
        if cut:
            (n, kept), = cut
            return (head + f"the prompt ({n - 1} tokens after BOS) was cut to BOS + its last {kept - 1} "
                    f"tokens, to leave room for {room}")
        return head + f"after the prompt ({lengths[0] - 1} tokens after BOS) there is room for {room}"
    parts = []
    if cut:
        parts.append(f"{len(cut)} of {len(fitted)} prompts were cut to BOS + their last "
                     f"{cut[0][1] - 1} tokens (the longest had {max(n for n, _ in cut) - 1})")
    if capped:
        parts.append(f"{len(capped)} of {len(fitted)} outputs have room for only {min(capped)} to "
                     f"{max(capped)} of the {max_tokens} new tokens asked for")
    return head + "; ".join(parts)


def greedy_reference(model, ids: Sequence[int], n: int) -> list[int]:
    """Greedy decoding without any cache: a full ``forward`` over the growing sequence per token.
    The reference that cached decoding through ``step`` must reproduce (tests), and the baseline
    ``benchmarks/bench_eval.py`` times it against."""
    seq = list(ids)
    with eval_mode(model):
        for _ in range(n):
            logits = model(torch.tensor([seq], dtype=torch.long, device=model_device(model)))
            seq.append(int(logits[0, -1].argmax()))
    return seq[len(ids):]


def sample_next(logits: Tensor, temperature: float, top_p: float,
                generator: torch.Generator | None) -> Tensor:
    """(B, V) logits -> (B,) next ids: argmax at temperature 0, else nucleus sampling."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        # drop a token once the tokens ranked above it already cover top_p; the top token always stays
        drop = (sorted_p.cumsum(-1) - sorted_p) >= top_p
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p.masked_fill(drop, 0.0))
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # renormalises itself


def generate_tokens(model, prompts: Sequence[Sequence[int]], steps: int, temperature: float = 0.0,
                    top_p: float = 1.0, generator: torch.Generator | None = None,
                    eos_id: int | None = None,
                    should_stop: Callable[[int, list[int]], bool] | None = None) -> list[list[int]]:
    """Decode up to ``steps`` tokens for a batch of equal-length prompts (token ids).

    A row ends at ``eos_id`` (not included) or when ``should_stop(row, ids)`` says so; the loop
    ends as soon as every row has ended. Call inside ``eval_mode(model)``.
    """
    if len({len(p) for p in prompts}) > 1:
        raise ValueError("generate_tokens needs prompts of equal length; group them first")
    out: list[list[int]] = [[] for _ in prompts]
    if steps <= 0 or not prompts:
        return out
    tokens = torch.tensor([list(p) for p in prompts], dtype=torch.long, device=model_device(model))
    logits, state = model.step(tokens, model.init_state(len(prompts)))  # prefill: (B, P, V)
    done = [False] * len(prompts)
    for i in range(steps):
        nxt = sample_next(logits[:, -1], temperature, top_p, generator)  # (B,)
        for row, tok in enumerate(nxt.tolist()):
            if done[row]:
                continue  # finished rows keep riding along: the state is opaque, so they stay in it
            if tok == eos_id:
                done[row] = True
                continue
            out[row].append(tok)
            done[row] = bool(should_stop and should_stop(row, out[row]))
        if all(done) or i == steps - 1:
            break
        logits, state = model.step(nxt[:, None], state)  # (B, 1, V)
    return out


class _RowText:
    """One row's decoded output: finds stop strings and streams only text that can no longer change."""

    def __init__(self, index: int, tokenizer, stop: Sequence[str], stream: StreamFn | None):
        self.index, self.tokenizer, self.stream = index, tokenizer, stream
        self.stop = [s for s in stop if s]
        self.text, self.emitted, self.ids, self.stopped = "", 0, [], False

    def update(self, ids: list[int]) -> bool:
        """Decode ``ids``; True (and the text cut before it) when a stop string has appeared."""
        self.ids = ids
        if not self.stop and self.stream is None:
            return False  # nothing to watch for: decode once, at the end
        text = self.tokenizer.decode(ids)
        cuts = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        self.text = text[:min(cuts)] if cuts else text
        self.stopped = bool(cuts)
        self._emit(final=self.stopped)
        return self.stopped

    def finish(self) -> str:
        if not self.stopped:
            self.text = self.tokenizer.decode(self.ids)
        self._emit(final=True)
        return self.text

    def _emit(self, final: bool) -> None:
        if self.stream is None:
            return
        end = len(self.text) if final else len(self.text) - self._unsettled()
        if end > self.emitted:
            self.stream(self.index, self.text[self.emitted:end])
            self.emitted = end

    def _unsettled(self) -> int:
        """Characters at the end that may still change: the start of a stop string, or an incomplete
        UTF-8 sequence (decoded as U+FFFD until its remaining bytes arrive)."""
        text = self.text
        held = len(text) - len(text.rstrip("\ufffd"))
        for s in self.stop:
            for k in range(min(len(s) - 1, len(text)), 0, -1):
                if text.endswith(s[:k]):
                    held = max(held, k)
                    break
        return held


def _length_groups(lengths: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    """Indices grouped by equal length (longest first), each group cut into chunks of batch_size."""
    groups: dict[int, list[int]] = defaultdict(list)
    for i, n in enumerate(lengths):
        groups[n].append(i)
    for n in sorted(groups, reverse=True):
        rows = groups[n]
        for k in range(0, len(rows), batch_size):
            yield rows[k:k + batch_size]


def generate(model, tokenizer, prompts: list[str], max_tokens: int, temperature: float = 0.0,
             top_p: float = 1.0, stop: Sequence[str] = (), seed: int | None = None,
             stream: StreamFn | None = None, batch_size: int = 32,
             on_rows_done: Callable[[int], None] | None = None,
             warn: Callable[[str], None] | None = None) -> list[str]:
    """Continue every prompt by up to ``max_tokens`` tokens; returns the new text of each.

    ``temperature`` 0 is greedy; otherwise nucleus sampling (``top_p``) from a ``torch.Generator``
    seeded with ``seed`` (a fresh random seed when None). A row ends at EOS, at ``max_tokens``, at the
    context limit, or at the first stop string (which is cut off, with everything after it).
    ``stream(i, piece)`` receives each row's text as it becomes final; ``on_rows_done(n)`` counts
    finished rows (for progress bars). What the context limit cut (prompts, new tokens) is said
    once, before decoding, to ``warn(sentence)`` (default: this module's logger warns).
    """
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    fitted = [fit_prompt(ids, model.max_seq_len, max_tokens) for ids in encoded]
    notice = context_notice([len(ids) for ids in encoded], fitted, model.max_seq_len, max_tokens)
    if notice:
        (warn or log.warning)(notice)
    generator = torch.Generator(device=model_device(model))
    generator.manual_seed(seed if seed is not None else random.SystemRandom().randrange(2**63))
    texts = [""] * len(prompts)
    with eval_mode(model):
        for rows in _length_groups([len(ids) for ids, _ in fitted], batch_size):
            trackers = [_RowText(i, tokenizer, stop, stream) for i in rows]
            generate_tokens(model, [fitted[i][0] for i in rows], fitted[rows[0]][1], temperature,
                            top_p, generator, tokenizer.eos_id,
                            lambda r, ids: trackers[r].update(ids))
            for i, tracker in zip(rows, trackers):
                texts[i] = tracker.finish()
            if on_rows_done is not None:
                on_rows_done(len(rows))
    return texts
