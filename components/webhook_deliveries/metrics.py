"""Prometheus metrics of the outbox, read from the database on each scrape (see docs/metrics.md).

An outbox keeps delivered events for a week by default (`keepDeliveredHours`): millions of rows at a
modest rate. A scrape must not cost more as they pile up, so no query here reads all of them:

- what is still to be sent (pending, failed, dead) is counted through the partial indexes the
  reconciler itself uses, so it costs what the backlog holds;
- latencies and attempt outcomes are those of a recent window (`--window`, 5 minutes by default),
  read by range scans on `events_delivered` and `attempts_finished`, so they cost what that
  window delivered. They are gauges of the window, not counters since the start: the window is
  the same whichever process scrapes and whenever it restarts, and `metrics` prints the same
  figures `serve-metrics` serves.

All of one scrape is read in one read-only REPEATABLE READ transaction: its figures are of one
instant, and every age is computed by the database's clock.

Endpoints (the circuit breaker and limits of secure_webhooks/delivery/endpoints.py) are read in the same
transaction: one row per endpoint, its in-flight and parked counts through partial indexes that hold only those.

So are the alerts (secure_webhooks/delivery/alerts.py): their own small table, never the events, which holds an
alert per state change or per summary interval and loses them a week after they are done.
"""

from __future__ import annotations

import itertools
import sys
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta

import psycopg
from prometheus_client.core import GaugeHistogramMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from secure_webhooks.delivery.alerts import ALERTS, KINDS, STATES, UNPOSTED_STATES
from secure_webhooks.delivery.outbox import ATTEMPTS, EVENTS, SCHEMA, STATUS_EXPRESSION
from webhook_deliveries.connection import OperatorError
from webhook_deliveries.health import (
    EndpointStatus,
    ReconcilerHealth,
    alerts_installed,
    read_endpoints,
    read_reconciler,
)

PREFIX = "secure_webhooks"
#: Upper bounds of the latency buckets, in seconds: from a fast first delivery to the retry schedule's
#: last attempts (the default schedule's 12th attempt comes about four days after the first).
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0, 86400.0, 345600.0)
DEFAULT_WINDOW = timedelta(minutes=5)
#: A scrape that takes longer is cut short by the database rather than pile up behind the next one
#: (Prometheus gives up on a scrape after 10 s by default).
STATEMENT_TIMEOUT = "5s"

_EVENTS = f"{SCHEMA}.{EVENTS}"
_ATTEMPTS = f"{SCHEMA}.{ATTEMPTS}"
_WAITING_STATES = ("pending", "sending", "dead")

#: One branch per internal state, so each reads its own partial index (events_due, events_in_flight,
#: events_dead); the deliveries view's names: an event in flight is pending, a retry is failed.
WAITING_QUERY = f"""
SELECT w.webhook, w.status, pg_catalog.count(*),
       EXTRACT(epoch FROM pg_catalog.now() - pg_catalog.min(w.created_at))::float8
  FROM ({
    " UNION ALL ".join(
        f"SELECT e.webhook, {STATUS_EXPRESSION} AS status, e.created_at FROM {_EVENTS} AS e WHERE e.state = '{state}'"
        for state in _WAITING_STATES
    )
}) AS w
 GROUP BY w.webhook, w.status
 ORDER BY w.webhook, w.status
"""

#: What an attempt's outcome was, in the classes an operator acts on. An attempt with no request never
#: left the database (a missing signing key, a URL pg_net refuses); pg_net's timeouts say "Timeout of
#: N ms reached"; a 2xx the reconciler did not accept lacked a valid receipt.
OUTCOME_EXPRESSION = """CASE
    WHEN a.request_id IS NULL THEN 'not_sent'
    WHEN a.status_code BETWEEN 200 AND 299 AND a.error IS NULL THEN '2xx'
    WHEN a.status_code BETWEEN 200 AND 299 THEN '2xx_rejected'
    WHEN a.status_code BETWEEN 300 AND 399 THEN '3xx'
    WHEN a.status_code BETWEEN 400 AND 499 THEN '4xx'
    WHEN a.status_code BETWEEN 500 AND 599 THEN '5xx'
    WHEN a.status_code IS NOT NULL THEN 'other_status'
    WHEN a.error ~* 'time(d)? ?out' THEN 'timeout'
    WHEN a.error LIKE 'request vanished%%' OR a.error LIKE 'request lost%%' THEN 'lost'
    ELSE 'connection_error'
  END"""


