"""Sparing the orchestrator (issue 17 part 1): per-endpoint limits, the circuit breaker, slowing down.

Real PostgreSQL, the stand-in pg_net worker sending real HTTP over loopback, and a receiver that
measures what it is exposed to: the most requests it served at once and the most that arrived in
any one-second window. Every case counts what went in and what came out.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from outbox_support import (
    TEST_DELIVERY,
    all_delivered,
    down_url,
    install_pipeline,
    reconcile,
    settle,
    statuses,
    tally,
)
from prometheus_client.parser import text_string_to_metric_families
from psycopg import sql

from local_supabase.cluster import LocalSupabase
from local_supabase.measuring_receiver import MeasuringReceiver
from local_supabase.orchestrator import PlannedResponse
from local_supabase.pg_net_worker import PgNetWorker
from secure_webhooks.delivery.endpoints import endpoint_of, endpoint_sql
from secure_webhooks.delivery.reconciler import Route
from webhook_deliveries.__main__ import main

SECRET = "endpoint-limits-signing-secret-" + "0123456789abcdef" * 2
PATH = "/ingest/interns/individual"


@pytest.fixture(scope="module")
def database(cluster) -> Iterator[tuple[LocalSupabase, PgNetWorker]]:
    """The module's cluster, and pg_net's worker sending what the reconciler queues there (for all its tests)."""
    with PgNetWorker(cluster.admin_dsn) as sender:
        yield cluster, sender


def insert_bulk(conn: psycopg.Connection, count: int, table: str = "resumes") -> list[int]:
    """`count` rows in one statement: the trigger writes one event each."""
    rows = conn.execute(
        sql.SQL(
            "INSERT INTO public.{} (name, storage_path) SELECT 'row-' || g, 'p' FROM generate_series(1, %s) AS g "
            "RETURNING id"
        ).format(sql.Identifier(table)),
        (count,),
    ).fetchall()
    return [row[0] for row in rows]


def endpoint_row(conn: psycopg.Connection, endpoint: str) -> dict[str, Any] | None:
    row = conn.execute(
        "SELECT state, paused_since, next_probe_at, consecutive_failures, rate_budget "
        "FROM secure_webhooks.endpoints WHERE endpoint = %s",
        (endpoint,),
    ).fetchone()
    keys = ("state", "paused_since", "next_probe_at", "consecutive_failures", "rate_budget")
    return None if row is None else dict(zip(keys, row, strict=True))


def total_attempts(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT COALESCE(sum(attempts), 0) FROM secure_webhooks.events").fetchone()[0]


@pytest.mark.parametrize(
    ("events", "limits"),
    [
        (2000, {"max_in_flight": 40, "max_per_second": 50}),
        (600, {}),  # the defaults: 100 in flight, 100 a second
    ],
    ids=["configured", "defaults"],
)
def test_a_backlog_after_an_outage_reaches_the_receiver_within_the_limits(database, events, limits):
    cluster, sender = database
    delivery = dataclasses.replace(TEST_DELIVERY, **limits)
    pipeline = install_pipeline(cluster, delivery)
    try:
        url, port = down_url()
        pipeline.add_trigger("resumes", url + PATH)
        with pipeline.connect() as conn:
            inserted = insert_bulk(conn, events)
            # The receiver is down: the first attempts fail (connection refused) and the rest pile up.
            settle(conn, sender, lambda: statuses(conn).get("failed", 0) > 0)
            with MeasuringReceiver(SECRET, port=port) as back:
                started = time.monotonic()
                settle(conn, sender, all_delivered(conn), timeout=600)
                drained = time.monotonic() - started
                counts = tally(inserted, back.deliveries)
                print(
                    f"{events} events, {limits or 'default limits'}: {counts}; drained in {drained:.1f} s "
                    f"({events / drained:.0f}/s), peak concurrency {back.peak}, busiest second {back.busiest_second()}"
                )
                assert counts.lost == 0 and counts.unexpected == 0 and counts.delivered == events, counts
                assert back.peak <= delivery.max_in_flight, back.peak
                assert back.busiest_second() <= delivery.max_per_second, back.busiest_second()
    finally:
        pipeline.remove()


@pytest.mark.parametrize("max_in_flight", [5, 1000], ids=["limited", "unlimited"])
def test_the_in_flight_limit_binds_on_a_slow_orchestrator(database, max_in_flight):
    """The backlog tests never reach maxInFlight (their receiver answers in 20 ms: the per-second limit binds
    first). Here each request takes half a second and the rate is unlimited, so only maxInFlight holds the
    receiver back; with a limit far above the backlog, the same run shows what it would have seen."""
    cluster, sender = database
    delivery = dataclasses.replace(TEST_DELIVERY, max_in_flight=max_in_flight, max_per_second=10_000)
    # Half a second of work each, 60 at once on a loaded machine: a request timed out after the receiver took it
    # is sent again (a duplicate counted against the limit's run), so the timeout is far above the work. The
    # timeout is not what this test measures.
    pipeline = install_pipeline(cluster, delivery, timeout_ms=10_000)
    try:
        with MeasuringReceiver(SECRET, work=0.5) as receiver, pipeline.connect() as conn:
            pipeline.add_trigger("resumes", receiver.url + PATH)
            inserted = insert_bulk(conn, 60)
            settle(conn, sender, all_delivered(conn), timeout=120)
            counts = tally(inserted, receiver.deliveries)
            print(f"maxInFlight {max_in_flight}, 0.5 s a request: {counts}, peak concurrency {receiver.peak}")
            assert counts.lost == 0 and counts.duplicated == 0 and counts.delivered == 60, counts
            if max_in_flight == 5:
                assert receiver.peak <= 5, receiver.peak
            else:
                assert receiver.peak > 5, receiver.peak  # what the limit of 5 held back
    finally:
        pipeline.remove()


def test_webhooks_on_one_host_share_its_limits(database):
    """Two webhooks (two tables, two paths) on one receiver: one endpoint, one budget between them."""
    cluster, sender = database
    delivery = dataclasses.replace(TEST_DELIVERY, max_in_flight=10, max_per_second=20)
    pipeline = install_pipeline(cluster, delivery)
    try:
        with MeasuringReceiver(SECRET) as receiver, pipeline.connect() as conn:
            pipeline.add_trigger("resumes", receiver.url + PATH, name="resumes_hook")
            pipeline.add_trigger("zip_archives", receiver.url + "/ingest/resumes/batch", name="archives_hook")
            inserted = {table: insert_bulk(conn, 150, table) for table in ("resumes", "zip_archives")}
            settle(conn, sender, all_delivered(conn), timeout=300)
            ok = [d.body for d in receiver.deliveries if d.status == 200]
            accepted = {table: {body["record"]["id"] for body in ok if body["table"] == table} for table in inserted}
            (endpoints,) = conn.execute("SELECT array_agg(endpoint) FROM secure_webhooks.endpoints").fetchone()
            print(
                f"two webhooks, one host: delivered {sum(map(len, accepted.values()))} of 300, "
                f"peak concurrency {receiver.peak}, busiest second {receiver.busiest_second()}"
            )
            assert all(accepted[table] == set(rows) for table, rows in inserted.items())
            assert endpoints == [endpoint_of(receiver.url)]
            assert receiver.peak <= 10 and receiver.busiest_second() <= 20, (receiver.peak, receiver.busiest_second())
    finally:
        pipeline.remove()


def test_a_url_change_moves_parked_events_and_opens_the_old_paused_endpoint(database):
    """`up` of a new orchestratorUrl while the old one is paused with a backlog: the parked events count
    against the new endpoint's limits, and the old endpoint, with nothing left to probe, is not left paused."""
    cluster, sender = database
    # No probe within the test: the backlog stays parked at the old endpoint until the URL changes.
    delivery = dataclasses.replace(TEST_DELIVERY, pause_after_failures=2, probe_seconds=3600, max_per_second=20)
    pipeline = install_pipeline(cluster, delivery)
    try:
        with MeasuringReceiver(SECRET) as old, MeasuringReceiver(SECRET) as new, pipeline.connect() as conn:
            pipeline.add_trigger("resumes", old.url + PATH, name="resumes_hook")
            old.down = True
            inserted = insert_bulk(conn, 60)

            def parked_at(endpoint: str) -> int:
                return conn.execute(
                    "SELECT count(*) FROM secure_webhooks.events WHERE endpoint = %s AND state = 'pending' "
                    "AND next_attempt_at > now() + interval '1 year'",
                    (endpoint,),
                ).fetchone()[0]

            before, after = endpoint_of(old.url), endpoint_of(new.url)
            settle(conn, sender, lambda: parked_at(before) == len(inserted), timeout=120)
            assert endpoint_row(conn, before)["state"] == "paused"

            pipeline.route(Route("public", "resumes", "resumes_hook", new.url + PATH))
            assert (parked_at(before), parked_at(after)) == (0, len(inserted))
            row = endpoint_row(conn, before)
            assert row is not None and row["state"] == "open" and row["paused_since"] is None, row

            settle(conn, sender, all_delivered(conn), timeout=300)
            counts = tally(inserted, new.deliveries)
            print(f"URL change with a parked backlog: {counts}; busiest second at the new URL {new.busiest_second()}")
            assert counts.lost == 0 and counts.unexpected == 0 and counts.delivered == len(inserted), counts
            assert new.busiest_second() <= 20, new.busiest_second()
    finally:
        pipeline.remove()


