"""The field's tokenizer files (data.tokenizer.name=hf / sentencepiece / tiktoken): ids, BOS / EOS,
vocabulary, bytes per token, the run directory's self-contained copy, the Hugging Face export, and
every bad file refused naming the file and the fix. The tokenizer files are made here, tiny and
offline: a byte-level BPE tokenizer.json with <s> </s> <pad>, SentencePiece models (BPE and unigram,
byte fallback, Llama 2's settings; one with NFKC and whitespace removal) and a tiktoken ranks file
(256 single bytes + merges learned on the same text).
"""
from __future__ import annotations

import base64
import io
import json
import sys
import pickle
from collections import Counter
from pathlib import Path

import pytest
import tokenizers as hf

from helpers import CONFIGS, TINY_TRANSFORMER, data_overrides, run_main
from lmlab.cli import main
from lmlab.data import field_tokenizers
from lmlab.data.field_tokenizers import (LLAMA3_PATTERN, MAX_ENCODE_CHARS, MAX_RUN_CHARS, HFTokenizer,
                                         SentencePieceTokenizer, TiktokenTokenizer)
from lmlab.data.hf_tokenizer import save_pretrained, tokenizer_object
from lmlab.data.tokenizer_files import TokenizerFileError
from lmlab.data.tokenizers import (BPETokenizer, TokenizerConfig, check, check_model_vocab,
                                   configured_vocab_size, load_tokenizer, save_tokenizer, train_tokenizer)
from lmlab.errors import LmlabError

spm = pytest.importorskip("sentencepiece")
tiktoken = pytest.importorskip("tiktoken")
regex = pytest.importorskip("regex")  # tiktoken's own dependency: Llama 3's pattern for the toy merges

CORPUS = [f"The quick brown fox {i} jumps over the lazy dog; naïve café — 日本語 ✓ {i * 7}.\n  spaced\tout  "
          for i in range(200)] + ["the cat sat on a mat and the dog ran far " * 3] * 50
SAMPLES = ["Hello, world!", "naïve café — 日本語 ✓ \U0001F600 Zürich", "  spaces\tand\nlines  \n\n", "",
           " leading space", "The quick brown fox 12345 jumps\n\n\nover\r\nit", "x" * 40, "\t\n",
           "don't stop: it's 3.14159!"]
KINDS = ("hf", "sentencepiece", "tiktoken")
CLASSES = {"hf": HFTokenizer, "sentencepiece": SentencePieceTokenizer, "tiktoken": TiktokenTokenizer}


def hf_file(path: Path, specials=("<s>", "</s>", "<pad>"), vocab_size: int = 400) -> Path:
    tok = hf.Tokenizer(hf.models.BPE())
    tok.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = hf.decoders.ByteLevel()
    trainer = hf.trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(specials), show_progress=False,
                                     initial_alphabet=hf.pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer=trainer)
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return path


def spm_file(path: Path, **options) -> Path:
    """Llama 2's settings by default: BPE, byte fallback, no normalization, dummy prefix."""
    model = io.BytesIO()
    settings = dict(vocab_size=360, byte_fallback=True, model_type="bpe", normalization_rule_name="identity",
                    remove_extra_whitespaces=False, minloglevel=2, hard_vocab_limit=False)
    spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS), model_writer=model, **{**settings, **options})
    path.write_bytes(model.getvalue())
    return path


