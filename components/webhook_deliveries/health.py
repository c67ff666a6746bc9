"""What `status` reads from the outbox and pg_cron, and how `status --check` judges it.

The text table, the JSON document and the monitoring verdict are all drawn from the same
read, so a check that fails names exactly what `status` shows. Ages are computed by the
database (`now() - created_at`): the host running the check may have another clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from secure_webhooks.delivery.alerts import ALERTS
from secure_webhooks.delivery.endpoints import ENDPOINTS, HELD, PARKED
from secure_webhooks.delivery.outbox import DELIVERIES_VIEW, EVENTS, SCHEMA
from secure_webhooks.delivery.reconciler import JOB_NAME

VIEW = f"{SCHEMA}.{DELIVERIES_VIEW}"

STATUS_QUERY = f"""
SELECT webhook, "table",
       count(*) FILTER (WHERE status = 'pending'),
       count(*) FILTER (WHERE status = 'failed'),
       count(*) FILTER (WHERE status = 'dead'),
       count(*) FILTER (WHERE status = 'delivered'),
       min(created_at) FILTER (WHERE status = 'pending'),
       pg_catalog.now() - min(created_at) FILTER (WHERE status = 'pending'),
       min(created_at) FILTER (WHERE status = 'failed'),
       pg_catalog.now() - min(created_at) FILTER (WHERE status = 'failed'),
       (array_agg(last_error ORDER BY created_at DESC)
          FILTER (WHERE last_error IS NOT NULL AND status <> 'delivered'))[1]
  FROM {VIEW}
 GROUP BY webhook, "table"
 ORDER BY webhook, "table"
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


#: Each endpoint the reconciler has judged (secure_webhooks/delivery/endpoints.py): its circuit breaker, what it
#: has in flight and parked (both counted through partial indexes that hold only those), its rate budget.
ENDPOINTS_QUERY = f"""
SELECT p.endpoint, p.state, p.paused_since, pg_catalog.now() - p.paused_since, p.next_probe_at,
       p.consecutive_failures, p.rate_budget,
       (SELECT pg_catalog.count(*) FROM {SCHEMA}.{EVENTS} AS s WHERE s.endpoint = p.endpoint AND s.slot_until = {HELD}),
       (SELECT pg_catalog.count(*) FROM {SCHEMA}.{EVENTS} AS s
         WHERE s.endpoint = p.endpoint AND s.state = 'pending' AND s.next_attempt_at = {PARKED})
  FROM {SCHEMA}.{ENDPOINTS} AS p
 ORDER BY p.endpoint
"""


def age(value: timedelta | None) -> str:
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


def span(value: timedelta) -> str:
    """A limit as an operator writes it (`12h`, `90s`), not as an age (`12h00m`)."""
    total = int(value.total_seconds())
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60)):
        if total and total % size == 0:
            return f"{total // size}{unit}"
    return f"{total}s"


def clip(text: str | None, width: int) -> str:
    text = (text or "-").replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def iso(value: datetime | None) -> str | None:
    """UTC, so JSON consumers compare timestamps without knowing the session's TimeZone."""
    return None if value is None else value.astimezone(UTC).isoformat()


def seconds(value: timedelta | None) -> int | None:
    return None if value is None else int(value.total_seconds())


@dataclass(frozen=True)
class WebhookStatus:
    webhook: str
    table: str
    pending: int
    failed: int
    dead: int
    delivered: int
    oldest_pending_at: datetime | None
    oldest_pending_age: timedelta | None
    oldest_failed_at: datetime | None
    oldest_failed_age: timedelta | None
    last_error: str | None

    @property
    def oldest_waiting_age(self) -> timedelta | None:
        """The oldest event still to be sent, failing or not: the `oldest` column of the text table."""
        ages = [value for value in (self.oldest_pending_age, self.oldest_failed_age) if value is not None]
        return max(ages) if ages else None

    def as_json(self) -> dict[str, Any]:
        return {
            "webhook": self.webhook,
            "table": self.table,
            "pending": self.pending,
            "failed": self.failed,
            "dead": self.dead,
            "delivered": self.delivered,
            "oldest_pending_at": iso(self.oldest_pending_at),
            "oldest_pending_seconds": seconds(self.oldest_pending_age),
            "oldest_failed_at": iso(self.oldest_failed_at),
            "oldest_failed_seconds": seconds(self.oldest_failed_age),
            "last_error": self.last_error,
        }


