"""A local Supabase that delivers: PostgreSQL 15 with the stand-ins, pg_net's worker and the reconciler's cadence.

``start`` runs until ``stop``: the cluster, and a background process running pg_net's worker and
the reconciler's job back to back (Debian's pg_cron 1.4 alone would run it once a minute), plus,
with ``--receiver PORT``, a receiver on 127.0.0.1 verifying tokens as the orchestrator does.
``status`` says what runs; ``stop`` ends it all and deletes the state directory's files.

A session by hand, from the repository (after scripts/setup.sh):

  venv/bin/python -m local_supabase start --example-tables --receiver 8787 --state-dir .local/db
  export PATH="$(scripts/pulumi-toolchain.sh 2>/dev/null):$PATH"
  export PULUMI_BACKEND_URL="file://$PWD/.local/pulumi" PULUMI_CONFIG_PASSPHRASE=local
  mkdir -p .local/pulumi && pulumi stack init byhand
  # the three config commands `start` printed, with its port, e.g.:
  pulumi config set-all --plaintext secure-webhooks:orchestratorUrl=http://127.0.0.1:8787 \\
      --plaintext secure-webhooks:manageExtensions=false --plaintext postgresql:host=127.0.0.1 \\
      --plaintext postgresql:port=PORT --plaintext postgresql:sslmode=disable --plaintext postgresql:superuser=false
  pulumi config set --secret postgresql:password < .local/db/postgres.password
  pulumi config set --secret secure-webhooks:jwtSecret < .local/db/jwt_secret
  pulumi up --yes
  venv/bin/python -m local_supabase sql --state-dir .local/db \\
      "INSERT INTO public.resumes (name, storage_path) VALUES ('cv.pdf', 'resumes/')"
  cat .local/db/receiver.log        # 200 accepted POST /ingest/interns/individual INSERT public.resumes id=1 ...
  venv/bin/python -m local_supabase status --state-dir .local/db
  pulumi destroy --yes && pulumi stack rm --yes byhand
  venv/bin/python -m local_supabase stop --state-dir .local/db

Without --receiver, point secure-webhooks:orchestratorUrl at your own receiver (an https ngrok URL,
or http on loopback) and set secure-webhooks:jwtSecret to the key it verifies with.
``install`` builds and installs the stand-in extensions (scripts/setup.sh runs it as root).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .bootstrap import LOGIN_ROLES
from .cluster import DEFAULT_PG_BINDIR
from .extensions import install_stand_in_extensions
from .session import SessionError, StartOptions, run_sql, serve, start, status_report, stop


def _setting(text: str) -> tuple[str, str]:
    name, separator, value = text.partition("=")
    if not separator or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 0 to 65535, got {text!r}")
    return int(text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m local_supabase", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("install", help="install the stand-in extensions into the server's directories")
    start_command = commands.add_parser("start", help="start everything in the background until `stop`")
    start_command.add_argument("--state-dir", type=Path, required=True)
    start_command.add_argument(
        "--example-tables", action="store_true", help="create the seed's public.resumes and public.zip_archives"
    )
    start_command.add_argument(
        "--receiver",
        type=_port,
        metavar="PORT",
        help="also run a verifying receiver on 127.0.0.1:PORT (0: any free port) with a new key in DIR/jwt_secret",
    )
    start_command.add_argument(
        "--set",
        dest="settings",
        type=_setting,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra postgresql.conf parameter, e.g. track_functions=all (repeatable)",
    )
    start_command.add_argument(
        "--no-pg-net", action="store_true", help="do not preinstall pg_net (then the stack needs manageExtensions)"
    )
    start_command.add_argument("--no-pgjwt", action="store_true", help="do not preinstall pgjwt (Supabase PG15 does)")
    start_command.add_argument(
        "--no-pg-cron", action="store_true", help="preload pg_cron but do not CREATE EXTENSION it"
    )
    for name, text in (
        ("status", "say what runs (exit status 1 unless everything does)"),
        ("stop", "stop the background process and the cluster, delete their files"),
    ):
        commands.add_parser(name, help=text).add_argument("--state-dir", type=Path, required=True)
    sql = commands.add_parser("sql", help="run SQL as a login role and print what it returns")
    sql.add_argument("--state-dir", type=Path, required=True)
    sql.add_argument("--role", default="postgres", choices=list(LOGIN_ROLES))
    sql.add_argument("statements")
    serve_command = commands.add_parser("serve", help="what `start` runs in the background (foreground, until SIGTERM)")
    serve_command.add_argument("--state-dir", type=Path, required=True)
    serve_command.add_argument("--receiver", type=_port, metavar="PORT")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the process exit status."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "install":
            install_stand_in_extensions(DEFAULT_PG_BINDIR)
        elif args.command == "start":
            options = StartOptions(
                settings=dict(args.settings),
                example_tables=args.example_tables,
                receiver_port=args.receiver,
                preinstall_pg_net=not args.no_pg_net,
                preinstall_pgjwt=not args.no_pgjwt,
                preinstall_pg_cron=not args.no_pg_cron,
            )
            print(start(args.state_dir, options))
        elif args.command == "status":
            report, everything_runs = status_report(args.state_dir)
            print(report)
            return 0 if everything_runs else 1
        elif args.command == "stop":
            print(stop(args.state_dir))
        elif args.command == "sql":
            print(run_sql(args.state_dir, args.statements, args.role))
        else:
            return serve(args.state_dir, args.receiver)
    except (SessionError, OSError) as error:  # OSError: e.g. a state directory that cannot be written
        print(f"local_supabase {args.command}: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"local_supabase {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