def tiktoken_file(path: Path, merges: int = 120) -> Path:
    """A tiktoken BPE ranks file: the 256 bytes, then merges learned on CORPUS split by Llama 3's pattern."""
    words = Counter(tuple(bytes([b]) for b in w.encode()) for t in CORPUS for w in regex.findall(LLAMA3_PATTERN, t))
    ranks = {bytes([b]): b for b in range(256)}
    for _ in range(merges):
        pairs = Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += count
        (a, b), _ = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
        ranks[a + b] = len(ranks)
        merged = Counter()
        for word, count in words.items():
            out, i = [], 0
            while i < len(word):
                if word[i:i + 2] == (a, b):
                    out.append(a + b)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += count
        words = merged
    path.write_text("".join(f"{base64.b64encode(t).decode()} {r}\n" for t, r in ranks.items()))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """The three kinds, two more SentencePiece models, and the SentencePiece and tiktoken ones
    converted to tokenizer.json files (as the Hub's Llama 2 and Llama 3 folders hold)."""
    d = tmp_path_factory.mktemp("tokenizer_files")
    made = {"hf": hf_file(d / "tokenizer.json"), "sentencepiece": spm_file(d / "llama2.model"),
            "tiktoken": tiktoken_file(d / "llama3.tiktoken"),
            "spm_unigram": spm_file(d / "unigram.model", model_type="unigram"),
            "spm_nfkc": spm_file(d / "nfkc.model", model_type="unigram", normalization_rule_name="nmt_nfkc",
                                 remove_extra_whitespaces=True, byte_fallback=False, vocab_size=150)}
    for kind in ("sentencepiece", "tiktoken"):
        tok = load_tokenizer(made[kind], TokenizerConfig(name=kind, path=str(made[kind])))
        (d / f"hf_{kind}").mkdir()
        tokenizer_object(tok)[0].save(str(d / f"hf_{kind}" / "tokenizer.json"))
        made[f"hf_{kind}"] = d / f"hf_{kind}" / "tokenizer.json"
    return made


def opened(files, kind: str, **cfg):
    name = "hf" if kind.startswith("hf") else kind
    return load_tokenizer(files[kind], TokenizerConfig(name=name, path=str(files[kind]), **cfg))


EXPECTED = {"hf": ("<s>", "</s>", 400), "sentencepiece": ("<s>", "</s>", 360),
            "tiktoken": ("<|begin_of_text|>", "<|end_of_text|>", 256 + 120 + 256)}
EXPECTED |= {"hf_sentencepiece": EXPECTED["sentencepiece"], "hf_tiktoken": EXPECTED["tiktoken"]}
CONVERTED = ("hf_sentencepiece", "hf_tiktoken")  # read as hf: a Metaspace / byte-fallback and a byte-level one


@pytest.mark.parametrize("kind", [*KINDS, *CONVERTED])
def test_ids_round_trip_bos_eos_and_vocab_from_the_file(files, kind):
    tok = opened(files, kind)
    bos, eos, vocab = EXPECTED[kind]
    name = "hf" if kind.startswith("hf") else kind
    assert isinstance(tok, CLASSES[name]) and tok.name == name
    assert (tok.bos_token, tok.eos_token, tok.vocab_size) == (bos, eos, vocab)
    assert configured_vocab_size(TokenizerConfig(name=name, path=str(files[kind]))) == vocab
    assert check(TokenizerConfig(name=name, path=str(files[kind]))) == []
    if kind in CONVERTED:  # the same ids as the original
        original = opened(files, kind[3:])
        assert [tok.encode(t) for t in SAMPLES] == [original.encode(t) for t in SAMPLES]
        assert (tok.bos_id, tok.eos_id) == (original.bos_id, original.eos_id)
    if kind == "tiktoken":  # Llama 3's convention: the 256 specials right after the ranks
        assert (tok.bos_id, tok.eos_id, tok.specials["<|eot_id|>"]) == (376, 377, 385)
    for text in SAMPLES:
        ids = tok.encode(text)
        assert all(0 <= i < tok.vocab_size for i in ids) and tok.bos_id not in ids and tok.eos_id not in ids
        assert tok.decode(ids) == text
        assert tok.decode([tok.bos_id, *ids, tok.eos_id]) == text  # specials are not text
    assert tok.encode_batch(SAMPLES) == [tok.encode(t) for t in SAMPLES]
    assert len(tok.encode("the quick brown fox jumps over the lazy dog")) < 30  # merges are used


@pytest.mark.parametrize("kind", [*KINDS, *CONVERTED])
def test_token_byte_lengths_count_the_utf8_bytes(files, kind):
    tok = opened(files, kind)
    lengths = tok.token_byte_lengths()
    assert len(lengths) == tok.vocab_size and lengths[tok.bos_id] == lengths[tok.eos_id] == 0
    dummy_prefix = 1 if kind.endswith("sentencepiece") else 0  # the space SentencePiece puts before the text
    for text in SAMPLES:
        expected = len(text.encode("utf-8")) + (dummy_prefix if text else 0)
        assert sum(lengths[i] for i in tok.encode(text)) == expected, text
    if kind == "sentencepiece":
        sp = spm.SentencePieceProcessor(model_file=str(files[kind]))
        assert lengths[sp.piece_to_id("<0xF0>")] == 1 and lengths[sp.piece_to_id("▁")] == 1
        assert lengths[sp.unk_id()] == 0


