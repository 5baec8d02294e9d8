"""A Llama-style decoder-only transformer, written to be read in one sitting.

Pre-norm blocks (RMSNorm -> attention -> residual, RMSNorm -> SwiGLU -> residual), rotary
position embeddings, optional grouped-query attention, bias-free linears, and a preallocated
KV cache for decoding. It implements ``lmlab.models.protocol.LanguageModel``.

Shape legend used in the comments:
    B   batch size
    T   time (number of tokens in this call)
    S   total cached length during decoding (pos + T)
    D   model dim
    H   query heads
    K   key/value heads (K == H is plain multi-head attention, K < H is GQA)
    Hd  head dim (D // H)
    F   SwiGLU hidden dim
    V   vocabulary size
    L   number of layers
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


@dataclass
class TransformerConfig:
    """Hyperparameters of :class:`Transformer`; the defaults are a ~100M-parameter model."""

    name: str = field(default="transformer", metadata={"help": "Model family (see models/registry.py)."})
    vocab_size: int = field(
        default=0, metadata={"help": "Vocabulary size V; 0 means the builder takes it from the tokenizer."}
    )
    dim: int = field(default=512, metadata={"help": "Model (residual stream) width D."})
    n_layers: int = field(default=8, metadata={"help": "Number of transformer blocks L."})
    n_heads: int = field(default=8, metadata={"help": "Number of query heads H; must divide dim."})
    n_kv_heads: int | None = field(
        default=None,
        metadata={"help": "Number of key/value heads K (None = n_heads; smaller = grouped-query attention; must divide n_heads)."},
    )
    multiple_of: int = field(
        default=256, metadata={"help": "The SwiGLU hidden size is rounded up to a multiple of this."}
    )
    ffn_dim_multiplier: float | None = field(
        default=None, metadata={"help": "Optional factor applied to the SwiGLU hidden size before rounding."}
    )
    norm_eps: float = field(default=1e-5, metadata={"help": "Epsilon of every RMSNorm."})
    rope_theta: float = field(default=10000.0, metadata={"help": "Base of the rotary position embedding frequencies."})
    max_seq_len: int = field(
        default=0,
        metadata={"help": "Length of the RoPE tables and the KV cache; 0 means the builder sets it to the data seq_len."},
    )
    weight_tying: bool = field(
        default=False, metadata={"help": "Share the output projection with the token embedding matrix."}
    )
    init_std: float = field(default=0.02, metadata={"help": "Std of the normal init of all linear and embedding weights."})
    activation_checkpointing: bool = field(default=False, metadata={
        "help": "Recompute each block's activations in the backward pass instead of keeping them: "
                "about a third more compute for much less activation memory (larger configs)."})
    init_from: str = field(default="", metadata={
        "help": "Start from these weights instead of a random init: hf:DIR, a local Hugging Face "
                "LlamaForCausalLM folder of the same shape and vocabulary (checked by preflight)."})

    def ffn_hidden_dim(self) -> int:
        """SwiGLU hidden size F: 2/3 of 4*D (keeps params equal to a 4*D GELU MLP), rounded up."""
        hidden = int(2 * 4 * self.dim / 3)
        if self.ffn_dim_multiplier:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return self.multiple_of * math.ceil(hidden / self.multiple_of)


def _validate(cfg: TransformerConfig) -> None:
    """Fail at construction, not deep inside a reshape, on configs that cannot work."""
    if cfg.vocab_size <= 0:
        raise ValueError(f"vocab_size must be > 0 (got {cfg.vocab_size}); set it from the tokenizer")
    if cfg.max_seq_len <= 0:
        raise ValueError(f"max_seq_len must be > 0 (got {cfg.max_seq_len}); set it from the data seq_len")
    if cfg.dim % cfg.n_heads != 0:
        raise ValueError(f"dim ({cfg.dim}) must be divisible by n_heads ({cfg.n_heads})")
    n_kv = cfg.n_kv_heads if cfg.n_kv_heads is not None else cfg.n_heads
    if n_kv <= 0 or cfg.n_heads % n_kv != 0:
        raise ValueError(f"n_heads ({cfg.n_heads}) must be divisible by n_kv_heads ({n_kv})")
    if (cfg.dim // cfg.n_heads) % 2 != 0:
        raise ValueError(f"head dim ({cfg.dim // cfg.n_heads}) must be even for rotary embeddings")


# ----------------------------------------------------------------------------- rotary embeddings


def rope_tables(head_dim: int, max_seq_len: int, theta: float) -> tuple[Tensor, Tensor]:
    """cos/sin tables, each (max_seq_len, Hd), for the rotate-half form of RoPE.

    Channel i and i + Hd/2 form one rotating pair with frequency theta^(-2i/Hd); the two halves
    of each table are identical so they multiply a whole head vector at once. Computed on the CPU
    whatever the default device (a model built on the meta device gets real tables, and no meta
    decomposition, whose first use imports torch._dynamo, runs).
    """
    cpu = torch.device("cpu")
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float32, device=cpu) / head_dim)  # (Hd/2,)
    angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float32, device=cpu), inv_freq)  # (T, Hd/2)
    angles = torch.cat([angles, angles], dim=-1)  # (T, Hd)
    return angles.cos(), angles.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate x (B, heads, T, Hd) by the angles in cos/sin (T, Hd).

    Computed in float32 so low-precision activations do not lose the phase at long positions.
    """
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)  # each (B, heads, T, Hd/2)
    rotated = torch.cat([-x2, x1], dim=-1)  # "rotate half": (x1, x2) -> (-x2, x1)
    return (xf * cos.float() + rotated * sin.float()).to(x.dtype)