def run_cli(capsys, dsn: str, *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["--dsn", dsn, *argv])
    return code, capsys.readouterr().out


def test_a_long_outage_pauses_the_endpoint_uses_no_attempts_and_resumes_on_a_probe(database, capsys):
    cluster, sender = database
    delivery = dataclasses.replace(TEST_DELIVERY, pause_after_failures=3, probe_seconds=2, max_attempts=4)
    pipeline = install_pipeline(cluster, delivery)
    try:
        with MeasuringReceiver(SECRET) as receiver, pipeline.connect() as conn:
            endpoint = endpoint_of(receiver.url)
            pipeline.add_trigger("resumes", receiver.url + PATH)
            receiver.down = True
            inserted = insert_bulk(conn, 30)

            def sending() -> int:
                return conn.execute("SELECT count(*) FROM secure_webhooks.events WHERE state = 'sending'").fetchone()[0]

            def paused_and_settled() -> bool:
                row = endpoint_row(conn, endpoint)
                return row is not None and row["state"] == "paused" and not sending()

            settle(conn, sender, paused_and_settled)
            attempts_at_pause, arrived_at_pause = total_attempts(conn), len(receiver.arrivals)
            paused_at = time.monotonic()
            # Over several probe intervals only probes reach the receiver, and they use no attempts.
            settle(conn, sender, lambda: len(receiver.arrivals) >= arrived_at_pause + 3 and not sending(), timeout=60)
            probes, elapsed = len(receiver.arrivals) - arrived_at_pause, time.monotonic() - paused_at
            print(f"paused after {arrived_at_pause} requests; {probes} probes in {elapsed:.1f} s")
            assert probes <= elapsed / delivery.probe_seconds + 1, (probes, elapsed)
            assert total_attempts(conn) == attempts_at_pause
            assert "dead" not in statuses(conn)

            # What operators see while it is paused.
            dsn = cluster.dsn("postgres")
            code, out = run_cli(capsys, dsn, "status")
            assert code == 0 and endpoint in out and "paused" in out, out
            code, out = run_cli(capsys, dsn, "status", "--json")
            (shown,) = [e for e in json.loads(out)["endpoints"] if e["endpoint"] == endpoint]
            assert shown["state"] == "paused" and shown["paused_since"] and shown["next_probe_at"], shown
            assert shown["waiting"] > 0, shown
            code, out = run_cli(capsys, dsn, "status", "--check", "--paused-for", "1s")
            assert code == 1 and out.count("\n") == 1 and f"{endpoint} for" in out, out
            code, out = run_cli(capsys, dsn, "status", "--check", "--paused-for", "1h")
            assert f"{endpoint} for" not in out, out
            code, out = run_cli(capsys, dsn, "metrics")
            families = {f.name: f for f in text_string_to_metric_families(out)}
            samples = {s.labels["endpoint"]: s.value for s in families["secure_webhooks_endpoint_paused"].samples}
            assert samples[endpoint] == 1.0, samples
            assert endpoint in {s.labels["endpoint"] for s in families["secure_webhooks_endpoint_in_flight"].samples}

            # The receiver returns: the next probe resumes the endpoint and everything is delivered.
            receiver.down = False
            settle(conn, sender, all_delivered(conn), timeout=120)
            counts = tally(inserted, receiver.deliveries)
            print(f"long outage: {counts}; {len(receiver.arrivals)} requests in all")
            assert counts.lost == 0 and counts.unexpected == 0 and counts.delivered == 30, counts
            row = endpoint_row(conn, endpoint)
            assert row is not None and row["state"] == "open" and row["paused_since"] is None, row
            assert row["consecutive_failures"] == 0, row
    finally:
        pipeline.remove()


