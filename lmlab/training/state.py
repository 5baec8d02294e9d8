"""What a run's checkpoints hold of the training loop, and starting again where a run left off.

``TrainState`` is the loop's bookkeeping; a checkpoint's ``train_state.json`` holds it beside all
that resuming needs (``saved_state``: data position, RNG, scheduler, scaler, the resolved model
config evaluation rebuilds). ``find_resume`` picks the newest complete checkpoint after cleaning up
what a kill left, ``publish_interrupted`` finishes a publication a kill cut short, and ``restore``
brings back everything the weights do not hold.

On CPU this is exact: the steps after a resume log exactly the metrics (and end with exactly the
weights) of an uninterrupted run.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from lmlab import rundir
from lmlab.data.loader import merge_states
from lmlab.rng import rng_state, set_rng_state
from lmlab.training import checkpoint as ckpt
from lmlab.training import distributed
from lmlab.training.distributed import Dist
from lmlab.training.parts import TrainingParts


@dataclass
class TrainState:
    """The loop's bookkeeping, saved in every checkpoint's train_state.json and restored on resume
    (beside the data position, RNG, scheduler and scaler states the checkpoint also holds)."""

    step: int = 0
    tokens: int = 0
    epoch_loss_sum: float = 0.0  # epoch mode: training losses summed since the epoch began
    epoch_steps: int = 0
    best_val_loss: float | None = None
    best_step: int | None = None
    bad_epochs: int = 0  # validations in a row without improvement (early stopping)
    skipped_steps: int = 0  # non-finite steps skipped (training.skip_nonfinite_steps)
    last_eval_step: int = 0  # the last checkpoint the harness tasks ran on (eval.every)
    failed_evals: list[dict] = field(default_factory=list)

    @classmethod
    def from_saved(cls, saved: dict) -> "TrainState":
        """From a train_state.json; keys this version does not keep (loader, rng ...) are ignored
        and keys older checkpoints lack keep their defaults."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in saved.items() if k in names})

    def to_saved(self) -> dict:
        return dataclasses.asdict(self)

    def record_validation(self, loss: float, min_delta: float) -> bool:
        """Track the best validation loss; True when ``loss`` improves on it by more than min_delta."""
        improved = self.best_val_loss is None or loss < self.best_val_loss - min_delta
        if improved:
            self.best_val_loss, self.best_step, self.bad_epochs = loss, self.step, 0
        else:
            self.bad_epochs += 1
        return improved


@dataclass
class Resume:
    checkpoint: Path  # the newest complete step checkpoint
    saved: dict  # its train_state.json

    @property
    def step(self) -> int:
        return self.saved["step"]

    def finished(self, total_steps: int) -> bool:
        """Reached ``total_steps``, or ended (early stopping) with the same plan. Raising
        steps/epochs changes the plan, so a finished run then trains on."""
        planned = self.saved.get("scheduler", {}).get("total_steps")
        return self.step >= total_steps or (bool(self.saved.get("finished")) and planned == total_steps)


def prepare_resume(run_dir: Path, is_main: bool, say) -> Resume | None:
    """The checkpoint to resume from (``find_resume``); rank 0 first makes the run directory and
    removes a preemption request the previous attempt already obeyed."""
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / rundir.PREEMPT_FILE).unlink(missing_ok=True)
    return find_resume(run_dir, say)


def find_resume(run_dir: Path, say) -> Resume | None:
    """The checkpoint to resume from (None for a new run), after removing what interrupted saves
    left behind; ``say`` prints a line."""
    for path in ckpt.remove_partial_checkpoints(run_dir):
        say(f"removed incomplete checkpoint {path.name} (a save was interrupted)")
    latest = rundir.latest_checkpoint(run_dir)
    return Resume(latest, rundir.read_train_state(latest)) if latest else None


def publish_interrupted(run_dir: Path, resume: Resume) -> None:
    """A kill between saving a checkpoint and publishing it as best/ or final/ left that undone."""
    def published_step(name: str) -> int | None:
        path = rundir.named_checkpoint(run_dir, name)
        return rundir.read_train_state(path)["step"] if rundir.is_checkpoint(path) else None

    saved = resume.saved
    if saved.get("best_step") == resume.step and published_step(rundir.BEST) != resume.step:
        ckpt.link_checkpoint(run_dir, resume.checkpoint, rundir.BEST)
    if saved.get("finished") and published_step(rundir.FINAL) != resume.step:
        ckpt.link_checkpoint(run_dir, resume.checkpoint, rundir.FINAL)


def saved_state(state: TrainState, finished: bool, parts: TrainingParts, data, optim_cfg,
                d: Dist) -> dict:
    """What a checkpoint's train_state.json holds: the loop state and all that ``restore`` needs
    (data position, RNG, scheduler, scaler) plus the resolved model config evaluation rebuilds.
    Every rank calls it (it gathers each rank's RNG state)."""
    rng = distributed.gather_objects(rng_state(), d)
    return {**state.to_saved(), "finished": finished, "loader": _loader_state(data.train, d),
            "rng": rng[0], **({"rng_by_rank": rng} if d.enabled else {}),
            "scheduler": {"name": optim_cfg.scheduler, "lr": parts.optimizer.param_groups[0]["lr"],
                          "warmup": optim_cfg.warmup, "total_steps": data.total_steps},
            "scaler": parts.scaler.state_dict() if parts.scaler else None,
            "model": dataclasses.asdict(parts.model_cfg)}


def _loader_state(train, d: Dist) -> dict:
    """The data position; processes that read different documents (``data.readers``) each hold
    their readers' part, joined here (every rank calls it: a collective)."""
    state = train.state_dict()
    if getattr(getattr(train, "loader", train), "disjoint", False):
        state = merge_states(distributed.gather_objects(state, d))
    return state


def restore(parts: TrainingParts, loader, resume: Resume, d: Dist) -> TrainState:
    """The rest of the checkpoint (``build_parts`` loaded weights and optimizer): the data position
    (global, so any number of processes continues the same order), scaler and RNG; returns the
    loop state. A rank without its own saved RNG state (the run had fewer processes) takes rank
    0's: only dropout draws differ from an uninterrupted run then."""
    loader.load_state_dict(resume.saved["loader"])
    if parts.scaler and resume.saved.get("scaler"):
        parts.scaler.load_state_dict(resume.saved["scaler"])
    by_rank = resume.saved.get("rng_by_rank") or []
    set_rng_state(by_rank[d.rank] if d.rank < len(by_rank) else resume.saved["rng"])
    return TrainState.from_saved(resume.saved)
