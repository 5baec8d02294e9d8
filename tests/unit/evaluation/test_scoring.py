"""The token-budget, shared-context scorer gives the log-likelihoods of the scorer it replaced."""
from __future__ import annotations

import pytest
import torch

from helpers import SHARED_DATA
from lmlab.evaluation.harness import LmlabLM, split_context
from lmlab.evaluation.scoring import SequenceScorer, score_reference
from lmlab.evaluation.tasks import build_tasks
from lmlab.models.transformer import Transformer, TransformerConfig

needs_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"{SHARED_DATA} is missing")


@pytest.fixture(scope="module")
def long_transformer() -> Transformer:
    """Bytes vocabulary and a 512-token context: whole PIQA items fit, so choices share contexts."""
    torch.manual_seed(1)
    cfg = TransformerConfig(vocab_size=258, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, multiple_of=16,
                            max_seq_len=512)
    return Transformer(cfg).eval()


def _piqa_seqs(tokenizer, limit: int) -> list[tuple[list[int], int]]:
    """The (BOS + context + continuation, start) pairs ``LmlabLM.loglikelihood`` scores for PIQA."""
    task, = build_tasks(["piqa"], SHARED_DATA)
    task.build_all_requests(limit=limit)
    seqs = []
    for inst in task.instances:
        context, continuation = split_context(*inst.args)
        ctx = [tokenizer.bos_id] + tokenizer.encode(context)
        seqs.append((ctx + tokenizer.encode(continuation), len(ctx)))
    return seqs


def _assert_same(got, want):
    for (lp, greedy), (want_lp, want_greedy) in zip(got, want, strict=True):
        assert abs(lp - want_lp) <= 1e-5 * max(1.0, abs(want_lp)), (lp, want_lp)
        assert greedy == want_greedy


@needs_data
@pytest.mark.parametrize("family", ["transformer", "long_transformer", "byte_context_vector"])
def test_piqa_loglikelihoods_equal_the_old_scorer(family, request, byte_tok):
    model = request.getfixturevalue(family)
    seqs = _piqa_seqs(byte_tok, 100)
    assert len(seqs) == 200
    want = score_reference(model, seqs, batch_size=32)
    lm = LmlabLM(model, byte_tok, batch_size=32, max_batch_tokens=4096, progress=False)
    _assert_same(lm.scorer.score(seqs), want)


def test_shared_contexts_windows_and_budgets_agree(long_transformer, transformer, byte_context_vector):
    """Mixed shapes: shared contexts of 1 to 4 choices (some one token long), an empty
    continuation, windows beyond the 48-token context; tiny budgets force many small batches."""
    contexts = [[256, 5, 6, 7], [256, 9], [256] + list(range(10, 40)), [256, 3, 3]]
    conts = [[[11], [12, 13], [14, 15, 16, 17]], [[20]], [[21, 22], [23] * 30], [[24, 25], [26, 27, 28]]]
    seqs = [(c + x, len(c)) for c, xs in zip(contexts, conts) for x in xs] + [([256, 1, 2], 3)]
    seqs.append(([256] + list(range(60, 130)), 2))  # 70 tokens scored: windows in the 48-token model
    for model in (long_transformer, transformer, byte_context_vector):
        want = score_reference(model, seqs, batch_size=3)
        for batch_size, budget in ((32, 16384), (2, 64), (1, 1)):
            got = SequenceScorer(model, batch_size, budget, progress=False).score(seqs)
            _assert_same(got, want)
        assert got[len(seqs) - 2] == (0.0, True)  # nothing to score: log 1, trivially greedy


def test_shared_contexts_run_each_context_once(long_transformer):
    calls = []
    real_step = long_transformer.step
    long_transformer.step = lambda tokens, *a, **k: calls.append(tuple(tokens.shape)) or real_step(tokens, *a, **k)
    try:
        seqs = [([256, 1, 2, 3, 4], 5) for _ in range(4)]
        seqs = [(s + [10 + i, 11], start) for i, (s, start) in enumerate(seqs)]
        SequenceScorer(long_transformer, progress=False).score(seqs)
    finally:
        del long_transformer.step
    assert calls == [(1, 5), (4, 1)]  # one context row, then the four continuations (all but their last)


def test_continuations_of_very_different_lengths_run_in_length_sorted_parts(long_transformer):
    from lmlab.evaluation.scoring import _split_by_length

    assert [p.tolist() for p in _split_by_length(torch.tensor([90, 90, 80, 20, 20, 10]))] == [[0, 1, 2], [3, 4, 5]]
    assert [p.tolist() for p in _split_by_length(torch.tensor([5, 5, 4, 4]))] == [[0, 1, 2, 3]]
    calls = []
    real_step = long_transformer.step
    long_transformer.step = lambda tokens, *a, **k: calls.append(tuple(tokens.shape)) or real_step(tokens, *a, **k)
    try:
        seqs = [([256, 1, 2], 3)] * 4
        seqs = [(s + list(range(10, 10 + n)), start) for (s, start), n in zip(seqs, (40, 3, 38, 2))]
        got = SequenceScorer(long_transformer, progress=False).score(seqs)
    finally:
        del long_transformer.step
    assert calls == [(1, 3), (2, 39), (2, 2)]  # the context once, then the long pair, then the short pair
    _assert_same(got, score_reference(long_transformer, seqs))
