"""The delivery side of the benchmark: a receiver that notes arrival times, and the running pipeline.

The cost figures run with nothing delivering. The latency and recovery
figures need the whole path as in production: the pg_net worker stand-in
sending the queue, the orchestrator stand-in verifying every token, and for
at-least-once the reconciler's pg_cron job, scheduled by our own
ScheduleProvider and run back to back by CronJobRunner exactly as its command
reads (as pg_cron >= 1.5 with a 1-second schedule would; Debian's pg_cron 1.4
also starts it itself at every full minute, a second loop that SKIP LOCKED
keeps apart). Everything runs in this process, so the receiver's arrival
times and the client's commit times are readings of one clock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql

from bench.measure import APP_ROLE, BenchError, insert_one
from bench.variants import OWNER, Variant
from components.database import ConnectionSettings, Database
from components.reconciler import JOB_NAME
from components.schedule_provider import ScheduleProvider
from local_supabase.cluster import LocalSupabase
from local_supabase.cron_runner import CronJobRunner
from local_supabase.orchestrator import Delivery, WebhookReceiver
from local_supabase.pg_net_worker import PgNetWorker

#: Where the re-pointed triggers post (any path: the receiver accepts every one).
PATH = "/ingest/bench"

RowKey = tuple[str, int]


class TimedReceiver(WebhookReceiver):
    """The orchestrator stand-in, also noting when each row's first accepted delivery was recorded.

    Times are `time.perf_counter()` readings taken once the token is verified,
    keyed by (table, row id) from the payload; retries of a row keep its first time.
    """

    def __init__(self, secret: str, *, port: int = 0) -> None:
        super().__init__(secret, port=port)
        self._times_lock = threading.Lock()
        self._first_accepted: dict[RowKey, float] = {}
        self._mismatched_ids: list[str] = []

    def _record(self, delivery: Delivery) -> None:
        if delivery.status == 200 and isinstance(delivery.body, dict):
            key = (delivery.body["table"], delivery.body["record"]["id"])
            event_id = delivery.header("webhook-id")
            with self._times_lock:
                self._first_accepted.setdefault(key, time.perf_counter())
                if event_id is not None and delivery.claims and delivery.claims.get("jti") != event_id:
                    self._mismatched_ids.append(event_id)
        super()._record(delivery)

    def check_event_ids(self) -> None:
        """An at-least-once delivery's token names its event (jti) as its webhook-id header does."""
        if self._mismatched_ids:
            raise BenchError(f"{len(self._mismatched_ids)} deliveries whose jti is not their webhook-id")

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def arrivals(self) -> dict[RowKey, float]:
        with self._times_lock:
            return dict(self._first_accepted)

    def wait_for_rows(self, rows: Sequence[RowKey], timeout: float) -> dict[RowKey, float]:
        """Block until every row has arrived; return their arrival times. TimeoutError with the count if not."""
        deadline = time.monotonic() + timeout
        while True:
            arrived = self.arrivals()
            if all(row in arrived for row in rows):
                return {row: arrived[row] for row in rows}
            if time.monotonic() > deadline:
                missing = sum(1 for row in rows if row not in arrived)
                raise TimeoutError(f"{missing} of {len(rows)} rows not delivered within {timeout} s")
            time.sleep(0.005)


def insert_returning_id(conn: psycopg.Connection, variant: Variant) -> RowKey:
    """One single-row insert transaction (autocommit); the key its delivery will carry."""
    row = conn.execute(insert_one(variant) + sql.SQL(" RETURNING id")).fetchone()
    return (variant.table, row[0])


def point_at(conn: psycopg.Connection, variants: Sequence[Variant], url: str) -> None:
    """Re-install the variants' webhooks posting to `url` (CREATE OR REPLACE, as `pulumi up` would)."""
    for variant in variants:
        variant.install(conn, variant, url)


#: ConnectionSettings' fields (the stack's postgresql:* keys) and the libpq keywords they come from.
_SETTINGS_FROM_CONNINFO = {
    "host": "host",
    "port": "port",
    "database": "dbname",
    "username": "user",
    "password": "password",
}


def _provider_database(cluster: LocalSupabase) -> Database:
    """The connection our providers would open to the cluster from a stack's config, as `postgres`."""
    params = psycopg.conninfo.conninfo_to_dict(cluster.dsn(APP_ROLE))
    settings: dict[str, Any] = {field: params[key] for field, key in _SETTINGS_FROM_CONNINFO.items()}
    return Database(ConnectionSettings(**{**settings, "port": int(settings["port"])}))


@contextmanager
def running_pipeline(cluster: LocalSupabase) -> Iterator[CronJobRunner]:
    """The pg_net worker and the reconciler's job (scheduled by ScheduleProvider), running until exit.

    On a normal exit the job is unscheduled again (the outbox must hold no
    pending or failed events by then, or the provider refuses, as it does for
    `pulumi destroy`); after an error the cluster is thrown away anyway.
    """
    schedule = ScheduleProvider()
    schedule.db = _provider_database(cluster)
    inputs: dict[str, Any] = {"owner": OWNER, "schedule": "auto", "job_name": JOB_NAME}
    job = schedule.create(schedule.check({}, inputs).inputs)
    with PgNetWorker(cluster.admin_dsn), CronJobRunner(cluster.dsn(APP_ROLE), JOB_NAME) as runner:
        yield runner
    if runner.failures:
        raise BenchError(f"reconciler runs failed: {runner.failures}")
    schedule.delete(job.id, job.outs)
