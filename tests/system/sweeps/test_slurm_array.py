"""``lmlab sweep --slurm``: one job array whose task i runs trial i's own ``submit.slurm`` (the batch
script of ``lmlab slurm``, with its requeue behaviour). The scripts pass ``bash -n``; one task is run
as SLURM would run it (SLURM_* variables, stub srun / scontrol first on PATH), exec'ing the trial's
script, which trains the trial to the end and logs where SLURM's ``--output`` pattern points. The
same script's preemption and requeue are tests/system/distributed/test_slurm.py's."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from helpers import CONFIGS
from lmlab import rundir, sweepdir
from lmlab.cli import main

SPEC = """
name: lr-width
base: {base}
out: {out}
overrides: {{steps: 4, model.dim: 32, model.n_layers: 1, data.batch_size: 4, data.seq_len: 32,
            optim.warmup: 1, logging.every: 2, checkpoint.every: 2, eval.validation.max_steps: 1,
            eval.validation.every: 2, data.source: text, data.path: {data}, data.val_path: val.txt}}
grid: {{optim.lr: [1.0e-3, 3.0e-3], model.n_heads: [2, 4]}}
"""


def stub(bin_dir: Path, name: str, body: str) -> Path:
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / name
    path.write_text(f"#!/bin/bash\n{body}\n")
    path.chmod(0o755)
    return bin_dir


@pytest.fixture
def array(tmp_path, monkeypatch, capsys) -> Path:
    """A dry-run array of 4 CPU trials, 2 at a time, written with no cluster to ask."""
    bins = tmp_path / "no-cluster"
    for name in ("sinfo", "squeue", "scontrol", "sbatch"):
        stub(bins, name, 'echo "cannot contact slurm controller" >&2; exit 1')
    monkeypatch.setenv("PATH", f"{bins}:{os.environ['PATH']}")
    monkeypatch.chdir(tmp_path)  # relative paths in the spec: made absolute in every trial's config
    (tmp_path / "corpus.txt").write_text("To be, or not to be, that is the question.\n\n" * 200)
    (tmp_path / "val.txt").write_text("Whether 'tis nobler in the mind to suffer.\n\n" * 20)
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.format(base=CONFIGS / "quickstart.yaml", out="sweep", data="corpus.txt"))
    assert main(["sweep", str(spec), "--slurm", "--gpus-per-trial", "0", "--parallel", "2", "--dry-run",
                 "--time", "1:00:00"]) == 0
    script = (tmp_path / "sweep" / sweepdir.ARRAY_SCRIPT).resolve()
    assert f"submit it with: sbatch {script}" in capsys.readouterr().out
    return tmp_path / "sweep"


def test_the_array_script_and_every_trial_script_pass_bash_n(array):
    script = array / sweepdir.ARRAY_SCRIPT
    text = script.read_text()
    sbatch = [line for line in text.splitlines() if line.startswith("#SBATCH")]
    assert "#SBATCH --array=0-3%2" in sbatch and "#SBATCH --job-name=lr-width" in sbatch
    assert f"#SBATCH --output={array.resolve()}/tasks/%a/slurm-%j.out" in sbatch
    assert {"#SBATCH --signal=B:USR1@120", "#SBATCH --requeue", "#SBATCH --open-mode=append",
            "#SBATCH --time=1:00:00", "#SBATCH --nodes=1"} <= set(sbatch)
    assert not any("--gpus" in line for line in sbatch)  # CPU tasks request no GPU
    names = ["lr=0.001_n_heads=2", "lr=0.001_n_heads=4", "lr=0.003_n_heads=2", "lr=0.003_n_heads=4"]
    for i, name in enumerate(names):
        trial = array / name
        assert (array / "tasks" / str(i)).resolve() == trial.resolve()
        assert subprocess.run(["bash", "-n", str(trial / rundir.SUBMIT_FILE)]).returncode == 0
        cfg = yaml.safe_load((trial / "code" / rundir.CONFIG_FILE).read_text())
        assert cfg["dump_dir"] == str(trial.resolve()) and cfg["device"] == "cpu"
        assert cfg["data"]["path"] == str((array.parent / "corpus.txt").resolve())
        assert (trial / "code" / "lmlab" / "__init__.py").is_file()  # the shared snapshot
        assert (trial / "code" / "lmlab").resolve() == (array / "code" / "lmlab").resolve()
    done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert {r["name"] for r in sweepdir.read_trials(array)} == set(names)


@pytest.mark.slow
def test_an_array_task_runs_its_trial_through_the_trials_own_script(array, tmp_path):
    bins = stub(tmp_path / "bin", "srun", 'while [[ $# -gt 0 && $1 == --* ]]; do shift; done\nexec "$@"')
    stub(bins, "scontrol", 'if [ "$1 $2" = "show hostnames" ]; then echo localhost; fi')
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update(PATH=f"{bins}:{env['PATH']}", SLURM_JOB_ID="4243", SLURM_ARRAY_JOB_ID="4240",
               SLURM_ARRAY_TASK_ID="2", SLURM_NNODES="1", SLURM_JOB_NODELIST="localhost", SLURM_CPUS_PER_TASK="1")
    log = array / "tasks" / "2" / "slurm-4243.out"  # where --output=<sweep>/tasks/%a/slurm-%j.out points
    with open(log, "w") as out:
        code = subprocess.run(["bash", str(array / sweepdir.ARRAY_SCRIPT)], env=env, stdout=out,
                              stderr=subprocess.STDOUT, timeout=180).returncode
    trial = array / "lr=0.003_n_heads=2"
    text = (trial / "slurm-4243.out").read_text()
    assert code == 0, text[-3000:]
    assert "array task 2 (job 4243)" in text
    assert rundir.read_train_state(rundir.named_checkpoint(trial, rundir.FINAL))["step"] == 4
    assert rundir.read_json(trial / rundir.PROVENANCE_FILE)["slurm"]["job_id"] == "4243"
    assert not (array / "lr=0.001_n_heads=2" / rundir.METRICS_FILE).exists()  # only its own trial
