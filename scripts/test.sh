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
# The Rust verifier crate (verifiers/rust/README.md): unit, axum Router and test-vector tests, built in a target dir
# kept between runs. After a full pytest run it also checks the vectors tests/test_verifier_vectors.py made from real
# database requests (and fails if that file is missing); with pytest arguments, only the crate's sample vectors.
if [ $# -eq 0 ]; then export WEBHOOK_VECTORS="${WEBHOOK_VECTORS:-$PWD/.local/webhook-vectors.json}"; fi
if [ -n "${WEBHOOK_VECTORS:-}" ] && [ "${WEBHOOK_VECTORS#/}" = "$WEBHOOK_VECTORS" ]; then export WEBHOOK_VECTORS="$PWD/$WEBHOOK_VECTORS"; fi
CARGO_TARGET_DIR="${HOME}/.cache/secure-webhooks/cargo-target" cargo test --locked --manifest-path verifiers/rust/Cargo.toml
