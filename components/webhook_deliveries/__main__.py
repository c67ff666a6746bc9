"""Command line: status, list, replay and purge of webhook events, and their Prometheus metrics (see
docs/operations.md and docs/metrics.md)."""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg

from secure_webhooks.delivery.ordering import read_waiting
from secure_webhooks.delivery.outbox import SCHEMA, STATUSES
from webhook_deliveries.connection import OperatorError, connect
from webhook_deliveries.health import (
    VIEW,
    EndpointStatus,
    Limits,
    age,
    clip,
    iso,
    read_alerts,
    read_endpoints,
    read_reconciler,
    read_webhooks,
    span,
    verdict,
)
from webhook_deliveries.keys import read_signing_keys
from webhook_deliveries.metrics import DEFAULT_WINDOW
from webhook_deliveries.serving import DEFAULT_LISTEN, listen_address, print_metrics, refuse_exposed, serve_metrics

MODULE_COMMAND = "python -m webhook_deliveries"
#: The year of secure_webhooks.delivery.endpoints.PARKED: an event waiting for its endpoint.
PARKED_YEAR = 9999
_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
#: The longest --since / --older-than: a century covers every event an outbox can hold.
LONGEST = timedelta(days=36_500)
#: Events the reconciler still means to deliver: purging them cancels deliveries in progress, so it takes
#: --yes. Dead ones have been given up (the reconciler drops them itself after keepDeadHours), and
#: destroy's advice purges them as they are.
NOT_DELIVERED = ("pending", "failed", "dead")
#: `status --check` defaults: longer than the first four retries (5 s, 20 s, 80 s, 5 min) of the default
#: schedule, so one receiver hiccup does not page anyone; pending events leave at the next round.
FAILING_LIMIT = timedelta(minutes=15)
PENDING_LIMIT = timedelta(minutes=10)
#: An endpoint paused this long has failed its probes for that long (one per delivery.probeSeconds, 30 s by
#: default): a receiver that is down, not one hiccup.
PAUSED_LIMIT = timedelta(minutes=10)

LIST_QUERY = f"""
SELECT event_id, webhook, "table", status, attempts, last_status_code, last_error, created_at, next_attempt_at,
       delivered_at
  FROM {VIEW}
 WHERE (%(statuses)s::text[] IS NULL OR status = ANY(%(statuses)s))
   AND (%(webhook)s::text IS NULL OR webhook = %(webhook)s)
   AND (%(since)s::interval IS NULL OR created_at >= pg_catalog.now() - %(since)s::interval)
 ORDER BY created_at DESC
 LIMIT %(limit)s
"""
LIST_FIELDS = (
    "event_id",
    "webhook",
    "table",
    "status",
    "attempts",
    "last_status_code",
    "last_error",
    "created_at",
    "next_attempt_at",
    "delivered_at",
)

