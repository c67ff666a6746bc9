#!/usr/bin/env bash
# Installs everything the project needs on a fresh Debian machine, idempotently:
# PostgreSQL 15 (for the local Supabase stand-in), the Python virtualenv from
# requirements.txt, and the Pulumi engine (built from Go modules when no matching
# `pulumi` is installed). Prints the Pulumi bin directory as its last stdout line.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
started=$SECONDS
say() { printf 'setup: [%4ds] %s\n' "$((SECONDS - started))" "$*" >&2; }

if [[ ! -x /usr/lib/postgresql/15/bin/initdb ]]; then
	say "installing PostgreSQL 15 from Debian"
	if [[ $(id -u) -ne 0 ]]; then
		say "error: PostgreSQL 15 is missing; run 'sudo apt-get install -y postgresql-15' (root needed)"
		exit 1
	fi
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql-15 >&2 ||
		{ apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql-15 >&2; }
fi

if [[ ! -x venv/bin/python ]]; then
	say "creating the virtualenv (venv/)"
	python3 -m venv venv
fi
say "installing Python packages from requirements.txt"
venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt >&2

say "Pulumi engine"
scripts/pulumi-toolchain.sh
say "done"