def _bucket(latency: str) -> str:
    """SQL: the index in LATENCY_BUCKETS of the smallest bound at least `latency` (Prometheus' `le` is
    inclusive), or len(LATENCY_BUCKETS) for +Inf only. width_bucket counts the bounds at most its operand,
    so it is given both negated: it then counts the bounds at least the latency. One expression per row
    instead of one filtered count per bound: most of a large window's cost was in those counts."""
    negated = ", ".join(repr(-bound) for bound in reversed(LATENCY_BUCKETS))
    return f"{len(LATENCY_BUCKETS)} - pg_catalog.width_bucket(-({latency}), ARRAY[{negated}]::float8[])"


#: Attempts finished within the window by outcome, and with them the first attempts' latencies by bucket:
#: one pass over the window's attempts, one look-up of each one's event (its webhook, its creation). A
#: replayed event starts again at attempt 1: its new first attempt counts, measured from its creation.
ATTEMPTS_QUERY = f"""
SELECT s.webhook, s.outcome, s.bucket, pg_catalog.count(*), COALESCE(pg_catalog.sum(s.latency), 0)
  FROM (SELECT l.webhook, l.outcome, CASE WHEN l.attempt = 1 THEN {_bucket("l.latency")} END AS bucket,
               CASE WHEN l.attempt = 1 THEN l.latency END AS latency
          FROM (SELECT e.webhook, {OUTCOME_EXPRESSION} AS outcome, a.attempt,
                       EXTRACT(epoch FROM a.finished_at - e.created_at)::float8 AS latency
                  FROM {_ATTEMPTS} AS a
                  JOIN {_EVENTS} AS e ON e.id = a.event_id
                 WHERE a.finished_at >= pg_catalog.now() - %(window)s::interval) AS l) AS s
 GROUP BY s.webhook, s.outcome, s.bucket
"""
DELIVERY_QUERY = f"""
SELECT s.webhook, {_bucket("s.latency")} AS bucket, pg_catalog.count(*), pg_catalog.sum(s.latency)
  FROM (SELECT e.webhook, EXTRACT(epoch FROM e.delivered_at - e.created_at)::float8 AS latency
          FROM {_EVENTS} AS e
         WHERE e.state = 'delivered' AND e.delivered_at >= pg_catalog.now() - %(window)s::interval) AS s
 GROUP BY 1, 2
"""
#: Alerts held, by kind and state; when the last of each kind that could not be posted failed; when the oldest
#: still on its way was made. One pass over the alerts table, whose size is bounded by what alerts.py makes in the
#: week it keeps them.
ALERT_COUNTS_QUERY = f"""
SELECT a.kind, a.state, pg_catalog.count(*),
       EXTRACT(epoch FROM pg_catalog.max(a.finished_at) FILTER (WHERE a.state = 'failed'))::float8,
       EXTRACT(epoch FROM pg_catalog.min(a.created_at) FILTER (WHERE a.state IN {UNPOSTED_STATES!r}))::float8
  FROM {SCHEMA}.{ALERTS} AS a
 GROUP BY a.kind, a.state
"""
#: (kind, state, count, last failure, oldest on its way), times as Unix time or None.
AlertRow = tuple[str, str, int, float | None, float | None]
#: For the scrape's transaction: a window's rows are looked up by index, however many the planner expects
#: (past a few thousand it would hash-join a sequential scan of all events, the cost this module avoids),
#: and a monitoring query takes no parallel workers from the application. No JIT: a disabled path the planner
#: has to take anyway is costed 10^10, far above jit_above_cost, and compiling a scrape's query took 250 ms here.
PLANNER_SETTINGS = (
    "enable_seqscan = off",
    "enable_hashjoin = off",
    "enable_mergejoin = off",
    "max_parallel_workers_per_gather = 0",
    "jit = off",
)


