"""Tests for the Llama-style transformer: parameter counts, causality, KV-cache equivalence."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from lmlab.models.protocol import LanguageModel
from lmlab.models.transformer import KVCache, Transformer, TransformerConfig


def tiny_config(**overrides) -> TransformerConfig:
    base = dict(vocab_size=61, dim=32, n_layers=2, n_heads=4, multiple_of=16, max_seq_len=32)
    base.update(overrides)
    return TransformerConfig(**base)


def tiny_model(seed: int = 0, **overrides) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(tiny_config(**overrides)).eval()


def debug_config(**overrides) -> TransformerConfig:
    base = dict(vocab_size=258, dim=1024, n_layers=8, n_heads=8, multiple_of=256, max_seq_len=2048)
    base.update(overrides)
    return TransformerConfig(**base)


def test_config_fields_have_help():
    for f in dataclasses.fields(TransformerConfig):
        assert f.metadata.get("help"), f.name


def test_reference_debug_param_count():
    cfg = debug_config()
    assert cfg.ffn_hidden_dim() == 2816
    with torch.device("meta"):
        model = Transformer(cfg)
    assert model.num_params() == 103_306_240


def test_tying_removes_exactly_one_vd_matrix():
    with torch.device("meta"):
        untied = Transformer(debug_config())
        tied = Transformer(debug_config(weight_tying=True))
    assert untied.num_params() - tied.num_params() == 258 * 1024
    assert tied.output.weight is tied.tok_embeddings.weight


def test_ffn_hidden_dim_multiplier():
    cfg = TransformerConfig(dim=64, multiple_of=32, ffn_dim_multiplier=1.5)
    # int(2*4*64/3) = 170; int(1.5 * 170) = 255; rounded up to 32 -> 256
    assert cfg.ffn_hidden_dim() == 256


def test_protocol_and_rope_buffers_not_persisted():
    model = tiny_model()
    assert isinstance(model, LanguageModel)
    assert model.max_seq_len == 32
    keys = model.state_dict().keys()
    assert not any("rope" in k for k in keys)


def test_init_stats():
    torch.manual_seed(0)
    model = Transformer(tiny_config(dim=64, n_layers=4, multiple_of=64, init_std=0.1))
    assert torch.equal(model.norm.weight, torch.ones(64))
    assert abs(model.tok_embeddings.weight.std().item() - 0.1) < 0.01
    wo = model.layers[0].attention.wo.weight
    assert abs(wo.std().item() - 0.1 / (2 * 4) ** 0.5) < 0.005


def test_forward_shape_and_dtype():
    model = tiny_model()
    tokens = torch.randint(0, 61, (3, 10))
    logits = model(tokens)
    assert logits.shape == (3, 10, 61)
    assert logits.dtype == torch.float32


def test_causality():
    model = tiny_model()
    torch.manual_seed(1)
    tokens = torch.randint(0, 61, (2, 12))
    changed = tokens.clone()
    changed[:, 7] = (changed[:, 7] + 1) % 61
    with torch.no_grad():
        a, b = model(tokens), model(changed)
    torch.testing.assert_close(a[:, :7], b[:, :7], rtol=0, atol=0)
    assert not torch.allclose(a[:, 7:], b[:, 7:])


def test_forward_rejects_too_long():
    model = tiny_model(max_seq_len=8)
    with pytest.raises(ValueError):
        model(torch.zeros(1, 9, dtype=torch.long))


@pytest.mark.parametrize("n_heads,n_kv_heads", [(4, None), (4, 2)])
def test_chunked_step_equals_forward(n_heads, n_kv_heads):
    model = tiny_model(n_heads=n_heads, n_kv_heads=n_kv_heads)
    torch.manual_seed(2)
    tokens = torch.randint(0, 61, (2, 12))
    with torch.no_grad():
        full = model(tokens)
        state = model.init_state(2)
        assert isinstance(state, KVCache) and state.pos == 0
        assert state.k[0].shape == (2, n_kv_heads or n_heads, 32, 8)
        pieces = []
        for start, end in [(0, 5), (5, 6), (6, 7), (7, 8), (8, 9), (9, 12)]:
            logits, state = model.step(tokens[:, start:end], state)
            assert state.pos == end
            pieces.append(logits)
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=0, atol=1e-5)


def _greedy_no_cache(model: Transformer, prompt: torch.Tensor, n_new: int) -> torch.Tensor:
    seq = prompt
    for _ in range(n_new):
        nxt = model(seq)[:, -1].argmax(-1, keepdim=True)  # (B, 1)
        seq = torch.cat([seq, nxt], dim=1)
    return seq[:, prompt.shape[1] :]


def _greedy_cached(model: Transformer, prompt: torch.Tensor, n_new: int) -> torch.Tensor:
    state = model.init_state(prompt.shape[0])
    logits, state = model.step(prompt, state)
    out = []
    for _ in range(n_new):
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        out.append(nxt)
        logits, state = model.step(nxt, state)
    return torch.cat(out, dim=1)


@pytest.mark.parametrize("n_kv_heads", [None, 2])
def test_greedy_decoding_cache_matches_no_cache(n_kv_heads):
    model = tiny_model(seed=3, n_kv_heads=n_kv_heads)
    torch.manual_seed(4)
    prompt = torch.randint(0, 61, (2, 6))
    with torch.no_grad():
        ref = _greedy_no_cache(model, prompt, 20)
        got = _greedy_cached(model, prompt, 20)
    assert got.shape == (2, 20)
    assert torch.equal(got, ref)


def test_step_past_max_seq_len_raises():
    model = tiny_model(max_seq_len=8)
    state = model.init_state(1)
    with torch.no_grad():
        _, state = model.step(torch.zeros(1, 6, dtype=torch.long), state)
        with pytest.raises(ValueError):
            model.step(torch.zeros(1, 3, dtype=torch.long), state)
        assert state.pos == 6  # a rejected step leaves the state untouched
        _, state = model.step(torch.zeros(1, 2, dtype=torch.long), state)
        assert state.pos == 8
        with pytest.raises(ValueError):
            model.step(torch.zeros(1, 1, dtype=torch.long), state)


def test_a_cache_of_fewer_slots_gives_the_same_logits_and_refuses_to_overflow():
    model = tiny_model()
    tokens = torch.randint(0, 61, (3, 10), generator=torch.Generator().manual_seed(3))
    pads = torch.zeros(3, 6, dtype=torch.bool)
    pads[0, :2] = True  # a left-padded row: the pads record must fit the small cache too
    with torch.no_grad():
        full, small = model.init_state(3), model.init_state(3, capacity=10)
        assert small.k[0].shape[2] == 10 and full.k[0].shape[2] == 32
        logits = []
        for state in (full, small):
            a, _ = model.step(tokens[:, :6], state, pad_mask=pads)
            b, _ = model.step(tokens[:, 6:], state)
            logits.append(torch.cat([a, b], 1)[1:])  # the rows without pads
        torch.testing.assert_close(logits[1], logits[0], rtol=0, atol=1e-6)
        with pytest.raises(ValueError, match="10 slots"):
            model.step(tokens[:, :1], small)


def test_invalid_configs_raise():
    with pytest.raises(ValueError):
        Transformer(tiny_config(vocab_size=0))
    with pytest.raises(ValueError):
        Transformer(tiny_config(n_heads=4, n_kv_heads=3))
    with pytest.raises(ValueError):
        Transformer(tiny_config(max_seq_len=0))


@pytest.mark.parametrize("tied", [False, True])
def test_flops_per_token_by_hand(tied):
    # V=61, D=32, L=2, H=4, F: int(2*4*32/3)=85 -> rounded up to 16 -> 96
    model = tiny_model(weight_tying=tied)
    V, D, L, F_ = 61, 32, 2, 96
    per_layer = 4 * D * D + 3 * D * F_ + 2 * D  # attention + SwiGLU + two norms
    total = V * D + L * per_layer + D + (0 if tied else V * D)
    assert model.num_params() == total
    n = total if tied else total - V * D
    flops, name = model.flops_per_token(16)
    assert flops == 6 * n + 12 * L * D * 16
    assert "6N" in name
    if not tied:
        # 6 * (2*(4096 + 9216 + 64) + 32 + 1952) + 12*2*32*16
        assert flops == 6 * 28736 + 12288 == 184704


def test_activation_checkpointing_gives_the_same_loss_and_gradients():
    """Recomputing the blocks in backward changes memory, not math."""
    grads = []
    for recompute in (False, True):
        torch.manual_seed(0)
        model = Transformer(TransformerConfig(vocab_size=50, dim=32, n_layers=2, n_heads=4, multiple_of=16,
                                              max_seq_len=16, activation_checkpointing=recompute))
        tokens = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(1))
        model(tokens).float().logsumexp(-1).mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-6, atol=1e-7)
