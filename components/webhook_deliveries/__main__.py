"""Command line: status, list, replay and purge of webhook events (see README, "Operate deliveries")."""

from __future__ import annotations

import argparse
import re
import sys
from datetime import timedelta
from pathlib import Path

import psycopg

from secure_webhooks.delivery.outbox import DELIVERIES_VIEW, SCHEMA, STATUSES
from secure_webhooks.delivery.reconciler import JOB_NAME
from webhook_deliveries.connection import OperatorError, connect

VIEW = f"{SCHEMA}.{DELIVERIES_VIEW}"
_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
#: The longest --since / --older-than: a century covers every event an outbox can hold.
LONGEST = timedelta(days=36_500)

STATUS_QUERY = f"""
SELECT webhook, "table",
       count(*) FILTER (WHERE status = 'pending'),
       count(*) FILTER (WHERE status = 'failed'),
       count(*) FILTER (WHERE status = 'dead'),
       count(*) FILTER (WHERE status = 'delivered'),
       pg_catalog.now() - min(created_at) FILTER (WHERE status IN ('pending', 'failed')),
       (array_agg(last_error ORDER BY created_at DESC)
          FILTER (WHERE last_error IS NOT NULL AND status <> 'delivered'))[1]
  FROM {VIEW}
 GROUP BY webhook, "table"
 ORDER BY webhook
"""

LIST_QUERY = f"""
SELECT event_id, webhook, status, attempts, coalesce(last_status_code::text, '-'), created_at, next_attempt_at,
       coalesce(last_error, '')
  FROM {VIEW}
 WHERE (%(statuses)s::text[] IS NULL OR status = ANY(%(statuses)s))
   AND (%(webhook)s::text IS NULL OR webhook = %(webhook)s)
   AND (%(since)s::interval IS NULL OR created_at >= pg_catalog.now() - %(since)s::interval)
 ORDER BY created_at DESC
 LIMIT %(limit)s
"""


#: The reconciler's job and its last finished run: a round that fails (a lock it could not get, a trigger
#: on pg_net's tables) fails for every webhook, and shows nowhere in the events.
JOB_QUERY = """
SELECT j.active, d.status, d.end_time, d.return_message
  FROM cron.job AS j
  LEFT JOIN LATERAL (SELECT r.status, r.end_time, r.return_message FROM cron.job_run_details AS r
                      WHERE r.jobid = j.jobid AND r.status IN ('succeeded', 'failed')
                      ORDER BY r.runid DESC LIMIT 1) AS d ON true
 WHERE j.jobname = %s
"""


def duration(text: str) -> timedelta:
    match = _DURATION.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 90s, 30m, 6h or 7d")
    try:
        value = timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    except OverflowError:  # beyond timedelta's range: argparse would show a traceback
        value = None
    if value is None or value > LONGEST:
        raise argparse.ArgumentTypeError(f"{text!r} is too long: at most {LONGEST.days}d")
    return value


def statuses(text: str) -> list[str]:
    chosen = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [status for status in chosen if status not in STATUSES]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"statuses are a comma-separated list of {', '.join(STATUSES)}")
    return chosen


