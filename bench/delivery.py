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
from local_supabase.cluster import LocalSupabase
from local_supabase.cron_runner import CronJobRunner
from local_supabase.orchestrator import Delivery, WebhookReceiver
from local_supabase.pg_net_worker import PgNetWorker
from secure_webhooks.database import ConnectionSettings, Database
from secure_webhooks.reconciler import JOB_NAME
from secure_webhooks.schedule_provider import ScheduleProvider

#: Where the re-pointed triggers post (any path: the receiver accepts every one).
PATH = "/ingest/bench"

RowKey = tuple[str, int]


#: How often the watcher looks for new deliveries: the resolution of the arrival times.
WATCH_INTERVAL_SECONDS = 0.001


class TimedReceiver:
    """The orchestrator stand-in (WebhookReceiver, unchanged), plus when each row's first accepted delivery arrived.

    Uses only the receiver's public API: a watcher thread reads its recorded
    `deliveries` every millisecond and stamps the new ones with
    `time.perf_counter()`, keyed by (table, row id) from the payload; retries
    of a row keep its first time. So arrival times are late by up to the watch
    interval (plus thread scheduling), against latencies of tens of ms.
    Tokens must be bound (`require_binding`, WebhookReceiver's default): every
    variant that delivers in the bench mints bound tokens.
    """

    def __init__(self, secret: str, *, port: int = 0) -> None:
        self.receiver = WebhookReceiver(secret, port=port)
        self._times_lock = threading.Lock()
        self._first_accepted: dict[RowKey, float] = {}
        self._seen = 0
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None

    def start(self) -> TimedReceiver:
        self.receiver.start()
        self._watcher = threading.Thread(target=self._watch, name="bench-arrivals", daemon=True)
        self._watcher.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._watcher is not None:
            self._watcher.join()
        self.receiver.stop()
        self._note_arrivals()

    def __enter__(self) -> TimedReceiver:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _watch(self) -> None:
        while not self._stopping.wait(WATCH_INTERVAL_SECONDS):
            self._note_arrivals()

    def _note_arrivals(self) -> None:
        deliveries = self.receiver.deliveries
        now = time.perf_counter()
        with self._times_lock:
            for delivery in deliveries[self._seen :]:
                if delivery.status == 200 and isinstance(delivery.body, dict):
                    key = (delivery.body["table"], delivery.body["record"]["id"])
                    self._first_accepted.setdefault(key, now)
            self._seen = len(deliveries)

    @property
    def url(self) -> str:
        return self.receiver.url

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    @property
    def deliveries(self) -> list[Delivery]:
        return self.receiver.deliveries

    def check_accepted(self) -> None:
        """Every request was accepted: signature, claims, jti = webhook-id and body hash all verified."""
        refused = [delivery for delivery in self.deliveries if delivery.status != 200]
        if refused:
            reasons = sorted({str(delivery.rejection) for delivery in refused})
            raise BenchError(f"{len(refused)} deliveries refused by the orchestrator stand-in: {reasons}")

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
