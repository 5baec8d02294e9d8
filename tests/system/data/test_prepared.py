"""Preparing data in a real process: Ctrl-C stops it, the same command continues to the same bytes.
Everything else about prepared data is tests/integration/data/test_prepared.py."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from helpers import REPO, WEBTEXT, shard_checksums
from lmlab.data import manifest as mf


def test_ctrl_c_in_a_real_process_then_the_same_command_continues(tmp_path):
    src = tmp_path / "web"
    src.mkdir()
    (src / "web.chunk.00.jsonl").write_bytes(WEBTEXT.read_bytes())
    command = [sys.executable, "-m", "lmlab", "data", "prepare", str(src), "--shard-tokens", "200000",
               "--workers", "2", "--quiet"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    straight = subprocess.run(command + ["--out", str(tmp_path / "straight")], env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=120)
    assert straight.returncode == 0, straight.stderr
    out = tmp_path / "out"
    proc = subprocess.Popen(command + ["--out", str(out)], env={**env, "LMLAB_PREPARE_PAUSE_AFTER": "2"},
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            manifest = mf.read_manifest(out) if (out / mf.MANIFEST_FILE).exists() else None
            if manifest and len(manifest["splits"]["train"]["shards"]) == 2:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Run the same command again to continue" in err
    again = subprocess.run(command + ["--out", str(out)], env=env, cwd=REPO, capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 0, again.stderr
    assert shard_checksums(out) == shard_checksums(tmp_path / "straight")
