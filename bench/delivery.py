"""The delivery side of the benchmark: a receiver that notes arrival times, and the running pipeline.

The cost figures run with nothing delivering. The latency and recovery
figures need the whole path as in production: the pg_net worker stand-in
(with pg_net's timing: rounds of pg_net.batch_size up to a second apart
while busy, woken by a commit when idle) sending the queue, the orchestrator
stand-in verifying every token, and for at-least-once the reconciler's
pg_cron job, scheduled by our own ScheduleProvider. The job's command is run
as pg_cron 1.6 runs it on Supabase with the `1 seconds` schedule that
`schedule: auto` picks there (`SupabaseCron`): the command rendered for
`1 seconds`, started in a new session one interval after the previous run
started, or as soon as the previous run ends if it is still going then. The
job itself (a minute schedule on the stand-in's pg_cron 1.4, whose own loop
would run beside ours) is kept inactive meanwhile. Everything runs in this process, so the receiver's
arrival times and the client's commit times are readings of one clock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from bench.measure import APP_ROLE, BenchError, insert_one
from bench.variants import OWNER, Variant
from local_supabase.cluster import LocalSupabase
from local_supabase.cron_runner import JobSessionThread
from local_supabase.measuring_receiver import MeasuringReceiver
from local_supabase.orchestrator import Delivery
from local_supabase.pg_net_worker import PgNetWorker
from secure_webhooks.delivery.reconciler import JOB_NAME, cron_command
from secure_webhooks.delivery.schedule_provider import ScheduleProvider
from secure_webhooks.postgres.database import ConnectionSettings, Database

#: Where the re-pointed triggers post (any path: the receiver accepts every one).
PATH = "/ingest/bench"

RowKey = tuple[str, int]


#: Seconds each request takes at the receiver while backlogs drain (recovery, its anchors, the ordering
#: drains), as tests/test_endpoint_limits.py's receiver takes: an orchestrator does some work per request,
#: so requests overlap and "most at once" means something. The latency workloads run without it.
BACKLOG_WORK = 0.02

#: How often the watcher looks for new deliveries: the resolution of the arrival times.
WATCH_INTERVAL_SECONDS = 0.001


class TimedReceiver:
    """The orchestrator stand-in (WebhookReceiver), plus when each row's first accepted delivery arrived.

    It is a MeasuringReceiver, so it also reports what the per-endpoint limits promise to bound: the
    most requests it served at once (`peak`) and the most that arrived in any one-second window
    (`busiest_second()`). By default it does no work beyond verifying; the backlogs run with
    BACKLOG_WORK, so that requests overlap as they would at an orchestrator that does something.

    Uses only the receiver's public API: a watcher thread reads its recorded
    `deliveries` every millisecond and stamps the new ones with
    `time.perf_counter()`, keyed by (table, row id) from the payload; retries
    of a row keep its first time. So arrival times are late by up to the watch
    interval (plus thread scheduling), against latencies of tens of ms.
    Tokens must be bound (`require_binding`, WebhookReceiver's default): every
    variant that delivers in the bench mints bound tokens.
    """

    def __init__(self, secret: str, *, port: int = 0, unsigned_tables: Sequence[str] = (), work: float = 0.0) -> None:
        #: `work`: seconds each request takes before it is verified (an orchestrator's own work).
        self.receiver = MeasuringReceiver(secret, port=port, work=work)
        #: Tables whose webhooks send no token (Supabase's static webhook): the receiver refuses
        #: them (401), and their first request's arrival is what counts.
        self.unsigned_tables = frozenset(unsigned_tables)
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
                if not isinstance(delivery.body, dict):
                    continue
                key = (delivery.body["table"], delivery.body["record"]["id"])
                if delivery.status == 200 or key[0] in self.unsigned_tables:
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

    def set_work(self, seconds: float) -> None:
        """From now on each request takes `seconds` before it is verified."""
        self.receiver.work = seconds

    @property
    def peak(self) -> int:
        """The most requests the receiver was serving at once."""
        return self.receiver.peak

    def busiest_second(self) -> int:
        """The most requests that arrived in any window [t, t + 1 s)."""
        return self.receiver.busiest_second()

    def check_accepted(self) -> None:
        """Every signed request was accepted: signature, claims, jti = webhook-id and body hash all verified."""
        refused = [
            delivery
            for delivery in self.deliveries
            if delivery.status != 200
            and not (isinstance(delivery.body, dict) and delivery.body.get("table") in self.unsigned_tables)
        ]
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


#: What `schedule: auto` gives on Supabase (pg_cron 1.6): the loop of `cron_command` runs for
#: most of each second, then pg_cron starts the next run at the next whole second.
SUPABASE_SCHEDULE = "1 seconds"


class SupabaseCron(JobSessionThread):
    """The reconciler's job as pg_cron 1.6 runs a `1 seconds` job (src/pg_cron.c, StartAllPendingRuns):
    a run starts one interval after the previous run started, in a new session as the job's role; if
    that run is still going then, the next one is queued once and starts as soon as it ends.
    `runs` counts the runs, `failures` their errors, `gaps` the seconds from a run's end to the next
    run's session."""

    thread_name = "bench-cron"
    interval_seconds = 1.0

    def __init__(self, conninfo: str, command: str) -> None:
        super().__init__(conninfo)
        self._command = command
        self.runs = 0
        self.gaps: list[float] = []

    def _run(self) -> None:
        due = time.monotonic()
        ended: float | None = None
        while not self._stopping.wait(max(0.0, due - time.monotonic())):
            due = time.monotonic() + self.interval_seconds
            try:
                with self._session("pg_cron") as conn:
                    if self._stopping.is_set():
                        return
                    if ended is not None:
                        self.gaps.append(time.monotonic() - ended)
                    conn.execute(self._command)
                    self.runs += 1
            except psycopg.Error as error:
                self._failed(error)
            finally:
                ended = time.monotonic()
                self._release()


@dataclass(frozen=True)
class Pipeline:
    worker: PgNetWorker
    cron: SupabaseCron


@contextmanager
def running_pipeline(cluster: LocalSupabase) -> Iterator[Pipeline]:
    """The pg_net worker and the reconciler's job (scheduled by ScheduleProvider), running until exit.

    On a normal exit the job is unscheduled again (the outbox must hold no
    pending or failed events by then, or the provider refuses, as it does for
    `pulumi destroy`); after an error the cluster is thrown away anyway.
    """
    schedule = ScheduleProvider()
    schedule.db = _provider_database(cluster)
    inputs: dict[str, Any] = {"owner": OWNER, "schedule": "auto", "job_name": JOB_NAME}
    job = schedule.create(schedule.check({}, inputs).inputs)
    with psycopg.connect(cluster.dsn(APP_ROLE), autocommit=True) as conn:
        conn.execute("UPDATE cron.job SET active = false WHERE jobname = %s", (JOB_NAME,))
    cron = SupabaseCron(cluster.dsn(APP_ROLE), cron_command(SUPABASE_SCHEDULE))
    with PgNetWorker(cluster.admin_dsn) as worker:
        cron.start()
        try:
            yield Pipeline(worker, cron)
        finally:
            cron.stop()
    if cron.failures:
        raise BenchError(f"reconciler runs failed: {cron.failures}")
    with psycopg.connect(cluster.dsn(APP_ROLE), autocommit=True) as conn:
        conn.execute("UPDATE cron.job SET active = true WHERE jobname = %s", (JOB_NAME,))
    schedule.delete(job.id, job.outs)