@pytest.mark.parametrize("kind", KINDS)
def test_the_run_directory_copy_reloads_without_the_file(files, kind, tmp_path):
    copy = tmp_path / files[kind].name
    copy.write_bytes(files[kind].read_bytes())
    tok = load_tokenizer(copy, TokenizerConfig(name=kind, path=str(copy)))
    (tmp_path / "run").mkdir()
    save_tokenizer(tok, tmp_path / "run" / "tokenizer.json")
    copy.unlink()  # eval / generate / export read the run directory only
    again = load_tokenizer(tmp_path / "run" / "tokenizer.json")
    saved = json.loads((tmp_path / "run" / "tokenizer.json").read_text())
    assert saved["lmlab_tokenizer"] == kind and (saved["bos"], saved["eos"]) == EXPECTED[kind][:2]
    if kind != "hf":
        assert base64.b64decode(saved["model_b64"]) == files[kind].read_bytes()
    assert type(again) is type(tok) and again.to_json() == tok.to_json()
    assert (again.bos_id, again.eos_id, again.pad_id, again.vocab_size) == (tok.bos_id, tok.eos_id, tok.pad_id,
                                                                           tok.vocab_size)
    assert again.token_byte_lengths() == tok.token_byte_lengths()
    # a new run may start from an earlier run's tokenizer.json
    earlier = load_tokenizer(tmp_path / "run" / "tokenizer.json",
                             TokenizerConfig(name=kind, path=str(tmp_path / "run" / "tokenizer.json")))
    assert earlier.to_json() == tok.to_json()
    pickled = pickle.loads(pickle.dumps(tok))  # as worker processes receive it
    for text in SAMPLES:
        assert again.encode(text) == tok.encode(text) == pickled.encode(text)


def test_a_file_is_recognised_without_the_config(files, tmp_path):
    """lmlab's own bpe tokenizer.json stays a bpe tokenizer; any other tokenizer.json is hf, and a
    SentencePiece / tiktoken file is read as what it is."""
    assert isinstance(load_tokenizer(files["hf"]), HFTokenizer)
    assert isinstance(load_tokenizer(files["sentencepiece"]), SentencePieceTokenizer)
    assert isinstance(load_tokenizer(files["tiktoken"]), TiktokenTokenizer)
    bpe = train_tokenizer(TokenizerConfig(name="bpe", vocab_size=300), CORPUS[:20])
    save_tokenizer(bpe, tmp_path / "bpe.json")
    assert isinstance(load_tokenizer(tmp_path / "bpe.json"), BPETokenizer)
    as_hf = load_tokenizer(tmp_path / "bpe.json", TokenizerConfig(name="hf", path=str(tmp_path / "bpe.json")))
    assert (as_hf.bos_token, as_hf.eos_token, as_hf.pad_token) == BPETokenizer.SPECIALS
    assert as_hf.encode("héllo wörld") == bpe.encode("héllo wörld")
    assert train_tokenizer(TokenizerConfig(name="tiktoken", path=str(files["tiktoken"])), []).vocab_size == 632


