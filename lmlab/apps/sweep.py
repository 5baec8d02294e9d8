"""``lmlab sweep SPEC.yaml [--parallel N] [--dry-run] [--slurm --gpus-per-trial G ...]``: many runs
of one base config, from a spec (``lmlab.sweeps.spec``), each trial an ordinary run directory
under the sweep folder (``lmlab.sweepdir``).

1. The spec is checked, expanded into trials, and every trial's config goes through lmlab's
   preflight before the first one starts: all problems at once, exit 2, nothing written.
2. The sweep folder is locked (one ``lmlab sweep`` per folder), the resolved spec and the trial
   table are written, and the table is reconciled with the run directories: finished trials are
   skipped, interrupted ones resume from their checkpoints (the same command resumes a sweep).
3. Locally, ``LocalRunner`` runs N trials at a time; with ``--slurm``, one job array is written
   (and submitted unless ``--dry-run``).
4. At the end: the trials ranked by the spec's metric, the scaling fit when the spec asks for one,
   and the command for the report.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from lmlab import sweepdir
from lmlab.errors import LmlabError, Problem, show_warnings
from lmlab.preflight import device_problems
from lmlab.reports.sweep import format_sweep_trials, load_sweep
from lmlab.reports.sweep_report import scaling_fit
from lmlab.runlock import RunLock, read_holder
from lmlab.sweeps import slurm_array
from lmlab.sweeps.early_stop import MedianRule
from lmlab.sweeps.progress import Display
from lmlab.sweeps.runner import LocalRunner, cpu_cores, plan
from lmlab.sweeps.spec import SweepSpec, load_spec
from lmlab.sweeps.table import TrialTable, now_iso
from lmlab.sweeps.trials import Trial, expand, preflight


class SweepLock(RunLock):
    """``<sweep>/.lock``, held while a sweep command runs the folder (``runlock``'s flock)."""

    def _refusal(self) -> str:
        holder = read_holder(self.run_dir)
        who = (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} (started "
               f"{holder.get('started', '?')})" if holder else "another process")
        return (f"{self.run_dir} is in use: another lmlab sweep holds {self.path}: {who}. Fix: wait for "
                "it to end (or stop it with Ctrl-C: its trials save checkpoints, and the same command "
                "resumes them), or set out: (or --out) to another folder.")


def run(args) -> int:
    _check_arguments(args)
    spec = load_spec(args.spec, out=args.out)
    trials = expand(spec)
    sweep_dir = Path(spec.out)
    _refuse_changed(sweep_dir, spec, trials)
    if args.slurm:
        return _slurm(args, spec, trials, sweep_dir)
    configs, warnings = preflight(spec, trials, sweep_dir)
    show_warnings("sweep", warnings)
    cuda = torch.cuda.device_count() if any(_on_cuda(c.device) for c in configs.values()) else 0
    how = plan(args.parallel, cuda, cpu_cores())
    if args.parallel and cuda and args.parallel > cuda:
        print(f"note: --parallel {args.parallel} but {cuda} GPU(s): one trial per GPU, {how.parallel} at a time")
    if args.dry_run:
        _print_plan(spec, trials, sweep_dir, how.describe())
        return 0
    with SweepLock(sweep_dir) as lock:
        if lock.taken_over:
            print(f"lmlab sweep: {lock.taken_over}")
        _refuse_active_array(sweep_dir)
        sweepdir.write_spec(sweep_dir, resolved_spec(spec, trials, args))
        table = TrialTable(sweep_dir, trials)
        todo = table.reconcile(trials, retry_failed=args.retry_failed)
        _say_start(spec, trials, todo, table, sweep_dir, how.describe())
        steps = {name: (c.steps if c.epochs <= 0 else 0) for name, c in configs.items()}
        rule = MedianRule(spec.early_stop["steps"], spec.early_stop["min_trials"]) if spec.early_stop else None
        if rule is not None:
            print(f"early stopping: {rule.describe()}")
        display = Display(total=len(trials), done=len(trials) - len(todo), slots=how.parallel, quiet=args.quiet)
        code = LocalRunner(spec, sweep_dir, todo, steps, table, how, display, rule).run()
    _summary(sweep_dir, code)
    return code


def _check_arguments(args) -> None:
    if args.parallel is not None and args.parallel < 1:
        raise LmlabError(f"--parallel must be >= 1, got {args.parallel}. Fix: --parallel 2 (trials at a time).")
    if args.slurm and args.gpus_per_trial is None:
        raise LmlabError("--slurm needs --gpus-per-trial G (GPUs per trial; 0: CPU tasks). Fix: add "
                         "--gpus-per-trial 1.")
    if args.gpus_per_trial is not None and (args.gpus_per_trial < 0 or not args.slurm):
        raise LmlabError("--gpus-per-trial is for --slurm, and >= 0. Fix: add --slurm, or drop it (locally "
                         "each trial gets one GPU, or its share of the CPU cores).")


def _on_cuda(device: str) -> bool:
    return device == "cuda" or (device == "auto" and torch.cuda.is_available())


def resolved_spec(spec: SweepSpec, trials: list[Trial], args) -> dict:
    """``sweep.yaml``: the spec with every trial's values and overrides, as the report reads it."""
    axes = [{"key": a.key, "kind": a.kind, "log": a.log,
             **({"values": list(a.values)} if a.kind == "grid" else
                {"dist": a.dist, **({"choices": list(a.choices)} if a.choices else
                                    {"low": a.low, "high": a.high, "int": a.integer})})} for a in spec.axes]
    if any("seed" in t.values for t in trials) and not any(a.key == "seed" for a in spec.axes):
        axes.append({"key": "seed", "kind": "seed", "log": False})
    return {"name": spec.name, "spec_file": str(spec.path), "base": spec.base,
            "base_abs": str(Path(spec.base).resolve()), "out": str(spec.out), "overrides": spec.overrides,
            "axes": axes, "random": {"n": spec.random_n, "seed": spec.random_seed} if spec.random_n else None,
            "seeds": spec.seeds, "metric": spec.metric, "mode": spec.mode, "top_k": spec.top_k,
            "early_stop": spec.early_stop, "scaling": spec.scaling, "written": now_iso(),
            "command": " ".join(["lmlab", *getattr(args, "argv", [])]),
            "trials": [{"name": t.name, "point": t.point, "values": t.values, "overrides": t.overrides(spec)}
                       for t in trials]}


def _refuse_changed(sweep_dir: Path, spec: SweepSpec, trials: list[Trial]) -> None:
    """A sweep folder is for one spec: a trial of the same name must mean the same run. Adding
    trials (more seeds, a larger random n, another grid value) is fine."""
    if not sweepdir.is_sweep_dir(sweep_dir):
        if sweep_dir.is_dir() and any(p.name != sweepdir.LOCK_FILE for p in sweep_dir.iterdir()):
            raise LmlabError(f"{sweep_dir} exists and is not a sweep folder (no {sweepdir.SPEC_FILE}). Fix: "
                             "set out: (or --out) to a new folder.")
        return
    old = sweepdir.read_spec(sweep_dir)
    before = {t.get("name"): t.get("overrides") for t in old.get("trials") or [] if isinstance(t, dict)}
    changed = [t.name for t in trials if t.name in before and before[t.name] != t.overrides(spec)]
    base_changed = old.get("base_abs") not in (None, str(Path(spec.base).resolve()))
    if changed or base_changed:
        what = (f"base config {old.get('base')} -> {spec.base}" if base_changed else
                f"trial {changed[0]} had overrides {' '.join(before[changed[0]])}")
        raise LmlabError(f"{sweep_dir} holds sweep {old.get('name')!r}, run with another spec ({what}): "
                         "its trials would resume under other settings. Fix: set out: (or --out) to a new "
                         "folder, or restore the spec.")


def _refuse_active_array(sweep_dir: Path) -> None:
    active = slurm_array.active_arrays(sweep_dir)
    if active:
        task, state = sorted(active.items())[0]
        raise LmlabError(f"{sweep_dir} has a SLURM array job in the queue ({task}: {state}): its trials "
                         f"would run twice. Fix: wait for it, or scancel {task.split('_')[0]} first (its "
                         "trials resume from their checkpoints).")


def _print_plan(spec: SweepSpec, trials: list[Trial], sweep_dir: Path, how: str) -> None:
    print(f"sweep {spec.name}: {len(trials)} trial(s) in {sweep_dir}, {how}; every config passes "
          "preflight (dry run: nothing written)")
    for t in trials:
        print(f"  {t.name}: lmlab train {spec.base} {' '.join(t.overrides(spec))} "
              f"dump_dir={t.run_dir(sweep_dir)}")


def _say_start(spec: SweepSpec, trials: list[Trial], todo: list[Trial], table: TrialTable, sweep_dir: Path,
               how: str) -> None:
    counts = table.counts()
    said = ", ".join(f"{n} {s}" for s, n in counts.items())
    print(f"sweep {spec.name}: {len(trials)} trial(s) ({said}) in {sweep_dir}; {len(todo)} to run, {how}")
    skipped = [t for t in trials if table[t.name]["status"] == sweepdir.FAILED and t not in todo]
    if skipped:
        print(f"note: {len(skipped)} failed trial(s) are not run again ({', '.join(t.name for t in skipped[:3])}"
              f"{' ...' if len(skipped) > 3 else ''}); --retry-failed runs them")


def _summary(sweep_dir: Path, code: int) -> None:
    print(format_sweep_trials(sweep_dir))
    _, text = scaling_fit(load_sweep(sweep_dir))
    if text:
        print(text)
    if code == 130:
        print(f"stopped: run the same command again to resume ({sweep_dir})")
    print(f"report: lmlab report {sweep_dir}")


# --------------------------------------------------------------------------- SLURM


def _slurm(args, spec: SweepSpec, trials: list[Trial], sweep_dir: Path) -> int:
    procs = args.gpus_per_trial or 1
    no_gpu_here = not torch.cuda.is_available()

    def left_to_nodes(cfg, problem: Problem) -> bool:  # as lmlab slurm: a login node has no GPU
        return no_gpu_here and (problem in device_problems(cfg) or problem.key == "distributed.backend")

    configs, warnings = preflight(spec, trials, sweep_dir, world_size=procs, ignore=left_to_nodes)
    show_warnings("sweep", warnings)
    with SweepLock(sweep_dir):
        _refuse_active_array(sweep_dir)
        sweepdir.write_spec(sweep_dir, resolved_spec(spec, trials, args))
        table = TrialTable(sweep_dir, trials)
        todo = table.reconcile(trials, retry_failed=args.retry_failed)
        if not todo:
            print(f"sweep {spec.name}: every trial has finished; nothing to submit")
            return 0
        opts = slurm_array.ArrayOptions(gpus_per_trial=args.gpus_per_trial, parallel=args.parallel,
                                        partition=args.partition, account=args.account, time=args.time,
                                        cpus_per_task=args.cpus_per_task)
        script = slurm_array.write_array(spec.name, sweep_dir, todo, configs, opts)
        print(f"wrote {script}: {len(todo)} task(s), at most {args.parallel or len(todo)} at once\n"
              f"  each trial: <trial>/submit.slurm and <trial>/code/config.yaml; code snapshot "
              f"{sweep_dir / sweepdir.CODE_DIR}")
        if args.dry_run:
            print(f"submit it with: sbatch {script}")
            return 0
        job = slurm_array.submit(script, sweep_dir, todo)
        for i, t in enumerate(todo):
            table.update(t.name, status=sweepdir.SUBMITTED, job=f"{job}_{i}")
    print(f"submitted array job {job}: {script}\n  logs: {sweep_dir}/<trial>/slurm-<job id>.out; "
          f"progress: lmlab runs {sweep_dir}", file=sys.stdout)
    return 0