def _age(value: timedelta | None) -> str:
    if value is None:
        return "-"
    seconds = int(value.total_seconds())
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 86_400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86_400}d{seconds % 86_400 // 3600:02d}h"


def _clip(text: str | None, width: int) -> str:
    text = (text or "-").replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def show_status(conn: psycopg.Connection) -> None:
    rows = conn.execute(STATUS_QUERY).fetchall()
    header = f"{'webhook':<40} {'pending':>7} {'failed':>6} {'dead':>5} {'delivered':>9} {'oldest':>7}  last error"
    print(header)
    for webhook, _table, pending, failed, dead, delivered, oldest, error in rows:
        print(
            f"{_clip(webhook, 40):<40} {pending:>7} {failed:>6} {dead:>5} {delivered:>9} {_age(oldest):>7}  "
            f"{_clip(error, 60)}"
        )
    if not rows:
        print("(no events)")
    print(f"reconciler: {reconciler_health(conn)}")


def reconciler_health(conn: psycopg.Connection) -> str:
    """One line on the pg_cron job that sends the events: missing, paused, or how its last run ended."""
    try:
        with conn.transaction():
            job = conn.execute(JOB_QUERY, (JOB_NAME,)).fetchone()
    except (psycopg.errors.InsufficientPrivilege, psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName):
        return "(pg_cron's tables are not readable by this role)"
    if job is None:
        return f"NO pg_cron job {JOB_NAME}: nothing sends these events (pulumi up schedules it)"
    active, status, ended, message = job
    state = f"job {JOB_NAME}" + ("" if active else " is PAUSED (active = false)")
    if status is None:
        return f"{state}, no finished run yet"
    if status == "failed":
        return f"{state}, last run FAILED at {ended:%Y-%m-%d %H:%M:%S}: {_clip(message, 160)}"
    return f"{state}, last run succeeded at {ended:%Y-%m-%d %H:%M:%S}"


def show_list(conn: psycopg.Connection, args: argparse.Namespace) -> None:
    params = {
        "statuses": args.status,
        "webhook": args.webhook,
        "since": args.since,
        "limit": args.limit,
    }
    print(f"{'event id':<36}  {'webhook':<32} {'status':<9} {'tries':>5} {'code':>4}  created              error")
    for event_id, webhook, status, attempts, code, created, _next, error in conn.execute(LIST_QUERY, params):
        print(
            f"{event_id!s:<36}  {_clip(webhook, 32):<32} {status:<9} {attempts:>5} {code:>4}  "
            f"{created:%Y-%m-%d %H:%M:%S}  {_clip(error, 50)}"
        )


def replay(conn: psycopg.Connection, args: argparse.Namespace) -> None:
    if args.event_ids:
        replayed = sum(
            bool(conn.execute(f"SELECT {SCHEMA}.replay_event(%s::uuid)", (event_id,)).fetchone()[0])
            for event_id in args.event_ids
        )
    else:
        replayed = conn.execute(
            f"SELECT {SCHEMA}.replay(%s, pg_catalog.now() - %s::interval, NULL, %s)",
            (args.webhook, args.since, args.status or ["failed", "dead"]),
        ).fetchone()[0]
    print(f"replayed {replayed} event(s); the reconciler sends them at its next round")


def purge(conn: psycopg.Connection, args: argparse.Namespace) -> None:
    purged = conn.execute(
        f"SELECT {SCHEMA}.purge(%s, %s::interval, %s)", (args.status, args.older_than, args.webhook)
    ).fetchone()[0]
    print(f"purged {purged} event(s)")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m webhook_deliveries", description=__doc__)
    top.add_argument("--stack", help="the Pulumi stack whose postgresql:* config to use (default: the selected one)")
    top.add_argument("--cwd", type=Path, default=Path.cwd(), help="the Pulumi project directory (default: .)")
    top.add_argument("--dsn", help="a libpq conninfo to use instead of the stack config")
    commands = top.add_subparsers(dest="command", required=True)
    commands.add_parser("status", help="per webhook: counts by status, oldest waiting event, last error")
    listing = commands.add_parser("list", help="events, newest first")
    listing.add_argument("--status", type=statuses, help="e.g. failed,dead")
    listing.add_argument("--webhook", help="trigger name")
    listing.add_argument("--since", type=duration, help="created within, e.g. 6h")
    listing.add_argument("--limit", type=int, default=50)
    replaying = commands.add_parser("replay", help="send events again (a fresh attempt budget each)")
    replaying.add_argument("event_ids", nargs="*", help="event ids (webhook-id); default: by filter")
    replaying.add_argument("--status", type=statuses, help="default: failed,dead")
    replaying.add_argument("--webhook", help="trigger name")
    replaying.add_argument("--since", type=duration, help="created within, e.g. 24h")
    purging = commands.add_parser("purge", help="delete events for good")
    purging.add_argument("--status", type=statuses, required=True, help="e.g. delivered,dead (pending must be named)")
    purging.add_argument("--older-than", type=duration, default=timedelta(0), help="e.g. 7d (default: any age)")
    purging.add_argument("--webhook", help="trigger name")
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        with connect(args.dsn, args.stack, args.cwd) as conn:
            if conn.execute("SELECT pg_catalog.to_regclass(%s)", (VIEW,)).fetchone()[0] is None:
                raise OperatorError(
                    f"{VIEW} does not exist in this database: the stack is not deployed or uses "
                    "secure-webhooks:delivery.mode direct"
                )
            if args.command == "status":
                show_status(conn)
            elif args.command == "list":
                show_list(conn, args)
            elif args.command == "replay":
                replay(conn, args)
            else:
                purge(conn, args)
    except OperatorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"error: {first}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
