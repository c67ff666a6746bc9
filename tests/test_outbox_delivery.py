"""At-least-once delivery against a misbehaving orchestrator: nothing committed is ever lost.

Real PostgreSQL, the stand-in pg_net worker sending real HTTP over loopback,
and a receiver that verifies every token with PyJWT. The reconciler's rounds
are run the way the pg_cron loop runs them; every case prints and checks what
went in and what came out.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading

import psycopg
import pytest
from outbox_support import (
    TEST_DELIVERY,
    TIMEOUT_MS,
    all_delivered,
    down_url,
    insert_rows,
    install_pipeline,
    reconcile,
    report,
    settle,
    statuses,
)
from providers import trigger_props
from waiting import eventually

from local_supabase.cluster import LocalSupabase
from local_supabase.orchestrator import PlannedResponse, WebhookReceiver
from local_supabase.pg_net_worker import PgNetWorker
from secure_webhooks.delivery.reconciler import ReconcilerSpec, Route

SECRET = "outbox-test-signing-secret-" + "0123456789abcdef" * 2


@pytest.fixture
def conn(pipeline, receiver, conn) -> psycopg.Connection:
    """A connection as postgres, with a webhook on public.resumes pointing at `receiver`."""
    pipeline.add_trigger("resumes", receiver.url + "/ingest/interns/individual")
    return conn


def test_insert_writes_the_outbox_and_a_round_delivers_with_the_event_id(conn, worker, receiver):
    inserted = insert_rows(conn, "resumes", 3)
    assert statuses(conn) == {"pending": 3}
    assert receiver.deliveries == []  # nothing leaves in the user's transaction
    settle(conn, worker, all_delivered(conn))
    counts = report("plain", inserted, receiver)
    assert counts.duplicated == 0
    delivery = receiver.deliveries[0]
    assert delivery.claims["exp"] - delivery.claims["iat"] == 300
    event_ids = {row[0] for row in conn.execute("SELECT event_id::text FROM secure_webhooks.deliveries")}
    assert {d.header("webhook-id") for d in receiver.deliveries} == event_ids
    assert delivery.body == {
        "old_record": None,
        "record": delivery.body["record"],
        "type": "INSERT",
        "table": "resumes",
        "schema": "public",
    }


def test_orchestrator_down_then_back(pipeline, worker):
    """Connection refused while rows go in and rounds run; once it is back, every row arrives."""
    url, port = down_url()
    pipeline.add_trigger("resumes", url + "/ingest/interns/individual")
    with pipeline.connect() as conn:
        inserted = insert_rows(conn, "resumes", 20)
        settle(conn, worker, lambda: statuses(conn) == {"failed": 20})
        (error,) = conn.execute("SELECT DISTINCT last_error FROM secure_webhooks.deliveries").fetchone()
        assert "connect" in error.lower(), error  # curl: "Couldn't connect to server"
        with WebhookReceiver(SECRET, port=port) as back:
            settle(conn, worker, all_delivered(conn))
            counts = report("orchestrator down, then back", inserted, back)
    assert counts.duplicated == 0


#: A failed event's retry delay as the round that judged it scheduled it: from the round's start (its rate slot
#: lasts one second past it) to the next attempt. Gaps between the attempts' sends would add how long this
#: machine takes to judge and then to send, which a loaded machine stretches past a second.
SCHEDULED = """
SELECT attempts, extract(epoch FROM next_attempt_at - (slot_until - interval '1 second'))::float8
  FROM secure_webhooks.events WHERE state = 'pending' AND attempts > 0"""


def test_a_500_is_retried_until_a_200(conn, worker, receiver):
    receiver.plan(PlannedResponse(500), PlannedResponse(503))
    inserted = insert_rows(conn, "resumes", 1)
    scheduled: dict[int, float] = {}

    def delivered_noting_delays() -> bool:
        # Only reconcile() sends a retry, and settle asks this after each round: a judged failure is seen pending.
        scheduled.update(conn.execute(SCHEDULED).fetchall())
        return all_delivered(conn)()

    settle(conn, worker, delivered_noting_delays)
    report("500, 503, then 200", inserted, receiver)
    assert [d.status for d in receiver.deliveries] == [500, 503, 200]
    (attempts,) = conn.execute("SELECT array_agg(status_code ORDER BY id) FROM secure_webhooks.attempts").fetchone()
    assert attempts == [500, 503, 200]
    sent = [row[0] for row in conn.execute("SELECT sent_at FROM secure_webhooks.attempts ORDER BY id")]
    gaps = [(later - earlier).total_seconds() for earlier, later in itertools.pairwise(sent)]
    assert gaps[0] >= 1 and gaps[1] >= 2, gaps
    # The backoff, 1 s then 2 s, not retryMaxSeconds: the round's start is a moment after the now() it schedules from.
    assert sorted(scheduled) == [1, 2] and 0.5 < scheduled[1] <= 1 and 1.5 < scheduled[2] <= 2, scheduled


def test_429_retry_after_is_honoured(conn, worker, receiver):
    receiver.plan(PlannedResponse(429, {"Retry-After": "3"}))
    inserted = insert_rows(conn, "resumes", 1)
    settle(conn, worker, all_delivered(conn))
    report("429 with Retry-After: 3", inserted, receiver)
    first, second = conn.execute("SELECT sent_at FROM secure_webhooks.attempts ORDER BY id").fetchall()
    # The backoff alone would retry after 1 s.
    assert (second[0] - first[0]).total_seconds() >= 3


def test_410_goes_to_dead_letter_and_replay_delivers_it(conn, worker, receiver):
    receiver.plan(PlannedResponse(410))
    inserted = insert_rows(conn, "resumes", 1)
    settle(conn, worker, lambda: statuses(conn) == {"dead": 1})
    assert [d.status for d in receiver.deliveries] == [410]
    (event_id,) = conn.execute("SELECT event_id FROM secure_webhooks.deliveries").fetchone()
    assert conn.execute("SELECT secure_webhooks.replay_event(%s)", (event_id,)).fetchone() == (True,)
    settle(conn, worker, all_delivered(conn))
    report("410, dead, replayed", inserted, receiver)


def test_a_reply_slower_than_the_timeout_is_retried_with_the_same_event_id(conn, worker, receiver):
    receiver.plan(PlannedResponse(200, delay=TIMEOUT_MS / 1000 + 0.5))
    inserted = insert_rows(conn, "resumes", 1)
    settle(conn, worker, all_delivered(conn))
    # The receiver records the slow request once its reply's delay is over: only 0.5 s after pg_net gave up on it
    # and at most a second before the retry is recorded, a margin a busy machine's scheduling can take.
    eventually(lambda: len(receiver.deliveries) >= 2, "the slow request recorded too", timeout=30)
    counts = report("slower than timeoutMs", inserted, receiver)
    # The receiver processed the slow request too: a duplicate, recognisable by its webhook-id.
    assert counts.duplicated == 1
    (errors,) = conn.execute("SELECT array_agg(error ORDER BY id) FROM secure_webhooks.attempts").fetchone()
    assert errors[0].startswith("Timeout") and errors[1] is None


def test_401_until_the_key_is_fixed(conn, worker, receiver):
    conn.execute("SELECT vault.update_secret(id, %s) FROM vault.secrets WHERE name = 'app_jwt_secret'", ("w" * 40,))
    try:
        inserted = insert_rows(conn, "resumes", 2)
        settle(conn, worker, lambda: statuses(conn).get("failed") == 2)
        assert {d.status for d in receiver.deliveries} == {401}
    finally:
        conn.execute("SELECT vault.update_secret(id, %s) FROM vault.secrets WHERE name = 'app_jwt_secret'", (SECRET,))
    settle(conn, worker, all_delivered(conn))
    report("401 until the key was fixed", inserted, receiver)


def rename_secret(cluster: LocalSupabase, old: str, new: str) -> None:
    """Only the superuser may change vault.secrets directly (postgres has SELECT and DELETE)."""
    with psycopg.connect(cluster.admin_dsn, autocommit=True) as admin:
        admin.execute("UPDATE vault.secrets SET name = %s WHERE name = %s", (new, old))


def test_a_missing_vault_secret_never_fails_the_insert(conn, worker, receiver, cluster):
    rename_secret(cluster, "app_jwt_secret", "parked")
    try:
        inserted = insert_rows(conn, "resumes", 2)  # commits: no exception in at-least-once mode
        reconcile(conn)
        (errors,) = conn.execute("SELECT array_agg(DISTINCT error) FROM secure_webhooks.attempts").fetchone()
        assert errors == ["app_jwt_secret not found in vault"]
        assert statuses(conn) == {"failed": 2}
    finally:
        rename_secret(cluster, "parked", "app_jwt_secret")
    settle(conn, worker, all_delivered(conn))
    report("missing Vault secret, then created", inserted, receiver)


def test_a_request_deleted_from_pg_nets_queue_by_another_role_is_still_delivered(conn, cluster, receiver):
    inserted = insert_rows(conn, "resumes", 1)
    reconcile(conn)  # queued in net.http_request_queue, no worker running yet
    with conn.transaction():
        conn.execute("SET LOCAL ROLE authenticated")
        deleted = conn.execute("DELETE FROM net.http_request_queue").rowcount
    assert deleted == 1
    with PgNetWorker(cluster.admin_dsn) as worker:
        settle(conn, worker, all_delivered(conn), timeout=30)
    report("queued request deleted by another role", inserted, receiver)
    (error,) = conn.execute("SELECT error FROM secure_webhooks.attempts ORDER BY id LIMIT 1").fetchone()
    assert error == "request vanished from pg_net's queue without a response"


def test_two_concurrent_reconciler_runs_send_each_event_once(conn, pipeline, worker, receiver):
    inserted = insert_rows(conn, "resumes", 300)
    stop = threading.Event()

    def run() -> None:
        with pipeline.connect() as own:
            while not stop.is_set():
                reconcile(own)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        eventually(lambda: statuses(conn) == {"delivered": 300}, "300 delivered by two reconcilers", timeout=300)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    counts = report("two reconcilers at once", inserted, receiver)
    assert counts.duplicated == 0
    before = len(receiver.deliveries)
    for _ in range(3):
        reconcile(conn)  # idempotent once everything is delivered
    worker.drain()
    assert len(receiver.deliveries) == before


def test_a_request_that_waited_long_in_the_queue_is_not_taken_as_vanished(cluster, receiver):
    """Found by the recovery benchmark: time spent queued behind a backlog used to count as missing."""
    # Its own pipeline, with an 8 s request timeout: the reply below takes 4 s, so the round that must see the
    # request on the wire runs before pg_net records the reply, and the reply beats the timeout, even on a busy
    # machine (a 1 s timeout left 0.8 s and 0.2 s: a late round saw the reply and tested nothing).
    pipeline = install_pipeline(cluster, timeout_ms=8000)
    try:
        pipeline.add_trigger("resumes", receiver.url + "/ingest/interns/individual")
        with pipeline.connect() as conn:
            inserted = insert_rows(conn, "resumes", 1)
            reconcile(conn)  # queued; no worker yet, so it waits longer than the vanish grace period
            grace = ReconcilerSpec(function=pipeline.spec).grace_seconds
            eventually(
                lambda: conn.execute(
                    "SELECT bool_and(sent_at < now() - make_interval(secs => %s)) FROM secure_webhooks.events",
                    (grace,),
                ).fetchone()[0],
                "queued for longer than the grace period, by the database's clock",
                timeout=grace + 60,
            )
            receiver.plan(PlannedResponse(200, delay=4))  # on the wire: out of the queue, no response yet
            with PgNetWorker(cluster.admin_dsn) as worker:
                eventually(
                    lambda: conn.execute("SELECT count(*) FROM net.http_request_queue").fetchone() == (0,),
                    "pg_net's worker took the request",
                    timeout=30,
                )
                reconcile(conn)  # sees it neither queued nor answered: only starts its grace period
                missing = "SELECT state, missing_since IS NOT NULL FROM secure_webhooks.events"
                assert conn.execute(missing).fetchall() == [("sending", True)]
                settle(conn, worker, all_delivered(conn))
            assert conn.execute("SELECT count(*) FROM secure_webhooks.attempts").fetchone() == (1,)
        counts = report("queued longer than the grace period", inserted, receiver)
        assert counts.duplicated == 0
    finally:
        pipeline.remove()


def test_pending_events_follow_the_webhooks_new_url(pipeline, worker):
    """`pulumi up` with a new orchestratorUrl re-points the trigger and the reconciler's route; events
    already waiting follow the route."""
    old_url = down_url()[0] + "/ingest/interns/individual"
    pipeline.add_trigger("resumes", old_url, name="moving_hook")
    triggers, created = pipeline.installed[-1]
    with pipeline.connect() as conn, WebhookReceiver(SECRET) as new_home:
        inserted = insert_rows(conn, "resumes", 3)
        settle(conn, worker, lambda: statuses(conn) == {"failed": 3})
        moved = trigger_props("resumes", "moving_hook", new_home.url + "/ingest/interns/individual", pipeline.spec)
        triggers.update(created.id, created.outs, moved)
        pipeline.route(Route("public", "resumes", "moving_hook", new_home.url + "/ingest/interns/individual"))
        settle(conn, worker, all_delivered(conn))
        report("events pending while the URL changed", inserted, new_home)
        urls = {row[0] for row in conn.execute("SELECT url FROM secure_webhooks.deliveries")}
    assert urls == {new_home.url + "/ingest/interns/individual"}


def test_retention_purges_delivered_and_dead_events(cluster, receiver):
    delivery = dataclasses.replace(TEST_DELIVERY, keep_delivered_hours=0, keep_dead_hours=1)
    pipeline = install_pipeline(cluster, delivery=delivery)
    try:
        pipeline.add_trigger("resumes", receiver.url + "/ingest/interns/individual")
        receiver.plan(PlannedResponse(410))
        with pipeline.connect() as conn, PgNetWorker(cluster.admin_dsn) as worker:
            insert_rows(conn, "resumes", 3)
            settle(conn, worker, lambda: statuses(conn) == {"dead": 1, "delivered": 2})
            assert conn.execute("SELECT secure_webhooks.purge_expired()").fetchone() == (2,)
            assert statuses(conn) == {"dead": 1}  # dead events are kept for keepDeadHours
            conn.execute("UPDATE secure_webhooks.events SET dead_at = now() - interval '61 minutes'")
            assert conn.execute("SELECT secure_webhooks.purge_expired()").fetchone() == (1,)
            assert statuses(conn) == {}
            assert conn.execute("SELECT count(*) FROM secure_webhooks.attempts").fetchone() == (0,)
    finally:
        pipeline.remove()
