"""Prompts that do not fit the context with their new tokens: BOS and as much of the prompt as fits
are kept, room is left for new tokens, and what was cut is said once (a call, an evaluation)."""
from __future__ import annotations

import logging

import pytest
from lm_eval.api.instance import Instance

from lmlab.evaluation.generation import context_notice, fit_prompt, generate
from lmlab.evaluation.harness import LmlabLM

LONG = "Call me Ishmael. Some years ago, never mind how long precisely, having little money. " * 2


@pytest.mark.parametrize("context, max_tokens, n, kept, steps", [
    (48, 8, 100, 41, 8),      # room for all 8: the prompt keeps BOS + its last 40
    (48, 100, 100, 37, 12),   # max_tokens >= context: room for a quarter of it (12)
    (48, 100, 20, 20, 29),    # the prompt fits: only the new tokens are capped, at the limit
    (48, 5, 20, 20, 5),       # everything fits: nothing changes
    (4, 100, 50, 4, 1),       # a context of 4: room for 1 new token at least
    (1, 100, 50, 1, 1),       # a context of 1: BOS alone
])
def test_fit_keeps_bos_and_the_end_of_the_prompt(context, max_tokens, n, kept, steps):
    ids, got_steps = fit_prompt(list(range(n)), context, max_tokens)
    assert (len(ids), got_steps) == (kept, steps)
    assert ids[0] == 0 and ids[1:] == list(range(n))[n - kept + 1:]
    assert len(ids) + got_steps - 1 <= context  # the last new token is never fed back


def test_the_notice_says_what_was_cut_or_nothing():
    fitted = [fit_prompt(list(range(n)), 48, 100) for n in (100, 20)]
    assert context_notice([100, 20], fitted, 48, 100) == (
        "the model's context is 48 tokens: 1 of 2 prompts were cut to BOS + their last 36 tokens "
        "(the longest had 99); 2 of 2 outputs have room for only 12 to 29 of the 100 new tokens "
        "asked for")
    one = [fit_prompt(list(range(300)), 128, 200)]
    assert context_notice([300], one, 128, 200) == (
        "the model's context is 128 tokens: the prompt (299 tokens after BOS) was cut to BOS + its "
        "last 96 tokens, to leave room for 32 of the 200 new tokens asked for")
    assert context_notice([10], [fit_prompt(list(range(10)), 48, 8)], 48, 8) is None
    assert context_notice([500], [fit_prompt(list(range(500)), None, 900)], None, 900) is None


def test_transformer_prompts_beyond_the_context_keep_their_difference(ascii_transformer, byte_tok):
    """The bug: max_tokens >= the context cut every prompt to its last token (BOS dropped), so two
    prompts ending alike gave the same output. Now each keeps BOS and its own last tokens."""
    prompts = [LONG + "The sea was calm and grey.", LONG + "A storm came over the hills."]
    said = []
    texts = generate(ascii_transformer, byte_tok, prompts, max_tokens=100, warn=said.append)
    assert texts[0] != texts[1]
    assert len(said) == 1 and "2 of 2 prompts were cut to BOS + their last 36 tokens" in said[0]
    assert all(len(t) == 12 for t in texts)  # the room a quarter of the context leaves


def test_recurrent_model_sees_the_whole_prompt_and_says_nothing(context_vector, word_tok):
    said = []
    prompts = ["the cat sat on " * 40, "a dog ran far " * 40]
    texts = generate(context_vector, word_tok, prompts, max_tokens=60, warn=said.append)
    assert said == [] and len(texts) == 2
    ids, steps = fit_prompt(list(range(1000)), context_vector.max_seq_len, 60)
    assert (len(ids), steps) == (1000, 60)


def test_generate_warns_through_its_logger_by_default(ascii_transformer, byte_tok, caplog):
    with caplog.at_level(logging.WARNING, logger="lmlab.evaluation.generation"):
        generate(ascii_transformer, byte_tok, [LONG, LONG + "!"], max_tokens=60)
    notes = [r.getMessage() for r in caplog.records if "context is 48 tokens" in r.getMessage()]
    assert len(notes) == 1


def _gen_requests(prompts: list[str], max_gen_toks: int) -> list[Instance]:
    settings = {"until": ["\n\n"], "max_gen_toks": max_gen_toks, "do_sample": False}
    return [Instance(request_type="generate_until", doc={}, arguments=(p, settings), idx=i)
            for i, p in enumerate(prompts)]


def test_harness_says_it_once_per_evaluation_not_per_request(ascii_transformer, byte_tok, caplog):
    lm = LmlabLM(ascii_transformer, byte_tok, batch_size=2, progress=False)
    prompts = [LONG + f"Then came the {word}." for word in ("rain", "wind", "snow", "sun", "fog")]
    with caplog.at_level(logging.WARNING, logger="lmlab.evaluation.harness"):
        first = lm.generate_until(_gen_requests(prompts, 100))
        lm.generate_until(_gen_requests(prompts[:2], 100))  # lm-eval may call it again
    said = [r.getMessage() for r in caplog.records if "context is 48 tokens" in r.getMessage()]
    assert len(said) == 1 and "5 of 5 prompts were cut to BOS + their last 36 tokens" in said[0]
    assert "said once per evaluation" in said[0]
    assert len(lm.context_notices) == 2  # both calls are remembered
    assert len(set(first)) > 1  # the last tokens alike, but each prompt keeps its own end
