"""Can the Hugging Face hub be used right now? Asked by preflight before anything would download."""
from __future__ import annotations

import importlib.util
import os
import socket
from pathlib import Path


def unavailable_reason(cached: list[str]) -> str:
    """Why downloads from the hub cannot work ('' when they can). ``cached`` are globs matched in the
    HF datasets cache: when every one matches, the warm cache works offline, so it counts."""
    if os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1":
        return "HF_DATASETS_OFFLINE/HF_HUB_OFFLINE is set"
    if importlib.util.find_spec("datasets") is None:
        return "`datasets` is not installed"
    cache = Path(os.environ.get("HF_DATASETS_CACHE", Path.home() / ".cache" / "huggingface" / "datasets"))
    if all(any(cache.glob(pattern)) for pattern in cached):
        return ""
    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
        return ""
    except OSError:
        return "the Hugging Face hub is unreachable and nothing is cached"
