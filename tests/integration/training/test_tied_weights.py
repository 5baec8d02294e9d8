"""Tied runs (``model.weight_tying=true``) round-trip on every path: resume, eval, generate, export.

The tied matrix is stored once. One-process and DDP checkpoints used to store it under the name
safetensors' ``save_model`` picked (``output.weight``) while the loader expected the other
(``tok_embeddings.weight``), so no tied run could be resumed, evaluated, generated from or
exported. Now every path stores it under ``tok_embeddings.weight`` (as FSDP's gathered state does),
and a checkpoint holding either name loads.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers import RECIPES, untimed_metrics
from lmlab.cli import main
from lmlab.evaluation.generation import greedy_reference
from lmlab.models.transformer import Transformer, TransformerConfig
from lmlab.models.weights import load_model_weights
from lmlab.rundir import CHECKPOINTS_DIR, EVAL_RESULTS_FILE, METRICS_FILE, read_json, read_jsonl


@pytest.fixture(scope="module")
def tied_runs(trained_run, tiny_corpus, tmp_path_factory) -> tuple[Path, Path]:
    """The same tied run straight through (the session's), and stopped at step 3 then resumed."""
    resumed = tmp_path_factory.mktemp("tied") / "resumed"
    assert main(RECIPES["tied"].argv(resumed, tiny_corpus, "training.stop_at=3")) == 0
    assert main(RECIPES["tied"].argv(resumed, tiny_corpus)) == 0
    return trained_run("tied"), resumed


def test_a_tied_run_resumes_as_if_uninterrupted(tied_runs):
    straight, resumed = tied_runs
    metrics = [untimed_metrics(r) for r in (straight, resumed)]
    assert metrics[0] == metrics[1] and metrics[0][-1]["step"] == 6
    saved = load_file(str(resumed / CHECKPOINTS_DIR / "final" / "model.safetensors"))
    assert "tok_embeddings.weight" in saved and "output.weight" not in saved  # once, FSDP's name
    for name, tensor in load_file(str(straight / CHECKPOINTS_DIR / "final" / "model.safetensors")).items():
        torch.testing.assert_close(saved[name], tensor)


def test_a_tied_run_evaluates_and_generates(tied_runs, tmp_path, capsys, load):
    run, _ = tied_runs
    assert main(["eval", str(run), "--quiet", "--out", str(tmp_path)]) == 0
    rows = [r for r in read_json(tmp_path / EVAL_RESULTS_FILE)["results"] if r["task"] == "validation"]
    logged = [m for m in read_jsonl(run / METRICS_FILE) if "val/loss" in m][-1]
    assert {r["metric"]: r["value"] for r in rows}["loss"] == pytest.approx(logged["val/loss"], rel=1e-5)
    capsys.readouterr()
    model = load(run)
    prompt = "the cat"
    ids = greedy_reference(model.model, [model.tokenizer.bos_id, *model.tokenizer.encode(prompt)], 8)
    assert main(["generate", str(run), "--prompt", prompt, "--max-tokens", "8", "--temperature", "0"]) == 0
    eos = model.tokenizer.eos_id
    text = model.tokenizer.decode(ids[:ids.index(eos)] if eos in ids else ids)
    assert capsys.readouterr().out.rstrip("\n") == prompt + text


def test_a_tied_run_exports_a_tied_llama_with_the_same_logits(tied_runs, tmp_path, load):
    transformers = pytest.importorskip("transformers")
    run, out = tied_runs[0], tmp_path / "hf"
    assert main(["export", str(run), "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is True
    assert "lm_head.weight" not in load_file(str(out / "model.safetensors"))
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()
    tokens = torch.randint(0, 258, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (hf(tokens).logits - load(run).model(tokens)).abs().max().item() <= 1e-4


def tied_model(seed: int) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(TransformerConfig(vocab_size=258, dim=32, n_layers=1, n_heads=4, multiple_of=16,
                                         max_seq_len=16, weight_tying=True))


@pytest.mark.parametrize("stored", ["tok_embeddings.weight", "output.weight"])
def test_a_tied_checkpoint_loads_whichever_name_holds_the_matrix(tmp_path, stored):
    """``output.weight``: what one-process and DDP tied checkpoints held before the fix."""
    source, target = tied_model(0), tied_model(1)
    other = ({"tok_embeddings.weight", "output.weight"} - {stored}).pop()
    save_file({k: v for k, v in source.state_dict().items() if k != other}, str(tmp_path / "model.safetensors"))
    load_model_weights(target, tmp_path)
    assert target.output.weight is target.tok_embeddings.weight  # still tied
    torch.testing.assert_close(target.output.weight, source.tok_embeddings.weight)


def test_a_tied_checkpoint_without_the_matrix_is_refused(tmp_path):
    tied = ("tok_embeddings.weight", "output.weight")
    state = {k: v for k, v in tied_model(0).state_dict().items() if k not in tied}
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(Exception, match=r"lacks tensors \['tok_embeddings.weight'"):
        load_model_weights(tied_model(1), tmp_path)
