"""Secrets never reach the run directory, reports, stdout or stderr.

Fake credentials (W&B key, HF token, and any variable whose name holds KEY, TOKEN, SECRET or
PASSWORD) are planted in the environment of the real command line; a tiny run is trained,
evaluated, reported in both languages, and a second run fails (non-finite loss) and is reported
too, so error messages, traceback files and the failure analysis are scanned as well. Every byte
written under the test's folder and everything printed is searched for each planted value.
"""
from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys

import pytest

from helpers import CONFIGS, REPO, SHARED_DATA, TINY_TRANSFORMER, data_overrides


def planted_values() -> dict[str, str]:
    return {"WANDB_API_KEY": secrets.token_hex(20), "HF_TOKEN": "hf_" + secrets.token_hex(17),
            "MY_SERVICE_SECRET": "svc-" + secrets.token_urlsafe(18),
            "DB_PASSWORD": "pw-" + secrets.token_urlsafe(12)}


# Runs several lmlab commands in ONE process (one torch import instead of one per command: the
# machine is small and shared), each exactly as the command line runs it (sys.argv included).
DRIVER = """
import json, sys
from lmlab.cli import exit_soon, main
for name, argv in json.loads(sys.argv[1]):
    sys.argv = ["lmlab", *argv]
    print(f"@@ {name} start", flush=True); print(f"@@ {name} start", file=sys.stderr, flush=True)
    code = main(argv)
    print(f"@@ {name} exit {code}", flush=True)
exit_soon()  # as lmlab.cli.entry ends the lmlab command
"""


def run_commands(env: dict[str, str], commands: list[tuple[str, list[str]]]):
    """(exit code per command, stdout, stderr) of ``commands`` run by the real CLI entry point."""
    out = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(commands)], cwd=REPO,
                         capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    codes = dict(line.split()[1::2] for line in out.stdout.splitlines() if " exit " in line
                 and line.startswith("@@ "))
    return {name: int(code) for name, code in codes.items()}, out.stdout, out.stderr


def test_planted_secrets_appear_nowhere(tmp_path, jsonl_root):
    planted = planted_values()
    canary = "canary-" + secrets.token_hex(12)  # a harmless variable: the environment is not dumped
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update(planted, LMLAB_TEST_CANARY=canary, HF_HOME=str(tmp_path / "hf_home"),
               WANDB_DIR=str(tmp_path / "wandb_home"), OMP_NUM_THREADS="1")
    tiny = [str(CONFIGS / "debug.yaml"), *TINY_TRANSFORMER, *data_overrides(jsonl_root),
            "checkpoint.every=3", "eval.validation.enabled=false"]
    run, failed = tmp_path / "run", tmp_path / "diverged"
    commands = [("train", ["train", *tiny, "steps=4", f"dump_dir={run}"])]
    if (SHARED_DATA / "piqa").is_dir():
        commands.append(("eval", ["eval", str(run), "eval.tasks=[piqa]", "eval.limit=4",
                                  f"eval.data_dir={SHARED_DATA}", "--quiet"]))
    commands += [
        ("report", ["report", str(run)]),
        ("report_ja", ["report", str(run), "--lang", "ja"]),
        # a run that fails: its error message, traceback file and failure report are scanned too
        ("diverged", ["train", *tiny, "steps=6", "optim.lr=1e30", "optim.warmup=0", "optim.clip=0",
                      "checkpoint.every=1", f"dump_dir={failed}"]),
        ("report_diverged", ["report", str(failed)]),
    ]
    codes, stdout, stderr = run_commands(env, commands)
    expected = {name: 2 if name == "diverged" else 0 for name, _ in commands}
    assert codes == expected, stderr[-3000:]
    assert "non-finite" in stderr
    assert (run / "report.md").is_file() and (run / "report.ja.md").is_file()
    assert (failed / "report.md").is_file()
    assert list((failed / "errors").glob("*.txt")), "the failed run wrote no traceback file to scan"
    if (SHARED_DATA / "piqa").is_dir():
        assert (run / "metrics.eval.jsonl").is_file()

    written = [p for p in sorted(tmp_path.rglob("*")) if p.is_file()]
    assert len(written) > 20
    for name, value in planted.items():
        in_files = [str(p.relative_to(tmp_path)) for p in written if value.encode() in p.read_bytes()]
        assert in_files == [], f"{name} was written to {in_files}"
        assert value not in stdout, f"{name} was printed on stdout"
        assert value not in stderr, f"{name} was printed on stderr"

    for provenance in (run / "provenance.json", failed / "provenance.json"):
        text = provenance.read_text()
        assert canary not in text  # no environment variable is copied, secret or not
        assert not any(value in text for value in planted.values())
        assert not {"env", "environ", "environment"} & set(json.loads(text))


@pytest.mark.parametrize("word", ["api_key=", "token=", "password="])
def test_credential_words_on_the_command_line_are_redacted_in_provenance(word):
    from lmlab.runlog import redact_argv

    value = secrets.token_hex(8)
    assert redact_argv(["lmlab", "train", f"wandb.{word}{value}"]) == [
        "lmlab", "train", f"wandb.{word}<redacted>"]
