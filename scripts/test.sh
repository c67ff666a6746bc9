#!/usr/bin/env bash
# The project's test command (README): lint, every test, and a smoke run of the benchmark.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
pulumi_bin=$(scripts/setup.sh | tail -n 1)
export PATH="$pulumi_bin:$PATH"
venv/bin/ruff check .
venv/bin/ruff format --check .
venv/bin/pytest -q "$@"
venv/bin/python -m bench --smoke
venv/bin/python -m bench.pulumi_scaling --smoke
