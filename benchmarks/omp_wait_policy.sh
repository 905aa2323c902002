#!/bin/bash
# `hgltr eval demo/run --split test` wall seconds, idle and beside one busy-loop process, with
# OpenMP's default wait policy (torch imported before the CLI, so no start-up choice is made) and
# with hgltr's start-up choice (hgltr_cli/omp_wait.py). Needs the demo run: `make demo` first.
# Usage: bash benchmarks/omp_wait_policy.sh [REPEATS]   (results: docs/training.md)
set -u
cd "$(dirname "$0")/.."
[ -d demo/run ] || { echo "demo/run not found: run 'make demo' first" >&2; exit 2; }
unset OMP_WAIT_POLICY
PY=.venv/bin/python
AUTO=".venv/bin/hgltr"
DEFAULT="$PY -c 'import torch, sys; from hgltr_cli.cli import main; main(sys.argv[1:])'"
timed() {
  local t0 t1
  t0=$(date +%s.%N)
  eval "$1 eval demo/run --split test --json" > /dev/null 2> /tmp/omp_wait_policy.err || cat /tmp/omp_wait_policy.err >&2
  t1=$(date +%s.%N)
  $PY -c "print(f'{$t1 - $t0:.1f} s')"
}
for _ in $(seq "${1:-1}"); do
  echo "idle, OpenMP default:  $(timed "$DEFAULT")"
  echo "idle, start-up choice: $(timed "$AUTO")"
  $PY -c "while True: pass" & busy=$!
  sleep 1
  echo "busy, OpenMP default:  $(timed "$DEFAULT")"
  echo "busy, start-up choice: $(timed "$AUTO")"
  kill $busy; wait $busy 2>/dev/null
done
