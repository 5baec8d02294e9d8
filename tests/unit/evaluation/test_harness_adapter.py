"""The lm-eval adapter scores exactly what a per-request brute-force computation scores."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from lm_eval.api.instance import Instance
from lm_eval.utils import get_rolling_token_windows

from lmlab.evaluation.harness import LmlabLM
from lmlab.evaluation.scoring import score_windows


def _requests(kind: str, args: list[tuple]) -> list[Instance]:
    return [Instance(request_type=kind, doc={}, arguments=a, idx=i) for i, a in enumerate(args)]


def _brute_force(model, tokenizer, context: str, continuation: str) -> tuple[float, bool]:
    """One request alone, unbatched: BOS + context (without trailing whitespace) then the rest,
    left-truncated to the model's context, scoring only the continuation's tokens."""
    stripped = context.rstrip()
    ctx = [tokenizer.bos_id] + tokenizer.encode(stripped)
    cont = tokenizer.encode(context[len(stripped):] + continuation)
    seq = ctx + cont
    if model.max_seq_len is not None:
        seq = seq[-(model.max_seq_len + 1):]
    with torch.no_grad():
        logits = model(torch.tensor([seq[:-1]]))[0]
    logprobs = F.log_softmax(logits[len(seq) - 1 - len(cont):], dim=-1)
    target = torch.tensor(cont)
    return logprobs.gather(1, target[:, None]).sum().item(), bool((logprobs.argmax(-1) == target).all())


BYTE_PAIRS = [
    ("Question: how do you boil an egg?\nAnswer:", " Put it in water."),
    ("", "hello"),  # empty context: the continuation is conditioned on BOS alone
    ("The cat sat on the ", "mat"),  # trailing space moves to the continuation
    ("A much longer context that does not fit into the forty-eight token window at all, " * 2, " end."),
    ("short", " x"),
]
WORD_PAIRS = [
    ("the cat sat on", " a mat"),
    ("", "dog ran far"),
    ("and dog ran ", "far zebra"),  # an unknown word scores as <unk>
    ("the cat " * 30, "sat"),  # long: the recurrent model has no limit, no truncation
]


@pytest.mark.parametrize("family", ["transformer", "context_vector"])
def test_loglikelihood_equals_brute_force(family, request):
    model = request.getfixturevalue(family)
    tokenizer = request.getfixturevalue("byte_tok" if family == "transformer" else "word_tok")
    pairs = BYTE_PAIRS if family == "transformer" else WORD_PAIRS
    lm = LmlabLM(model, tokenizer, batch_size=2, progress=False)  # several batches, mixed lengths
    got = lm.loglikelihood(_requests("loglikelihood", pairs))
    for (context, continuation), (logprob, greedy) in zip(pairs, got):
        want_lp, want_greedy = _brute_force(model, tokenizer, context, continuation)
        assert logprob == pytest.approx(want_lp, abs=1e-4, rel=1e-5), (context, continuation)
        assert greedy == want_greedy
        assert logprob < 0


@pytest.mark.parametrize("family", ["transformer", "context_vector"])
def test_is_greedy_true_for_the_greedy_continuation(family, request, greedy_uncached):
    model = request.getfixturevalue(family)
    tokenizer = request.getfixturevalue("byte_tok" if family == "transformer" else "word_tok")
    lm = LmlabLM(model, tokenizer, progress=False)
    prompt = [tokenizer.bos_id] + tokenizer.encode("the cat sat")
    greedy = greedy_uncached(model, prompt, 6)
    wrong = greedy[:-1] + [(greedy[-1] + 1) % tokenizer.vocab_size]
    (lp_greedy, is_greedy), (lp_wrong, not_greedy) = lm.scorer.score(
        [(prompt + greedy, len(prompt)), (prompt + wrong, len(prompt))])
    assert is_greedy and not not_greedy
    assert lp_greedy > lp_wrong


def test_rolling_windows_match_lm_eval_rule():
    # lm-eval's own rolling windows (context_len=1, as its HF model uses) are the reference
    for n_tokens in (1, 5, 7, 8, 9, 16, 23):
        tokens = list(range(10, 10 + n_tokens))
        for max_len in (1, 3, 4, 8):
            want = [(inp, pred) for inp, pred in get_rolling_token_windows(tokens, 0, max_len, 1)]
            assert score_windows([0] + tokens, 1, max_len) == want, (n_tokens, max_len)


def test_rolling_scores_every_token_once(transformer, byte_context_vector, byte_tok):
    text = "To be, or not to be, that is the question: whether 'tis nobler in the mind."
    ids = [byte_tok.bos_id] + byte_tok.encode(text)
    # recurrent model: one window over the whole text = the plain full-sequence sum
    with torch.no_grad():
        logits = byte_context_vector(torch.tensor([ids[:-1]]))[0]
    want = F.log_softmax(logits, -1).gather(1, torch.tensor(ids[1:])[:, None]).sum().item()
    lm = LmlabLM(byte_context_vector, byte_tok, progress=False)
    got, = lm.loglikelihood_rolling(_requests("loglikelihood_rolling", [(text,)]))
    assert got == pytest.approx(want, rel=1e-5)
    # transformer (48-token context, 76 tokens): windows from lm-eval's rule, each scored alone
    want = 0.0
    for inputs, preds in get_rolling_token_windows(ids[1:], ids[0], transformer.max_seq_len, 1):
        with torch.no_grad():
            logits = transformer(torch.tensor([inputs]))[0, -len(preds):]
        want += F.log_softmax(logits, -1).gather(1, torch.tensor(preds)[:, None]).sum().item()
    lm = LmlabLM(transformer, byte_tok, progress=False)
    got, = lm.loglikelihood_rolling(_requests("loglikelihood_rolling", [(text,)]))
    assert got == pytest.approx(want, rel=1e-5) and math.isfinite(got)


def test_continuation_longer_than_the_context_is_windowed(transformer, byte_tok):
    lm = LmlabLM(transformer, byte_tok, progress=False)
    continuation = " and so on" * 12  # 120 bytes > 48-token window
    (lp, _), = lm.loglikelihood(_requests("loglikelihood", [("Begin:", continuation)]))
    ctx = [byte_tok.bos_id] + byte_tok.encode("Begin:")
    seq = ctx + byte_tok.encode(continuation)
    total = 0.0
    for inputs, targets in score_windows(seq, len(ctx), transformer.max_seq_len):
        assert len(inputs) <= transformer.max_seq_len
        with torch.no_grad():
            logits = transformer(torch.tensor([inputs]))[0, -len(targets):]
        total += F.log_softmax(logits, -1).gather(1, torch.tensor(targets)[:, None]).sum().item()
    assert sum(len(t) for _, t in score_windows(seq, len(ctx), 48)) == len(seq) - len(ctx)
    assert lp == pytest.approx(total, rel=1e-5)


def test_generate_until_honours_until_and_max_gen_toks(ascii_transformer, byte_tok):
    lm = LmlabLM(ascii_transformer, byte_tok, max_gen_toks=5, progress=False)
    free = lm.generate_until(_requests("generate_until", [("Q: who?\nA:", {"until": []})]))[0]
    assert len(free) == 5  # ASCII only, EOS masked: exactly max_gen_toks bytes
    long = lm.generate_until(_requests("generate_until", [("Q: who?\nA:", {"max_gen_toks": 12})]))[0]
    assert long.startswith(free)
    stop = long[3:5]
    cut = lm.generate_until(_requests("generate_until", [("Q: who?\nA:", {"until": [stop], "max_gen_toks": 12})]))[0]
    assert cut == long[:long.find(stop)]
    assert lm.generation_settings({"do_sample": False, "temperature": 0.7})["temperature"] == 0.0
    assert lm.generation_settings({"do_sample": True, "top_p": 0.9})["temperature"] == 1.0
