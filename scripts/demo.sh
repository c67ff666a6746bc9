#!/usr/bin/env bash
# README command 1: set everything up, then run the main job against the local default
# (a throw-away PostgreSQL with the Supabase stand-in): pulumi up, signed deliveries, pulumi destroy.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh >/dev/null
exec venv/bin/python -m devtools.demo
