"""A scrape's cost with millions of delivered events kept: it must follow the backlog and the window, not the
outbox's size. The outbox is filled in SQL (delivered events over the week `keepDeliveredHours` keeps them,
one attempt each, plus a backlog), then a scrape is timed (the figure is printed) and every query's plan is
checked for a sequential scan of `events` or `attempts`, the part of the cost that would grow with the
outbox. The suite runs it with 200,000 events (the plans are what it asserts); docs/metrics.md quotes a run
with METRICS_SCALE_EVENTS=2000000.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Iterator
from datetime import timedelta

import psycopg
import pytest
from outbox_support import install_pipeline, supabase_with_secret

from webhook_deliveries.metrics import (
    ATTEMPTS_QUERY,
    DEFAULT_WINDOW,
    DELIVERY_QUERY,
    PLANNER_SETTINGS,
    WAITING_QUERY,
    families,
    read_snapshot,
)

DELIVERED = int(os.environ.get("METRICS_SCALE_EVENTS", "200000"))
PENDING, DEAD = 1_000, 100
KEPT = timedelta(days=7)
#: Each delivered event: first (and only) attempt sent 50 ms after its creation, answered 100 ms later.
FILL = """
WITH delivered AS (
  INSERT INTO secure_webhooks.events (webhook, url, payload, state, attempts, created_at, delivered_at)
  SELECT 'hook_' || (g %% 3), 'http://127.0.0.1:9/x', '{"schema": "public", "table": "resumes"}', 'delivered', 1,
         pg_catalog.clock_timestamp() - %(kept)s + g * %(kept)s / %(count)s,
         pg_catalog.clock_timestamp() - %(kept)s + g * %(kept)s / %(count)s + interval '150 ms'
    FROM generate_series(1, %(count)s) AS g
  RETURNING id, created_at, delivered_at
)
INSERT INTO secure_webhooks.attempts (event_id, attempt, request_id, sent_at, finished_at, status_code)
SELECT id, 1, 1, created_at + interval '50 ms', delivered_at, 200 FROM delivered
"""
BACKLOG = """
INSERT INTO secure_webhooks.events (webhook, url, payload, state, created_at, dead_at)
SELECT 'hook_0', 'http://127.0.0.1:9/x', '{}', s.state, pg_catalog.now() - interval '1 hour', s.dead_at
  FROM (SELECT 'pending' AS state, NULL::timestamptz AS dead_at FROM generate_series(1, %(pending)s)
        UNION ALL SELECT 'dead', pg_catalog.now() FROM generate_series(1, %(dead)s)) AS s
"""


@pytest.fixture(scope="module")
def big_outbox() -> Iterator[psycopg.Connection]:
    with supabase_with_secret("scale-test-secret-" + "0" * 32) as cluster:
        pipeline = install_pipeline(cluster)
        conn = pipeline.connect()
        try:
            started = time.monotonic()
            conn.execute(FILL, {"kept": KEPT, "count": DELIVERED})
            conn.execute(BACKLOG, {"pending": PENDING, "dead": DEAD})
            conn.execute("VACUUM ANALYZE secure_webhooks.events")
            conn.execute("VACUUM ANALYZE secure_webhooks.attempts")
            print(f"\nfilled {DELIVERED:,} delivered events and their attempts in {time.monotonic() - started:.0f} s")
            yield conn
        finally:
            conn.close()
            pipeline.remove()


def scrape_seconds(conn: psycopg.Connection, window: timedelta) -> list[float]:
    """Five scrapes' times: the snapshot and its metric families, as serve-metrics does for each."""
    times = []
    for _ in range(5):
        started = time.perf_counter()
        list(families(read_snapshot(conn, window)))
        times.append(time.perf_counter() - started)
    return times


def in_window(conn: psycopg.Connection, window: timedelta) -> int:
    query = "SELECT count(*) FROM secure_webhooks.events WHERE state = 'delivered' AND delivered_at >= now() - %s"
    return conn.execute(query, (window,)).fetchone()[0]


@pytest.mark.parametrize("window", [DEFAULT_WINDOW, timedelta(hours=1)], ids=["5m", "1h"])
def test_a_scrape_reads_no_table_whole(big_outbox, window):
    """With the scrape's planner settings: left to itself, the planner hash-joins a sequential scan of all
    events past a few thousand attempts in the window."""
    with big_outbox.transaction():
        for setting in PLANNER_SETTINGS:
            big_outbox.execute(f"SET LOCAL {setting}")
        for query in (WAITING_QUERY, ATTEMPTS_QUERY, DELIVERY_QUERY):
            plan = "\n".join(row[0] for row in big_outbox.execute(f"EXPLAIN {query}", {"window": window}))
            assert "Seq Scan" not in plan, plan


def test_a_scrape_counts_the_backlog_and_the_window(big_outbox):
    """The window slides while the test counts: no delivery is added, so its count can only fall."""
    before = in_window(big_outbox, DEFAULT_WINDOW)
    snapshot = read_snapshot(big_outbox, DEFAULT_WINDOW)
    after = in_window(big_outbox, DEFAULT_WINDOW)
    assert {(webhook, status): count for webhook, status, count, _ in snapshot.waiting} == {
        ("hook_0", "pending"): PENDING,
        ("hook_0", "dead"): DEAD,
    }
    assert before >= sum(latency.count for latency in snapshot.delivery.values()) >= after > 0
    assert before >= sum(count for _, outcome, count in snapshot.attempts if outcome == "2xx") >= after


@pytest.mark.parametrize("window", [DEFAULT_WINDOW, timedelta(hours=1)], ids=["5m", "1h"])
def test_scrape_cost(big_outbox, window):
    """Printed, not judged: the machine's load decides the figure; the plans above decide how it grows."""
    delivered = in_window(big_outbox, window)
    times = scrape_seconds(big_outbox, window)
    print(
        f"\nscrape with {DELIVERED:,} delivered events kept, window {window} ({delivered:,} delivered in it):"
        f" median {statistics.median(times) * 1000:.0f} ms, best {min(times) * 1000:.0f} ms"
    )