def test_503s_lower_the_endpoints_budget_and_successes_restore_it(database):
    cluster, sender = database
    delivery = dataclasses.replace(TEST_DELIVERY, max_per_second=8)
    pipeline = install_pipeline(cluster, delivery)
    try:
        with MeasuringReceiver(SECRET) as receiver, pipeline.connect() as conn:
            endpoint = endpoint_of(receiver.url)
            pipeline.add_trigger("resumes", receiver.url + PATH)
            receiver.plan(*[PlannedResponse(503)] * 3)
            inserted = insert_bulk(conn, 3)
            budgets: list[int | None] = []

            def failed_thrice() -> bool:
                row = endpoint_row(conn, endpoint)
                budgets.append(None if row is None else row["rate_budget"])
                return statuses(conn).get("failed", 0) == 3

            settle(conn, sender, failed_thrice)
            lowered = endpoint_row(conn, endpoint)["rate_budget"]
            assert lowered is not None and lowered <= 4, budgets
            inserted += insert_bulk(conn, 10)
            settle(conn, sender, all_delivered(conn), timeout=60)
            counts = tally(inserted, receiver.deliveries)
            restored = endpoint_row(conn, endpoint)["rate_budget"]
            print(f"503s: budget {delivery.max_per_second} -> {lowered} -> {restored or 'full'}; {counts}")
            assert counts.lost == 0 and counts.delivered == 13, counts
            assert restored is None, restored  # the full maxPerSecond again
    finally:
        pipeline.remove()


