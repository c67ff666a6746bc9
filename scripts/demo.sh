#!/usr/bin/env bash
# README command 1: set everything up, then run the main job against the local default
# (a throw-away PostgreSQL with the Supabase stand-in): pulumi up, signed deliveries, pulumi destroy.
# On screen: setup's timed steps (the tools' own output goes to .local/setup.log), then the demo's story.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export SECURE_WEBHOOKS_T0=$EPOCHSECONDS # setup's progress lines count from the demo's start
say() { printf 'demo: [%4ds] %s\n' "$((EPOCHSECONDS - SECURE_WEBHOOKS_T0))" "$*" >&2; }
say "setting up (the first run on a fresh machine builds the Pulumi engine and more: minutes)"
scripts/setup.sh >/dev/null
status=0
venv/bin/python -m devtools.demo || status=$?
say "finished"
exit "$status"