#: What a purge with these filters would delete now, by status: the figure its confirmation shows.
PURGE_COUNT_QUERY = f"""
SELECT status, count(*)
  FROM {VIEW}
 WHERE status = ANY(%(statuses)s)
   AND created_at < pg_catalog.now() - %(older_than)s::interval
   AND (%(webhook)s::text IS NULL OR webhook = %(webhook)s)
 GROUP BY status
 ORDER BY status
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


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return value


def _print_json(document: dict[str, Any]) -> None:
    print(json.dumps(document, indent=2, ensure_ascii=False))


def show_status(conn: psycopg.Connection, args: argparse.Namespace) -> int:
    webhooks = read_webhooks(conn)
    reconciler = read_reconciler(conn)
    waiting = read_waiting(conn)
    endpoints = read_endpoints(conn)
    limits = Limits(args.failing_longer_than, args.pending_older_than, args.paused_for)
    alerts = read_alerts(conn)
    healthy, line = verdict(webhooks, reconciler, limits, endpoints, alerts)
    keys = None if args.check and not args.json else read_signing_keys(conn)
    if args.json:
        document: dict[str, Any] = {
            "webhooks": [status.as_json() for status in webhooks],
            "reconciler": reconciler.as_json(),
            "endpoints": [endpoint.as_json() for endpoint in endpoints],
            "signing_keys": keys.as_json(),
            "alerts": alerts.as_json(),
        }
        if waiting:  # delivery.ordering per-row: events held behind an earlier event of their row
            document["waiting_behind_earlier"] = [
                {"webhook": webhook, "events": count, "behind_dead": dead} for webhook, (count, dead) in waiting.items()
            ]
        if args.check:
            document["check"] = {"ok": healthy, "summary": line}
        _print_json(document)
    elif args.check:
        print(line)
    else:
        width = max([len("webhook"), *(len(status.webhook) for status in webhooks)])
        print(
            f"{'webhook':<{width}} {'pending':>7} {'failed':>6} {'dead':>5} {'delivered':>9} {'oldest':>7}  last error"
        )
        for status in webhooks:
            print(
                f"{status.webhook:<{width}} {status.pending:>7} {status.failed:>6} {status.dead:>5} "
                f"{status.delivered:>9} {age(status.oldest_waiting_age):>7}  {clip(status.last_error, 60)}"
            )
        if not webhooks:
            print("(no events)")
        for webhook, (count, dead) in waiting.items():
            behind_dead = f", {dead} behind a dead one (replay or purge it)" if dead else ""
            print(f"order: {count} events of {webhook} wait behind an earlier event of their row{behind_dead}")
        show_endpoints(endpoints)
        print(f"reconciler: {reconciler.summary}")
        print(f"alerts: {alerts.summary}")
        for key_line in keys.lines():
            print(key_line)
    return 0 if healthy or not args.check else 1


def show_endpoints(endpoints: list[EndpointStatus]) -> None:
    """Per endpoint: its circuit breaker (open, or paused since when, next probe), in flight, waiting, rate budget."""
    if not endpoints:
        return
    width = max([len("endpoint"), *(len(e.endpoint) for e in endpoints)])
    print(
        f"{'endpoint':<{width}} {'state':<6} {'paused since':<19}  {'next probe':<19}  "
        f"{'in flight':>9} {'waiting':>7} {'budget/s':>8}"
    )
    for e in endpoints:
        since = "-" if e.paused_since is None else f"{e.paused_since:%Y-%m-%d %H:%M:%S}"
        probe = "-" if e.next_probe_at is None else f"{e.next_probe_at:%Y-%m-%d %H:%M:%S}"
        budget = "full" if e.rate_budget is None else str(e.rate_budget)
        print(
            f"{e.endpoint:<{width}} {e.state:<6} {since:<19}  {probe:<19}  {e.in_flight:>9} {e.waiting:>7} {budget:>8}"
        )


def _next_attempt(status: str, next_attempt_at: Any) -> str:
    """A pending event without a due time is in flight: pg_net holds its request."""
    if next_attempt_at is not None and next_attempt_at.year == PARKED_YEAR:
        return "after endpoint"  # parked: sent as its endpoint's limits or its resume allow
    if next_attempt_at is not None:
        return f"{next_attempt_at:%Y-%m-%d %H:%M:%S}"
    return "in flight" if status == "pending" else "-"


def show_list(conn: psycopg.Connection, args: argparse.Namespace) -> int:
    params = {"statuses": args.status, "webhook": args.webhook, "since": args.since, "limit": args.limit}
    events = [dict(zip(LIST_FIELDS, row, strict=True)) for row in conn.execute(LIST_QUERY, params)]
    if args.json:
        stamps = ("created_at", "next_attempt_at", "delivered_at")
        rows = [{**event, "event_id": str(event["event_id"]), **{k: iso(event[k]) for k in stamps}} for event in events]
        _print_json({"events": rows})
        return 0
    width = max([len("webhook"), *(len(event["webhook"]) for event in events)])
    print(
        f"{'event id':<36}  {'webhook':<{width}} {'status':<9} {'tries':>5} {'code':>4}  "
        f"{'created':<19}  {'next attempt':<19}  error"
    )
    for event in events:
        code = "-" if event["last_status_code"] is None else event["last_status_code"]
        print(
            f"{event['event_id']!s:<36}  {event['webhook']:<{width}} {event['status']:<9} {event['attempts']:>5} "
            f"{code:>4}  {event['created_at']:%Y-%m-%d %H:%M:%S}  "
            f"{_next_attempt(event['status'], event['next_attempt_at']):<19}  {clip(event['last_error'], 50)}"
        )
    return 0


def replay(conn: psycopg.Connection, args: argparse.Namespace) -> int:
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
    return 0


def _confirmed(question: str) -> bool:
    """Ask on stderr, so a redirected stdout holds only the result; anything but yes is no."""
    print(f"{question} [y/N] ", end="", file=sys.stderr, flush=True)
    try:
        answer = sys.stdin.readline()
    except KeyboardInterrupt:
        answer = ""
    return answer.strip().lower() in ("y", "yes")


def purge(conn: psycopg.Connection, args: argparse.Namespace) -> int:
    params = {"statuses": args.status, "older_than": args.older_than, "webhook": args.webhook}
    waiting = [status for status in args.status if status in NOT_DELIVERED]
    if waiting and not args.yes:
        counts = dict(conn.execute(PURGE_COUNT_QUERY, {**params, "statuses": waiting}).fetchall())
        matching = ", ".join(f"{counts.get(status, 0)} {status}" for status in waiting)
        if not (sys.stdin is not None and sys.stdin.isatty()):
            raise OperatorError(
                f"refusing to purge events not yet delivered ({matching} match now) without --yes; nothing was deleted"
            )
        if not _confirmed(f"Delete {matching} event(s) not yet delivered, for good?"):
            print("nothing purged")
            return 1
    purged = conn.execute(
        f"SELECT {SCHEMA}.purge(%s, %s::interval, %s)", (args.status, args.older_than, args.webhook)
    ).fetchone()[0]
    print(f"purged {purged} event(s)")
    return 0


def program_name(argv0: str) -> str:
    """The name the operator typed, for usage lines they copy: Python 3.11's argparse says `__main__.py` for -m."""
    name = Path(argv0).name
    return MODULE_COMMAND if name in ("", "__main__.py") else name


