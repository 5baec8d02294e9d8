"""``training.*``: how the training loop behaves beyond the optimizer (micro-batches, where this
invocation stops, early stopping, CUDA graphs, skipping non-finite steps).

Kept apart from ``trainer.py`` so that loading and preflighting a config imports no training code.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from lmlab.errors import Problem


@dataclass
class TrainingConfig:
    """Training-loop behaviour beyond the optimizer."""

    grad_accum: int = field(default=1, metadata={
        "help": "Micro-batches per optimizer step; data.batch_size must be divisible by it."})
    stop_at: int = field(default=0, metadata={
        "help": "Stop this invocation after this step, saving a checkpoint (0: run to the end). "
                "Re-running the same command resumes; for time-sliced jobs and resume tests."})
    patience: int = field(default=0, metadata={
        "help": "Epoch mode: stop after this many validations without improvement (0: never)."})
    min_delta: float = field(default=0.0, metadata={
        "help": "Epoch mode: a validation loss must drop by more than this to count as better."})
    cuda_graph: bool | None = field(default=None, metadata={
        "help": "Capture the model's forward and backward in a CUDA graph (training/graphs.py): "
                "one replay instead of thousands of kernel launches per step; an epoch's last "
                "batch is padded with ignored rows to the captured shape. null: auto (on for the "
                "launch-bound context_vector model on one CUDA device with grad_accum 1; never "
                "on CPU)."})
    skip_nonfinite_steps: int = field(default=0, metadata={
        "help": "Skip up to this many steps with a non-finite loss / grad norm before stopping "
                "(fp16 overflow steps that the GradScaler skips itself do not count). Skipping "
                "decides at every step, so it reads the loss back from the device at every step; "
                "with 0 a non-finite step is found at the next logging or checkpoint step."})


def check(cfg: TrainingConfig) -> list[Problem]:
    problems = []
    for key in ("stop_at", "patience", "min_delta", "skip_nonfinite_steps"):
        if getattr(cfg, key) < 0:
            problems.append(Problem(f"training.{key}", f"must be >= 0, got {getattr(cfg, key)}.",
                                    f"set training.{key}=0"))
    return problems
