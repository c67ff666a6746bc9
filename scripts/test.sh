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
# The Rust verifier crate (verifiers/rust/README.md): unit, axum Router and test-vector tests;
# WEBHOOK_VECTORS=<file> also runs shared vectors. Built in a target dir kept between runs.
CARGO_TARGET_DIR="${HOME}/.cache/secure-webhooks/cargo-target" cargo test --locked --manifest-path verifiers/rust/Cargo.toml
