"""The "context vector propagation" language model: a deep MLP plus one gated recurrent vector.

At every position t the token embedding is concatenated with a context vector c_{t-1}, a plain
ReLU MLP (no residuals, no norms) turns it into a hidden state h_t, the head reads the logits
off h_t, and three gates computed from h_t write it into the context:

    h_t      = FNN([emb(x_t), c_{t-1}])
    logits_t = head(h_t)
    u, f, i  = W_u h_t + b_u,  sigmoid(W_f h_t + b_f),  sigmoid(W_i h_t + b_i)
    c_t      = clamp(LayerNorm(f * c_{t-1} + i * u), -10, 10)          (c_{-1} = 0)

The context is the only thing carried between positions, so the model is recurrent and has no
length limit. It implements ``lmlab.models.protocol.LanguageModel``; the state is c, (B, C).

Two formulations share the parameters:

* ``step`` / ``forward`` (the fast path): everything that does not depend on c is taken out of
  the time loop -- the embedding's share of layer 0 is one matmul before it (over the embedding
  table when V < B*T, see ``_embedding_shares``), the head is one (B*T, H) @ (H, V) matmul after
  it -- and the loop body is lean: ``addmm`` with fused bias, the three gates as one matmul, and
  on CPU ReLU + dropout fused into one in-place autograd op with a cheap mask (``_ReluDropout``).
* ``forward_reference``: the textbook per-token loop (cat, every layer, head, per position).
  Tests check the fast path against it; the benchmark times the two.

Shape legend used in the comments:
    B   batch size
    T   time (number of tokens in this call)
    E   embedding dim
    H   hidden dim (width of every FNN layer)
    C   context dim
    V   vocabulary size
    L   number of FNN layers
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CONTEXT_CLAMP = 10.0  # the context is clipped to [-CONTEXT_CLAMP, CONTEXT_CLAMP] after its LayerNorm


@dataclass
class ContextVectorConfig:
    """Hyperparameters of :class:`ContextVectorLM`; the defaults give ~2.7M params at V = 1000."""

    name: str = field(default="context_vector", metadata={"help": "Model family (see models/registry.py)."})
    vocab_size: int = field(
        default=0, metadata={"help": "Vocabulary size V; 0 means the builder takes it from the tokenizer."}
    )
    embed_dim: int = field(default=256, metadata={"help": "Token embedding width E."})
    hidden_dim: int = field(default=512, metadata={"help": "Width H of every FNN layer (and of the hidden state)."})
    n_layers: int = field(default=6, metadata={"help": "Number of Linear+ReLU+Dropout layers L in the FNN."})
    context_dim: int = field(default=256, metadata={"help": "Width C of the context vector carried between positions."})
    dropout: float = field(default=0.1, metadata={"help": "Dropout probability after every FNN layer (training only)."})


def _validate(cfg: ContextVectorConfig) -> None:
    """Fail at construction, not deep inside a matmul, on configs that cannot work."""
    if cfg.vocab_size <= 0:
        raise ValueError(f"vocab_size must be > 0 (got {cfg.vocab_size}); set it from the tokenizer")
    for name in ("embed_dim", "hidden_dim", "n_layers", "context_dim"):
        if getattr(cfg, name) <= 0:
            raise ValueError(f"{name} must be > 0 (got {getattr(cfg, name)})")
    if not 0.0 <= cfg.dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1) (got {cfg.dropout})")


class _ReluDropout(torch.autograd.Function):
    """y = relu(x) * keep / (1 - p) as one autograd node, computed in place on x.

    Why: on CPU, ``F.dropout`` spends more time drawing its Bernoulli mask than the
    (B, H) @ (H, H) matmul before it takes. Here the mask comes from 16-bit random integers
    (four per 64-bit draw): 3-4x cheaper than relu + F.dropout on a (2048, 512) tensor.
    Backward needs only y itself -- "x > 0 and kept" is "y > 0" -- which the next Linear saves
    anyway, so neither a float mask nor the pre-activation is kept.
    x must be a fresh matmul output that nothing else reads (it is overwritten).
    """

    @staticmethod
    def forward(ctx, x: Tensor, p: float) -> Tensor:  # x: (B, H)
        # drop `dropped` of the 2^16 values of a uniform int16 r: keep iff r >= t := dropped - 2^15,
        # so p is rounded to a multiple of 2^-16; the scale uses that exact keep probability
        dropped = min(round(p * 65536), 65535)
        t = dropped - 32768
        scale = 65536.0 / (65536 - dropped)
        n = x.numel()
        bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_(-(2**63), None)
        r = bits.view(torch.int16)[:n].view_as(x)  # (B, H), uniform over [-2^15, 2^15)
        # r - t + 1 is >= 1 exactly where r >= t and <= 0 elsewhere, so the clamp is the 0/1 mask;
        # float ops, because PyTorch's CPU bool ops (compare, masked_fill) are several times slower
        keep = r.to(x.dtype).sub_(t - 1).clamp_(0.0, 1.0)
        y = x.relu_().mul_(keep).mul_(scale)
        ctx.mark_dirty(x)
        ctx.save_for_backward(y)
        ctx.scale = scale
        return y

    @staticmethod
    def backward(ctx, grad_y: Tensor) -> tuple[Tensor, None]:
        (y,) = ctx.saved_tensors
        # threshold_backward(g, y, 0) = g where y > 0 else 0: ReLU's backward read off its output
        return torch.ops.aten.threshold_backward(grad_y, y, 0).mul_(ctx.scale), None


def _relu_dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """ReLU then dropout, in place on ``x`` (a fresh matmul output nothing else reads): (B, H) -> (B, H)."""
    if not training or p == 0.0:
        return torch.relu_(x)
    if x.is_cuda:  # native dropout is one fused kernel on GPU (and torch.compile-friendly)
        return F.dropout(torch.relu_(x), p, training=True)
    return _ReluDropout.apply(x, p)


class ContextVectorLM(nn.Module):
    """Deep ReLU MLP over [emb(x_t), c_{t-1}] with a gated, LayerNormed context vector c."""

    max_seq_len = None  # recurrent: any length

    def __init__(self, cfg: ContextVectorConfig) -> None:
        super().__init__()
        _validate(cfg)
        self.config = cfg
        E, H, C, V = cfg.embed_dim, cfg.hidden_dim, cfg.context_dim, cfg.vocab_size
        self.embed = nn.Embedding(V, E)
        # layers[0] reads [emb, c]: its weight's columns [:E] see the embedding, [E:] the context
        self.layers = nn.ModuleList([nn.Linear(E + C, H)] + [nn.Linear(H, H) for _ in range(cfg.n_layers - 1)])
        self.head = nn.Linear(H, V)
        # the u, f, i projections stacked row-wise into one (3C, H) matmul: rows [u; f; i]
        self.gates = nn.Linear(H, 3 * C)
        self.norm = nn.LayerNorm(C)
        #: GPU only: run the loop body through torch.compile (fewer kernel launches); ignored on CPU
        self.compile_step = False
        self._compiled_body = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """N(0, 0.02) for every Linear/Embedding weight, zero biases, LayerNorm at (1, 0)."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)
        self.norm.reset_parameters()

    # ------------------------------------------------------------------ protocol
    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def flops_per_token(self, seq_len: int) -> tuple[int, str]:
        n = self.num_params() - self.config.vocab_size * self.config.embed_dim
        return 6 * n, "6N (N = params excluding the input embedding; each weight is used once per token)"

    def init_state(self, batch_size: int, capacity: int | None = None) -> Tensor:
        """The empty context: zeros (B, C) on the model's device and dtype (any length: no capacity)."""
        w = self.head.weight
        return torch.zeros(batch_size, self.config.context_dim, device=w.device, dtype=w.dtype)

    def forward(self, tokens: Tensor) -> Tensor:
        """(B, T) ids -> (B, T, V) logits; the context starts at zero for every sequence."""
        logits, _ = self.step(tokens, self.init_state(tokens.shape[0]))
        return logits

    def step(self, tokens: Tensor, state: Tensor, pad_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(B, T) ids after context ``state`` (B, C) -> ((B, T, V) logits, new context (B, C)).

        ``pad_mask`` (B, T), True = a pad: a pad position leaves its row's context unchanged (its
        logits are meaningless), so a padded row ends with exactly the context it would have alone.
        """
        emb_parts = self._embedding_shares(tokens)  # T tensors (B, H)
        w_ctx = self.layers[0].weight[:, self.config.embed_dim :]  # (H, C): layer 0's context columns
        pads = None if pad_mask is None else pad_mask.to(device=state.device, dtype=torch.bool).t()[:, :, None]
        hidden, context = self._scan(emb_parts, state, w_ctx, pads)  # (B, T, H), (B, C)
        return self.head(hidden), context  # one (B*T, H) @ (H, V) matmul for all positions

    def select_state(self, state: Tensor, index: Tensor) -> Tensor:
        """The contexts of rows ``index`` (one prefix, several continuations): (B, C) -> (len(index), C)."""
        return state.index_select(0, index)

    def _embedding_shares(self, tokens: Tensor) -> Iterator[Tensor]:
        """Layer 0's bias plus its embedding columns applied to each position: (B, T) -> T x (B, H).

        None of this depends on the context, so its matmul is done before the time loop. It
        depends on the token id alone, so when the vocabulary has fewer ids than the batch has
        positions (V < B*T, the training case) we project the whole table once, (V, E) @ (E, H),
        and each step gathers its B rows: V*E*H instead of B*T*E*H multiply-adds (forward and
        backward), and no (T, B, H) tensor or gradient is ever materialised. Otherwise
        (decoding) we project the gathered embeddings, (T, B, E) @ (E, H), and unbind by time;
        unbind, unlike indexing [t], has a cheap backward (one stack, not T zero-filled buffers).
        """
        first, E = self.layers[0], self.config.embed_dim
        w_emb = first.weight[:, :E]  # (H, E) view, no copy
        if self.config.vocab_size < tokens.numel():
            table = F.linear(self.embed.weight, w_emb, first.bias)  # (V, H)
            return (F.embedding(ids_t, table) for ids_t in tokens.t())  # lazily, one (B, H) per step
        return iter(F.linear(self.embed(tokens.t()), w_emb, first.bias).unbind(0))  # (T, B, H) by t

    # ------------------------------------------------------------------ fast path
    def _scan(self, emb_parts: Iterable[Tensor], context: Tensor, w_ctx: Tensor,
              pads: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Run the recurrence over time: T x (B, H) layer-0 embedding shares, (B, C) -> (B, T, H), (B, C).
        ``pads`` (T, B, 1), True = a pad: the context goes through that position unchanged."""
        body = self._loop_body()
        w_ctx_t = w_ctx.t()  # (C, H)
        hiddens = []
        for t, emb_part_t in enumerate(emb_parts):
            h, new_context = body(emb_part_t, context, w_ctx_t)
            context = new_context if pads is None else torch.where(pads[t], context, new_context)
            hiddens.append(h)
        # one stack, not writes into a preallocated (B, T, H) buffer: under autograd each in-place
        # write's backward would copy the whole buffer's gradient (T times). Stacking on dim 1
        # gives (B, T, H) directly, so the head's output is (B, T, V) and contiguous.
        return torch.stack(hiddens, dim=1), context

    def _loop_body(self):
        """The per-position step, compiled when ``compile_step`` is set and the model is on a GPU."""
        if not (self.compile_step and self.head.weight.is_cuda):
            return self._step_position
        if self._compiled_body is None:
            self._compiled_body = torch.compile(self._step_position, dynamic=False)
        return self._compiled_body

    def _step_position(self, emb_part_t: Tensor, context: Tensor, w_ctx_t: Tensor) -> tuple[Tensor, Tensor]:
        """One position: (B, H) embedding share of layer 0, (B, C) context -> (B, H) hidden, (B, C) context."""
        p, training = self.config.dropout, self.training
        h = _relu_dropout(torch.addmm(emb_part_t, context, w_ctx_t), p, training)  # (B, H)
        for layer in self.layers[1:]:
            h = _relu_dropout(torch.addmm(layer.bias, h, layer.weight.t()), p, training)
        return h, self._update_context(h, context)

    def _update_context(self, h: Tensor, context: Tensor) -> Tensor:
        """c <- clamp(LayerNorm(f * c + i * u), -10, 10) with u, f, i from one fused (B, H) @ (H, 3C)."""
        C = self.config.context_dim
        g = torch.addmm(self.gates.bias, h, self.gates.weight.t())  # (B, 3C) = [u | f | i]
        # split, not g[:, :C] / g[:, C:]: each slice's backward would zero-fill a (B, 3C) tensor,
        # split's backward is one cat
        u, fi = g.split([C, 2 * C], dim=1)
        f, i = torch.sigmoid(fi).chunk(2, dim=1)  # (B, C) each; one sigmoid kernel for both gates
        mixed = torch.addcmul(f * context, i, u)  # f * c + i * u, (B, C)
        normed = F.layer_norm(mixed, (C,), self.norm.weight, self.norm.bias, self.norm.eps)
        return normed.clamp_(-CONTEXT_CLAMP, CONTEXT_CLAMP)

    # ------------------------------------------------------------------ reference path
    def forward_reference(self, tokens: Tensor) -> Tensor:
        """The straightforward per-token loop with the same parameters: (B, T) -> (B, T, V).

        At each t: cat([emb(x_t), c]), every Linear (layer 0 included) as a whole, the head on
        that one position, then the three gates as three separate projections.
        """
        B, T = tokens.shape
        C = self.config.context_dim
        context = self.init_state(B)  # (B, C)
        w_u, w_f, w_i = self.gates.weight.split(C, dim=0)  # three (C, H)
        b_u, b_f, b_i = self.gates.bias.split(C, dim=0)
        logits = []
        for t in range(T):
            h = torch.cat([self.embed(tokens[:, t]), context], dim=-1)  # (B, E + C)
            for layer in self.layers:
                h = F.dropout(F.relu(layer(h)), self.config.dropout, self.training)  # (B, H)
            logits.append(self.head(h))  # (B, V)
            u = F.linear(h, w_u, b_u)
            f = torch.sigmoid(F.linear(h, w_f, b_f))
            i = torch.sigmoid(F.linear(h, w_i, b_i))
            context = torch.clamp(self.norm(f * context + i * u), -CONTEXT_CLAMP, CONTEXT_CLAMP)
        return torch.stack(logits, dim=1)  # (B, T, V)
