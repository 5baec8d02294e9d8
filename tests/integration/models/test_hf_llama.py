"""lmlab's transformer and Hugging Face's LlamaForCausalLM are the same model, both ways.

Export: token ids, logits (fp32, <= 1e-4) and greedy generation equal lmlab's, tied and untied,
with and without grouped-query attention; lm-eval's own ``hf`` model scores piqa exactly as
``lmlab eval`` does. Import: ``model.init_from=hf:DIR`` starts from the HF weights (equal logits),
trains on and resumes; a mismatched checkpoint is refused by preflight naming the tensor.
Nothing touches the network: models are made locally.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers import CONFIGS, SHARED_DATA, TINY_TRANSFORMER, data_overrides
from lmlab.cli import main
from lmlab.config import load_config
from lmlab.data.hf_tokenizer import save_pretrained
from lmlab.data.tokenizers import ByteTokenizer
from lmlab.evaluation.generation import greedy_reference
from lmlab.evaluation.loading import load_for_eval, saved_config_file
from lmlab.models import hf_llama
from lmlab.models.transformer import Transformer, TransformerConfig
from lmlab.rundir import CHECKPOINTS_DIR, read_jsonl, resolve_checkpoint

transformers = pytest.importorskip("transformers")

TEXTS = ["Hello, world!", "naïve café — 日本語 ✓ \U0001F600", "  spaces\tand\nlines  "]


def tiny(**over) -> TransformerConfig:
    return TransformerConfig(**{"vocab_size": 258, "dim": 64, "n_layers": 2, "n_heads": 4,
                                "multiple_of": 16, "max_seq_len": 64, **over})


def exported(tmp_path: Path, cfg: TransformerConfig) -> tuple[Transformer, Path]:
    torch.manual_seed(0)
    model = Transformer(cfg).eval()
    folder = tmp_path / "hf"
    folder.mkdir()
    hf_llama.write(model, folder, "fp32", ByteTokenizer.bos_id, ByteTokenizer.eos_id)
    save_pretrained(ByteTokenizer(), folder, cfg.max_seq_len)
    return model, folder


@pytest.mark.parametrize("over", [{}, {"n_kv_heads": 2}, {"weight_tying": True},
                                  {"n_kv_heads": 1, "weight_tying": True}],
                         ids=["mha", "gqa", "tied", "mqa-tied"])
def test_hf_llama_computes_what_lmlab_computes(tmp_path, over):
    model, folder = exported(tmp_path, tiny(**over))
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tokens = torch.randint(0, 258, (3, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (hf(tokens).logits - model(tokens)).abs().max().item()
    assert diff <= 1e-4, diff


def test_hf_tokenizer_gives_lmlab_ids(tmp_path):
    _, folder = exported(tmp_path, tiny())
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    lmlab = ByteTokenizer()
    for text in TEXTS:
        assert tok(text, add_special_tokens=False).input_ids == lmlab.encode(text)
        assert tok(text).input_ids == [lmlab.bos_id] + lmlab.encode(text)  # BOS first, as in training
        assert tok.decode(tok(text).input_ids, skip_special_tokens=True) == text
    assert (tok.bos_token_id, tok.eos_token_id) == (256, 257)
    files = {p.name for p in folder.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json", "special_tokens_map.json"} <= files


@pytest.fixture(scope="module")
def trained_export(trained_run, tmp_path_factory):
    """A few quickstart steps, exported with ``lmlab export``. Positions up to 1024, so that every
    piqa request fits one window (lm-eval's HFLM refuses a continuation longer than the context;
    lmlab's adapter would score it in windows, and the two would not be comparable)."""
    run, out = trained_run("quickstart_long_context"), tmp_path_factory.mktemp("export") / "hf"
    assert main(["export", str(run), "--format", "hf", "--out", str(out)]) == 0
    return run, out


def test_exported_run_generates_what_lmlab_generates(trained_export, capsys):
    run, out = trained_export
    checkpoint, run_dir = resolve_checkpoint(run)
    loaded = load_for_eval(checkpoint, run_dir, load_config(saved_config_file(checkpoint, run_dir)))
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tok = transformers.AutoTokenizer.from_pretrained(out)
    prompt = "ROMEO:"
    ids = tok(prompt, return_tensors="pt").input_ids
    generated = hf.generate(ids, max_new_tokens=32, do_sample=False, eos_token_id=None)[0, ids.shape[1]:]
    assert generated.tolist() == greedy_reference(loaded.model, ids[0].tolist(), 32)
    capsys.readouterr()
    assert main(["generate", str(run), "--prompt", prompt, "--max-tokens", "32", "--temperature", "0"]) == 0
    until_eos = generated.tolist()[:generated.tolist().index(257)] if 257 in generated else generated
    assert capsys.readouterr().out.rstrip("\n") == prompt + tok.decode(until_eos, skip_special_tokens=True)
    card = (out / "README.md").read_text()
    params = json.loads((run / "provenance.json").read_text())["model_size"]["params"]
    assert f"{params:,} parameters" in card and "from_pretrained" in card


@pytest.mark.skipif(not (SHARED_DATA / "piqa").is_dir(), reason="needs ../shared/data")
def test_lm_eval_hf_model_scores_piqa_as_lmlab_eval_does(trained_export):
    """lm-eval's own HFLM on the export vs lmlab's adapter on the checkpoint: the same requests,
    per-request loglikelihoods within 1e-4 (fp32; relative 1e-6 for sums over hundreds of bytes,
    where 1e-4 is below float32's resolution), the same accuracy on 200 items."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    from lmlab.evaluation.config import EvalConfig
    from lmlab.evaluation.harness import LmlabLM, task_specs

    run, out = trained_export
    checkpoint, run_dir = resolve_checkpoint(run)
    loaded = load_for_eval(checkpoint, run_dir, load_config(saved_config_file(checkpoint, run_dir)))
    cfg = EvalConfig(tasks=["piqa"], data_dir=str(SHARED_DATA), limit=200)
    results = {}
    for name, lm in (("lmlab", LmlabLM(loaded.model, loaded.tokenizer, batch_size=32)),
                     ("hf", HFLM(pretrained=str(out), add_bos_token=True, batch_size=32, device="cpu",
                                 dtype="float32"))):
        tasks, manager, _ = task_specs(cfg, ["piqa"])
        results[name] = lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=manager, limit=200,
                                                log_samples=True, bootstrap_iters=0)
    ours, theirs = results["lmlab"], results["hf"]
    assert ours["results"]["piqa"]["acc,none"] == theirs["results"]["piqa"]["acc,none"]
    pairs = [(a["resps"], b["resps"]) for a, b in zip(ours["samples"]["piqa"], theirs["samples"]["piqa"])]
    assert len(pairs) == 200
    worst = 0.0
    for a, b in pairs:
        for (ll_a, _), (ll_b, _) in zip((r[0] for r in a), (r[0] for r in b)):
            assert ll_b == pytest.approx(ll_a, rel=1e-6, abs=1e-4)
            worst = max(worst, abs(ll_a - ll_b))
    print(f"piqa limit 200: acc {ours['results']['piqa']['acc,none']:.4f} both; largest per-request "
          f"loglikelihood difference {worst:.2e}")


def save_hf_llama(folder: Path, **over) -> "transformers.PreTrainedModel":
    shape = {"vocab_size": 258, "hidden_size": 64, "intermediate_size": 176, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128,
             "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False,
             "bos_token_id": 256, "eos_token_id": 257}
    config = transformers.LlamaConfig(**{**shape, **over})
    torch.manual_seed(3)
    model = transformers.LlamaForCausalLM(config).eval()
    model.save_pretrained(folder)
    return model


IMPORTED = [*TINY_TRANSFORMER, "model.dim=64", "model.n_heads=4", "model.n_kv_heads=2",
            "model.multiple_of=16", "logging.every=2", "checkpoint.every=2", "steps=4"]


def test_init_from_hf_starts_from_its_weights_trains_and_resumes(tmp_path, jsonl_root):
    from lmlab.preflight import load_and_check
    from lmlab.runtime import resolve_runtime
    from lmlab.training.parts import build_parts
    from lmlab.training.distributed import SINGLE

    folder = tmp_path / "llama"
    hf = save_hf_llama(folder)
    args = [*IMPORTED, *data_overrides(jsonl_root), f"model.init_from=hf:{folder}"]
    cfg = load_and_check(CONFIGS / "debug.yaml", [*args, f"dump_dir={tmp_path / 'x'}"])
    parts = build_parts(cfg, 258, resolve_runtime("cpu", "fp32"), SINGLE, None)
    tokens = torch.randint(0, 258, (2, 30))
    with torch.no_grad():
        assert (parts.model.eval()(tokens) - hf(tokens).logits).abs().max().item() <= 1e-4
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(["train", str(CONFIGS / "debug.yaml"), *args, f"dump_dir={straight}"]) == 0
    assert main(["train", str(CONFIGS / "debug.yaml"), *args, f"dump_dir={resumed}", "training.stop_at=2"]) == 0
    assert main(["train", str(CONFIGS / "debug.yaml"), *args, f"dump_dir={resumed}"]) == 0
    timing = {"tokens_per_s", "flops_per_s", "mfu", "data_time_frac", "mem_peak_gib"}
    strip = [[{k: v for k, v in m.items() if k not in timing} for m in read_jsonl(r / "metrics.jsonl")]
             for r in (straight, resumed)]
    assert strip[0] == strip[1]
    assert (straight / CHECKPOINTS_DIR / "final").is_dir()


def test_init_from_a_checkpoint_of_another_shape_names_the_tensor(tmp_path, jsonl_root, capsys):
    folder = tmp_path / "llama"
    save_hf_llama(folder, intermediate_size=192)
    code = main(["check", str(CONFIGS / "debug.yaml"), *IMPORTED, *data_overrides(jsonl_root),
                 f"model.init_from=hf:{folder}", f"dump_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "model.layers.0.mlp.gate_proj.weight" in err and "(192, 64)" in err and "(176, 64)" in err


def test_export_refuses_what_it_cannot_do_and_writes_nothing_half(trained_export, tmp_path, capsys):
    run, _ = trained_export
    not_a_run = tmp_path / "empty"
    not_a_run.mkdir()
    assert main(["export", str(not_a_run), "--out", str(tmp_path / "a")]) == 2
    assert "is neither a run directory" in capsys.readouterr().err and not (tmp_path / "a").exists()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "mine.txt").write_text("keep me")
    for force in ([], ["--force"]):  # not an export: never replaced, and --force is not offered
        assert main(["export", str(run), "--out", str(busy), *force]) == 2
        err = capsys.readouterr().err
        assert "holds what no lmlab export wrote (mine.txt)" in err and "--force" not in err.split("Fix:")[1]
        assert (busy / "mine.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy", "empty"]  # no temporary left


def test_context_vector_export_says_no_transformers_class_loads_it(tmp_path, capsys, trained_run):
    assert main(["export", str(trained_run("context_vector_early_stop")), "--out", str(tmp_path / "out")]) == 0
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["lmlab_model"]["name"] == "context_vector" and "no transformers class" in config["note"]
    assert "No transformers class loads this family" in (tmp_path / "out" / "README.md").read_text()
