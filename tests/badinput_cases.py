"""The table of tests/integration/test_bad_inputs.py: each bad input's setup, the message it must
give and its exit code. tests/system/test_bad_inputs.py runs a few rows through the real command line."""
from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import torch

from badinput import Case, Ctx, bad_line_argv, train_argv, truncate, with_files, yaml_file

# --------------------------------------------------------------------------- the table
# Each row: id, setup(ctx) -> argv, expected substrings of the message ({run}, {data}, {tmp},
# {finished} are filled in), and the expected exit code.


def word_tokenizer_file(path: Path) -> None:
    path.write_text(json.dumps({"lmlab_tokenizer": "word", "words": [f"w{i}" for i in range(400)]}))


def setup_disk_full(ctx: Ctx) -> list[str]:
    """Resume the run; the step-6 checkpoint save hits ENOSPC after writing part of its weights."""
    from lmlab.training import checkpoint

    def full_disk(model, filename, *args, **kwargs):
        Path(filename).write_bytes(b"\0" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device", filename)

    ctx.monkeypatch.setattr(checkpoint, "save_model", full_disk)
    return ctx.train()


def setup_unwritable(ctx: Ctx) -> list[str]:
    # the tests run as root, which ignores permission bits; /sys refuses new files even to root
    probe = Path("/sys/lmlab-probe")
    try:
        probe.write_text("x")
    except OSError:
        return ctx.train(f"dump_dir={Path('/sys') / 'lmlab-run'}")
    probe.unlink()
    pytest.skip("no unwritable directory on this machine")


def setup_cuda(ctx: Ctx) -> list[str]:
    if torch.cuda.is_available():
        pytest.skip("a GPU is available")
    return ctx.train("device=cuda")


def setup_missing_eval_data(ctx: Ctx) -> Path:
    folder = ctx.tmp / "evaldata"
    (folder / "piqa").mkdir(parents=True)
    (folder / "piqa" / "valid.jsonl").write_text('{"goal": "g", "sol1": "a", "sol2": "b"}\n')
    return folder  # piqa/valid-labels.lst is missing


CASES = [
    # ---- config file and overrides
    Case("yaml_syntax_error",
         lambda c: ["train", str(yaml_file(c, "steps: 10\nmodel:\n  dim: [64\n  n_layers: 2\n")),
                    f"dump_dir={c.run}"],
         ("{tmp}/bad.yaml: YAML syntax error at line 4, column 11", "fix: fix the YAML at that position")),
    Case("unknown_key_in_yaml",
         lambda c: ["train", str(yaml_file(c, "steps: 5\nmodel:\n  dimm: 64\n")), f"dump_dir={c.run}"],
         ("model.dimm: unknown key. Did you mean 'dim'?", "fix: valid keys here:")),
    Case("unknown_key_override", lambda c: c.train("model.n_head=4"),
         ("model.n_head: unknown key. Did you mean 'n_heads'?", "fix: valid keys here:")),
    Case("wrong_type", lambda c: c.train("optim.lr=fast"),
         ("optim.lr: expected number, got string 'fast'", "fix: set optim.lr to a number")),
    Case("unknown_choice", lambda c: c.train("precision=fp61"),
         ("precision: 'fp61' is not one of", "Did you mean 'fp16'?", "fix: set precision to one of")),
    Case("bad_override_syntax", lambda c: c.train("data.seq_len:128"),
         ("data.seq_len:128: bad override syntax: expected KEY=VALUE",
          "fix: write overrides like optim.lr=1e-3")),
    Case("negative_steps", lambda c: c.train("steps=-5"),
         ("steps: must be > 0, got -5", "fix: set steps=1000")),
    Case("negative_batch_size", lambda c: c.train("data.batch_size=-4"),
         ("data.batch_size: must be > 0, got -4", "fix: set data.batch_size to a positive integer")),
    Case("negative_model_dim", lambda c: c.train("model.dim=-64"),
         ("model.dim: must be > 0, got -64", "fix: set model.dim to a positive integer")),
    Case("zero_checkpoint_every", lambda c: c.train("checkpoint.every=0", "data.seq_len=0"),
         ("checkpoint.every: must be > 0, got 0", "fix: set checkpoint.every=100",
          "data.seq_len: must be > 0, got 0", "fix: set data.seq_len to a positive integer")),
    # ---- data
    Case("missing_data_dir", lambda c: c.train(f"data.root_dir={c.tmp / 'nowhere'}"),
         ("data.root_dir: directory {tmp}/nowhere does not exist", "fix: set data.root_dir")),
    Case("empty_data_dir", lambda c: c.train(f"data.root_dir={c.new_data({})}"),
         ("data.sources.alpha: source directory {tmp}/newdata/alpha does not exist",
          "fix: create {tmp}/newdata/alpha with *.chunk.*.jsonl files")),
    Case("misnamed_data_files",
         lambda c: with_files(c, {"alpha/part0.jsonl": ["x"], "alpha/a.val.jsonl": ["v"],
                                  "beta/b.chunk.0.jsonl": ["y"], "beta/b.val.jsonl": ["v"]}),
         ("data.sources.alpha: {tmp}/newdata/alpha has no training files matching *.chunk.*.jsonl",
          "rename them to NAME.chunk.00.jsonl", "fix: add training files")),
    Case("empty_data_file",
         lambda c: with_files(c, {"alpha/a.chunk.00.jsonl": b"", "alpha/a.val.jsonl": ["v"],
                                  "beta/b.chunk.00.jsonl": ["y"], "beta/b.val.jsonl": ["v"]}),
         ("{tmp}/newdata/alpha/a.chunk.00.jsonl: data file is empty",
          "fix: remove it or fill it with one JSON object per line")),
    # bad records: skipped and counted up to data.max_bad_records (tests/integration/test_bad_inputs_data.py has
    # the budget's other rows); at 0 the first one stops the run, naming file:line and the fix
    Case("malformed_json_line", lambda c: bad_line_argv(c, b'{"text": "half a line', "data.max_bad_records=0"),
         ("{tmp}/newdata/s/s.chunk.00.jsonl:3: malformed JSON", "over the budget data.max_bad_records=0",
          "Fix: run `lmlab check CONFIG --data`")),
    Case("line_without_text_field",
         lambda c: bad_line_argv(c, b'{"txt": "a typo in the key"}', "data.max_bad_records=0"),
         ("{tmp}/newdata/s/s.chunk.00.jsonl:3: no 'text' field", "raise the budget")),
    Case("text_field_not_a_string", lambda c: bad_line_argv(c, b'{"text": 12345}', "data.max_bad_records=0"),
         ("{tmp}/newdata/s/s.chunk.00.jsonl:3: not a JSON object with a 'text' string",
          "Fix: run `lmlab check CONFIG --data`")),
    Case("non_utf8_bytes", lambda c: bad_line_argv(c, b'{"text": "caf\xe9 au lait"}', "data.max_bad_records=0"),
         ("{tmp}/newdata/s/s.chunk.00.jsonl:3: bytes that are not UTF-8", "Fix: run `lmlab check CONFIG "
          "--data`")),
    Case("skip_bad_lines_counts_them",
         lambda c: bad_line_argv(c, b'{"text": "half a line', "data.skip_bad_lines=true"),
         ("{tmp}/newdata/s/s.chunk.00.jsonl:3: malformed JSON", "no limit: data.skip_bad_lines=true",
          "skipped 1 bad data record in 1 file"), code=0),
    # ---- checkpoints and tokenizers of an existing run
    Case("checkpoint_of_another_shape", lambda c: c.train("model.dim=128"),
         ("{run}/checkpoints/0000000003/model.safetensors does not fit this model", "tensor '",
          "Fix: use the model config the checkpoint was trained with")),
    Case("truncated_checkpoint_weights",
         lambda c: truncate(c.run / "checkpoints/0000000003/model.safetensors") or c.train(),
         ("cannot read weights {run}/checkpoints/0000000003/model.safetensors",
          "Fix: delete {run}/checkpoints/0000000003")),
    Case("truncated_optimizer_state",
         lambda c: truncate(c.run / "checkpoints/0000000003/optimizer.pt") or c.train(),
         ("cannot load optimizer state {run}/checkpoints/0000000003/optimizer.pt",
          "Fix: delete {run}/checkpoints/0000000003")),
    Case("truncated_train_state",
         lambda c: truncate(c.run / "checkpoints/0000000003/train_state.json") or c.train(),
         ("checkpoint {run}/checkpoints/0000000003 has an unreadable train_state.json",
          "Fix: delete that checkpoint directory")),
    Case("other_data_sources_on_resume", lambda c: c.train("data.sources={alpha: 1.0}"),
         ("data.sources", "alpha", "beta", "Fix:")),
    Case("tokenizer_mismatch_on_resume",
         lambda c: c.train("data.tokenizer.name=word", "data.tokenizer.vocab_size=300"),
         ("data.tokenizer.name", "{run}/tokenizer.json", "bytes", "word",
          "Fix: set data.tokenizer.name=bytes")),
    Case("tokenizer_mismatch_on_eval",
         lambda c: word_tokenizer_file(c.finished / "tokenizer.json") or ["eval", str(c.finished)],
         ("{finished}/tokenizer.json", "word", "bytes", "Fix: restore the run's own tokenizer.json")),
    # ---- device and precision
    Case("cuda_without_gpu", setup_cuda,
         ("device: cuda requested but no CUDA GPU is available", "fix: set device=cpu")),
    Case("fp16_on_cpu", lambda c: c.train("device=cpu", "precision=fp16"),
         ("precision: fp16 needs CUDA", "fix: set precision=fp32")),
    # ---- evaluation settings
    Case("unknown_eval_task_in_train", lambda c: c.train("eval.tasks=[pica]"),
         ("eval.tasks: unknown task 'pica'. Did you mean 'piqa'?", "fix: use lmlab's offline")),
    Case("unknown_eval_task_in_eval", lambda c: ["eval", str(c.finished), "eval.tasks=[pica]"],
         ("eval.tasks: unknown task 'pica'. Did you mean 'piqa'?", "fix: use lmlab's offline")),
    Case("missing_eval_data_file_in_train",
         lambda c: c.train("eval.tasks=[piqa]", f"eval.data_dir={setup_missing_eval_data(c)}"),
         ("eval.data_dir: task piqa needs {tmp}/evaldata/piqa/valid-labels.lst, which is missing",
          "fix: put the upstream file at")),
    Case("missing_eval_data_file_in_eval",
         lambda c: ["eval", str(c.finished), "eval.tasks=[piqa]", "eval.validation.enabled=false",
                    f"eval.data_dir={setup_missing_eval_data(c)}"],
         ("eval.data_dir: task piqa needs {tmp}/evaldata/piqa/valid-labels.lst, which is missing",
          "fix: put the upstream file at")),
    # ---- output directory
    Case("unwritable_output_dir", setup_unwritable,
         ("dump_dir: /sys is not writable", "fix: set dump_dir to a writable location")),
    Case("output_dir_under_a_file",
         lambda c: (c.tmp / "plainfile").write_text("x") and
         c.train(f"dump_dir={c.tmp / 'plainfile' / 'run'}"),
         ("dump_dir: {tmp}/plainfile/run cannot be created: {tmp}/plainfile is not a directory",
          "fix: set dump_dir to a path inside a writable directory")),
    Case("disk_full_while_saving", setup_disk_full,
         ("cannot save checkpoint {run}/checkpoints/0000000006: the disk is full",
          "No space left on device", "latest: {run}/checkpoints/0000000003", "Fix: free disk space"),
         rewrites=("provenance.json",)),  # written by each invocation that gets to train
    # ---- a finished run: a clear message, no error, nothing trained or rewritten
    Case("resume_finished_run", lambda c: train_argv(c.data, c.finished),
         ("already finished at step 6/6; nothing to do", "Raise steps/epochs"), code=0),
]
