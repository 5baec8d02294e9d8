"""Text generation through the ``LanguageModel`` protocol only: one ``step`` call prefills the prompts,
then every new token is one more ``step`` call on the returned state.

Prompts of different lengths share a batch: they are left-padded to the longest and prefilled with a
``pad_mask`` (see ``models/protocol.py``): pads take no position, are never attended to and leave a
recurrent context unchanged, so every row computes exactly what it would alone, and its last prompt
position predicts its first new token. Prompts are sorted by length (longest first) so that a batch
pads little; each row has its own token budget and stop strings and finishes on its own (once a
quarter of the batch has finished, ``select_state`` drops the finished rows from the state). A
transformer's batch also fits its cache: the longest prompt plus the most new tokens of any row stays
within ``max_seq_len`` slots. No result depends on which prompts share a batch, except which random
numbers a sampled row draws.

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


def generate_tokens(model, prompts: Sequence[Sequence[int]], steps: int | Sequence[int],
                    temperature: float = 0.0, top_p: float = 1.0, generator: torch.Generator | None = None,
                    eos_id: int | None = None, should_stop: Callable[[int, list[int]], bool] | None = None,
                    pad_id: int = 0) -> list[list[int]]:
    """Decode up to ``steps`` tokens (one number for all rows, or one per row) for a batch of prompts
    (token ids) of any lengths, left-padded with ``pad_id`` behind a ``pad_mask``.

    A row ends at ``eos_id`` (not included), at its ``steps``, or when ``should_stop(row, ids)``
    says so; the loop ends as soon as every row has ended. Call inside ``eval_mode(model)``.
    """
    limits = [steps] * len(prompts) if isinstance(steps, int) else list(steps)
    out: list[list[int]] = [[] for _ in prompts]
    done = [k <= 0 for k in limits]
    if all(done):
        return out
    width, device = max(map(len, prompts)), model_device(model)
    tokens = torch.tensor([[pad_id] * (width - len(p)) + list(p) for p in prompts], dtype=torch.long,
                          device=device)
    state = model.init_state(len(prompts))
    if all(len(p) == width for p in prompts):  # nothing to mask: the plain protocol call
        logits, state = model.step(tokens, state)  # prefill: (B, P, V)
    else:
        pad_mask = torch.tensor([[True] * (width - len(p)) + [False] * len(p) for p in prompts],
                                device=device)
        logits, state = model.step(tokens, state, pad_mask=pad_mask)
    rows = list(range(len(prompts)))  # the prompt each batch row decodes
    while True:
        nxt = sample_next(logits[:, -1], temperature, top_p, generator)  # (B,)
        for row, tok in zip(rows, nxt.tolist()):
            if done[row]:
                continue  # a finished row rides along until the batch is compacted
            if tok == eos_id:
                done[row] = True
                continue
            out[row].append(tok)
            done[row] = len(out[row]) >= limits[row] or bool(should_stop and should_stop(row, out[row]))
        if all(done):
            return out
        alive = [k for k, row in enumerate(rows) if not done[row]]
        if len(alive) <= 3 * len(rows) // 4 and hasattr(model, "select_state"):  # drop finished rows
            index = torch.tensor(alive, dtype=torch.long, device=device)
            state, nxt, rows = model.select_state(state, index), nxt[index], [rows[k] for k in alive]
        logits, state = model.step(nxt[:, None], state)  # (B, 1, V)


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


def length_batches(fitted: Sequence[tuple[list[int], int]], batch_size: int,
                   max_seq_len: int | None) -> Iterator[list[int]]:
    """Indices of ``fitted`` (prompt ids, new tokens) in batches of at most ``batch_size``, longest
    prompt first; with a context limit a batch also keeps its longest prompt plus its largest number
    of new tokens within ``max_seq_len`` cache slots (one prompt alone always fits: ``fit_prompt``)."""
    order = sorted(range(len(fitted)), key=lambda i: -len(fitted[i][0]))
    batch: list[int] = []
    longest = most = 0  # the batch's longest prompt (its first) and most new tokens
    for i in order:
        length, new = len(fitted[i][0]), fitted[i][1]
        overflows = max_seq_len is not None and longest + max(most, new) - 1 > max_seq_len
        if batch and (len(batch) == batch_size or overflows):
            yield batch
            batch = []
        if not batch:
            longest, most = length, 0
        batch.append(i)
        most = max(most, new)
    if batch:
        yield batch


def _per_row(value, n: int, scalar: type) -> list:
    """``value`` for every one of ``n`` rows: one value for all, or already one per row."""
    if isinstance(value, scalar) or (scalar is str and all(isinstance(v, str) for v in value)):
        return [value] * n
    value = list(value)
    if len(value) != n:
        raise ValueError(f"expected one value for all {n} prompts or one per prompt, got {len(value)}")
    return value


def generate(model, tokenizer, prompts: list[str], max_tokens: int | Sequence[int],
             temperature: float = 0.0, top_p: float = 1.0,
             stop: Sequence[str] | Sequence[Sequence[str]] = (), seed: int | None = None,
             stream: StreamFn | None = None, batch_size: int = 32,
             on_rows_done: Callable[[int], None] | None = None,
             warn: Callable[[str], None] | None = None) -> list[str]:
    """Continue every prompt by up to ``max_tokens`` tokens; returns the new text of each.

    ``max_tokens`` and ``stop`` are one value for every prompt or one per prompt (lm-eval requests
    each carry their own ``until`` and ``max_gen_toks``); prompts of any lengths share batches.
    ``temperature`` 0 is greedy; otherwise nucleus sampling (``top_p``) from a ``torch.Generator``
    seeded with ``seed`` (a fresh random seed when None). A row ends at EOS, at its ``max_tokens``, at
    the context limit, or at the first of its stop strings (which is cut off, with everything after
    it). ``stream(i, piece)`` receives each row's text as it becomes final; ``on_rows_done(n)`` counts
    finished rows (for progress bars). What the context limit cut (prompts, new tokens) is said
    once, before decoding, to ``warn(sentence)`` (default: this module's logger warns).
    """
    budgets = _per_row(max_tokens, len(prompts), int)
    stops = _per_row(stop, len(prompts), str)
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    fitted = [fit_prompt(ids, model.max_seq_len, k) for ids, k in zip(encoded, budgets)]
    notices = []
    for k in dict.fromkeys(budgets):  # one sentence per distinct budget (usually one)
        rows = [i for i, b in enumerate(budgets) if b == k]
        notices.append(context_notice([len(encoded[i]) for i in rows], [fitted[i] for i in rows],
                                      model.max_seq_len, k))
    if any(notices):
        (warn or log.warning)("; ".join(n for n in notices if n))
    generator = torch.Generator(device=model_device(model))
    generator.manual_seed(seed if seed is not None else random.SystemRandom().randrange(2**63))
    texts = [""] * len(prompts)
    pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else 0
    with eval_mode(model):
        for rows in length_batches(fitted, batch_size, model.max_seq_len):
            trackers = [_RowText(i, tokenizer, stops[i], stream) for i in rows]
            generate_tokens(model, [fitted[i][0] for i in rows], [fitted[i][1] for i in rows],
                            temperature, top_p, generator, tokenizer.eos_id,
                            lambda r, ids: trackers[r].update(ids), pad_id=pad_id)
            for i, tracker in zip(rows, trackers):
                texts[i] = tracker.finish()
            if on_rows_done is not None:
                on_rows_done(len(rows))
    return texts
