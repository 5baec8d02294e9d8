#!/usr/bin/env bash
# lmlab's GPU check in one call (<= 6 minutes on one H100/H200): training throughput of the debug
# config (eager, compiled, and under torchrun), the context-vector benchmark and a 10-epoch run,
# the three reference eval tasks, and `pytest -m gpu`; prints one table and appends it, with the
# date, device and commit, to benchmarks/RESULTS.md. See benchmarks/gpu_check.py for the rows.
#   bash benchmarks/gpu_check.sh --data ../shared/data      # on a GPU machine
#   bash benchmarks/gpu_check.sh --smoke --device cpu --no-write   # rehearsal on a CPU
set -euo pipefail
cd "$(dirname "$0")/.."
exec python benchmarks/gpu_check.py "$@"
