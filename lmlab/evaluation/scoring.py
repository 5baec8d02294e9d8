"""Scoring token sequences through the ``LanguageModel`` protocol: the sum of the log-probabilities of
``seq[start:]`` given what precedes it, and whether every one of those tokens is the argmax.

What is scored (the rules ``harness.LmlabLM`` documents) is decided by ``score_windows``; how fast
is decided here:

* **Shared contexts.** Requests whose whole sequence fits the context and that share their context
  tokens (the choices of one multiple-choice item) run the context once: a left-padded ``step``
  prefills the contexts of a batch, ``select_state`` fans each out to its continuations, and padded
  ``step`` calls run the continuations, sorted by length into up to four parts (the choices of one
  item differ in length). Exact: pads are invisible (``pad_mask``), and the last context position
  predicts each continuation's first token.
* **Everything else** (a request alone, or one that overflows a transformer's context and is scored
  in left-truncated windows) is one right-padded ``forward`` row per window: the models are causal,
  so padding after a sequence never changes its real positions.
* **Token budget.** Rows are sorted longest first and a batch holds as many as fit ``max_batch_tokens``
  (padded tokens; for the shared path the cache slots per row, sized to the batch), at most
  ``batch_size``: short requests share big batches, long ones never exhaust memory (the logits alone
  are tokens x vocabulary x 4 bytes).
* **No per-request Python in the hot path.** Every job's tokens live in one flat tensor; a batch is
  cut out of it, and its scores are gathered, log-softmaxed (in float32) and summed per request with
  tensor ops (``index_add``); the per-request totals stay on the device until the end (float64).
* **Precision.** On CUDA the forward passes run under bf16 autocast unless the run's ``precision`` is
  fp32 (log-softmax always in float32); on CPU everything stays float32.

``score_reference`` is the fixed-count, per-request implementation this replaced: the reference the
tests hold the fast path to (1e-5) and the baseline ``benchmarks/bench_eval.py`` times it against.
"""
from __future__ import annotations

import contextlib
from itertools import chain
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from lmlab.evaluation.generation import eval_mode, model_device

Seqs = Sequence[tuple[list[int], int]]  # (BOS + tokens, index of the first scored token)


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


def eval_autocast(device: torch.device, precision: str = "auto") -> Callable[[], contextlib.AbstractContextManager]:
    """bf16 autocast for evaluation forwards on CUDA (unless ``precision`` is fp32); none on CPU."""
    if device.type != "cuda" or precision == "fp32":
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type="cuda", dtype=torch.bfloat16)


class _Flat:
    """Token lists as one flat tensor plus (start, length) per list: batches are cut out of it with
    tensor indexing, never per-list Python."""

    def __init__(self, lists: list[list[int]]):
        self.lengths = torch.tensor([len(x) for x in lists], dtype=torch.long)
        self.starts = torch.cumsum(self.lengths, 0) - self.lengths
        self.tokens = torch.tensor(list(chain.from_iterable(lists)) or [0], dtype=torch.long)

    def padded(self, rows: Tensor, pad: int, left: bool = False, width: int | None = None) -> tuple[Tensor, Tensor]:
        """(tokens (R, W), pads (R, W) True = pad) of lists ``rows``, padded on the right (or left)."""
        lengths = self.lengths[rows]
        width = int(lengths.max()) if width is None else width
        cols = torch.arange(width)
        offset = (cols[None, :] - (width - lengths[:, None])) if left else cols[None, :].expand(len(rows), -1)
        real = (offset >= 0) & (offset < lengths[:, None])
        index = (self.starts[rows][:, None] + offset).clamp(0, len(self.tokens) - 1)
        return torch.where(real, self.tokens[index], pad), ~real


def _sums(logits: Tensor, targets: Tensor, owner: Tensor, totals: Tensor, misses: Tensor) -> None:
    """Add log p(target) of each row of ``logits`` (P, V) to ``totals[owner]``, its misses (target
    not the argmax) to ``misses[owner]``."""
    logprobs = F.log_softmax(logits.float(), dim=-1)
    picked = logprobs.gather(1, targets[:, None]).squeeze(1)
    totals.index_add_(0, owner, picked.to(totals.dtype))
    misses.index_add_(0, owner, (logprobs.argmax(-1) != targets).long())