def test_bos_and_eos_from_a_transformers_folder_the_config_or_refused(files, tmp_path):
    folder = tmp_path / "model"
    hf_file(folder / "tokenizer.json", specials=("<unk>", "<|endoftext|>", "<|im_start|>"))
    tok = load_tokenizer(folder, TokenizerConfig(name="hf", path=str(folder)))
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|endoftext|>", "<|endoftext|>", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<|im_start|>", "eos_token": {"content": "<|endoftext|>"}, "pad_token": "<unk>"}))
    tok = load_tokenizer(folder, TokenizerConfig(name="hf", path=str(folder)))
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.pad_id) == ("<|im_start|>", "<|endoftext|>", "<unk>", 0)
    # the configured tokens win; save / reload keeps them
    tok = opened(files, "tiktoken", eos="<|eot_id|>")
    assert (tok.eos_token, tok.eos_id) == ("<|eot_id|>", 385)
    save_tokenizer(tok, tmp_path / "saved.json")
    assert load_tokenizer(tmp_path / "saved.json").eos_id == 385
    assert opened(files, "sentencepiece", bos="</s>", eos="<s>").bos_id == 2
    nobos = hf_file(tmp_path / "nobos.json", specials=("<unk>", "<mask>"))
    cfg = TokenizerConfig(name="hf", path=str(nobos))
    [problem] = check(cfg)
    assert str(nobos) in problem.message and "no BOS" in problem.message and "data.tokenizer.bos=" in problem.fix
    with pytest.raises(LmlabError, match="data.tokenizer.bos"):
        load_tokenizer(nobos, cfg)
    cfg = TokenizerConfig(name="hf", path=str(nobos), bos="<mask>", eos="<unk>")
    assert check(cfg) == [] and load_tokenizer(nobos, cfg).bos_token == "<mask>"
    [problem] = check(TokenizerConfig(name="hf", path=str(files["hf"]), eos="<nope>"))
    assert "data.tokenizer.eos='<nope>' is not a token of" in problem.message and "<s>, </s>, <pad>" in problem.fix


def bad_files(tmp: Path, files: dict[str, Path]) -> list[tuple[str, Path, str]]:
    """(kind, path, what the message says): every one refused by check() naming the file."""
    notes = tmp / "notes.txt"
    notes.write_text("just some notes\nnot a tokenizer\n")
    binary = tmp / "random.bin"
    binary.write_bytes(bytes(range(256)) * 8)
    folder = tmp / "llama2-folder"
    folder.mkdir()
    (folder / "tokenizer.model").write_bytes(files["sentencepiece"].read_bytes())
    gappy = tmp / "bytes-missing.tiktoken"
    gappy.write_text("".join(f"{base64.b64encode(bytes([b])).decode()} {b}\n" for b in range(200)))
    word_run = tmp / "word-run-tokenizer.json"
    word_run.write_text(json.dumps({"lmlab_tokenizer": "word", "words": ["a", "b"]}))
    return [("hf", notes, "is not a Hugging Face tokenizer.json"),
            ("hf", word_run, "an lmlab run with data.tokenizer.name=word"),
            ("tiktoken", word_run, "set data.tokenizer.name=word"),
            ("hf", tmp / "missing.json", "does not exist"),
            ("hf", files["sentencepiece"], "data.tokenizer.name=sentencepiece"),
            ("hf", folder, f"data.tokenizer.name=sentencepiece and data.tokenizer.path={folder}/tokenizer.model"),
            ("sentencepiece", notes, "is not a SentencePiece .model file"),
            ("sentencepiece", binary, "is not a SentencePiece .model file"),
            ("sentencepiece", files["tiktoken"], "data.tokenizer.name=tiktoken"),
            ("sentencepiece", files["hf"], "data.tokenizer.name=hf"),
            ("sentencepiece", tmp / "missing.model", "does not exist"),
            ("tiktoken", notes, "line 1 is not 'BASE64TOKEN RANK'"),
            ("tiktoken", files["sentencepiece"], "data.tokenizer.name=sentencepiece"),
            ("tiktoken", gappy, "56 of the 256 single bytes have no rank"),
            ("tiktoken", tmp / "missing.tiktoken", "does not exist")]


def test_bad_tokenizer_files_are_refused_naming_the_file_and_the_fix(files, tmp_path):
    for kind, path, says in bad_files(tmp_path, files):
        cfg = TokenizerConfig(name=kind, path=str(path))
        [problem] = check(cfg)
        shown = f"{problem.message} {problem.fix}"
        assert problem.key == "data.tokenizer.path" and str(path) in problem.message, (kind, shown)
        assert says in shown and problem.fix, (kind, shown)
        assert configured_vocab_size(cfg) > 0  # a placeholder: the problem is check()'s to report
        with pytest.raises(TokenizerFileError, match=str(path)):
            load_tokenizer(path, cfg)
    [problem] = check(TokenizerConfig(name="sentencepiece"))
    assert problem.key == "data.tokenizer.path" and ".model" in problem.fix
    [problem] = check(TokenizerConfig(name="tiktoken", path=str(files["tiktoken"]), vocab_size=1000))
    assert problem.key == "data.tokenizer.vocab_size" and "632" in problem.message
    [problem] = check(TokenizerConfig(name="bpe", bos="<s>"))
    assert problem.key == "data.tokenizer.bos"
    with pytest.raises(LmlabError, match="notes.txt is not a tokenizer file"):
        load_tokenizer(tmp_path / "notes.txt")


