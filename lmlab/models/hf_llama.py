"""lmlab's transformer as a Hugging Face ``LlamaForCausalLM``, and back: tensor names, config.json.

The two are the same network: pre-norm RMSNorm blocks, SwiGLU, bias-free linears, GQA, and RoPE
in the rotate-half form (channel i pairs with i + Hd/2). lmlab's q/k projections are laid out
the way HF's rotate_half expects, so, unlike Meta's original (interleaved) checkpoints, no q/k
permutation is needed: a tensor moves under its new name unchanged.

Nothing here imports ``transformers``: the mapping and config.json are plain data, so importing a
checkpoint (``model.init_from: hf:DIR``) and checking it in preflight need only safetensors.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from lmlab.errors import Problem
from lmlab.models.transformer import TransformerConfig

ARCHITECTURE = "LlamaForCausalLM"
INIT_PREFIX = "hf:"
_LAYER = {  # lmlab name inside layers.{i}. -> HF name inside model.layers.{i}.
    "attention.wq.weight": "self_attn.q_proj.weight", "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight", "attention.wo.weight": "self_attn.o_proj.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight", "feed_forward.w3.weight": "mlp.up_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight", "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}
_TOP = {"tok_embeddings.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
        "output.weight": "lm_head.weight"}
_LAYER_BACK, _TOP_BACK = {v: k for k, v in _LAYER.items()}, {v: k for k, v in _TOP.items()}


def hf_name(name: str) -> str:
    """lmlab tensor name -> HF Llama tensor name."""
    if name in _TOP:
        return _TOP[name]
    _, index, rest = name.split(".", 2)  # layers.{i}.{rest}
    return f"model.layers.{index}.{_LAYER[rest]}"


def lmlab_name(name: str) -> str:
    """HF Llama tensor name -> lmlab tensor name (KeyError for a tensor lmlab has no place for)."""
    if name in _TOP_BACK:
        return _TOP_BACK[name]
    _, _, index, rest = name.split(".", 3)  # model.layers.{i}.{rest}
    return f"layers.{index}.{_LAYER_BACK[rest]}"


def to_hf(state: dict[str, torch.Tensor], cfg: TransformerConfig) -> dict[str, torch.Tensor]:
    """lmlab state dict -> HF names; a tied output matrix is stored once, as HF does."""
    out = {hf_name(k): v for k, v in state.items()}
    if cfg.weight_tying:
        out.pop("lm_head.weight", None)
    return out


def config_json(cfg: TransformerConfig, bos_id: int, eos_id: int, dtype: str) -> dict:
    """The ``LlamaConfig`` fields of ``cfg`` (what ``config.json`` holds)."""
    return {"architectures": [ARCHITECTURE], "model_type": "llama", "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.dim, "intermediate_size": cfg.ffn_hidden_dim(),
            "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
            "num_key_value_heads": cfg.n_kv_heads or cfg.n_heads, "head_dim": cfg.dim // cfg.n_heads,
            "hidden_act": "silu", "max_position_embeddings": cfg.max_seq_len,
            "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_theta, "attention_bias": False,
            "mlp_bias": False, "tie_word_embeddings": cfg.weight_tying, "bos_token_id": bos_id,
            "eos_token_id": eos_id, "initializer_range": cfg.init_std, "torch_dtype": dtype}


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def write(model: torch.nn.Module, folder: Path, dtype: str, bos_id: int, eos_id: int) -> None:
    """``config.json``, ``generation_config.json`` and ``model.safetensors`` of ``model`` as an HF
    Llama, in ``dtype`` (``fp32`` | ``bf16``)."""
    cfg = model.config
    state = {k: v.detach().to(DTYPES[dtype]).contiguous() for k, v in to_hf(model.state_dict(), cfg).items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    torch_dtype = {"fp32": "float32", "bf16": "bfloat16"}[dtype]
    (folder / "config.json").write_text(json.dumps(config_json(cfg, bos_id, eos_id, torch_dtype), indent=2))
    generation = {"bos_token_id": bos_id, "eos_token_id": eos_id, "max_length": cfg.max_seq_len}
    (folder / "generation_config.json").write_text(json.dumps(generation, indent=2))


# --------------------------------------------------------------------------- importing


def init_dir(cfg) -> Path | None:
    """The folder of ``model.init_from: hf:DIR`` (None when not set)."""
    spec = getattr(cfg, "init_from", "") or ""
    return Path(spec[len(INIT_PREFIX):]) if spec.startswith(INIT_PREFIX) else None


def _weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        return [folder / n for n in names]
    return [folder / "model.safetensors"]


def saved_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of an HF checkpoint, read from the safetensors headers only."""
    shapes = {}
    for file in _weight_files(folder):
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                shapes[key] = tuple(handle.get_slice(key).get_shape())
    return shapes


