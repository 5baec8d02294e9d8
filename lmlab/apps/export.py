"""``lmlab export RUN_OR_CHECKPOINT --format hf --out DIR``: a run's model for the Hugging Face world.

The transformer family becomes a ``transformers`` ``LlamaForCausalLM`` folder (config.json,
generation_config.json, model.safetensors, the tokenizer as a ``PreTrainedTokenizerFast``, and a
README.md model card) that ``from_pretrained``, lm-eval's ``hf`` model and the Hub accept. The
context-vector family has no ``transformers`` class: it is exported as safetensors + config.json,
and the model card says so. Everything is written into a temporary folder first and renamed into
place, so DIR is never half-written. Export never writes into, over or around a run, and
``--force`` replaces only a previous export: a folder holding its marker (``EXPORT_MARKER``) and
nothing but the files that export wrote.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shutil
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import save_model

from lmlab import rundir
from lmlab.config import load_config
from lmlab.data import hf_tokenizer
from lmlab.errors import LmlabError
from lmlab.evaluation.loading import LoadedRun, load_for_eval, saved_config_file
from lmlab.models import hf_llama
from lmlab.reports.model_card import model_card

EXPORT_MARKER = ".lmlab-export"  # written last into every export: the one kind of folder --force replaces

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
    target = _check_target(out, args.force, checkpoint, run_dir)
    loaded = load_for_eval(checkpoint, run_dir, load_config(saved_config_file(checkpoint, run_dir)))
    family = loaded.config.model.name
    if family == "transformer" and importlib.util.find_spec("transformers") is None:
        raise LmlabError("exporting to the Hugging Face format needs transformers. Fix: "
                         "pip install -e '.[hf]' (or pip install transformers).")
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        loading = _write_llama(loaded, tmp, args.dtype) if family == "transformer" else _write_plain(loaded, tmp)
        command = f"lmlab export {args.run} --format {args.format} --out {out} --dtype {args.dtype}"
        card = model_card(run_dir, checkpoint, loading.format(out=out, family=family), command)
        (tmp / "README.md").write_text(card, encoding="utf-8")
        _mark(tmp, checkpoint)
        _replace(tmp, target)
    except (OSError, SafetensorError) as err:
        reason = getattr(err, "strerror", None) or str(err).split(": ")[-1]
        raise LmlabError(f"cannot write the export to --out {out}: {reason}. Nothing was written "
                         "there. Fix: pick an --out on a writable disk with free space.") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"exported {checkpoint} ({family}) to {out}")
    return 0


def _check_target(out: Path, force: bool, checkpoint: Path, run_dir: Path) -> Path:
    """``out`` resolved, once it is known that writing there loses nothing: a new or empty folder
    outside every run, or (with ``--force``) a previous export. ``--force`` once replaced whatever
    was there: a run, a folder of runs, a run's checkpoints."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise LmlabError(f"--out {out} is a {'link' if out.is_symlink() else 'file'}, not a folder. "
                         "Fix: pass the path of a new folder.")
    target = out.resolve()
    _refuse_run_paths(out, target, checkpoint.resolve(), run_dir.resolve())
    if not target.is_dir() or not any(target.iterdir()):
        return target
    foreign = _not_exported(target)
    if foreign:
        raise LmlabError(f"--out {out} holds what no lmlab export wrote ({', '.join(foreign[:5])}"
                         f"{', ...' if len(foreign) > 5 else ''}); export never replaces such a "
                         "folder, not even with --force. Fix: pick another "
                         f"--out (a new or empty folder), or delete {out} yourself if nothing in it "
                         "is needed.")
    if not force:
        raise LmlabError(f"--out {out} holds a previous lmlab export. Fix: pass --force to replace "
                         "it, or pick another --out.")
    return target


def _refuse_run_paths(out: Path, target: Path, checkpoint: Path, run_dir: Path) -> None:
    """Never the exported checkpoint or run, a folder holding them, or a folder inside any run
    (whatever is written there, a later ``--force`` would replace part of a run)."""
    other = run_dir.parent / f"{run_dir.name}-hf"
    for source, what in ((checkpoint, "checkpoint"), (run_dir, "run")):
        if target == source or target in source.parents:
            raise LmlabError(f"--out {out} is {'' if target == source else 'a folder holding '}"
                             f"{source}, the {what} being exported. Fix: pick another --out outside "
                             f"the run, e.g. {other}.")
    run = rundir.enclosing_run(target)
    if run is not None:
        raise LmlabError(f"--out {out} is {'the run' if run == target else 'inside the run'} {run}; "
                         "export never writes into a run. Fix: pick another --out outside every "
                         f"run, e.g. {other}.")


def _not_exported(folder: Path) -> list[str]:
    """What in ``folder`` a previous export did not write (all of it, without the export's marker):
    any folder (a run, say), any link, any file a user added since."""
    try:
        files = json.loads((folder / EXPORT_MARKER).read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        files = None
    known = {*files, EXPORT_MARKER} if isinstance(files, list) else set()
    return sorted(p.name for p in folder.iterdir() if p.name not in known or p.is_symlink() or not p.is_file())


def _mark(folder: Path, checkpoint: Path) -> None:
    """The marker a later ``--force`` recognises an export by: the files written and their source."""
    files = sorted(p.name for p in folder.iterdir())
    marker = {"lmlab_export": 1, "checkpoint": str(checkpoint.resolve()), "files": files}
    (folder / EXPORT_MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")


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
    """``tmp`` becomes ``out``; a previous export (``--force``) is moved aside first and removed last."""
    for item in tmp.iterdir():
        item.chmod(0o644)  # readable by whoever uploads or serves the folder
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