def _budget_batches(order: list[int], width: Callable[[list[int]], int], batch_size: int,
                    max_tokens: int) -> list[list[int]]:
    """``order`` cut into batches of at most ``batch_size`` whose ``width(batch) * len(batch)`` stays
    within ``max_tokens`` (a single item always forms a batch)."""
    batches, batch = [], []
    for i in order:
        if batch and (len(batch) == batch_size or width(batch + [i]) * (len(batch) + 1) > max_tokens):
            batches.append(batch)
            batch = []
        batch.append(i)
    return batches + ([batch] if batch else [])


def _split_by_length(lengths: Tensor, depth: int = 2) -> list[Tensor]:
    """Positions of descending ``lengths`` in parts (at most ``2 ** depth``): a part is cut in two
    where that saves a fifth of its padded tokens, and at least 64 (a step has a cost of its own)."""
    n, longest = len(lengths), int(lengths[0]) if len(lengths) else 0
    cost = [k * longest + (n - k) * int(lengths[k]) for k in range(1, n)]
    if depth == 0 or not cost or min(cost) > min(0.8 * n * longest, n * longest - 64):
        return [torch.arange(n)]
    cut = 1 + cost.index(min(cost))
    return _split_by_length(lengths[:cut], depth - 1) + \
        [part + cut for part in _split_by_length(lengths[cut:], depth - 1)]


