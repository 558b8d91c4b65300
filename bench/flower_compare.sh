#!/usr/bin/env bash
# taskscope and Flower on the same Celery event stream, one command:
#   bench/flower_compare.sh            # 25k tasks = 100k task events, as fast as Python emits
#   bench/flower_compare.sh --quick    # 2k tasks, seconds (a smoke run)
#   bench/flower_compare.sh --tasks 50000 --max-tasks 100000 --json
# Needs PyPI once (the .venv-bench venv with the pinned Celery and Flower); kept out of CI.
# Runs under flock /tmp/taskscope-bench.lock so that no other benchmark shares the CPUs.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv-bench/bin/celery ] || ! cmp -s bench/requirements.txt .venv-bench/.requirements; then
  echo "flower_compare: creating .venv-bench (Celery + Flower from PyPI)" >&2
  python3 -m venv .venv-bench
  .venv-bench/bin/pip install -q --upgrade pip
  .venv-bench/bin/pip install -q -r bench/requirements.txt
  cp bench/requirements.txt .venv-bench/.requirements
fi
cargo build --release --quiet
args=()
for a in "$@"; do
  if [ "$a" = --quick ]; then args+=(--tasks 2000); else args+=("$a"); fi
done
exec flock /tmp/taskscope-bench.lock .venv-bench/bin/python bench/flower_compare.py "${args[@]}"