@dataclass(frozen=True)
class ReconcilerHealth:
    """The pg_cron job that sends the events; `readable` is false when this role may not see pg_cron."""

    readable: bool
    exists: bool = False
    active: bool = False
    last_run: str | None = None
    last_run_at: datetime | None = None
    last_run_message: str | None = None
    job: str = JOB_NAME

    @property
    def healthy(self) -> bool | None:
        if not self.readable:
            return None
        return self.exists and self.active and self.last_run != "failed"

    @property
    def summary(self) -> str:
        if not self.readable:
            return "(pg_cron's tables are not readable by this role)"
        if not self.exists:
            return f"NO pg_cron job {self.job}: nothing sends these events (pulumi up schedules it)"
        state = f"job {self.job}" + ("" if self.active else " is PAUSED (active = false)")
        if self.last_run is None:
            return f"{state}, no finished run yet"
        when = f"{self.last_run_at:%Y-%m-%d %H:%M:%S}"
        if self.last_run == "failed":
            return f"{state}, last run FAILED at {when}: {clip(self.last_run_message, 160)}"
        return f"{state}, last run succeeded at {when}"

    def as_json(self) -> dict[str, Any]:
        return {
            "job": self.job,
            "readable": self.readable,
            "exists": self.exists if self.readable else None,
            "active": self.active if self.exists else None,
            "last_run": self.last_run,
            "last_run_at": iso(self.last_run_at),
            "last_run_message": self.last_run_message,
            "healthy": self.healthy,
            "summary": self.summary,
        }


@dataclass(frozen=True)
class EndpointStatus:
    """One endpoint (the origin of a webhook URL, no userinfo): open or paused by its circuit breaker."""

    endpoint: str
    state: str
    paused_since: datetime | None
    paused_for: timedelta | None
    next_probe_at: datetime | None
    consecutive_failures: int
    #: The per-second budget after 429/502/503/504 lowered it; None: the full delivery.maxPerSecond.
    rate_budget: int | None
    in_flight: int
    #: Events waiting for the endpoint's limits or its resume (parked).
    waiting: int

    def as_json(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "state": self.state,
            "paused_since": iso(self.paused_since),
            "paused_seconds": seconds(self.paused_for),
            "next_probe_at": iso(self.next_probe_at),
            "consecutive_failures": self.consecutive_failures,
            "rate_budget": self.rate_budget,
            "in_flight": self.in_flight,
            "waiting": self.waiting,
        }


def read_endpoints(conn: psycopg.Connection) -> list[EndpointStatus]:
    """Nothing before the outbox is upgraded to have the endpoints table (the next `pulumi up` adds it)."""
    if conn.execute("SELECT pg_catalog.to_regclass(%s)", (f"{SCHEMA}.{ENDPOINTS}",)).fetchone()[0] is None:
        return []
    return [EndpointStatus(*row) for row in conn.execute(ENDPOINTS_QUERY).fetchall()]


def read_webhooks(conn: psycopg.Connection) -> list[WebhookStatus]:
    return [WebhookStatus(*row) for row in conn.execute(STATUS_QUERY).fetchall()]


def read_reconciler(conn: psycopg.Connection) -> ReconcilerHealth:
    try:
        with conn.transaction():
            job = conn.execute(JOB_QUERY, (JOB_NAME,)).fetchone()
    except (psycopg.errors.InsufficientPrivilege, psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName):
        return ReconcilerHealth(readable=False)
    if job is None:
        return ReconcilerHealth(readable=True)
    active, last_run, ended, message = job
    return ReconcilerHealth(True, True, active, last_run, ended, message)


@dataclass(frozen=True)
class Limits:
    """How long a failed event may keep retrying, and a pending one wait, before monitoring is told."""

    failing: timedelta
    pending: timedelta
    #: How long an endpoint may stay paused by its circuit breaker.
    paused: timedelta = timedelta(minutes=10)


def _named(webhooks: list[WebhookStatus]) -> str:
    return ", ".join(status.webhook for status in webhooks)


