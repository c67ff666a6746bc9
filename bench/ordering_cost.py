"""A rough, one-run measure of what `delivery.ordering: per-row` costs next to `none` (issue 17 part 2).

Not part of the benchmark's goals: one fresh cluster, the test suite's at-least-once pipeline (tests/outbox_support.py,
the stand-in pg_net worker, a receiver that verifies every token), and three figures per ordering:
- the trigger's cost in the server (a PL/pgSQL loop of single-row INSERTs, one bulk INSERT, single-row UPDATEs),
  so commit and client round trips do not drown it;
- the time to deliver a backlog (rounds run back to back, as the cron loop runs them when busy): every row with
  one event, and few rows with many events each (per-row sends those one at a time, by design);
- the due-event selection with a backlog held behind earlier events of the same rows.

    PYTHONPATH=components:.:tests venv/bin/python -m bench.ordering_cost
"""

from __future__ import annotations

import dataclasses
import statistics
import time

import psycopg
from outbox_support import TEST_DELIVERY, Pipeline, install_pipeline, reconcile, supabase_with_secret
from providers import configured, trigger_props

from local_supabase.cluster import LocalSupabase
from local_supabase.orchestrator import WebhookReceiver
from local_supabase.pg_net_worker import PgNetWorker
from secure_webhooks.delivery.ordering import may_send
from secure_webhooks.delivery.reconciler import Route
from secure_webhooks.installation.trigger_provider import WebhookTriggerProvider

SECRET = "ordering-cost-secret-" + "0123456789abcdef" * 2
TABLE = "bench_rows"
ORDERINGS = ("none", "per-row")
#: Events of each backlog: 1000 rows with one event each, or 20 rows with 50 each.
BACKLOG = 1000


def pipeline_for(cluster: LocalSupabase, ordering: str, url: str) -> Pipeline:
    delivery = dataclasses.replace(TEST_DELIVERY, ordering=ordering, max_attempts=40)
    pipeline = install_pipeline(cluster, delivery=delivery, ordering=ordering)
    provider = configured(WebhookTriggerProvider, cluster)
    names = ("bench", "bench-update")
    for name, event in zip(names, ("INSERT", "UPDATE"), strict=True):
        pipeline.installed.append((provider, provider.create(trigger_props(TABLE, name, url, pipeline.spec, event))))
    pipeline.route(*(Route("public", TABLE, name, url) for name in names))
    return pipeline


def server_seconds(conn: psycopg.Connection, body: str) -> float:
    """Seconds a DO block's body takes inside the server (no commit, no client round trips)."""
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS took (seconds double precision)")
    conn.execute("TRUNCATE took")
    conn.execute(
        "DO $b$ DECLARE started timestamptz := clock_timestamp(); BEGIN "
        + body
        + " INSERT INTO took VALUES (extract(epoch FROM clock_timestamp() - started)); END $b$"
    )
    return conn.execute("SELECT seconds FROM took").fetchone()[0]


def reset(conn: psycopg.Connection) -> None:
    conn.execute(f"TRUNCATE public.{TABLE}")
    conn.execute("DELETE FROM secure_webhooks.events")


def insert_path(conn: psycopg.Connection, rows: int) -> dict[str, float]:
    """Microseconds per row: single-row INSERTs, one bulk INSERT, single-row UPDATEs."""
    reset(conn)
    single = server_seconds(
        conn, f"FOR i IN 1..{rows} LOOP INSERT INTO public.{TABLE} VALUES (i, 0, 'payload ' || i); END LOOP;"
    )
    update = server_seconds(
        conn, f"FOR i IN 1..{rows} LOOP UPDATE public.{TABLE} SET version = version + 1 WHERE id = i; END LOOP;"
    )
    reset(conn)
    bulk = server_seconds(
        conn, f"INSERT INTO public.{TABLE} SELECT i, 0, 'payload ' || i FROM generate_series(1, {rows}) AS i;"
    )
    reset(conn)
    return {"insert": single / rows * 1e6, "bulk": bulk / rows * 1e6, "update": update / rows * 1e6}


