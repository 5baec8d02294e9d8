"""The one interface every model family implements.

Training, validation, the lm-eval adapter and the generator read models only through this
protocol, so a new family is one new file in ``models/`` plus one line in ``registry.py``.
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from torch import Tensor


@runtime_checkable
class LanguageModel(Protocol):
    """A causal language model over token ids.

    ``State`` is family specific (a KV cache for the transformer, the context vector for the
    recurrent model); callers treat it as opaque and only pass it back to ``step``.
    """

    #: longest sequence ``forward``/``step`` accept, or ``None`` when unbounded (recurrent models)
    max_seq_len: int | None
    #: the family's config dataclass the model was built from (``name`` says which family)
    config: Any

    def forward(self, tokens: Tensor) -> Tensor:
        """(B, T) int64 token ids -> (B, T, V) logits for the next token at every position."""
        ...

    def init_state(self, batch_size: int, capacity: int | None = None) -> Any:
        """Empty decoding state for ``batch_size`` sequences, on the model's device, for at most
        ``capacity`` tokens in all (None: as many as the model takes; a recurrent state ignores it)."""
        ...

    def step(self, tokens: Tensor, state: Any, pad_mask: Tensor | None = None) -> tuple[Tensor, Any]:
        """Consume (B, T) new tokens after ``state``; return their (B, T, V) logits and the new state.

        Feeding a sequence in pieces through ``step`` gives the same logits as one ``forward``.
        ``pad_mask`` (B, T) bool, True = a pad token: pads are invisible to every later token of
        their row (no attention to them, no position taken, the recurrent context passes through
        unchanged), so rows of different lengths share one batch, left-padded, each computing what
        it would alone; the logits at pad positions are meaningless. The state remembers the pads
        for later steps. ``None``: no pads, and exactly the unpadded computation.
        """
        ...

    def select_state(self, state: Any, index: Tensor) -> Any:
        """A new state whose row i is row ``index[i]`` (int64, on the model's device) of ``state``:
        one prefix fanned out to several continuations (multiple-choice scoring)."""
        ...

    def num_params(self) -> int:
        """Number of trainable parameters."""
        ...

    def flops_per_token(self, seq_len: int) -> tuple[int, str]:
        """Training FLOPs (forward + backward) per token at ``seq_len``, and the formula's name."""
        ...