def parser(prog: str) -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog=prog, description=__doc__)
    top.add_argument("--stack", help="the Pulumi stack whose postgresql:* config to use (default: the selected one)")
    top.add_argument("--cwd", type=Path, default=Path.cwd(), help="the Pulumi project directory (default: .)")
    top.add_argument("--dsn", help="a libpq conninfo to use instead of the stack config")
    commands = top.add_subparsers(dest="command", required=True)
    status = commands.add_parser(
        "status",
        help="per webhook: counts by status, oldest waiting event, last error; the reconciler job's health; "
        "which keys sign",
        description="Per webhook: counts by status, the oldest event still to be sent, the last error; "
        "then the reconciler job's health, and which keys sign (key ids only: staged, signing, retiring). "
        "With --check: one line and an exit code for monitoring.",
    )
    status.add_argument("--json", action="store_true", help="a JSON document instead of the table")
    status.add_argument(
        "--check",
        action="store_true",
        help="print one OK or CRITICAL line; exit 1 when events are dead, failing or pending too long, "
        "an endpoint is paused too long, or the reconciler job is missing, paused or its last run failed",
    )
    status.add_argument(
        "--failing-longer-than",
        type=duration,
        default=FAILING_LIMIT,
        metavar="DURATION",
        help=f"--check: alarm once a failed (retrying) event is this old (default: {span(FAILING_LIMIT)})",
    )
    status.add_argument(
        "--paused-for",
        type=duration,
        default=PAUSED_LIMIT,
        metavar="DURATION",
        help=f"--check: alarm once an endpoint has been paused by its circuit breaker this long "
        f"(default: {span(PAUSED_LIMIT)})",
    )
    status.add_argument(
        "--pending-older-than",
        type=duration,
        default=PENDING_LIMIT,
        metavar="DURATION",
        help=f"--check: alarm once a pending event is this old (default: {span(PENDING_LIMIT)})",
    )
    listing = commands.add_parser("list", help="events, newest first, with their next attempt")
    listing.add_argument("--status", type=statuses, help="e.g. failed,dead")
    listing.add_argument("--webhook", help="trigger name")
    listing.add_argument("--since", type=duration, help="created within, e.g. 6h")
    listing.add_argument("--limit", type=positive, default=50, help="at most this many events (default: 50)")
    listing.add_argument("--json", action="store_true", help="a JSON document instead of the table")
    replaying = commands.add_parser("replay", help="send events again (a fresh attempt budget each)")
    replaying.add_argument("event_ids", nargs="*", help="event ids (webhook-id); default: by filter")
    replaying.add_argument("--status", type=statuses, help="default: failed,dead")
    replaying.add_argument("--webhook", help="trigger name")
    replaying.add_argument("--since", type=duration, help="created within, e.g. 24h")
    purging = commands.add_parser(
        "purge",
        help="delete events for good",
        description="Delete events for good. Events not yet delivered (pending, failed, dead) are deleted only "
        "with --yes, or after a yes on a terminal.",
    )
    purging.add_argument(
        "--status", type=statuses, required=True, help="e.g. delivered,dead (pending, failed and dead need --yes)"
    )
    purging.add_argument("--older-than", type=duration, default=timedelta(0), help="e.g. 7d (default: any age)")
    purging.add_argument("--webhook", help="trigger name")
    purging.add_argument("--yes", "-y", action="store_true", help="delete pending and failed events without asking")
    window_help = (
        f"latencies and attempt outcomes cover this recent window (default: {span(DEFAULT_WINDOW)}); "
        "at least the scrape interval"
    )
    metrics = commands.add_parser(
        "metrics", help="print the Prometheus metrics once", description="Print the Prometheus metrics once."
    )
    metrics.add_argument("--window", type=duration, default=DEFAULT_WINDOW, metavar="DURATION", help=window_help)
    serving = commands.add_parser(
        "serve-metrics",
        help="serve the Prometheus metrics on /metrics",
        description="Serve the Prometheus metrics on http://LISTEN/metrics, read from the database at each scrape.",
    )
    serving.add_argument(
        "--listen",
        type=listen_address,
        default=listen_address(DEFAULT_LISTEN),
        metavar="HOST:PORT",
        help=f"an IP address (IPv6 in brackets) and port; port 0 picks a free one (default: {DEFAULT_LISTEN})",
    )
    serving.add_argument(
        "--allow-non-loopback",
        action="store_true",
        help="serve on a non-loopback address: the metrics name every webhook and have no authentication",
    )
    serving.add_argument("--window", type=duration, default=DEFAULT_WINDOW, metavar="DURATION", help=window_help)
    return top


COMMANDS = {
    "status": show_status,
    "list": show_list,
    "replay": replay,
    "purge": purge,
    "metrics": print_metrics,
    "serve-metrics": serve_metrics,
}


def main(argv: list[str] | None = None) -> int:
    args = parser(program_name(sys.argv[0])).parse_args(argv)
    try:
        if args.command == "serve-metrics":
            refuse_exposed(args.listen, args.allow_non_loopback)
        with connect(args.dsn, args.stack, args.cwd) as conn:
            if conn.execute("SELECT pg_catalog.to_regclass(%s)", (VIEW,)).fetchone()[0] is None:
                raise OperatorError(
                    f"{VIEW} does not exist in this database: the stack is not deployed or uses "
                    "secure-webhooks:delivery.mode direct"
                )
            return COMMANDS[args.command](conn, args)
    except OperatorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"error: {first}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
