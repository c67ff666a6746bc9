"""A database crash (pg_ctl stop -m immediate) loses pg_net's UNLOGGED queue, never a committed event.

Each test gets its own cluster, because it kills it. After restart the
reconciler sees that pg_net's epoch changed (crash recovery emptied our
UNLOGGED epoch row together with pg_net's tables), so it re-sends what was
queued or in flight rather than waiting for responses that can never come,
and never matches a remembered request id against a new request's response.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from outbox_support import (
    all_delivered,
    insert_rows,
    install_pipeline,
    reconcile,
    report,
    settle,
    supabase_with_secret,
)
from waiting import eventually

from local_supabase.cluster import LocalSupabase
from local_supabase.orchestrator import PlannedResponse, WebhookReceiver
from local_supabase.pg_net_worker import PgNetWorker

SECRET = "crash-test-signing-secret-" + "0123456789abcdef" * 2


@pytest.fixture
def cluster(module_secret) -> Iterator[LocalSupabase]:
    """A cluster for each test (not conftest's one per module): the test kills it."""
    with supabase_with_secret(module_secret) as cluster:
        yield cluster


def insert_rolled_back(conn: psycopg.Connection) -> None:
    with pytest.raises(psycopg.errors.RaiseException), conn.transaction():
        conn.execute("INSERT INTO public.resumes (name, storage_path) VALUES ('rolled-back', 'p')")
        conn.execute("DO $$ BEGIN RAISE EXCEPTION 'the app rolls back'; END $$")


def deliver_after_restart(cluster: LocalSupabase, inserted: list[int], receiver: WebhookReceiver, name: str):
    cluster.restart()
    with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM net.http_request_queue").fetchone() == (0,)
        with PgNetWorker(cluster.admin_dsn) as worker:
            settle(conn, worker, all_delivered(conn))
        errors = {row[0] for row in conn.execute("SELECT error FROM secure_webhooks.attempts WHERE error IS NOT NULL")}
    counts = report(name, inserted, receiver)
    assert all(d.body["record"]["name"] != "rolled-back" for d in receiver.deliveries)
    return counts, errors


def test_crash_after_commit_before_pg_net_sent(cluster, receiver):
    pipeline = install_pipeline(cluster)
    pipeline.add_trigger("resumes", receiver.url + "/ingest/interns/individual")
    with pipeline.connect() as conn:
        queued = insert_rows(conn, "resumes", 10, prefix="queued")
        reconcile(conn)  # 10 requests wait in pg_net's queue: no worker is running
        assert conn.execute("SELECT count(*) FROM net.http_request_queue").fetchone() == (10,)
        outbox_only = insert_rows(conn, "resumes", 10, prefix="outbox-only")
        insert_rolled_back(conn)
    cluster.crash()
    counts, errors = deliver_after_restart(cluster, queued + outbox_only, receiver, "crash before send")
    assert counts.duplicated == 0 and receiver.deliveries and len(receiver.deliveries) == 20
    assert errors == {"request lost: crash recovery emptied pg_net's queue"}


def test_crash_while_a_batch_is_in_flight(cluster, receiver):
    # Replies take 5 s (under a 15 s request timeout): the crash lands as soon as pg_net's worker has taken the
    # batch off its queue (its DELETE commits before it sends), so before it could record the responses. With
    # a 1 s timeout, replies had to come within it, and a busy machine crashed after they were recorded.
    pipeline = install_pipeline(cluster, timeout_ms=15_000)
    pipeline.add_trigger("resumes", receiver.url + "/ingest/interns/individual")
    receiver.plan(*[PlannedResponse(200, delay=5)] * 10)
    worker = PgNetWorker(cluster.admin_dsn).start()
    try:
        with pipeline.connect() as conn:
            inserted = insert_rows(conn, "resumes", 10)
            insert_rolled_back(conn)
            reconcile(conn)
            eventually(
                lambda: conn.execute("SELECT count(*) FROM net.http_request_queue").fetchone() == (0,),
                "pg_net's worker took the batch",
                timeout=30,
            )
        cluster.crash()
    finally:
        worker.stop()
    counts, _ = deliver_after_restart(cluster, inserted, receiver, "crash with a batch in flight")
    # The receiver had the first batch; the database never heard back, so it sent again.
    assert counts.duplicated == 10
