"""Tiny random models for the evaluation tests (a peaked init, so argmax decisions are never near-ties)
and the uncached greedy reference decoder. Loading a trained run (``load``) is in tests/conftest.py."""
from __future__ import annotations

import pytest
import torch

from helpers import toy_texts
from lmlab.data.tokenizers import ByteTokenizer, WordTokenizer
from lmlab.evaluation.generation import greedy_reference
from lmlab.models.context_vector import ContextVectorConfig, ContextVectorLM
from lmlab.models.transformer import Transformer, TransformerConfig


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every evaluation test on one thread (tests/conftest.py says why)."""


@pytest.fixture(scope="session")
def greedy_uncached():
    return greedy_reference


def _peaked(model, std: float):
    # the default N(0, 0.02) init gives near-uniform logits; a wide init makes the argmax robust to
    # the last-bit differences between batched, cached and uncached computation
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, std)
    return model.eval()


@pytest.fixture(scope="session")
def byte_tok() -> ByteTokenizer:
    return ByteTokenizer()


@pytest.fixture(scope="session")
def word_tok() -> WordTokenizer:
    return WordTokenizer.train(toy_texts("gamma", 40), 40)


@pytest.fixture(scope="session")
def transformer() -> Transformer:
    """Bytes vocabulary, context of 48 tokens."""
    torch.manual_seed(0)
    cfg = TransformerConfig(vocab_size=258, dim=32, n_layers=2, n_heads=4, multiple_of=16, max_seq_len=48)
    return _peaked(Transformer(cfg), 0.3)


@pytest.fixture(scope="session")
def context_vector(word_tok) -> ContextVectorLM:
    """Word vocabulary, no context limit."""
    torch.manual_seed(0)
    cfg = ContextVectorConfig(vocab_size=word_tok.vocab_size, embed_dim=16, hidden_dim=32, n_layers=2,
                              context_dim=16, dropout=0.1)
    return _peaked(ContextVectorLM(cfg), 0.4)


@pytest.fixture(scope="session")
def byte_context_vector() -> ContextVectorLM:
    torch.manual_seed(0)
    cfg = ContextVectorConfig(vocab_size=258, embed_dim=16, hidden_dim=32, n_layers=2, context_dim=16)
    return _peaked(ContextVectorLM(cfg), 0.4)


class AsciiOnly(torch.nn.Module):
    """Wraps a bytes-vocabulary model so it only ever predicts printable ASCII or newline (never EOS):
    text-level tests then compare strings with no incomplete UTF-8 decoding to U+FFFD."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.max_seq_len = inner.max_seq_len
        mask = torch.full((258,), float("-inf"))
        mask[32:127] = 0.0
        mask[10] = 0.0  # newline
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, tokens):
        return self.inner(tokens) + self.mask

    def init_state(self, batch_size):
        return self.inner.init_state(batch_size)

    def step(self, tokens, state, pad_mask=None):
        logits, state = self.inner.step(tokens, state, pad_mask=pad_mask)
        return logits + self.mask, state

    def select_state(self, state, index):
        return self.inner.select_state(state, index)


@pytest.fixture(scope="session")
def ascii_transformer(transformer) -> AsciiOnly:
    return AsciiOnly(transformer).eval()
