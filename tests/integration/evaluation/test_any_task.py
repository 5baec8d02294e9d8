"""Any lm-eval task through ``lmlab eval``: local task YAMLs (eval.include_path) of every output type
lmlab's offline three do not cover, per-task settings in Lingua's form, and preflight's checks."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import SHARED_DATA, copy_run
from lmlab.cli import main
from lmlab.evaluation import catalog, task_index
from lmlab.evaluation.config import EvalConfig, TaskSetting, check, task_settings
from lmlab.evaluation.harness import LmlabLM
from lmlab.evaluation.runner import run_evaluation

WIKI = SHARED_DATA / "wikitext-2-raw" / "wiki.test.raw"
needs_data = pytest.mark.skipif(not WIKI.is_file(), reason=f"{WIKI} is missing")
COLOURS = [("the sky", 0), ("grass", 1), ("snow", 2), ("coal", 3), ("a lemon", 4), ("blood", 5)]
NAMES = ["blue", "green", "white", "black", "yellow", "red"]

WIKI_UTILS = '''
import datasets


def articles(dataset):
    """wiki.test.raw's lines -> one document per article (a " = Title = " line starts one)."""
    docs, lines = [], []
    for line in dataset["text"]:
        if line.startswith(" = ") and not line.startswith(" = = ") and lines:
            docs.append("\\n".join(lines))
            lines = []
        if lines or line.strip():  # the blank lines before the first title belong to no article
            lines.append(line)
    return datasets.Dataset.from_dict({"page": docs + ["\\n".join(lines)]})