def drain_seconds(conn: psycopg.Connection, worker: PgNetWorker, rows: int, updates_per_row: int) -> float:
    """Seconds from a backlog's commit until the outbox holds every event as delivered."""
    reset(conn)
    with conn.transaction():
        conn.execute(f"INSERT INTO public.{TABLE} SELECT i, 0, 'p' FROM generate_series(1, {rows}) AS i")
        for _ in range(updates_per_row):
            conn.execute(f"UPDATE public.{TABLE} SET version = version + 1")
    started = time.perf_counter()
    while conn.execute("SELECT EXISTS (SELECT FROM secure_webhooks.events WHERE state <> 'delivered')").fetchone()[0]:
        reconcile(conn)
        worker.drain(timeout=300)
    return time.perf_counter() - started


def selection_ms(conn: psycopg.Connection, ordering: str, rows: int, per_row: int) -> float:
    """Milliseconds of the due-event selection (LIMIT 400) over `rows * per_row` pending events."""
    reset(conn)
    with conn.transaction():
        conn.execute(f"INSERT INTO public.{TABLE} SELECT i, 0, 'p' FROM generate_series(1, {rows}) AS i")
        for _ in range(per_row - 1):
            conn.execute(f"UPDATE public.{TABLE} SET version = version + 1")
    routes = [Route("public", TABLE, name, "http://x") for name in ("bench", "bench-update")]
    query = (
        "SELECT e.id FROM secure_webhooks.events AS e WHERE e.state = 'pending' AND e.next_attempt_at <= now()"
        + may_send("e", ordering, "block", routes)
        + " ORDER BY e.next_attempt_at LIMIT 400"
    )
    conn.execute("ANALYZE secure_webhooks.events")
    timings = []
    for _ in range(5):
        started = time.perf_counter()
        conn.execute(query).fetchall()
        timings.append((time.perf_counter() - started) * 1000)
    plan = "\n".join(row[0] for row in conn.execute("EXPLAIN " + query))
    if ordering == "per-row":
        print(plan)
    return statistics.median(timings)


def main() -> None:
    with supabase_with_secret(SECRET) as cluster, WebhookReceiver(SECRET) as receiver:
        with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE TABLE public.{TABLE} (id integer PRIMARY KEY, version integer NOT NULL, note text)")
        paths: dict[str, list[dict[str, float]]] = {ordering: [] for ordering in ORDERINGS}
        drains: dict[str, dict[str, float]] = {ordering: {} for ordering in ORDERINGS}
        selections: dict[str, float] = {}
        for repeat in range(3):
            for ordering in ORDERINGS:
                pipeline = pipeline_for(cluster, ordering, receiver.url + "/ingest")
                try:
                    with pipeline.connect() as conn, PgNetWorker(cluster.admin_dsn) as worker:
                        paths[ordering].append(insert_path(conn, 5000))
                        if repeat == 0:
                            drains[ordering]["1000 rows x 1 event"] = drain_seconds(conn, worker, 1000, 0)
                            drains[ordering]["20 rows x 50 events"] = drain_seconds(conn, worker, 20, 49)
                            selections[ordering] = selection_ms(conn, ordering, 10, 500)
                            reset(conn)
                finally:
                    pipeline.remove()
        print("\ntrigger cost in the server, microseconds per row (median of 3 interleaved runs):")
        for ordering in ORDERINGS:
            figures = {key: statistics.median(run[key] for run in paths[ordering]) for key in paths[ordering][0]}
            print(f"  {ordering:8} " + "  ".join(f"{key} {value:6.1f}" for key, value in figures.items()))
        print("\ndelivery of a backlog, seconds until every event is delivered (events per second):")
        for ordering in ORDERINGS:
            for case, seconds in drains[ordering].items():
                print(f"  {ordering:8} {case}: {seconds:6.2f} s ({BACKLOG / seconds:6.0f}/s)")
        print("\ndue-event selection over 5000 pending events of 10 rows, milliseconds (median of 5):")
        for ordering, ms in selections.items():
            print(f"  {ordering:8} {ms:6.2f} ms")


if __name__ == "__main__":
    main()