@dataclass(frozen=True)
class Latencies:
    """One webhook's latencies in the window: how many, their sum, and the cumulative count per bound."""

    count: int
    total: float
    cumulative: tuple[int, ...]

    @classmethod
    def of(cls, rows: Iterable[tuple[int, int, float]]) -> Latencies:
        """From (bucket index, count, sum) rows, as the queries group them."""
        per_bucket = [0] * (len(LATENCY_BUCKETS) + 1)
        total = 0.0
        for bucket, count, subtotal in rows:
            per_bucket[bucket] += count
            total += subtotal
        return cls(sum(per_bucket), total, tuple(itertools.accumulate(per_bucket[:-1])))

    def buckets(self) -> list[tuple[str, float]]:
        bounds = [(repr(bound), float(count)) for bound, count in zip(LATENCY_BUCKETS, self.cumulative, strict=True)]
        return [*bounds, ("+Inf", float(self.count))]


@dataclass(frozen=True)
class Snapshot:
    """Everything one scrape reports, read in one transaction."""

    window: timedelta
    waiting: list[tuple[str, str, int, float]]
    attempts: list[tuple[str, str, int]]
    first_attempt: dict[str, Latencies]
    delivery: dict[str, Latencies]
    reconciler: ReconcilerHealth
    endpoints: list[EndpointStatus] = field(default_factory=list)
    #: None when the outbox predates alerts.
    alerts: list[AlertRow] | None = None


def read_alert_counts(conn: psycopg.Connection) -> list[AlertRow] | None:
    """None on an outbox installed before alerts existed (no table to read): no alert metrics, as `status`
    reports no alerts."""
    return conn.execute(ALERT_COUNTS_QUERY).fetchall() if alerts_installed(conn) else None


def read_snapshot(conn: psycopg.Connection, window: timedelta) -> Snapshot:
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        conn.execute(f"SET LOCAL statement_timeout = '{STATEMENT_TIMEOUT}'")
        # Before the planner settings: the alerts table is read whole, and with sequential scans off its only
        # path, a sequential scan, is costed 10^10 with every plan above it, too far up for the planner to tell
        # a hash from a sort (its cost fuzz is 1%): it sorted 100,000 alerts on disk to count nine groups.
        alerts = read_alert_counts(conn)
        for setting in PLANNER_SETTINGS:
            conn.execute(f"SET LOCAL {setting}")
        attempts = conn.execute(ATTEMPTS_QUERY, {"window": window}).fetchall()
        delivered = conn.execute(DELIVERY_QUERY, {"window": window}).fetchall()
        reconciler = read_reconciler(conn)
        waiting = conn.execute(WAITING_QUERY).fetchall()
        endpoints = read_endpoints(conn)
    outcomes: dict[tuple[str, str], int] = defaultdict(int)
    first: dict[str, list[tuple[int, int, float]]] = defaultdict(list)
    for webhook, outcome, bucket, count, total in attempts:
        outcomes[webhook, outcome] += count
        if bucket is not None:
            first[webhook].append((bucket, count, total))
    by_webhook: dict[str, list[tuple[int, int, float]]] = defaultdict(list)
    for webhook, bucket, count, total in delivered:
        by_webhook[webhook].append((bucket, count, total))
    return Snapshot(
        window=window,
        waiting=waiting,
        attempts=[(webhook, outcome, count) for (webhook, outcome), count in sorted(outcomes.items())],
        first_attempt={webhook: Latencies.of(rows) for webhook, rows in sorted(first.items())},
        delivery={webhook: Latencies.of(rows) for webhook, rows in sorted(by_webhook.items())},
        reconciler=reconciler,
        endpoints=endpoints,
        alerts=alerts,
    )