def round_ms(conn: psycopg.Connection, rounds: int = 20) -> float:
    """The median time of `rounds` reconciler rounds, in milliseconds (a figure to print, not to judge)."""
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        reconcile(conn)
        times.append((time.perf_counter() - started) * 1000)
    return sorted(times)[len(times) // 2]


def test_a_round_reads_only_what_is_in_flight_or_parked(database):
    """The per-endpoint counts use partial indexes: delivered history is not read."""
    cluster, _ = database
    pipeline = install_pipeline(cluster)
    endpoint = "http://127.0.0.1:9"
    try:
        with pipeline.connect() as conn:
            pipeline.add_trigger("resumes", endpoint + PATH)
            before = round_ms(conn)
            conn.execute(
                "INSERT INTO secure_webhooks.events (webhook, url, payload, state, delivered_at, endpoint, slot_until) "
                "SELECT 'h', %s, '{}', 'delivered', now(), %s, now() - interval '1 hour' "
                "FROM generate_series(1, 200000)",
                (endpoint + "/x", endpoint),
            )
            conn.execute("ANALYZE secure_webhooks.events")
            # Indexes that hold only recent slots, or only pending events: never the delivered history.
            for counted, indexes in (
                ("s.slot_until > now()", ("events_endpoint_slots",)),
                (
                    "s.state = 'pending' AND s.next_attempt_at = '9999-12-31 00:00:00+00'::timestamptz",
                    ("events_parked", "events_due"),
                ),
            ):
                plan = "\n".join(
                    row[0]
                    for row in conn.execute(
                        f"EXPLAIN SELECT count(*) FROM secure_webhooks.events AS s WHERE s.endpoint = %s AND {counted}",
                        (endpoint,),
                    )
                )
                assert any(index in plan for index in indexes) and "Seq Scan" not in plan, plan
            after = round_ms(conn)
            print(f"idle round: {before:.2f} ms empty, {after:.2f} ms with 200,000 delivered events")
    finally:
        pipeline.remove()


@pytest.mark.parametrize(
    ("url", "endpoint"),
    [
        ("https://Orchestrator.Example.com/ingest/x?a=1", "https://orchestrator.example.com"),
        ("https://user:secret@orchestrator.example.com:8443/x", "https://orchestrator.example.com:8443"),
        ("http://127.0.0.1:9/ingest#frag", "http://127.0.0.1:9"),
        ("HTTPS://[::1]:8080/x", "https://[::1]:8080"),
    ],
)
def test_an_endpoint_is_the_urls_origin_without_userinfo(database, url, endpoint):
    """Python (status, docs) and the reconciler's SQL agree; several webhooks on one host share one endpoint."""
    cluster, _ = database
    with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as conn:
        query = f"SELECT {endpoint_sql('u.url')} FROM (SELECT %s::text AS url) AS u"
        (in_sql,) = conn.execute(query, (url,)).fetchone()
    assert endpoint_of(url) == in_sql == endpoint
    assert "secret" not in in_sql
