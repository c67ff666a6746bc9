#!/usr/bin/env bash
# Installs everything the project needs on a fresh Debian machine, idempotently:
# PostgreSQL 15 with pg_cron and what the local Supabase stand-in's C libraries are built with
# (a C compiler, libsodium, libcurl), the Python virtualenv from requirements.txt, the stand-in
# extensions, and the Pulumi engine (built from Go modules when no matching `pulumi`
# is installed). Prints the Pulumi bin directory as its last stdout line.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
started=$SECONDS
say() { printf 'setup: [%4ds] %s\n' "$((SECONDS - started))" "$*" >&2; }

missing=()
[[ -x /usr/lib/postgresql/15/bin/initdb ]] || missing+=(postgresql-15)
[[ -e /usr/lib/postgresql/15/lib/pg_cron.so ]] || missing+=(postgresql-15-cron)
command -v cc >/dev/null || missing+=(gcc)
[[ -e /usr/lib/x86_64-linux-gnu/libsodium.so.23 ]] || missing+=(libsodium23)
[[ -e /usr/lib/x86_64-linux-gnu/libcurl.so.4 ]] || missing+=(libcurl4)
if ((${#missing[@]})); then
	say "installing from Debian: ${missing[*]}"
	if [[ $(id -u) -ne 0 ]]; then
		say "error: missing ${missing[*]}; run 'sudo apt-get install -y ${missing[*]}' (root needed)"
		exit 1
	fi
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >&2 ||
		{ apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >&2; }
fi

if [[ ! -x venv/bin/python ]]; then
	say "creating the virtualenv (venv/)"
	python3 -m venv venv
fi
say "installing Python packages from requirements.txt"
venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt >&2
say "installing this repository's package (secure_webhooks, editable: components/ is its source)"
venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e . >&2

say "local Supabase stand-in extensions (the first run compiles their C libraries)"
venv/bin/python -m local_supabase install

# The Rust verifier (verifiers/rust) needs Rust >= 1.85 (rust-version in its Cargo.toml); Debian's own
# cargo is older, so it is not installed from there.
if ! command -v cargo >/dev/null; then
	say "error: cargo not found; install Rust >= 1.85 (https://rustup.rs) to build verifiers/rust"
	exit 1
fi

say "Pulumi engine"
scripts/pulumi-toolchain.sh
say "done"