def _gauge(name: str, documentation: str, labels: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", documentation, labels=labels)


def _reconciler_families(health: ReconcilerHealth) -> Iterator[Metric]:
    readable = _gauge("reconciler_job_readable", "1 if this role may read pg_cron's tables, else 0.")
    readable.add_metric([], float(health.readable))
    yield readable
    if not health.readable:
        return
    for name, value, documentation in (
        (
            "reconciler_healthy",
            health.healthy,
            "1 if the reconciler job exists, is active and its last run did "
            "not fail (what `status --check` judges), else 0.",
        ),
        ("reconciler_job_present", health.exists, "1 if the reconciler's pg_cron job exists, else 0."),
        ("reconciler_job_active", health.active, "1 if the reconciler's pg_cron job is active (not paused), else 0."),
    ):
        family = _gauge(name, documentation)
        family.add_metric([], float(bool(value)))
        yield family
    if health.last_run_at is not None:
        succeeded = _gauge("reconciler_last_run_succeeded", "1 if the job's last finished run succeeded, else 0.")
        succeeded.add_metric([], float(health.last_run == "succeeded"))
        yield succeeded
        ended = _gauge("reconciler_last_run_end_timestamp_seconds", "When the job's last finished run ended (Unix).")
        ended.add_metric([], health.last_run_at.timestamp())
        yield ended


def families(snapshot: Snapshot) -> Iterator[Metric]:
    """The metric families of one snapshot (docs/metrics.md lists them)."""
    window = _gauge("recent_window_seconds", "The window the secure_webhooks_recent_* metrics cover.")
    window.add_metric([], snapshot.window.total_seconds())
    yield window

    events = _gauge(
        "events",
        "Events still to be sent or given up, by webhook and status (pending, failed: a retry is due, dead).",
        ["webhook", "status"],
    )
    oldest = _gauge(
        "oldest_event_age_seconds",
        "Age of the oldest pending or failed (retrying) event, by webhook and status.",
        ["webhook", "status"],
    )
    for webhook, status, count, age in snapshot.waiting:
        events.add_metric([webhook, status], count)
        if status != "dead":
            oldest.add_metric([webhook, status], age)
    yield events
    yield oldest

    attempts = _gauge(
        "recent_attempts",
        "Attempts that finished within the window, by webhook and outcome class.",
        ["webhook", "outcome"],
    )
    for webhook, outcome, count in snapshot.attempts:
        attempts.add_metric([webhook, outcome], count)
    yield attempts

    for name, latencies, documentation in (
        (
            "recent_first_attempt_latency_seconds",
            snapshot.first_attempt,
            "From an event's creation to the end of its first attempt, for first attempts finished within the window.",
        ),
        (
            "recent_delivery_latency_seconds",
            snapshot.delivery,
            "From an event's creation to its delivery, for events delivered within the window.",
        ),
    ):
        histogram = GaugeHistogramMetricFamily(f"{PREFIX}_{name}", documentation, labels=["webhook"])
        for webhook, latency in latencies.items():
            histogram.add_metric([webhook], latency.buckets(), latency.total)
        yield histogram

    yield from _reconciler_families(snapshot.reconciler)
    yield from _endpoint_families(snapshot.endpoints)
    if snapshot.alerts is not None:
        yield from _alert_families(snapshot.alerts)


def _endpoint_families(endpoints: list[EndpointStatus]) -> Iterator[Metric]:
    """Per endpoint (a URL's origin, no userinfo): its circuit breaker, in flight, waiting, rate budget."""
    paused = _gauge("endpoint_paused", "1 while the endpoint's circuit breaker has it paused, else 0.", ["endpoint"])
    paused_since = _gauge(
        "endpoint_paused_since_timestamp_seconds", "When a paused endpoint was paused (Unix).", ["endpoint"]
    )
    in_flight = _gauge(
        "endpoint_in_flight", "Requests of the endpoint queued in pg_net, on the wire or not yet judged.", ["endpoint"]
    )
    waiting = _gauge(
        "endpoint_waiting", "Events waiting for the endpoint's limits or its resume (parked).", ["endpoint"]
    )
    budget = _gauge(
        "endpoint_rate_budget",
        "The endpoint's per-second budget while 429/502/503/504 have lowered it below delivery.maxPerSecond.",
        ["endpoint"],
    )
    for endpoint in endpoints:
        paused.add_metric([endpoint.endpoint], float(endpoint.state == "paused"))
        if endpoint.paused_since is not None:
            paused_since.add_metric([endpoint.endpoint], endpoint.paused_since.timestamp())
        in_flight.add_metric([endpoint.endpoint], endpoint.in_flight)
        waiting.add_metric([endpoint.endpoint], endpoint.waiting)
        if endpoint.rate_budget is not None:
            budget.add_metric([endpoint.endpoint], endpoint.rate_budget)
    yield from (paused, paused_since, in_flight, waiting, budget)


def _alert_families(rows: list[AlertRow]) -> Iterator[Metric]:
    """Every kind and state, zero included: a rule or a graph needs no `or vector(0)`."""
    held = _gauge(
        "alerts",
        "Alerts held (kept a week after they are done), by kind and state: pending, sending, sent, failed "
        "(could not be posted to delivery.alertUrl), unsent (on the pg_notify channel only: no alert URL).",
        ["kind", "state"],
    )
    counts = {(kind, state): count for kind, state, count, _, _ in rows}
    for kind, state in itertools.product(KINDS, STATES):
        held.add_metric([kind, state], counts.get((kind, state), 0))
    yield held
    failed = _gauge(
        "alert_last_failed_timestamp_seconds",
        "When the last alert of the kind that could not be posted to delivery.alertUrl failed for good (Unix).",
        ["kind"],
    )
    for kind, _, _, when, _ in sorted(rows):
        if when is not None:
            failed.add_metric([kind], when)
    yield failed
    waiting = _gauge(
        "alert_oldest_unposted_timestamp_seconds",
        "When the oldest alert of the kind still on its way to delivery.alertUrl (pending or sending) was made "
        "(Unix): its retries end within minutes, so an old one means alerts are not being posted.",
        ["kind"],
    )
    oldest: dict[str, float] = {}
    for kind, _, _, _, made in rows:
        if made is not None:
            oldest[kind] = min(made, oldest.get(kind, made))
    for kind, made in sorted(oldest.items()):
        waiting.add_metric([kind], made)
    yield waiting


class OutboxCollector(Collector):
    """Reads the outbox at each scrape through one connection, opened again after it breaks.

    Scrapes are served one at a time (a connection runs one transaction): Prometheus scrapes a target
    once per interval, and a second scraper waits for the first. When the database cannot be read the
    scrape still answers, with `secure_webhooks_database_up 0`, so an alert can tell a down database
    from a down exporter; the reason goes to stderr, one line.
    """

    def __init__(
        self,
        connect: Callable[[], psycopg.Connection],
        window: timedelta,
        conn: psycopg.Connection | None = None,
        *,
        report_errors: bool = True,
    ) -> None:
        self._connect = connect
        self._window = window
        self._conn = conn
        self._report_errors = report_errors
        self._lock = threading.Lock()
        self.last_error: str | None = None

    def _read(self) -> Snapshot:
        if self._conn is None or self._conn.closed:
            self._conn = self._connect()
        return read_snapshot(self._conn, self._window)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            try:
                snapshot = self._read()
                self.last_error = None
            except (psycopg.Error, OperatorError) as exc:  # OperatorError: reconnecting failed
                snapshot = None
                self.last_error = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                if self._report_errors:
                    print(f"metrics: cannot read the outbox: {self.last_error}", file=sys.stderr, flush=True)
                if self._conn is not None and self._conn.broken:
                    self._conn.close()
        up = _gauge("database_up", "1 if this scrape read the outbox, else 0 (the reason is on the exporter's stderr).")
        up.add_metric([], float(snapshot is not None))
        yield up
        if snapshot is not None:
            yield from families(snapshot)