def test_a_model_embedding_smaller_than_the_vocabulary_is_refused(files):
    cfg = TokenizerConfig(name="tiktoken", path=str(files["tiktoken"]))
    [problem] = check_model_vocab(cfg, 600)
    assert problem.key == "model.vocab_size" and "632" in problem.message and "model.vocab_size=0" in problem.fix
    assert check_model_vocab(cfg, 0) == check_model_vocab(cfg, 632) == check_model_vocab(cfg, 1024) == []
    assert check_model_vocab(TokenizerConfig(name="bytes"), 200)[0].key == "model.vocab_size"


def test_tiktoken_slices_long_text_as_llama3_does(files):
    tok = opened(files, "tiktoken")
    enc = tok._enc

    def llama3(s: str) -> list[int]:  # meta-llama/llama3 tokenizer.py, verbatim in effect
        out = []
        for i in range(0, len(s), MAX_ENCODE_CHARS):
            part, start, run, space = s[i:i + MAX_ENCODE_CHARS], 0, 0, s[i:i + 1].isspace()
            for j, ch in enumerate(part):
                if space ^ ch.isspace():
                    run, space = 1, ch.isspace()
                else:
                    run += 1
                    if run > MAX_RUN_CHARS:
                        out += enc.encode_ordinary(part[start:j])
                        start, run = j, 1
            out += enc.encode_ordinary(part[start:])
        return out

    long = "the cat " * 2000 + "a" * (MAX_RUN_CHARS * 2 + 7) + " " * (MAX_RUN_CHARS + 3) + "end"
    assert field_tokenizers._slices("short text") == ["short text"]
    assert len(field_tokenizers._slices(long)) == 4
    assert tok.encode(long) == llama3(long)
    assert tok.encode_batch(["x y", long]) == [tok.encode("x y"), tok.encode(long)]
    assert tok.decode(tok.encode(long)) == long


