#!/usr/bin/env bash
# The project's test command (README): lint, every test (tests/test_bench_smoke.py runs the benchmark's smoke
# run, `python -m bench --smoke`, and checks it prints no goal verdicts), a smoke run of the Pulumi scaling
# benchmark, the Rust verifier.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
pulumi_bin=$(scripts/setup.sh | tail -n 1)
export PATH="$pulumi_bin:$PATH"
# tests/test_verifier_vectors.py records vectors from real database requests here, and the Rust verifier's
# tests check them too (they fail if the file is missing). With pytest arguments (a partial run) only the
# crate's own sample vectors run. Relative paths are made absolute: cargo runs tests from the crate folder.
if [ $# -eq 0 ]; then export WEBHOOK_VECTORS="${WEBHOOK_VECTORS:-$PWD/.local/webhook-vectors.json}"; fi
if [ -n "${WEBHOOK_VECTORS:-}" ] && [ "${WEBHOOK_VECTORS#/}" = "$WEBHOOK_VECTORS" ]; then
	export WEBHOOK_VECTORS="$PWD/$WEBHOOK_VECTORS"
fi
venv/bin/ruff check .
venv/bin/ruff format --check .
venv/bin/pytest -q --durations=25 "$@"
venv/bin/python -m bench.pulumi_scaling --smoke
# The Rust verifier crate (verifiers/rust/README.md): unit, axum Router and vector tests, built in a target
# directory kept between runs.
CARGO_TARGET_DIR="${HOME}/.cache/secure-webhooks/cargo-target" cargo test --locked --manifest-path verifiers/rust/Cargo.toml