class SequenceScorer:
    """Scores (seq, start) pairs with ``model`` (see the module docstring for how)."""

    def __init__(self, model, batch_size: int = 32, max_batch_tokens: int = 16384, pad_id: int = 0,
                 autocast: Callable[[], contextlib.AbstractContextManager] | None = None,
                 progress: bool = True):
        self.model, self.batch_size, self.max_batch_tokens = model, batch_size, max_batch_tokens
        self.pad_id, self.progress = pad_id, progress
        self.device = model_device(model)
        self.autocast = autocast or eval_autocast(self.device)

    def score(self, seqs: Seqs, desc: str = "score", disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """(sum of log-probs of ``seq[start:]``, all of them greedy) for each (seq, start)."""
        limit, share = self.model.max_seq_len, hasattr(self.model, "select_state")
        groups: dict[tuple[int, ...], list[int]] = {}
        windows: list[tuple[int, list[int], list[int]]] = []  # (request, inputs, targets)
        for i, (seq, start) in enumerate(seqs):
            if share and start < len(seq) and (limit is None or len(seq) - 1 <= limit):
                groups.setdefault(tuple(seq[:start]), []).append(i)
            else:
                windows += [(i, inputs, targets) for inputs, targets in score_windows(seq, start, limit)]
        shared = [(ctx, members) for ctx, members in groups.items() if len(members) > 1]
        windows += [(i, seqs[i][0][:-1], seqs[i][0][seqs[i][1]:])
                    for members in groups.values() if len(members) == 1 for i in members]
        totals = torch.zeros(len(seqs), dtype=torch.float64, device=self.device)
        misses = torch.zeros(len(seqs), dtype=torch.long, device=self.device)
        jobs = len(windows) + sum(len(m) for _, m in shared)
        bar = tqdm(total=jobs, desc=desc, unit="req" if jobs == len(seqs) else "window",
                   disable=disable_tqdm or not self.progress)
        with eval_mode(self.model):
            self._score_windows(windows, totals, misses, bar)
            self._score_shared(shared, seqs, totals, misses, bar)
        bar.close()
        # an empty continuation: log 1 = 0, trivially greedy; one device->host copy for everything
        return [(lp, miss == 0) for lp, miss in zip(totals.tolist(), misses.tolist())]

    def _score_windows(self, windows, totals: Tensor, misses: Tensor, bar) -> None:
        """One right-padded forward row per (request, inputs, targets) window."""
        if not windows:
            return
        inputs, targets = _Flat([w[1] for w in windows]), _Flat([w[2] for w in windows])
        owners = torch.tensor([w[0] for w in windows], dtype=torch.long)
        order = sorted(range(len(windows)), key=lambda j: -len(windows[j][1]))  # longest first
        for batch in _budget_batches(order, lambda b: len(windows[b[0]][1]), self.batch_size,
                                     self.max_batch_tokens):
            rows = torch.tensor(batch, dtype=torch.long)
            tokens, _ = inputs.padded(rows, self.pad_id)
            with self.autocast():
                logits = self.model(tokens.to(self.device))  # (R, W, V)
            n_in, n_t = inputs.lengths[rows], targets.lengths[rows]
            local = torch.repeat_interleave(torch.arange(len(batch)), n_t)  # the row of each target
            k = torch.arange(len(local)) - (torch.cumsum(n_t, 0) - n_t)[local]  # index within its row
            flat = local * tokens.shape[1] + (n_in - n_t)[local] + k  # position predicting it
            wanted = targets.tokens[targets.starts[rows][local] + k]
            _sums(logits.reshape(-1, logits.shape[-1])[flat.to(self.device)], wanted.to(self.device),
                  owners[rows][local].to(self.device), totals, misses)
            bar.update(len(batch))

    def _score_shared(self, shared, seqs: Seqs, totals: Tensor, misses: Tensor, bar) -> None:
        """Per batch: the distinct contexts prefilled once (left-padded ``step``), fanned out with
        ``select_state``, the continuations (all but their last token) in length-sorted right-padded
        ``step`` calls."""
        if not shared:
            return
        contexts = _Flat([list(ctx) for ctx, _ in shared])
        members = [m for _, m in shared]
        conts = [seqs[i][0][seqs[i][1]:] for m in members for i in m]
        first = torch.tensor([0] + [len(m) for m in members]).cumsum(0)  # group g: conts first[g]:first[g+1]
        flat_conts = _Flat(conts)
        longest = [max(len(seqs[i][0]) - seqs[i][1] for i in m) for m in members]
        # longest context first: a batch's contexts are left-padded to its longest, and every
        # continuation attends over that width (continuations are sorted by length per batch)
        order = sorted(range(len(shared)), key=lambda g: (-len(shared[g][0]), -longest[g]))
        owners = torch.tensor([i for m in members for i in m], dtype=torch.long)
        for batch in self._shared_batches(order, members, shared, longest):
            self._score_shared_batch(batch, contexts, flat_conts, first, owners, totals, misses)
            bar.update(sum(len(members[g]) for g in batch))

    def _shared_batches(self, order, members, shared, longest) -> list[list[int]]:
        """Groups in batches of at most ``batch_size`` continuations and ``max_batch_tokens`` cache
        slots (per row: the longest context plus the longest continuation, which must fit the
        transformer's context)."""
        limit, batches, batch = self.model.max_seq_len, [], []
        for g in order:
            grown = batch + [g]
            rows = sum(len(members[x]) for x in grown)
            slots = max(len(shared[x][0]) for x in grown) + max(longest[x] for x in grown) - 1
            if batch and (rows > self.batch_size or slots * rows > self.max_batch_tokens
                          or (limit is not None and slots > limit)):
                batches.append(batch)
                grown = [g]
            batch = grown
        return batches + ([batch] if batch else [])

    def _score_shared_batch(self, batch, contexts: _Flat, conts: _Flat, first: Tensor, owners: Tensor,
                            totals: Tensor, misses: Tensor) -> None:
        groups = torch.tensor(batch, dtype=torch.long)
        tokens, pads = contexts.padded(groups, self.pad_id, left=True)
        counts = first[groups + 1] - first[groups]  # continuations per context
        fan = torch.repeat_interleave(torch.arange(len(batch)), counts)  # context row of each
        rows = first[groups][fan] + torch.arange(len(fan)) - (torch.cumsum(counts, 0) - counts)[fan]
        owners = owners[rows]
        n_t = conts.lengths[rows]
        # only the slots this batch fills: fanning out and masking a max_seq_len cache costs more
        state = self.model.init_state(len(batch), capacity=tokens.shape[1] + int(n_t.max()) - 1)
        with self.autocast():
            logits, state = self._step(tokens, state, pads)
        # each continuation's first token, predicted by its context's last position
        _sums(logits[:, -1][fan.to(self.device)], conts.tokens[conts.starts[rows]].to(self.device),
              owners.to(self.device), totals, misses)
        # the rest: continuations sorted by length, in up to four right-padded steps (the choices of
        # an item differ in length: one width for all would pad the short ones a lot)
        order = torch.argsort(n_t, descending=True, stable=True)
        for part in _split_by_length(n_t[order] - 1):
            part = order[part]
            if int(n_t[part].max()) >= 2:
                self._score_continuations(rows[part], fan[part], owners[part], state, conts, totals, misses)

    def _score_continuations(self, rows: Tensor, fan: Tensor, owners: Tensor, state, conts: _Flat,
                             totals: Tensor, misses: Tensor) -> None:
        """Continuations ``rows`` after their contexts' rows ``fan`` of ``state``, all but their last
        token as input: position k predicts continuation token k + 1."""
        n_in = conts.lengths[rows] - 1
        inputs, in_pads = conts.padded(rows, self.pad_id, width=int(n_in.max()))
        with self.autocast():
            logits, _ = self._step(inputs, self.model.select_state(state, fan.to(self.device)), in_pads)
        local = torch.repeat_interleave(torch.arange(len(rows)), n_in)
        k = torch.arange(len(local)) - (torch.cumsum(n_in, 0) - n_in)[local]
        wanted = conts.tokens[conts.starts[rows][local] + k + 1]
        _sums(logits.reshape(-1, logits.shape[-1])[(local * inputs.shape[1] + k).to(self.device)],
              wanted.to(self.device), owners[local].to(self.device), totals, misses)

    def _step(self, tokens: Tensor, state, pads: Tensor):
        """``model.step``, with a ``pad_mask`` only when there is a pad (the plain call otherwise)."""
        tokens = tokens.to(self.device)
        if bool(pads.any()):
            return self.model.step(tokens, state, pad_mask=pads.to(self.device))
        return self.model.step(tokens, state)


def score_reference(model, seqs: Seqs, batch_size: int = 32, pad_id: int = 0) -> list[tuple[float, bool]]:
    """The scorer this module replaced, kept as the reference: windows of every request (no shared
    contexts), sorted longest first, ``batch_size`` of them per right-padded forward, and per-request
    slicing, log-softmax and gather (one host copy per batch)."""
    jobs, owner = [], []
    for i, (seq, start) in enumerate(seqs):
        for window in score_windows(seq, start, model.max_seq_len):
            jobs.append(window)
            owner.append(i)
    order = sorted(range(len(jobs)), key=lambda j: -len(jobs[j][0]))
    results: list[tuple[float, bool]] = [(0.0, True)] * len(jobs)
    with eval_mode(model):
        for k in range(0, len(order), batch_size):
            batch = order[k:k + batch_size]
            width = len(jobs[batch[0]][0])
            rows = [jobs[j][0] + [pad_id] * (width - len(jobs[j][0])) for j in batch]
            logits = model(torch.tensor(rows, dtype=torch.long, device=model_device(model)))
            sums, greedy = [], []
            for r, j in enumerate(batch):
                inputs, targets = jobs[j]
                scored = F.log_softmax(logits[r, len(inputs) - len(targets):len(inputs)].float(), -1)
                target = torch.tensor(targets, device=scored.device)
                sums.append(scored.gather(-1, target[:, None]).sum())
                greedy.append((scored.argmax(-1) == target).all())
            for j, lp, g in zip(batch, torch.stack(sums).tolist(), torch.stack(greedy).tolist()):
                results[j] = (lp, bool(g))
    totals = [[0.0, True] for _ in seqs]
    for i, (lp, g) in zip(owner, results):
        totals[i][0] += lp
        totals[i][1] = totals[i][1] and g
    return [(lp, g) for lp, g in totals]