def load_state(folder: Path, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """An HF Llama checkpoint as an lmlab state dict for ``model`` (tied output filled in)."""
    state = {}
    for file in _weight_files(folder):
        state.update({lmlab_name(k): v for k, v in load_file(str(file)).items()
                      if not k.endswith("rotary_emb.inv_freq")})
    if "output.weight" not in state and model.config.weight_tying:
        state["output.weight"] = state["tok_embeddings.weight"]
    return state


def check(cfg: TransformerConfig, expected: dict[str, tuple[int, ...]], vocab_size: int) -> list[Problem]:
    """``model.init_from``: the folder holds an HF Llama of exactly this shape (``expected``: lmlab
    tensor name -> shape, from the model built on the meta device) and this vocabulary."""
    folder, key = init_dir(cfg), "model.init_from"
    if folder is None:
        return [Problem(key, f"{cfg.init_from!r} is not a supported source.",
                        "write model.init_from=hf:DIR (a local Hugging Face Llama folder)")]
    config_file = folder / "config.json"
    again = ("export it again (`lmlab export RUN --format hf --out DIR`, or save_pretrained), or point "
             "model.init_from at an intact Llama folder")
    try:
        weights = _weight_files(folder) if folder.is_dir() else []
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        return [Problem(key, f"{folder / 'model.safetensors.index.json'} is not a safetensors index "
                        f"({type(err).__name__}: {err}).", again)]
    if not config_file.is_file() or not weights or not all(f.is_file() for f in weights):
        return [Problem(key, f"{folder} is not a Hugging Face checkpoint folder (needs config.json and "
                        "model.safetensors or an index).", "point it at a save_pretrained folder")]
    try:
        hf = json.loads(config_file.read_text(encoding="utf-8"))
        if not isinstance(hf, dict):
            raise ValueError("not a JSON object")
        problems = _config_problems(hf, cfg, vocab_size, folder)
    except (OSError, ValueError, TypeError) as err:
        return [Problem(key, f"{config_file} is not a transformers config.json ({err}).", again)]
    try:
        shapes = {lmlab_name(k): v for k, v in saved_shapes(folder).items() if not k.endswith("inv_freq")}
    except KeyError as err:
        return problems + [Problem(key, f"{folder} has tensor {err.args[0]!r}, which a Llama in lmlab "
                                   "does not have.", "use a plain LlamaForCausalLM checkpoint")]
    except (SafetensorError, OSError) as err:
        return problems + [Problem(key, f"the weights in {folder} cannot be read (truncated or not "
                                   f"safetensors: {err}).", again)]
    for name, shape in expected.items():
        saved = shapes.get(name, expected["tok_embeddings.weight"] if name == "output.weight" and
                           cfg.weight_tying else None)
        if saved != shape:
            problems.append(Problem(key, f"tensor {hf_name(name)} has shape {saved} in {folder} but "
                                    f"{shape} in this model.", "set model.* to the checkpoint's shape "
                                    f"(see {config_file})"))
    return problems


def _config_problems(hf: dict, cfg: TransformerConfig, vocab_size: int, folder: Path) -> list[Problem]:
    problems, key = [], "model.init_from"
    if hf.get("model_type") != "llama":
        problems.append(Problem(key, f"{folder} holds a {hf.get('model_type')!r} model, not llama.",
                                "use a LlamaForCausalLM checkpoint"))
    if hf.get("rope_scaling") or hf.get("attention_bias") or hf.get("mlp_bias"):
        problems.append(Problem(key, f"{folder} uses rope_scaling / biases, which lmlab's transformer "
                                "does not have.", "use a plain Llama checkpoint"))
    if hf.get("vocab_size") != vocab_size:
        problems.append(Problem("data.tokenizer", f"the checkpoint's vocabulary has {hf.get('vocab_size')} "
                                f"ids but this run's tokenizer has {vocab_size}.", "train with the "
                                "tokenizer the checkpoint was trained with (data.tokenizer.*)"))
    for ours, theirs in (("norm_eps", "rms_norm_eps"), ("rope_theta", "rope_theta")):
        if theirs in hf and float(hf[theirs]) != float(getattr(cfg, ours)):
            problems.append(Problem(f"model.{ours}", f"{getattr(cfg, ours)} here but {hf[theirs]} in the "
                                    "checkpoint.", f"set model.{ours}={hf[theirs]}"))
    if bool(hf.get("tie_word_embeddings", False)) != cfg.weight_tying:
        problems.append(Problem("model.weight_tying", f"the checkpoint has tie_word_embeddings="
                                f"{hf.get('tie_word_embeddings')}.", f"set model.weight_tying="
                                f"{str(bool(hf.get('tie_word_embeddings'))).lower()}"))
    return problems
