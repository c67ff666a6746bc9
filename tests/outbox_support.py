"""At-least-once test helpers: install the outbox pipeline with our providers, drive it, count the outcome."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from providers import OWNER, configured, function_props, trigger_props
from psycopg import sql

from local_supabase.bootstrap import create_demo_tables
from local_supabase.cluster import LocalSupabase
from local_supabase.orchestrator import Delivery, WebhookReceiver
from local_supabase.pg_net_worker import PgNetWorker
from local_supabase.ports import hold_port
from secure_webhooks.configuration.delivery_settings import DeliverySettings
from secure_webhooks.delivery.outbox import script_sha256
from secure_webhooks.delivery.outbox_provider import OutboxProvider
from secure_webhooks.delivery.reconciler import ReconcilerSpec, Route
from secure_webhooks.delivery.reconciler_provider import ReconcilerProvider, reconciler_props
from secure_webhooks.installation.trigger_provider import WebhookTriggerProvider
from secure_webhooks.signing.function_provider import SecureFunctionProvider
from secure_webhooks.signing.trigger_function import FunctionSpec

#: Fast retries for tests: 1 s, 2 s, 4 s, ... capped at 5 s, no jitter, 6 attempts. The circuit breaker
#: stays out of the way (tests/test_endpoint_limits.py tests it): these tests count retries of one endpoint.
TEST_DELIVERY = DeliverySettings(
    retry_initial_seconds=1,
    retry_multiplier=2,
    retry_max_seconds=5,
    retry_jitter=0,
    max_attempts=6,
    pause_after_failures=1000,
)
#: The product's default: a loopback reply on a loaded machine is never mistaken for a timeout (and a duplicate);
#: tests of timeouts plan a reply later than this.
TIMEOUT_MS = 5000

#: Pipelines installed and not yet removed; tests/conftest.py removes what a failed test left behind.
LIVE: list[Pipeline] = []


@dataclass(eq=False)
class Pipeline:
    """The outbox, reconciler, function and one trigger per table, installed by our providers."""

    cluster: LocalSupabase
    spec: FunctionSpec
    delivery: DeliverySettings = TEST_DELIVERY
    installed: list[tuple[Any, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        LIVE.append(self)

    def connect(self, role: str = "postgres") -> psycopg.Connection:
        return psycopg.connect(self.cluster.dsn(role), autocommit=True)

    def add_trigger(self, table: str, url: str, name: str = "outbox_hook") -> None:
        provider = configured(WebhookTriggerProvider, self.cluster)
        self.installed.append((provider, provider.create(trigger_props(table, name, url, self.spec))))

    def route(self, *routes: Route) -> None:
        """Update the reconciler as `pulumi up` does when the configured webhooks or their URLs change."""
        provider, created = next(item for item in self.installed if isinstance(item[0], ReconcilerProvider))
        spec = ReconcilerSpec(function=self.spec, delivery=self.delivery, routes=routes)
        provider.update(created.id, created.outs, {**created.outs, **reconciler_props(spec, OWNER)})

    def remove(self) -> None:
        if self in LIVE:
            LIVE.remove(self)
        if not self.installed:
            return
        with self.connect() as conn:
            conn.execute("SELECT secure_webhooks.purge(ARRAY['pending', 'failed', 'dead', 'delivered'])")
        for provider, created in reversed(self.installed):
            provider.delete(created.id, created.outs)
        self.installed.clear()


def remove_left_behind(before: list[Pipeline]) -> None:
    """Remove the pipelines installed since LIVE held `before`, so one failed test cannot fail the next.

    A pipeline whose cluster no longer runs (a test's own cluster, stopped by its fixture before this runs, as
    in tests/test_outbox_crash.py) left nothing another test could meet, and could not be reached anyway.
    """
    for pipeline in reversed([p for p in LIVE if p not in before]):
        if pipeline.cluster.is_running:
            pipeline.remove()
        else:
            LIVE.remove(pipeline)


@contextmanager
def supabase_with_secret(secret: str) -> Iterator[LocalSupabase]:
    """A fresh cluster with pg_net installed and the Vault holding `secret` as app_jwt_secret."""
    with LocalSupabase.start(preinstall_pg_net=True) as cluster:
        with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as conn:
            conn.execute("SELECT vault.create_secret(%s, 'app_jwt_secret')", (secret,))
        yield cluster


def down_url() -> tuple[str, int]:
    """An orchestrator that is down: a loopback URL nothing listens on (every attempt fails to connect), and its
    port, where a test starts a receiver when the orchestrator comes back."""
    port = hold_port()  # kept until the receiver starts there: nothing else on the machine takes it meanwhile
    return f"http://127.0.0.1:{port}", port


def install_pipeline(cluster: LocalSupabase, delivery: DeliverySettings = TEST_DELIVERY, **spec: Any) -> Pipeline:
    with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as conn:
        create_demo_tables(conn)
    function = FunctionSpec(**{"mode": "at-least-once", "timeout_ms": TIMEOUT_MS, "token_ttl_seconds": 300, **spec})
    pipeline = Pipeline(cluster, function, delivery)
    steps = [
        (OutboxProvider, {"owner": OWNER, "script_sha256": script_sha256()}),
        (ReconcilerProvider, reconciler_props(ReconcilerSpec(function=function, delivery=delivery), OWNER)),
        (SecureFunctionProvider, function_props(function)),
    ]
    for provider_class, props in steps:
        provider = configured(provider_class, cluster)
        pipeline.installed.append((provider, provider.create(props)))
    return pipeline


def reconcile(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT secure_webhooks.reconcile()").fetchone()[0]


def statuses(conn: psycopg.Connection) -> dict[str, int]:
    return dict(conn.execute("SELECT status, count(*) FROM secure_webhooks.deliveries GROUP BY 1").fetchall())


def settle(
    conn: psycopg.Connection,
    worker: PgNetWorker | None,
    done: Callable[[], bool],
    timeout: float = 30.0,
) -> None:
    """Run reconciler rounds (as the cron loop does) until `done()`.

    `timeout` bounds a stall, not the run: it restarts whenever the events' statuses change, so a slow machine
    working through a backlog passes, and a pipeline that stops moving fails with its statuses.
    """
    seen, deadline = None, time.monotonic() + timeout
    while True:
        reconcile(conn)
        if worker is not None:
            worker.drain()
        if done():
            return
        if (now_seen := statuses(conn)) != seen:
            seen, deadline = now_seen, time.monotonic() + timeout
        elif time.monotonic() > deadline:
            raise TimeoutError(f"no progress for {timeout} s: {seen}")
        time.sleep(0.1)


def all_delivered(conn: psycopg.Connection) -> Callable[[], bool]:
    return lambda: set(statuses(conn)) <= {"delivered"}


def insert_rows(conn: psycopg.Connection, table: str, count: int, prefix: str = "row") -> list[int]:
    """Insert `count` rows, one transaction each; return their ids."""
    query = sql.SQL("INSERT INTO public.{} (name, storage_path) VALUES (%s, 'p') RETURNING id").format(
        sql.Identifier(table)
    )
    return [conn.execute(query, (f"{prefix}-{n}",)).fetchone()[0] for n in range(count)]


@dataclass(frozen=True)
class Tally:
    inserted: int
    delivered: int
    duplicated: int
    lost: int
    unexpected: int

    def __str__(self) -> str:
        return (
            f"inserted {self.inserted}, delivered {self.delivered}, duplicated {self.duplicated}, "
            f"lost {self.lost}, unexpected {self.unexpected}"
        )


def tally(inserted: list[int], deliveries: list[Delivery]) -> Tally:
    """Count by row id what the orchestrator accepted (2xx): each inserted row must arrive, others never."""
    accepted = Counter(d.body["record"]["id"] for d in deliveries if d.status == 200 and d.body)
    wanted = set(inserted)
    return Tally(
        inserted=len(inserted),
        delivered=sum(1 for row in wanted if accepted[row]),
        duplicated=sum(count - 1 for row, count in accepted.items() if row in wanted and count > 1),
        lost=sum(1 for row in wanted if not accepted[row]),
        unexpected=sum(count for row, count in accepted.items() if row not in wanted),
    )


def check_ids(deliveries: list[Delivery]) -> None:
    """Every attempt of one row carries one event id, as `webhook-id` and as the token's `jti`."""
    ids_by_row: dict[int, set[str]] = {}
    for delivery in deliveries:
        if delivery.claims is not None:
            assert delivery.claims["jti"] == delivery.header("webhook-id")
        if delivery.body:
            ids_by_row.setdefault(delivery.body["record"]["id"], set()).add(delivery.header("webhook-id"))
    assert all(len(ids) == 1 for ids in ids_by_row.values()), ids_by_row


def report(name: str, inserted: list[int], receiver: WebhookReceiver) -> Tally:
    """Print what went in and what came out, and fail on a lost or unexpected row or a row with two event ids."""
    counts = tally(inserted, receiver.deliveries)
    print(f"{name}: {counts}")
    check_ids(receiver.deliveries)
    assert counts.lost == 0 and counts.unexpected == 0, counts
    return counts


def deliver_once(cluster: LocalSupabase, url: str, rows: int, prefix: str, **spec: Any) -> None:
    """Install the pipeline with one trigger on public.resumes posting to `url`, deliver `rows` inserts, remove it."""
    pipeline = install_pipeline(cluster, **spec)
    try:
        pipeline.add_trigger("resumes", url)
        with pipeline.connect() as conn, PgNetWorker(cluster.admin_dsn) as worker:
            insert_rows(conn, "resumes", rows, prefix=prefix)
            settle(conn, worker, all_delivered(conn))
    finally:
        pipeline.remove()