def problems(
    webhooks: list[WebhookStatus],
    reconciler: ReconcilerHealth,
    limits: Limits,
    endpoints: list[EndpointStatus] | None = None,
    alerts: AlertsHealth | None = None,
) -> list[str]:
    """Each reason to wake someone, worded for a one-line alert; none when delivery is healthy."""
    found = []
    paused = [e for e in endpoints or [] if e.paused_for is not None and e.paused_for >= limits.paused]
    if paused:
        each = ", ".join(f"{e.endpoint} for {age(e.paused_for)}" for e in paused)
        found.append(f"endpoint(s) paused past the {span(limits.paused)} limit ({each}): their receiver keeps failing")
    dead = [status for status in webhooks if status.dead]
    if dead:
        total = sum(status.dead for status in dead)
        each = ", ".join(f"{status.webhook} {status.dead}" for status in dead)
        found.append(f"{total} dead event(s) ({each}): replay or purge them")
    failing = [s for s in webhooks if s.oldest_failed_age is not None and s.oldest_failed_age >= limits.failing]
    if failing:
        longest = max(status.oldest_failed_age for status in failing)
        found.append(f"events failing for {age(longest)}, past the {span(limits.failing)} limit ({_named(failing)})")
    waiting = [s for s in webhooks if s.oldest_pending_age is not None and s.oldest_pending_age >= limits.pending]
    if waiting:
        oldest = max(status.oldest_pending_age for status in waiting)
        found.append(
            f"oldest pending event is {age(oldest)} old, past the {span(limits.pending)} limit ({_named(waiting)})"
        )
    if reconciler.healthy is False:
        found.append(f"reconciler: {reconciler.summary}")
    if alerts is not None and alerts.failed:
        found.append(
            f"{alerts.failed} alert(s) could not be posted ({clip(alerts.last_error, 120)}): "
            "check secure-webhooks:delivery.alertUrl"
        )
    return found


def verdict(
    webhooks: list[WebhookStatus],
    reconciler: ReconcilerHealth,
    limits: Limits,
    endpoints: list[EndpointStatus] | None = None,
    alerts: AlertsHealth | None = None,
) -> tuple[bool, str]:
    """(healthy, the one line a monitoring system shows)."""
    found = problems(webhooks, reconciler, limits, endpoints, alerts)
    if found:
        line = "CRITICAL: " + "; ".join(found)
    else:
        pending = sum(status.pending for status in webhooks)
        failed = sum(status.failed for status in webhooks)
        ages = [status.oldest_waiting_age for status in webhooks if status.oldest_waiting_age is not None]
        line = (
            f"OK: no dead events, {failed} failed, {pending} pending (oldest {age(max(ages) if ages else None)}); "
            f"reconciler: {reconciler.summary}"
        )
    # A quoted trigger name or a pg_cron message may hold a line break; an alert is one line.
    return not found, " ".join(line.splitlines())


#: `status --check` fails while an alert that could not be delivered is this recent (docs/operations.md, "Alerts").
FAILED_ALERT_WINDOW = timedelta(hours=24)

ALERTS_QUERY = f"""
SELECT pg_catalog.count(*) FILTER (WHERE a.state IN ('pending', 'sending')),
       pg_catalog.count(*) FILTER (WHERE a.state = 'failed' AND a.finished_at > pg_catalog.now() - %s::interval),
       pg_catalog.count(*) FILTER (WHERE a.state = 'sent'),
       pg_catalog.count(*) FILTER (WHERE a.state = 'unsent'),
       (pg_catalog.array_agg(a.last_error ORDER BY a.id DESC)
          FILTER (WHERE a.state IN ('pending', 'failed') AND a.last_error IS NOT NULL))[1]
  FROM {SCHEMA}.{ALERTS} AS a
"""


@dataclass(frozen=True)
class AlertsHealth:
    """The alerts of the last days (kept 7 days): how many wait, failed for good, were posted or only notified.

    `failed` counts those that failed within FAILED_ALERT_WINDOW: nobody was told about something.
    """

    pending: int = 0
    failed: int = 0
    sent: int = 0
    unsent: int = 0
    last_error: str | None = None

    @property
    def summary(self) -> str:
        text = (
            f"{self.sent} posted, {self.pending} pending, {self.failed} failed in the last {span(FAILED_ALERT_WINDOW)}"
        )
        if self.unsent:
            text += f", {self.unsent} on the channel only (no alert URL)"
        if self.last_error and (self.pending or self.failed):
            text += f"; last error: {clip(self.last_error, 120)}"
        return text

    def as_json(self) -> dict[str, Any]:
        return {
            "pending": self.pending,
            "failed": self.failed,
            "sent": self.sent,
            "unsent": self.unsent,
            "last_error": self.last_error,
            "summary": self.summary,
        }


def alerts_installed(conn: psycopg.Connection) -> bool:
    """False on an outbox installed before alerts existed: its reconciler was not upgraded yet."""
    return conn.execute("SELECT pg_catalog.to_regclass(%s) IS NOT NULL", (f"{SCHEMA}.{ALERTS}",)).fetchone()[0]


def read_alerts(conn: psycopg.Connection) -> AlertsHealth:
    """Nothing to report on an outbox installed before alerts existed."""
    if not alerts_installed(conn):
        return AlertsHealth()
    return AlertsHealth(*conn.execute(ALERTS_QUERY, (FAILED_ALERT_WINDOW,)).fetchone())
