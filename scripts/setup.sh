#!/usr/bin/env bash
# Installs everything the project needs on a fresh Debian machine, idempotently:
# PostgreSQL 15 with pg_cron and what the local Supabase stand-in's C libraries are built with
# (a C compiler, libsodium, libcurl), the Python virtualenv venv/ from requirements-dev.txt (the
# program's requirements.txt, this repository's package included, plus test and lint tools), the
# stand-in extensions, and the Pulumi engine (built from Go modules when no matching `pulumi` is
# installed).
#
# stdout: one line, the Pulumi bin directory (scripts/test.sh reads it).
# stderr: one line per step with the elapsed seconds. The tools' own output (apt, pip, the C compiler,
#         go) goes to .local/setup.log (SECURE_WEBHOOKS_SETUP_LOG overrides it); on a failure its
#         path and last lines are shown.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# The elapsed seconds of every progress line count from here (or from the caller's start, scripts/demo.sh).
export SECURE_WEBHOOKS_T0=${SECURE_WEBHOOKS_T0:-$EPOCHSECONDS}
log=${SECURE_WEBHOOKS_SETUP_LOG:-$PWD/.local/setup.log}
mkdir -p "$(dirname "$log")"
printf '== scripts/setup.sh %s\n' "$(date -u +%FT%TZ)" >"$log"

say() { printf 'setup: [%4ds] %s\n' "$((EPOCHSECONDS - SECURE_WEBHOOKS_T0))" "$*" >&2; }

# fail MESSAGE: say what failed, where the full output is and its last lines, then exit.
fail() {
	say "error: $*"
	printf 'setup: the tools'"'"' output is in %s; its last lines:\n' "$log" >&2
	tail -n 20 "$log" | sed 's/^/    /' >&2
	exit 1
}

# step TITLE COMMAND...: one progress line, the command's output appended to the log.
step() {
	local title=$1
	shift
	say "$title"
	printf '\n== %s: %s\n' "$title" "$*" >>"$log"
	"$@" >>"$log" 2>&1 || fail "$title"
}

missing=()
[[ -x /usr/lib/postgresql/15/bin/initdb ]] || missing+=(postgresql-15)
[[ -e /usr/lib/postgresql/15/lib/pg_cron.so ]] || missing+=(postgresql-15-cron)
# The metrics tests scrape `webhook-deliveries serve-metrics` with a real Prometheus and check the alert rules
# with its promtool (docs/metrics.md).
command -v promtool >/dev/null || missing+=(prometheus)
command -v cc >/dev/null || missing+=(gcc)
[[ -e /usr/lib/x86_64-linux-gnu/libsodium.so.23 ]] || missing+=(libsodium23)
[[ -e /usr/lib/x86_64-linux-gnu/libcurl.so.4 ]] || missing+=(libcurl4)
if ((${#missing[@]})); then
	if [[ $(id -u) -ne 0 ]]; then
		say "error: missing ${missing[*]}; run 'sudo apt-get install -y ${missing[*]}' (root needed)"
		exit 1
	fi
	apt_install() {
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" ||
			{ apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"; }
	}
	step "installing from Debian: ${missing[*]}" apt_install
fi

if [[ ! -x venv/bin/python ]]; then
	step "creating the virtualenv (venv/)" python3 -m venv venv
fi
# pip runs again only when what it installs from changed (or the virtualenv is new): an up-to-date
# run would still rebuild the editable package from PyPI's setuptools on every call.
stamp=venv/.secure-webhooks-requirements
wanted=$(cat requirements.txt requirements-dev.txt pyproject.toml | sha256sum | cut -c1-16)
if [[ $(cat "$stamp" 2>/dev/null) != "$wanted" ]]; then
	step "installing Python packages from requirements-dev.txt (includes requirements.txt)" \
		venv/bin/python -m pip install --disable-pip-version-check --progress-bar off -r requirements-dev.txt
	printf '%s\n' "$wanted" >"$stamp"
else
	say "Python packages are up to date (requirements.txt, requirements-dev.txt)"
fi

step "local Supabase stand-in extensions (the first run compiles their C libraries)" \
	venv/bin/python -m local_supabase install

# The Rust verifier (verifiers/rust) needs Rust >= 1.85 (rust-version in its Cargo.toml); Debian's own
# cargo is older, so it is not installed from there.
if ! command -v cargo >/dev/null; then
	say "error: cargo not found; install Rust >= 1.85 (https://rustup.rs) to build verifiers/rust"
	exit 1
fi

# The toolchain script prints its own timed steps (each step's output in a log of its own, named on failure).
say "Pulumi engine (scripts/pulumi-toolchain.sh)"
bin_dir=$(scripts/pulumi-toolchain.sh) || { say "error: the Pulumi engine build failed (see above)"; exit 1; }
say "done"
printf '%s\n' "$bin_dir"