'''


def write_tasks(folder: Path, wiki: Path = WIKI) -> Path:
    """colours4 (4 choices, test split from a local jsonl, few-shot examples from its train split),
    colour_suite (a group of it), wiki_rolling (loglikelihood_rolling over wiki.test.raw's articles),
    and hub_task (hub data)."""
    folder.mkdir(parents=True)
    cache = folder / "hf_cache"
    rows = []
    for i, (thing, colour) in enumerate(COLOURS * 3):
        wrong = [c for c in range(6) if c != colour][i % 3: i % 3 + 3]
        choices = sorted([colour] + wrong)
        rows.append({"thing": f"{thing} ({i})", "choices": [NAMES[c] for c in choices],
                     "label": choices.index(colour)})
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:6]))
    (folder / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[6:]))
    (folder / "colours4.yaml").write_text(f"""
task: colours4
dataset_path: json
dataset_kwargs:
  data_files: {{train: {folder / 'train.jsonl'}, test: {folder / 'test.jsonl'}}}
  cache_dir: {cache}
output_type: multiple_choice
test_split: test
fewshot_split: train
doc_to_text: "Q: What colour is {{{{thing}}}}?\\nA:"
doc_to_choice: choices
doc_to_target: label
metric_list:
  - {{metric: acc, aggregation: mean, higher_is_better: true}}
metadata: {{version: 1.0}}
""")
    (folder / "wiki_utils.py").write_text(WIKI_UTILS)
    (folder / "wiki_rolling.yaml").write_text(f"""
task: wiki_rolling
dataset_path: text
dataset_kwargs:
  data_files: {{test: {wiki}}}
  cache_dir: {cache}
output_type: loglikelihood_rolling
test_split: test
process_docs: !function wiki_utils.articles
doc_to_text: ""
doc_to_target: "{{{{page}}}}"
metric_list:
  - {{metric: word_perplexity}}
  - {{metric: byte_perplexity}}
  - {{metric: bits_per_byte}}
metadata: {{version: 1.0}}
""")
    (folder / "colour_suite.yaml").write_text("""
group: colour_suite
task: [colours4]
aggregate_metric_list:
  - {metric: acc, aggregation: mean, weight_by_size: true}
metadata: {version: 1.0}
""")
    (folder / "hub_task.yaml").write_text("""
task: hub_task
dataset_path: someorg/some_dataset_lmlab_never_has
output_type: multiple_choice
test_split: test
doc_to_text: "{{q}}"
doc_to_choice: choices
doc_to_target: label
""")
    return folder


def spy_on_lm_evals_index(monkeypatch) -> list[bool]:
    """One item each time a manager is asked for (True: with lm-eval's own tasks) or lm-eval's index
    of them is read (its cached names or entries, True)."""
    built: list[bool] = []
    real = catalog.task_manager
    monkeypatch.setattr(catalog, "task_manager", lambda p="", d=True: built.append(d) or real(p, d))
    for name in ("shipped_names", "shipped_entries"):
        monkeypatch.setattr(task_index, name, lambda _real=getattr(task_index, name): built.append(True) or _real())
    return built


@pytest.fixture(scope="module")
def tiny_run(trained_run, tmp_path_factory) -> Path:
    """A copy of the session's tiny transformer run: evaluating it writes its results into it."""
    return copy_run(trained_run("transformer"), tmp_path_factory.mktemp("any_task") / "run")


def test_per_task_entries_take_the_eval_defaults():
    cfg = EvalConfig(tasks=["piqa", {"task": "nq_open", "num_fewshot": 5}, {"task": "x", "limit": 3,
                                                                            "batch_size": 4}],
                     num_fewshot=1, limit=50, batch_size=16)
    assert task_settings(cfg) == [TaskSetting("piqa", 1, 50, 16), TaskSetting("nq_open", 5, 50, 16),
                                  TaskSetting("x", 1, 3, 4)]


def test_check_local_tasks_without_lm_evals_index(tmp_path, monkeypatch):
    folder = write_tasks(tmp_path / "tasks", wiki=tmp_path / "no_such.raw")
    built = spy_on_lm_evals_index(monkeypatch)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    problems = check(EvalConfig(tasks=["colours4", {"task": "wiki_rolling", "limt": 2, "limit": 0},
                                       {"num_fewshot": 1}, "hub_task"], include_path=str(folder)))
    text = "\n".join(f"{p.key}: {p.message} | {p.fix}" for p in problems)
    assert "eval.tasks[1].limt: unknown key. Did you mean 'limit'?" in text
    assert "eval.tasks[1].limit: must be an integer >= 1" in text
    assert "eval.tasks[2]: a per-task entry needs a task name" in text
    assert f"task wiki_rolling reads {tmp_path / 'no_such.raw'}, which is missing" in text
    assert "hub, but HF_DATASETS_OFFLINE/HF_HUB_OFFLINE is set: hub_task (someorg/some_dataset" in text
    assert "colours4" not in text
    assert built and not any(built)  # the local folder's index only: lm-eval's own was neither built nor read
    assert check(EvalConfig(include_path=str(tmp_path / "nowhere")))[0].key == "eval.include_path"


@needs_data
def test_eval_runs_local_yaml_tasks_with_per_task_settings(tiny_run, tmp_path, monkeypatch, capsys):
    folder = write_tasks(tmp_path / "tasks")
    seen: dict[str, list] = {"loglikelihood": [], "loglikelihood_rolling": []}
    for kind in seen:
        real = getattr(LmlabLM, kind)
        monkeypatch.setattr(LmlabLM, kind, lambda self, reqs, *a, _k=kind, _r=real, **kw:
                            seen[_k].extend(r.args for r in reqs) or _r(self, reqs, *a, **kw))
    built = spy_on_lm_evals_index(monkeypatch)
    tasks = "[{task: colours4, num_fewshot: 2}, {task: wiki_rolling, limit: 3}, piqa]"
    code = main(["eval", str(tiny_run), f"eval.include_path={folder}", f"eval.tasks={tasks}",
                 f"eval.data_dir={SHARED_DATA}", "eval.limit=5", "eval.validation.enabled=false", "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert not any(built)  # local and offline tasks only: lm-eval's index was neither built nor read
    results = json.loads((tiny_run / "checkpoints" / "final" / "eval_results.json").read_text())
    got = {(r["task"], r["metric"]): r for r in results["results"]}
    colours = got[("colours4", "acc")]
    assert colours["num_fewshot"] == 2 and colours["n"] == 5 and colours["fewshot_source"] == "train"
    assert 0.0 <= colours["value"] <= 1.0
    for metric in ("word_perplexity", "byte_perplexity", "bits_per_byte"):
        row = got[("wiki_rolling", metric)]
        assert row["n"] == 3 and row["num_fewshot"] == 0 and row["value"] > 0
    assert got[("piqa", "acc")]["n"] == 5 and got[("piqa", "acc")]["num_fewshot"] == 0
    # colours4's few-shot examples come from its train split (items 0-5), never from the test split
    contexts = [ctx for ctx, _ in seen["loglikelihood"] if ctx.count("Q: What colour") == 3]
    assert len(contexts) == 5 * 4
    for ctx in contexts:
        examples = [int(q.split("(")[1].split(")")[0]) for q in ctx.split("Q: What colour is ")[1:]]
        assert all(e < 6 for e in examples[:2]) and examples[2] >= 6
    pages = [text for (text,) in seen["loglikelihood_rolling"]]
    assert len(pages) == 3 and pages[0].startswith(" = Robert Boulter = ")
    lines = [json.loads(x) for x in (tiny_run / "metrics.eval.jsonl").read_text().splitlines()]
    assert {(x["task"], x["num_fewshot"]) for x in lines} >= {("colours4", 2), ("wiki_rolling", 0)}


def test_eval_refuses_a_bad_entry_before_loading(tiny_run, tmp_path, capsys):
    folder = write_tasks(tmp_path / "tasks")
    code = main(["eval", str(tiny_run), f"eval.include_path={folder}",
                 "eval.tasks=[{task: colours4, num_fewshots: 2}]"])
    assert code == 2
    err = capsys.readouterr().err
    assert "eval.tasks[0].num_fewshots" in err and "Did you mean 'num_fewshot'" in err
    problem, = check(EvalConfig(tasks=[{"task": "colours4", "batch_size": 0}], include_path=str(folder)))
    assert problem.key == "eval.tasks[0].batch_size"


def test_a_task_file_that_is_not_yaml_is_named_with_its_line(tmp_path):
    """lm-eval skips a task YAML it cannot parse without a word: the task is then "unknown", and
    the check says which file is broken and where; lm-eval's own tags (!function) are YAML."""
    folder = write_tasks(tmp_path / "tasks")
    (folder / "broken.yaml").write_text("task: broken\n dataset_path: [\n")
    (folder / "tagged.yaml").write_text("task: tagged\nprocess_docs: !function utils.process_docs\n")
    problems = check(EvalConfig(tasks=["broken"], include_path=str(folder)))
    assert [p.key for p in problems] == ["eval.tasks", "eval.include_path"]
    assert f"{folder / 'broken.yaml'} is not a readable task YAML at line 2, column 14" in problems[1].message
    assert problems[1].fix == "fix the YAML in broken.yaml"
    assert check(EvalConfig(tasks=["colours4"], include_path=str(folder))) == []  # only when a task is unknown


def test_a_local_group_gives_its_aggregate_and_member_rows(tiny_run, tmp_path, load):
    folder = write_tasks(tmp_path / "tasks")
    cfg = EvalConfig(tasks=[{"task": "colour_suite", "limit": 4}], include_path=str(folder))
    rows = run_evaluation(load(tiny_run), cfg, validation=False, progress=False)
    got = {(r["task"], r["metric"]): r for r in rows}
    assert set(got) == {("colour_suite", "acc"), ("colours4", "acc")}
    assert got[("colours4", "acc")]["n"] == 4 and got[("colour_suite", "acc")]["n"] is None
    assert got[("colour_suite", "acc")]["value"] == got[("colours4", "acc")]["value"]
