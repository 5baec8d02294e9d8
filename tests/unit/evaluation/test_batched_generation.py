"""Prompts of different lengths share one left-padded batch and decode exactly as they would alone."""
from __future__ import annotations

import pytest
import torch

from lmlab.evaluation.generation import eval_mode, fit_prompt, generate, generate_tokens, length_batches

FAMILIES = [("transformer", "byte_tok"), ("context_vector", "word_tok")]
PROMPTS = ["the cat", "a dog ran far and the cat sat on a", "on", "the cat sat on a mat and a dog",
           "far", "a dog ran", "the", "cat sat on the mat"]


@pytest.mark.parametrize("family, tok", FAMILIES)
def test_padded_step_equals_each_sequence_alone(family, tok, request):
    model, tokenizer = request.getfixturevalue(family), request.getfixturevalue(tok)
    seqs = [[tokenizer.bos_id] + tokenizer.encode(p) for p in PROMPTS[:4]]
    width = max(map(len, seqs))
    tokens = torch.tensor([[0] * (width - len(s)) + s for s in seqs])
    pads = torch.tensor([[True] * (width - len(s)) + [False] * len(s) for s in seqs])
    more = torch.tensor([[5, 6, 7]] * len(seqs))
    with eval_mode(model):
        first, state = model.step(tokens, model.init_state(len(seqs)), pad_mask=pads)
        then, _ = model.step(more, state)  # no pad_mask: the state remembers the pads
        for i, s in enumerate(seqs):
            alone = model(torch.tensor([s + [5, 6, 7]]))[0]
            got = torch.cat([first[i, width - len(s):], then[i]])
            torch.testing.assert_close(got, alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family, tok", FAMILIES)
def test_batched_mixed_length_greedy_equals_one_at_a_time(family, tok, request, greedy_uncached):
    model, tokenizer = request.getfixturevalue(family), request.getfixturevalue(tok)
    steps = []
    real_step = model.step
    try:
        model.step = lambda *a, **k: steps.append(a[0].shape) or real_step(*a, **k)
        batched = generate(model, tokenizer, PROMPTS, max_tokens=9, batch_size=32)
    finally:
        del model.step
    alone = [generate(model, tokenizer, [p], max_tokens=9)[0] for p in PROMPTS]
    assert batched == alone
    assert steps[0][0] == len(PROMPTS) and len(steps) <= 9  # one batch: one prefill + <= 8 steps
    for prompt, text in zip(PROMPTS[:3], batched):  # and both are the uncached greedy decoding
        ids, n = fit_prompt([tokenizer.bos_id] + tokenizer.encode(prompt), model.max_seq_len, 9)
        want = greedy_uncached(model, ids, n)
        want = want[:want.index(tokenizer.eos_id)] if tokenizer.eos_id in want else want
        assert text == tokenizer.decode(want)


def test_each_row_keeps_its_own_stop_strings_and_budget(ascii_transformer, byte_tok):
    prompts = ["Once upon", "In a hole in the ground", "To be"]
    free = [generate(ascii_transformer, byte_tok, [p], max_tokens=20)[0] for p in prompts]
    stops = [[free[0][5:7]], [], [free[2][2:4], "zz"]]
    budgets = [20, 6, 20]
    got = generate(ascii_transformer, byte_tok, prompts, max_tokens=budgets, stop=stops)
    assert got[0] == free[0][:free[0].find(stops[0][0])]
    assert got[1] == free[1][:6]
    assert got[2] == free[2][:free[2].find(stops[2][0])]
    for i, p in enumerate(prompts):  # the same as each request alone
        assert got[i] == generate(ascii_transformer, byte_tok, [p], max_tokens=budgets[i], stop=stops[i])[0]


def test_batches_sort_by_length_and_fit_the_cache():
    fitted = [([0] * 10, 8), ([0] * 40, 9), ([0] * 30, 8), ([0] * 12, 30), ([0] * 11, 8)]
    assert list(length_batches(fitted, 32, None)) == [[1, 2, 3, 4, 0]]
    assert list(length_batches(fitted, 2, None)) == [[1, 2], [3, 4], [0]]
    # 48 slots: the 40-token prompt and 9 new tokens fill them; 30 new tokens beside it would not fit
    batches = list(length_batches(fitted, 32, 48))
    assert batches == [[1, 2], [3, 4, 0]]
    for batch in batches:
        assert len(fitted[batch[0]][0]) + max(fitted[i][1] for i in batch) - 1 <= 48


def test_long_prompts_near_the_context_limit_batch_exactly(ascii_transformer, byte_tok):
    prompts = ["x" * 60, "a short one", "y" * 45, "mid length prompt here"]
    batched = generate(ascii_transformer, byte_tok, prompts, max_tokens=[4, 30, 8, 12])
    alone = [generate(ascii_transformer, byte_tok, [p], max_tokens=k)[0]
             for p, k in zip(prompts, [4, 30, 8, 12])]
    assert batched == alone


def test_generate_tokens_accepts_per_row_steps(transformer):
    prompts = [[256, 1, 2, 3], [256, 9]]
    with eval_mode(transformer):
        out = generate_tokens(transformer, prompts, [5, 2])
        alone = [generate_tokens(transformer, [p], k)[0] for p, k in zip(prompts, [5, 2])]
    assert [len(o) for o in out] == [5, 2] and out == alone


def test_finished_rows_leave_the_batch(ascii_transformer, byte_tok):
    prompts = ["Once upon", "In a hole in", "To be or", "Call me"]
    budgets = [12, 2, 2, 3]
    rows = []
    real_step = ascii_transformer.step
    try:
        ascii_transformer.step = lambda tokens, *a, **k: rows.append(tokens.shape[0]) or real_step(tokens, *a, **k)
        got = generate(ascii_transformer, byte_tok, prompts, max_tokens=budgets)
    finally:
        del ascii_transformer.step
    assert rows[:4] == [4, 4, 2, 1] and len(rows) == 12  # prefill, all four, two left, the long one alone
    assert got == [generate(ascii_transformer, byte_tok, [p], max_tokens=k)[0] for p, k in zip(prompts, budgets)]
