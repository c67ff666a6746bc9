"""CLI: ``python -m local_supabase install``, ``python -m local_supabase start|stop --state-dir DIR``.

``install`` builds and installs the stand-in extensions (scripts/setup.sh runs it as root, so later
runs need no write access to the server's directories); ``start`` does the same when needed.

``start`` leaves a cluster running after the command exits and writes its connection facts to
``DIR/connection.json`` for demo and benchmark scripts; ``stop`` reads that file, stops the
cluster, deletes its data and removes the file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .cluster import DEFAULT_PG_BINDIR, STATE_FILE_NAME, LocalSupabase
from .extensions import install_stand_in_extensions


def _setting(text: str) -> tuple[str, str]:
    name, separator, value = text.partition("=")
    if not separator or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m local_supabase", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("install", help="install the stand-in extensions into the server's directories")
    start = commands.add_parser("start", help="start a cluster and write DIR/connection.json")
    start.add_argument("--state-dir", type=Path, required=True)
    start.add_argument(
        "--set",
        dest="settings",
        type=_setting,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra postgresql.conf parameter, e.g. track_functions=all (repeatable)",
    )
    start.add_argument("--preinstall-pg-net", action="store_true", help="CREATE EXTENSION pg_net at bootstrap")
    start.add_argument("--no-pgjwt", action="store_true", help="do not preinstall pgjwt (Supabase PG15 does)")
    start.add_argument("--no-pg-cron", action="store_true", help="preload pg_cron but do not CREATE EXTENSION it")
    stop = commands.add_parser("stop", help="stop the cluster recorded in DIR/connection.json")
    stop.add_argument("--state-dir", type=Path, required=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the process exit status."""
    args = _parser().parse_args(argv)
    if args.command == "install":
        install_stand_in_extensions(DEFAULT_PG_BINDIR)
        return 0
    if args.command == "start":
        if (args.state_dir / STATE_FILE_NAME).exists():
            print(f"{args.state_dir / STATE_FILE_NAME} exists: stop that cluster first", file=sys.stderr)
            return 1
        cluster = LocalSupabase.start(
            settings=dict(args.settings),
            preinstall_pgjwt=not args.no_pgjwt,
            preinstall_pg_net=args.preinstall_pg_net,
            preinstall_pg_cron=not args.no_pg_cron,
            stop_at_exit=False,
        )
        try:
            print(cluster.write_state(args.state_dir))
        except BaseException:
            cluster.stop()
            raise
        return 0
    state_file = args.state_dir / STATE_FILE_NAME
    if not state_file.exists():
        print(f"{state_file} not found: no cluster to stop", file=sys.stderr)
        return 1
    LocalSupabase.from_state(args.state_dir).stop()
    state_file.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
