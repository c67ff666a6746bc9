"""What the alert metrics cost a scrape: they read the alerts table only, never the events, so their cost
follows how many alerts are kept (a week after they are done), not the outbox. The table is filled in SQL
with a week of alerts at two sizes, the read is timed (the figures are printed, docs/metrics.md quotes them)
and its plan is checked to touch nothing but the alerts table.

2,016 is a week of dead-events summaries at the default alertIntervalSeconds (300); 100,000 is far beyond
what the defaults make (an endpoint pausing and resuming every 12 s for a week, or summaries every 6 s).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from datetime import timedelta

import psycopg
import pytest
from outbox_support import install_pipeline, supabase_with_secret

from secure_webhooks.delivery.alerts import KINDS
from webhook_deliveries.metrics import ALERT_COUNTS_QUERY, families, read_alert_counts, read_snapshot

#: A week of alerts, oldest first; one in 50 failed, one in 100 pending, the rest posted.
FILL = """
INSERT INTO secure_webhooks.alerts (kind, body, state, attempts, created_at, finished_at)
SELECT (%(kinds)s::text[])[1 + g %% 3], '{"text": "secure-webhooks: an alert"}',
       CASE WHEN g %% 50 = 0 THEN 'failed' WHEN g %% 100 = 1 THEN 'pending' ELSE 'sent' END,
       CASE WHEN g %% 50 = 0 THEN 5 WHEN g %% 100 = 1 THEN 0 ELSE 1 END,
       pg_catalog.now() - interval '7 days' + g * interval '7 days' / %(count)s,
       CASE WHEN g %% 100 <> 1 THEN pg_catalog.now() - interval '7 days' + g * interval '7 days' / %(count)s END
  FROM generate_series(1, %(count)s) AS g
"""


@pytest.fixture(scope="module")
def outbox() -> Iterator[psycopg.Connection]:
    with supabase_with_secret("alert-scale-test-secret-" + "0" * 32) as cluster:
        pipeline = install_pipeline(cluster)
        with pipeline.connect() as conn:  # pytest resumes here after the module's tests, passed or not
            yield conn
        pipeline.remove()


def relations(plan: dict) -> set[str]:
    """Every table a plan node reads."""
    found = {plan["Relation Name"]} if "Relation Name" in plan else set()
    for child in plan.get("Plans", []):
        found |= relations(child)
    return found


def timed_read(conn: psycopg.Connection) -> tuple[list[float], list[tuple], dict]:
    """Five reads of the alert metrics as a scrape reads them (before its planner settings): times, rows, plan."""
    times: list[float] = []
    with conn.transaction():
        (plan,) = conn.execute(f"EXPLAIN (FORMAT JSON) {ALERT_COUNTS_QUERY}").fetchone()[0]
        for _ in range(5):
            started = time.perf_counter()
            rows = read_alert_counts(conn)
            times.append(time.perf_counter() - started)
    return times, rows, plan["Plan"]


def scrape_seconds(conn: psycopg.Connection) -> list[float]:
    """Five whole scrapes (the snapshot and its metric families), as serve-metrics does for each."""
    times = []
    for _ in range(5):
        started = time.perf_counter()
        list(families(read_snapshot(conn, timedelta(minutes=5))))
        times.append(time.perf_counter() - started)
    return times


def ms(times: list[float]) -> str:
    return f"{statistics.median(times) * 1000:.1f} ms median, {min(times) * 1000:.1f} ms best of 5"


@pytest.mark.parametrize("count", [2_016, 100_000])
def test_the_alert_metrics_read_the_alerts_table_only(outbox, count):
    outbox.execute("TRUNCATE secure_webhooks.alerts")
    outbox.execute(FILL, {"kinds": list(KINDS), "count": count})
    outbox.execute("VACUUM ANALYZE secure_webhooks.alerts")
    times, rows, plan = timed_read(outbox)
    strategy = f"{plan['Node Type']} ({plan.get('Strategy')})"
    print(f"\n{count:,} alerts: alert metrics {ms(times)}; whole scrape {ms(scrape_seconds(outbox))}; {strategy}")
    assert relations(plan) == {"alerts"}
    expected = outbox.execute("SELECT kind, state, count(*) FROM secure_webhooks.alerts GROUP BY 1, 2").fetchall()
    assert sorted((kind, state, n) for kind, state, n, _, _ in rows) == sorted(expected)
    assert sum(n for _, _, n, _, _ in rows) == count

    # The whole scrape reports them: the failed ones' count and the last failure per kind.
    snapshot = read_snapshot(outbox, timedelta(minutes=5))
    exported = {f.name: f for f in families(snapshot)}
    failed = {
        s.labels["kind"]: s.value for s in exported["secure_webhooks_alerts"].samples if s.labels["state"] == "failed"
    }
    assert sum(failed.values()) == count // 50
    last = outbox.execute(
        "SELECT kind, extract(epoch FROM max(finished_at))::float8 FROM secure_webhooks.alerts"
        " WHERE state = 'failed' GROUP BY 1"
    ).fetchall()
    stamps = exported["secure_webhooks_alert_last_failed_timestamp_seconds"].samples
    assert {s.labels["kind"]: s.value for s in stamps} == dict(last)
    oldest = outbox.execute(
        "SELECT kind, extract(epoch FROM min(created_at))::float8 FROM secure_webhooks.alerts"
        " WHERE state IN ('pending', 'sending') GROUP BY 1"
    ).fetchall()
    waiting = exported["secure_webhooks_alert_oldest_unposted_timestamp_seconds"].samples
    assert {s.labels["kind"]: s.value for s in waiting} == dict(oldest) and len(oldest) == len(KINDS)