@pytest.mark.parametrize("kind", [*KINDS, "spm_unigram", "spm_nfkc"])
def test_the_hugging_face_export_encodes_like_the_run(files, kind, tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg_kind = "sentencepiece" if kind.startswith("spm") else kind
    tok = load_tokenizer(files[kind], TokenizerConfig(name=cfg_kind, path=str(files[kind])))
    obj, bos, eos = tokenizer_object(tok)
    assert (bos, eos) == (tok.bos_token, tok.eos_token)
    for text in SAMPLES:
        assert obj.encode(text, add_special_tokens=False).ids == tok.encode(text), text
    save_pretrained(tok, tmp_path, 64)
    fast = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert (fast.bos_token_id, fast.eos_token_id, fast.pad_token_id) == (tok.bos_id, tok.eos_id, tok.pad_id)
    for text in SAMPLES:
        assert fast(text, add_special_tokens=False).input_ids == tok.encode(text), text
        assert fast(text).input_ids == [tok.bos_id, *tok.encode(text)]
        if kind != "spm_nfkc":  # NFKC and whitespace removal change the text itself
            assert fast.decode(fast(text).input_ids, skip_special_tokens=True) == tok.decode(tok.encode(text))


# --------------------------------------------------------------------------- through the commands

def train_argv(root: Path, run: Path, kind: str, path: Path, *extra: str) -> list[str]:
    return ["train", str(CONFIGS / "debug.yaml"), *TINY_TRANSFORMER, "data.seq_len=64", "steps=4",
            "checkpoint.every=4", "logging.progress_bar=false", *data_overrides(root), f"dump_dir={run}",
            f"data.tokenizer.name={kind}", f"data.tokenizer.path={path}", *extra]


@pytest.mark.parametrize("kind", KINDS)
def test_a_run_trains_evaluates_generates_and_exports_with_the_file(files, kind, jsonl_root, tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    own = tmp_path / files[kind].name
    own.write_bytes(files[kind].read_bytes())
    run, out = tmp_path / "run", tmp_path / "hf"
    assert main(train_argv(jsonl_root, run, kind, own)) == 0
    tok = load_tokenizer(run / "tokenizer.json")
    assert tok.name == kind and tok.vocab_size == EXPECTED[kind][2]
    state = json.loads((run / "checkpoints" / "final" / "train_state.json").read_text())
    assert state["model"]["vocab_size"] == tok.vocab_size  # the model follows the tokenizer
    own.unlink()  # from here on, the run directory alone
    capsys.readouterr()
    assert main(["eval", str(run), "--quiet"]) == 0
    results = json.loads((run / "checkpoints" / "final" / "eval_results.json").read_text())["results"]
    bpb = next(r["value"] for r in results if r["task"] == "validation" and r["metric"] == "bpb")
    assert 0 < bpb < 20
    capsys.readouterr()
    assert main(["generate", str(run), "--prompt", "the cat", "--max-tokens", "8", "--temperature", "0"]) == 0
    assert capsys.readouterr().out.startswith("the cat")
    assert main(["export", str(run), "--format", "hf", "--out", str(out)]) == 0
    fast = transformers.AutoTokenizer.from_pretrained(out)
    config = json.loads((out / "config.json").read_text())
    assert (config["vocab_size"], config["bos_token_id"], config["eos_token_id"]) == (tok.vocab_size, tok.bos_id,
                                                                                      tok.eos_id)
    for text in SAMPLES:
        assert fast(text).input_ids == [tok.bos_id, *tok.encode(text)], text


def test_exporting_a_sentencepiece_run_without_protobuf_exits_2_and_writes_nothing(files, jsonl_root, tmp_path,
                                                                                   monkeypatch, capsys):
    """SentencePiece's model is read with protobuf, which only the [tokenizers] extra brings."""
    run, out = tmp_path / "run", tmp_path / "hf"
    assert main(train_argv(jsonl_root, run, "sentencepiece", files["sentencepiece"])) == 0
    before = sorted(p for p in run.rglob("*"))
    sentencepiece = pytest.importorskip("sentencepiece")
    monkeypatch.setitem(sys.modules, "sentencepiece.sentencepiece_model_pb2", None)  # as without protobuf
    monkeypatch.delattr(sentencepiece, "sentencepiece_model_pb2", raising=False)
    capsys.readouterr()
    assert main(["export", str(run), "--format", "hf", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "reads its model with protobuf, which is not installed" in err and "pip install protobuf" in err
    assert "Traceback" not in err and err.count("error:") == 1
    assert not out.exists() and sorted(p for p in run.rglob("*")) == before


def test_bad_tokenizer_files_stop_lmlab_train_with_exit_2(files, jsonl_root, tmp_path, capsys):
    """Preflight refuses each before anything is built: the file and the fix named, no traceback."""
    rows = bad_files(tmp_path, files)
    nobos = hf_file(tmp_path / "nobos.json", specials=("<unk>", "<mask>"))
    rows += [("hf", nobos, "data.tokenizer.bos=TOKEN"),
             ("tiktoken", files["tiktoken"], "model.vocab_size=0", "model.vocab_size=600"),
             ("hf", files["hf"], "data.tokenizer.eos='<nope>'", "data.tokenizer.eos=<nope>")]
    for kind, path, says, *extra in rows:
        run = tmp_path / f"run-{kind}-{path.name}"
        code = main(train_argv(jsonl_root, run, kind, path, *extra))
        err = capsys.readouterr().err
        assert code == 2, err
        assert "Traceback" not in err and str(path) in err and says in err and "fix: " in err, err
        assert not (run / "checkpoints").exists()


def test_a_tokenizer_file_that_is_not_one_exits_2_from_the_command_line(files, tmp_path, capsys):
    notes = tmp_path / "tokenizer.model"
    notes.write_text("not a model\n")
    done = run_main(capsys, "check", str(CONFIGS / "debug.yaml"), "data.tokenizer.name=sentencepiece",
                    f"data.tokenizer.path={notes}")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"{notes} is not a SentencePiece .model file" in done.stderr and "fix:" in done.stderr


def test_the_run_tokenizer_takes_the_configured_bos_and_eos(files, tmp_path):
    from lmlab.data.pipeline import prepare_tokenizer

    cfg = TokenizerConfig(name="tiktoken", path=str(files["tiktoken"]), eos="<|eot_id|>")
    assert prepare_tokenizer(cfg, tmp_path, lambda: []).eos_token == "<|eot_id|>"
