"""What produced a run: code version, package versions, machine, command line. Never secrets."""
from __future__ import annotations

import platform
import re
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import torch

PACKAGES = ("lmlab", "torch", "numpy", "safetensors", "tokenizers", "pyyaml", "tqdm", "lm_eval",
            "datasets", "matplotlib")
# Any command-line word or environment name that looks like it carries a credential.
SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL)", re.IGNORECASE)


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_info() -> dict:
    """Commit and dirty flag of the lmlab source tree (None outside a git checkout)."""
    root = Path(__file__).resolve().parents[2]
    sha = _git(["rev-parse", "HEAD"], root)
    status = _git(["status", "--porcelain", "--untracked-files=no"], root) if sha else None
    return {"sha": sha, "dirty": bool(status) if status is not None else None}


def package_versions() -> dict:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def device_info(device: torch.device) -> dict:
    info = {"device": str(device), "platform": platform.platform(), "cpu": platform.processor(),
            "cpu_threads": torch.get_num_threads()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    cuda=torch.version.cuda, gpu_count=torch.cuda.device_count())
    return info


def redact_argv(argv: list[str]) -> list[str]:
    """Replace the value of any ``name=value`` word whose name looks like a credential."""
    out = []
    for word in argv:
        name, sep, _ = word.partition("=")
        out.append(f"{name}=<redacted>" if sep and SECRET_NAME.search(name) else word)
    return out


def collect(argv: list[str], device: torch.device) -> dict:
    return {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": redact_argv([Path(sys.argv[0]).name] + list(argv)),
            "git": git_info(), "versions": package_versions(), "machine": device_info(device)}
