"""The only module that touches ``torch.distributed``.

lmlab trains on one process today; these helpers are what the rest of the code calls so that a
multi-process launch (torchrun) later changes only this file.
"""
from __future__ import annotations

import os


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def check_single_process() -> str | None:
    """A problem message when launched with several processes (not supported yet), else None."""
    if world_size() > 1:
        return (f"launched with WORLD_SIZE={world_size()}, but lmlab trains on one process for now; "
                "run without torchrun")
    return None
