"""``lmlab export RUN_OR_CHECKPOINT --format hf --out DIR``: a run's model for the Hugging Face world.

The transformer family becomes a ``transformers`` ``LlamaForCausalLM`` folder (config.json,
generation_config.json, model.safetensors, the tokenizer as a ``PreTrainedTokenizerFast``, and a
README.md model card) that ``from_pretrained``, lm-eval's ``hf`` model and the Hub accept. The
context-vector family has no ``transformers`` class: it is exported as safetensors + config.json,
and the model card says so. Everything is written into a temporary folder first and renamed into
place, so DIR is never half-written; an existing non-empty DIR is replaced only with ``--force``.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shutil
from pathlib import Path

from safetensors.torch import save_model

from lmlab import rundir
from lmlab.config import load_config
from lmlab.data import hf_tokenizer
from lmlab.errors import LmlabError
from lmlab.evaluation.loading import LoadedRun, load_for_eval, saved_config_file
from lmlab.models import hf_llama
from lmlab.reports.model_card import model_card

LLAMA_LOADING = """from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("{out}")
tokenizer = AutoTokenizer.from_pretrained("{out}")
# tokenizer(text) starts with BOS, as lmlab's training documents did"""
PLAIN_LOADING = """# No transformers class loads this family ({family}): rebuild it with lmlab.
import json, safetensors.torch
from lmlab.models.registry import build_model, model_config_class
cfg = json.load(open("{out}/config.json"))["lmlab_model"]
model = build_model(model_config_class(cfg["name"])(**cfg))
safetensors.torch.load_model(model, "{out}/model.safetensors")"""


def run(args) -> int:
    checkpoint, run_dir = rundir.resolve_checkpoint(args.run)
    out = Path(args.out)
    _check_target(out, args.force)
    loaded = load_for_eval(checkpoint, run_dir, load_config(saved_config_file(checkpoint, run_dir)))
    family = loaded.config.model.name
    if family == "transformer" and importlib.util.find_spec("transformers") is None:
        raise LmlabError("exporting to the Hugging Face format needs transformers. Fix: "
                         "pip install -e '.[hf]' (or pip install transformers).")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        loading = _write_llama(loaded, tmp, args.dtype) if family == "transformer" else _write_plain(loaded, tmp)
        command = f"lmlab export {args.run} --format {args.format} --out {out} --dtype {args.dtype}"
        card = model_card(run_dir, checkpoint, loading.format(out=out, family=family), command)
        (tmp / "README.md").write_text(card, encoding="utf-8")
        _replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"exported {checkpoint} ({family}) to {out}")
    return 0


def _check_target(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise LmlabError(f"--out {out} is a file. Fix: pass a folder path.")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise LmlabError(f"--out {out} exists and is not empty. Fix: pass a new folder, or --force to "
                         "replace its contents.")


def _write_llama(loaded: LoadedRun, folder: Path, dtype: str) -> str:
    tokenizer = loaded.tokenizer
    hf_llama.write(loaded.model, folder, dtype, tokenizer.bos_id, tokenizer.eos_id)
    hf_tokenizer.save_pretrained(tokenizer, folder, loaded.model.config.max_seq_len)
    return LLAMA_LOADING


def _write_plain(loaded: LoadedRun, folder: Path) -> str:
    save_model(loaded.model, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = {"lmlab_model": dataclasses.asdict(loaded.model.config),
              "note": "no transformers class loads this model family; see README.md"}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return PLAIN_LOADING


def _replace(tmp: Path, out: Path) -> None:
    """``tmp`` becomes ``out``; an old ``out`` (``--force``) is moved aside first and removed last."""
    for item in tmp.iterdir():
        item.chmod(0o644)  # readable by whoever uploads or serves the folder
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