# ----------------------------------------------------------------------------- KV cache


@dataclass
class KVCache:
    """Decoding state: per-layer preallocated keys/values, each (B, K, max_seq_len, Hd).

    Only ``[:, :, :pos]`` holds entries; ``step`` writes the next T slots in place. Once a step has
    had a ``pad_mask``, ``pads`` (B, max_seq_len) marks the pad slots (never attended to) and
    ``lengths`` (B,) counts each row's real tokens, which are its next RoPE position; both stay
    None for unpadded decoding (then slot = position for every row).
    """

    k: list[Tensor]
    v: list[Tensor]
    pos: int = 0
    pads: Tensor | None = None
    lengths: Tensor | None = None


# ----------------------------------------------------------------------------- layers


class Attention(nn.Module):
    """Causal self-attention with RoPE and grouped-query key/value heads."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.n_kv_heads = cfg.n_kv_heads if cfg.n_kv_heads is not None else cfg.n_heads
        self.head_dim = cfg.dim // cfg.n_heads
        self.wq = nn.Linear(cfg.dim, self.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(cfg.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(cfg.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(self.n_heads * self.head_dim, cfg.dim, bias=False)

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        cache: tuple[Tensor, Tensor] | None = None,
        pos: int = 0,
        mask: Tensor | None = None,
    ) -> Tensor:
        """x (B, T, D), cos/sin (T, Hd) for positions pos..pos+T-1 -> (B, T, D).

        Without a cache this is plain causal attention over the T tokens. With a cache
        (k, v each (B, K, max_seq_len, Hd)) the new keys/values are written at pos..pos+T-1 and
        the queries attend to everything cached so far. Padded decoding passes per-row cos/sin
        (B, 1, T, Hd) and its own ``mask`` (B, 1, T, pos+T), True = may attend.
        """
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, Hd)
        k = self.wk(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, K, T, Hd)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, K, T, Hd)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        gqa = self.n_kv_heads != self.n_heads  # SDPA broadcasts each kv head over H/K query heads

        if cache is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        else:
            k_cache, v_cache = cache
            end = pos + T
            k_cache[:, :, pos:end] = k
            v_cache[:, :, pos:end] = v
            k, v = k_cache[:, :, :end].to(q.dtype), v_cache[:, :, :end].to(q.dtype)  # (B, K, S, Hd)
            # is_causal would align the mask top-left; with a prefix of length pos we need query i
            # (absolute position pos+i) to see keys 0..pos+i, i.e. a bottom-right aligned mask.
            if mask is None:
                q_pos = torch.arange(pos, end, device=x.device)[:, None]  # (T, 1)
                k_pos = torch.arange(end, device=x.device)[None, :]  # (1, S)
                mask = k_pos <= q_pos  # (T, S) True = may attend
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)

        out = out.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)  # (B, T, H*Hd)
        return self.wo(out)


class FeedForward(nn.Module):
    """SwiGLU MLP: w2(silu(w1 x) * w3 x), hidden size F."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        hidden = cfg.ffn_hidden_dim()
        self.w1 = nn.Linear(cfg.dim, hidden, bias=False)  # gate
        self.w3 = nn.Linear(cfg.dim, hidden, bias=False)  # value
        self.w2 = nn.Linear(hidden, cfg.dim, bias=False)  # back to the residual stream

    def forward(self, x: Tensor) -> Tensor:
        """(B, T, D) -> (B, T, D)."""
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    """One pre-norm transformer block; normalizing the branch inputs keeps the residual clean."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.attention_norm = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.attention = Attention(cfg)
        self.ffn_norm = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.feed_forward = FeedForward(cfg)

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        cache: tuple[Tensor, Tensor] | None = None,
        pos: int = 0,
        mask: Tensor | None = None,
    ) -> Tensor:
        """x (B, T, D) -> (B, T, D)."""
        x = x + self.attention(self.attention_norm(x), cos, sin, cache, pos, mask)
        return x + self.feed_forward(self.ffn_norm(x))


# ----------------------------------------------------------------------------- model


class Transformer(nn.Module):
    """Llama-style decoder: embedding -> L blocks -> RMSNorm -> output projection."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        _validate(cfg)
        self.config = cfg
        self.max_seq_len: int | None = cfg.max_seq_len
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.weight_tying:
            self.output.weight = self.tok_embeddings.weight  # one (V, D) Parameter, two uses

        # Non-persistent: derived from the config, so they stay out of checkpoints.
        cos, sin = rope_tables(cfg.dim // cfg.n_heads, cfg.max_seq_len, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)  # (max_seq_len, Hd)
        self.register_buffer("rope_sin", sin, persistent=False)  # (max_seq_len, Hd)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Normal(0, init_std) for linears/embeddings, residual outputs shrunk, norms at 1.

        ``wo`` and ``w2`` write into the residual stream 2L times in total; scaling them by
        1/sqrt(2L) keeps the residual's variance roughly independent of depth (GPT-2 style).
        """
        std = self.config.init_std
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            elif isinstance(module, nn.RMSNorm):
                nn.init.ones_(module.weight)
        residual_std = std / math.sqrt(2 * self.config.n_layers)
        for block in self.layers:
            nn.init.normal_(block.attention.wo.weight, mean=0.0, std=residual_std)
            nn.init.normal_(block.feed_forward.w2.weight, mean=0.0, std=residual_std)

    def _run(self, tokens: Tensor, caches: KVCache | None, pad_mask: Tensor | None = None) -> Tensor:
        """Shared body of forward/step: tokens (B, T) at positions pos.. -> logits (B, T, V)."""
        T = tokens.shape[1]
        pos = caches.pos if caches is not None else 0
        if pos + T > self.config.max_seq_len:
            raise ValueError(f"sequence end {pos + T} exceeds max_seq_len {self.config.max_seq_len}")
        if caches is not None and caches.k and pos + T > caches.k[0].shape[2]:
            raise ValueError(f"sequence end {pos + T} exceeds the cache's {caches.k[0].shape[2]} slots")
        mask = None
        if caches is not None and (pad_mask is not None or caches.pads is not None):
            cos, sin, mask = self._padded_positions(caches, tokens.shape[0], T, pad_mask)  # per row
        else:
            cos, sin = self.rope_cos[pos : pos + T], self.rope_sin[pos : pos + T]  # (T, Hd)
        x = self.tok_embeddings(tokens)  # (B, T, D)
        recompute = self.config.activation_checkpointing and self.training and caches is None
        for i, block in enumerate(self.layers):
            cache = (caches.k[i], caches.v[i]) if caches is not None else None
            if recompute:
                x = checkpoint(block, x, cos, sin, use_reentrant=False)
            else:
                x = block(x, cos, sin, cache, pos, mask)
        return self.output(self.norm(x))  # (B, T, V)

    def _padded_positions(self, cache: KVCache, B: int, T: int,
                          pad_mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """Record the T new slots' pads in ``cache``; their per-row RoPE tables (B, 1, T, Hd) and
        the attention mask (B, 1, T, pos+T): a real query sees the real slots up to its own, and
        every query sees its own slot (so a pad query's softmax is never empty: no NaN anywhere)."""
        pos, device = cache.pos, self.rope_cos.device
        if cache.pads is None:  # the first padded step: every earlier slot was a real token
            slots = cache.k[0].shape[2] if cache.k else self.config.max_seq_len
            cache.pads = torch.zeros(B, slots, dtype=torch.bool, device=device)
            cache.lengths = torch.full((B,), pos, dtype=torch.long, device=device)
        new = pad_mask.to(device=device, dtype=torch.bool) if pad_mask is not None else \
            torch.zeros(B, T, dtype=torch.bool, device=device)
        cache.pads[:, pos : pos + T] = new
        real = (~new).long()
        positions = cache.lengths[:, None] + real.cumsum(1) - real  # real tokens before each: (B, T)
        cache.lengths = cache.lengths + real.sum(1)
        slots = torch.arange(pos + T, device=device)
        own = torch.arange(pos, pos + T, device=device)[:, None]  # (T, 1)
        causal = slots[None, :] <= own  # (T, S)
        mask = (causal & ~cache.pads[:, None, : pos + T]) | (slots[None, :] == own)  # (B, T, S)
        return self.rope_cos[positions][:, None], self.rope_sin[positions][:, None], mask[:, None]

    def forward(self, tokens: Tensor) -> Tensor:
        """(B, T) int64 token ids -> (B, T, V) next-token logits."""
        return self._run(tokens, None)

    def init_state(self, batch_size: int, capacity: int | None = None) -> KVCache:
        """Empty KV cache: 2L zero tensors (B, K, S, Hd) on the parameters' device/dtype, S =
        ``capacity`` tokens (at most max_seq_len, the default): a caller that knows how long its
        sequences get (scoring) allocates, fans out and masks only that many slots."""
        attn = self.layers[0].attention if len(self.layers) else None
        n_kv = attn.n_kv_heads if attn is not None else 0
        head_dim = attn.head_dim if attn is not None else 0
        weight = self.tok_embeddings.weight
        slots = self.config.max_seq_len if capacity is None else min(capacity, self.config.max_seq_len)
        shape = (batch_size, n_kv, slots, head_dim)

        def zeros() -> Tensor:
            return torch.zeros(shape, device=weight.device, dtype=weight.dtype)

        return KVCache(k=[zeros() for _ in self.layers], v=[zeros() for _ in self.layers], pos=0)

    def step(self, tokens: Tensor, state: KVCache,
             pad_mask: Tensor | None = None) -> tuple[Tensor, KVCache]:
        """Consume tokens (B, T) at slots state.pos..state.pos+T-1 -> (logits (B, T, V), state).

        The cache tensors are updated in place; the returned state is the same object with
        ``pos`` advanced by T. ``pad_mask`` (B, T), True = a pad: pad slots are never attended to
        and take no RoPE position, so a left-padded row computes exactly what it would alone
        (its logits at pad slots are meaningless). Without any pad_mask nothing changes.
        """
        logits = self._run(tokens, state, pad_mask)
        state.pos += tokens.shape[1]
        return logits, state

    def select_state(self, state: KVCache, index: Tensor) -> KVCache:
        """A new cache whose row i is row ``index[i]`` of ``state`` (one prefix, several continuations)."""
        def pick(t: Tensor | None) -> Tensor | None:
            return t.index_select(0, index) if t is not None else None

        return KVCache(k=[pick(t) for t in state.k], v=[pick(t) for t in state.v], pos=state.pos,
                       pads=pick(state.pads), lengths=pick(state.lengths))

    def num_params(self) -> int:
        """Trainable parameters; ``parameters()`` yields a tied matrix only once."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def flops_per_token(self, seq_len: int) -> tuple[int, str]:
        """Training FLOPs per token: 6N for the matmuls plus 12*L*D*T for attention scores.

        The input embedding is a lookup, not a matmul, so it is excluded from N; when tied,
        the shared matrix still costs a matmul as the output projection, so it stays in N.
        """
        cfg = self.config
        n = self.num_params()
        if not cfg.weight_tying:
            n -= cfg.vocab_size * cfg.dim
        flops = 6 * n + 12 * cfg.n_layers * cfg.dim * seq_len
        return flops, "6N + 12*L*d*T (PaLM appendix B; N = params excluding the input embedding)"
