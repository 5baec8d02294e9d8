"""Cached decoding through the protocol equals re-running forward; stop strings, limits, seeds."""
from __future__ import annotations

import pytest
import torch

from lmlab.evaluation.generation import eval_mode, fit_prompt, generate, generate_tokens, sample_next


@pytest.mark.parametrize("family", ["transformer", "context_vector"])
def test_cached_greedy_equals_uncached(family, request, greedy_uncached):
    model = request.getfixturevalue(family)
    tokenizer = request.getfixturevalue("byte_tok" if family == "transformer" else "word_tok")
    prompts = [[tokenizer.bos_id] + tokenizer.encode(t) for t in ("the cat sat on a", "a dog ran far and")]
    prompts = [p[:min(map(len, prompts))] for p in prompts]  # one batch needs equal lengths
    n = 40 - len(prompts[0]) if family == "transformer" else 30
    with eval_mode(model):
        cached = generate_tokens(model, prompts, n)  # batched prefill + one step per token
    for prompt, got in zip(prompts, cached):
        assert got == greedy_uncached(model, prompt, n)
        assert len(got) == n


def test_generate_batches_prompts_of_different_lengths(ascii_transformer, byte_tok, greedy_uncached):
    prompts = ["To be", "or not to be", "that is", "To be", "the question"]
    texts = generate(ascii_transformer, byte_tok, prompts, max_tokens=10, batch_size=2)
    for prompt, text in zip(prompts, texts):
        want = greedy_uncached(ascii_transformer, [byte_tok.bos_id] + byte_tok.encode(prompt), 10)
        assert text == byte_tok.decode(want)
    assert texts[0] == texts[3]


def test_prompt_is_left_truncated_to_fit_the_context(ascii_transformer, byte_tok, greedy_uncached):
    prompt = "a long prompt that is longer than the forty-eight tokens of context " * 2
    ids, steps = fit_prompt([byte_tok.bos_id] + byte_tok.encode(prompt), 48, 8)
    assert len(ids) == 41 and steps == 8  # 41 + 8 - 1 = 48: the last token is never fed back
    assert ids == [byte_tok.bos_id] + byte_tok.encode(prompt)[-40:]  # BOS is kept
    text, = generate(ascii_transformer, byte_tok, [prompt], max_tokens=8)
    assert text == byte_tok.decode(greedy_uncached(ascii_transformer, ids, 8))
    # max_tokens beyond the context: room for a quarter of it, the rest is prompt (BOS + its end)
    assert fit_prompt(list(range(100)), 48, 100) == ([0] + list(range(64, 100)), 12)
    assert fit_prompt(list(range(100)), None, 100) == (list(range(100)), 100)  # recurrent: unbounded


def test_max_tokens_and_eos_end_rows(ascii_transformer, byte_tok, transformer, greedy_uncached):
    text, = generate(ascii_transformer, byte_tok, ["Hello"], max_tokens=7)
    assert len(text) == 7
    prompt = [byte_tok.bos_id] + byte_tok.encode("Hello")
    first = greedy_uncached(transformer, prompt, 1)[0]
    with eval_mode(transformer):  # declaring the greedy first token to be EOS ends the row at once
        assert generate_tokens(transformer, [prompt], 5, eos_id=first) == [[]]


def test_stop_strings_end_rows_and_the_loop(ascii_transformer, byte_tok, monkeypatch):
    prompts = ["Once upon", "In a hole"]
    full = generate(ascii_transformer, byte_tok, prompts, max_tokens=30)
    stops = [full[0][6:8], full[1][4:6]]
    calls = []
    step = ascii_transformer.step
    monkeypatch.setattr(ascii_transformer, "step", lambda t, s: calls.append(t.shape) or step(t, s))
    cut = generate(ascii_transformer, byte_tok, prompts, max_tokens=30, stop=stops)
    for text, whole in zip(cut, full):
        first = min(i for i in (whole.find(s) for s in stops) if i >= 0)
        assert text == whole[:first]  # cut at the earliest stop string, which is not included
    # each prompt is its own group (different lengths): prefill + one step per token until its stop
    assert len(calls) < 2 * 30
    streamed = {0: "", 1: ""}
    out = generate(ascii_transformer, byte_tok, prompts, max_tokens=30, stop=stops,
                   stream=lambda i, piece: streamed.__setitem__(i, streamed[i] + piece))
    assert [streamed[0], streamed[1]] == out == cut


def test_sampling_is_seeded(byte_context_vector, byte_tok):
    prompts = ["a", "b", "c", "d"]
    kwargs = dict(max_tokens=12, temperature=1.5, top_p=0.95)
    first = generate(byte_context_vector, byte_tok, prompts, seed=7, **kwargs)
    assert generate(byte_context_vector, byte_tok, prompts, seed=7, **kwargs) == first
    assert generate(byte_context_vector, byte_tok, prompts, seed=8, **kwargs) != first
    greedy = generate(byte_context_vector, byte_tok, prompts, max_tokens=12)
    # a nucleus this small holds only the most likely token: sampling becomes greedy
    assert generate(byte_context_vector, byte_tok, prompts, max_tokens=12, temperature=1.0,
                    top_p=1e-6, seed=3) == greedy


def test_top_p_keeps_the_smallest_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    gen = torch.Generator().manual_seed(0)
    draws = {int(sample_next(logits, 1.0, 0.8, gen)) for _ in range(300)}
    assert draws == {0, 1}  # 0.5 + 0.3 reaches 0.8: tokens 2 and 3 are never drawn
    assert int(sample_next(logits, 0.0, 1.0, None)) == 0
