"""The CPU side of the GPU speed work: a padded last batch trains exactly like the unpadded one (what
a CUDA-graphed step relies on), the graph is never used on CPU, and batches read ahead by the
prefetch thread are the loader's own, with checkpoint positions that resume exactly."""
from __future__ import annotations

import copy
import threading

import pytest
import torch

from helpers import CONFIGS, same_weights, tiny_args, untimed_metrics
from lmlab.cli import main
from lmlab.data.loader import Prefetcher, read_ahead
from lmlab.models.context_vector import ContextVectorConfig, ContextVectorLM
from lmlab.models.transformer import Transformer, TransformerConfig
from lmlab.training.graphs import use_cuda_graph
from lmlab.runtime import Runtime
from lmlab.training.parts import TrainingParts

CPU = Runtime(torch.device("cpu"), "fp32")


def _models():
    torch.manual_seed(0)
    yield ContextVectorLM(ContextVectorConfig(vocab_size=50, embed_dim=16, hidden_dim=32, n_layers=2,
                                              context_dim=16, dropout=0.0))
    yield Transformer(TransformerConfig(vocab_size=50, dim=32, n_layers=2, n_heads=4, multiple_of=16,
                                        max_seq_len=16))


@pytest.mark.parametrize("model", list(_models()), ids=["context_vector", "transformer"])
@pytest.mark.parametrize("pad_id", [None, 3])
def test_a_padded_last_batch_trains_exactly_like_the_unpadded_one(model, pad_id):
    batch = torch.randint(0, 50, (5, 13), generator=torch.Generator().manual_seed(1))
    batch[0, 9:] = 3  # with pad_id 3: a padded row, whose targets are ignored either way
    results, weights = [], []
    for static_rows in (None, 8):
        m = copy.deepcopy(model)
        opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
        results.append(TrainingParts(m, opt, CPU, clip=1.0, pad_id=pad_id, static_rows=static_rows).step(batch))
        weights.append(m.state_dict())
    torch.testing.assert_close(results[1].loss, results[0].loss)
    torch.testing.assert_close(results[1].grad_norm, results[0].grad_norm)
    for key in weights[0]:
        torch.testing.assert_close(weights[1][key], weights[0][key], msg=key)


def test_the_cuda_graph_is_never_used_on_cpu_and_refused_when_asked_for(tmp_path, capsys):
    cpu = torch.device("cpu")
    assert not use_cuda_graph(None, "context_vector", cpu, 1, 1)
    assert not use_cuda_graph(False, "context_vector", torch.device("cuda"), 1, 1)
    assert not use_cuda_graph(None, "transformer", torch.device("cuda"), 1, 1)  # compiled instead
    assert use_cuda_graph(None, "context_vector", torch.device("cuda"), 1, 1)
    assert not use_cuda_graph(None, "context_vector", torch.device("cuda"), 2, 1)
    code = main(["check", str(CONFIGS / "newllm_wikitext2.yaml"), "device=cpu", "training.cuda_graph=true",
                 "training.grad_accum=2"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("training.cuda_graph") >= 2 and "CUDA device" in err, err


class _Counter:
    """A stateful loader: batch k is filled with k; its state is the next k."""

    batch_size = 2

    def __init__(self, fail_at: int | None = None):
        self.k, self.fail_at = 0, fail_at

    def next_batch(self) -> torch.Tensor:
        if self.k == self.fail_at:
            raise ValueError(f"bad batch {self.k}")
        self.k += 1
        return torch.full((2, 3), self.k - 1)

    def state_dict(self) -> dict:
        return {"k": self.k}

    def load_state_dict(self, state: dict) -> None:
        self.k = state["k"]


def test_the_prefetcher_hands_out_the_loaders_batches_with_the_position_after_each():
    inner = _Counter()
    inner.load_state_dict({"k": 5})
    ahead = Prefetcher(inner, depth=3)
    assert ahead.state_dict() == {"k": 5}  # before the first batch: the loader's
    for k in range(5, 12):
        assert torch.equal(ahead.next_batch(), torch.full((2, 3), k))
        assert ahead.state_dict() == {"k": k + 1}  # not the read-ahead position
    assert inner.k > 12  # it did read ahead
    ahead.close()


def test_no_batch_is_read_past_the_limit_and_more_are_still_served():
    inner = _Counter()
    ahead = Prefetcher(inner, depth=4, limit=3)
    assert [int(ahead.next_batch()[0, 0]) for _ in range(3)] == [0, 1, 2]
    ahead._thread.join(timeout=5)
    assert inner.k == 3 and ahead.state_dict() == {"k": 3}  # nothing read ahead past the 3
    assert int(ahead.next_batch()[0, 0]) == 3 and ahead.state_dict() == {"k": 4}  # asked for more: read in turn


def test_a_loader_error_reaches_the_consumer_at_its_batch_and_the_thread_ends():
    ahead = Prefetcher(_Counter(fail_at=2), depth=4)
    ahead.next_batch(), ahead.next_batch()
    with pytest.raises(ValueError, match="bad batch 2"):
        ahead.next_batch()
    ahead._thread.join(timeout=5)
    assert not ahead._thread.is_alive()
    assert [t for t in threading.enumerate() if t.name == "lmlab-prefetch" and t.is_alive()] == []


def test_read_ahead_is_off_on_cpu_by_default():
    loader = _Counter()
    assert read_ahead(loader, None, torch.device("cpu")) is loader
    assert isinstance(read_ahead(loader, 2, torch.device("cpu")), Prefetcher)


def test_prefetched_training_resumes_exactly_and_equals_the_plain_run(tmp_path, jsonl_root):
    common = ["steps=16", "logging.every=4", "checkpoint.every=8", "eval.validation.enabled=false"]
    plain, ahead = tmp_path / "plain", tmp_path / "ahead"
    assert main(tiny_args(jsonl_root, plain, *common, "data.prefetch=0")) == 0
    assert main(tiny_args(jsonl_root, ahead, *common, "data.prefetch=3", "training.stop_at=6")) == 0
    assert main(tiny_args(jsonl_root, ahead, *common, "data.prefetch=3")) == 0
    assert untimed_metrics(ahead) == untimed_metrics(plain)
    assert same_weights(plain, ahead)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_cuda_graphed_step_trains_like_the_plain_step(precision):
    """Five steps (the last batch smaller, padded) of the graphed model against the plain one."""
    from lmlab.training.graphs import graph_model

    cuda = Runtime(torch.device("cuda"), precision)
    model = next(_models()).cuda()
    graphed = copy.deepcopy(model)
    forward = graph_model(graphed, rows=8, seq_len=12, dtype=cuda.autocast_dtype)
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-2, fused=True) for m in (model, graphed)]
    gen = torch.Generator().manual_seed(2)
    for rows in (8, 8, 8, 8, 5):
        batch = torch.randint(0, 50, (rows, 13), generator=gen)
        plain = TrainingParts(model, opts[0], cuda, clip=1.0, static_rows=8).step(batch)
        fast = TrainingParts(forward, opts[1], cuda, clip=1.0, static_rows=8).step(batch)
        tol = {} if precision == "fp32" else {"rtol": 2e-2, "atol": 2e-2}
        torch.testing.assert_close(fast.loss, plain.loss, **tol)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(graphed.state_dict()[key], value, rtol=1e-3, atol=1e-3, msg=key)
