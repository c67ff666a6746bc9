"""Delivery integrity (issue 15): no poison event stalls the rest, no role redirects or forges an outcome.

Real PostgreSQL, the stand-in pg_net worker sending real HTTP over loopback, a
receiver that verifies every token with PyJWT, and attackers that hold only
what Supabase gives any role (pg_net's tables are ALL to PUBLIC) or table
privileges in `public`. Each case prints what went in and where it came out:
inserted / delivered / lost / sent elsewhere.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import psycopg
import pytest
from outbox_support import (
    TEST_DELIVERY,
    Pipeline,
    check_ids,
    down_url,
    insert_rows,
    install_pipeline,
    reconcile,
    settle,
    statuses,
    tally,
)
from psycopg import sql
from psycopg.types.json import Jsonb
from waiting import eventually

from local_supabase.cluster import LocalSupabase
from local_supabase.orchestrator import PlannedResponse
from local_supabase.pg_net_worker import PgNetWorker
from local_supabase.scripted_server import ScriptedServer
from secure_webhooks.configuration.urls import UrlPolicyError, check_base_url
from secure_webhooks.delivery.reconciler import Route

SECRET = "integrity-test-signing-secret-" + "0123456789abcdef" * 2
RESUMES_PATH = "/ingest/interns/individual"
ZIPS_PATH = "/ingest/interns/zip"


@pytest.fixture
def evil(endpoint) -> ScriptedServer:
    """Where an attacker would like the rows to go: it answers 200 to anything."""
    return endpoint


def add_seed_webhooks(pipeline: Pipeline, base_url: str) -> Pipeline:
    """Both seed webhooks, installed and routed as `pulumi up` does."""
    pipeline.add_trigger("resumes", base_url + RESUMES_PATH, name="resumes_hook")
    pipeline.add_trigger("zip_archives", base_url + ZIPS_PATH, name="zips_hook")
    pipeline.route(
        Route("public", "resumes", "resumes_hook", base_url + RESUMES_PATH),
        Route("public", "zip_archives", "zips_hook", base_url + ZIPS_PATH),
    )
    return pipeline


def webhooks(cluster: LocalSupabase, base_url: str, **spec) -> Pipeline:
    return add_seed_webhooks(install_pipeline(cluster, **spec), base_url)


@pytest.fixture
def pipeline(pipeline, receiver) -> Pipeline:
    return add_seed_webhooks(pipeline, receiver.url)


def acting_as(conn: psycopg.Connection, role: str, *grants: str) -> psycopg.Connection:
    """A session of a fresh role holding only `grants` (and what PUBLIC has), reached with SET ROLE."""
    name = sql.Identifier(role)
    if conn.execute("SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %s", (role,)).fetchone() is None:
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(name))
    conn.execute(sql.SQL("GRANT {} TO postgres").format(name))
    for grant in grants:
        conn.execute(sql.SQL(grant).format(role=name))
    session = psycopg.connect(conn.info.dsn, password=conn.info.password, autocommit=True)
    session.execute(sql.SQL("SET ROLE {}").format(name))
    return session


def event_rows(conn: psycopg.Connection) -> list[tuple]:
    return conn.execute(
        "SELECT webhook, status, attempts, last_error FROM secure_webhooks.deliveries ORDER BY created_at, webhook"
    ).fetchall()


def test_a_poison_event_fails_alone_and_every_webhook_is_delivered_in_the_same_round(conn, receiver, worker):
    """An event whose send raises (pg_net refuses its URL) next to healthy events of every webhook."""
    conn.execute(
        "INSERT INTO secure_webhooks.events (webhook, url, payload, next_attempt_at)"
        " VALUES ('old_hook', 'http://orchestrator{.example/ingest', %s, now() - interval '1 hour')",
        (Jsonb({"type": "INSERT", "table": "resumes", "schema": "public", "record": {"id": 0}, "old_record": None}),),
    )
    inserted = insert_rows(conn, "resumes", 3) + insert_rows(conn, "zip_archives", 3, prefix="zip")
    assert reconcile(conn) == 7  # one round: the poison event first in line, and nothing rolled back
    rows = event_rows(conn)
    poison = [row for row in rows if row[0] == "old_hook"]
    assert poison[0][1:3] == ("failed", 1) and "invalid URL" in poison[0][3], poison
    assert all(row[1:3] == ("pending", 1) for row in rows if row[0] != "old_hook"), rows  # all sent, in flight
    attempts = conn.execute("SELECT error FROM secure_webhooks.attempts WHERE error IS NOT NULL").fetchall()
    assert len(attempts) == 1 and "net.http_post" in attempts[0][0]
    worker.drain()
    settle(conn, worker, lambda: statuses(conn) == {"delivered": 6, "failed": 1})
    by_path = {path: [d for d in receiver.deliveries if d.path == path] for path in (RESUMES_PATH, ZIPS_PATH)}
    resumes, zips = tally(inserted[:3], by_path[RESUMES_PATH]), tally(inserted[3:], by_path[ZIPS_PATH])
    print(f"poison event next to two webhooks: resumes {resumes}; zip_archives {zips}")
    assert (resumes.delivered, resumes.lost, zips.delivered, zips.lost) == (3, 0, 3, 0)
    for deliveries in by_path.values():
        check_ids(deliveries)


def test_a_malformed_standard_webhooks_secret_fails_each_event_without_quoting_it(cluster, receiver, worker):
    secret = "whsec_" + "Zm9vYmFy" + "!~%" + "c2VjcmV0"
    with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as admin:
        admin.execute("SELECT vault.create_secret(%s, 'app_webhook_secret')", (secret,))
    pipeline = webhooks(cluster, receiver.url, webhook_secret_name="app_webhook_secret")
    try:
        with pipeline.connect() as conn:
            insert_rows(conn, "resumes", 2)
            assert reconcile(conn) == 2  # the round completes
            errors = {row[0] for row in conn.execute("SELECT last_error FROM secure_webhooks.deliveries")}
            print(f"malformed whsec_ key: {statuses(conn)}, error {errors}")
            assert statuses(conn) == {"failed": 2}
            (error,) = errors
            assert "app_webhook_secret" in error and "not a valid Standard Webhooks secret" in error
            assert not any(ch in error for ch in "!~%") and "Zm9v" not in error
    finally:
        pipeline.remove()
        with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as admin:
            admin.execute("DELETE FROM vault.secrets WHERE name = 'app_webhook_secret'")
    assert receiver.deliveries == []


def test_waiting_events_never_follow_a_foreign_trigger_with_the_webhooks_name(conn, pipeline, receiver, evil, worker):
    """Our trigger is gone while events wait (out-of-band DROP, or the webhook removed from config); a role
    with table privileges creates a same-named trigger pointing elsewhere; the operator replays."""
    receiver.plan(PlannedResponse(503), PlannedResponse(503))
    inserted = insert_rows(conn, "resumes", 2)
    settle(conn, worker, lambda: statuses(conn) == {"failed": 2})
    pipeline.route()  # the webhook is removed from config: no route, only the URL recorded at insert
    conn.execute('DROP TRIGGER "resumes_hook" ON public.resumes')
    with acting_as(conn, "intruder", "GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}") as intruder:
        intruder.execute(
            sql.SQL(
                'CREATE TRIGGER "resumes_hook" AFTER TRUNCATE ON public.resumes FOR EACH STATEMENT'
                " EXECUTE FUNCTION pg_catalog.suppress_redundant_updates_trigger({})"
            ).format(sql.Literal(evil.url + "/steal"))
        )
    assert conn.execute("SELECT secure_webhooks.replay()").fetchone() == (2,)
    settle(conn, worker, lambda: statuses(conn) == {"delivered": 2})
    counts = tally(inserted, receiver.deliveries)
    print(f"foreign same-named trigger: {counts}, sent elsewhere {len(evil.received)}")
    assert counts.delivered == 2 and counts.lost == 0 and evil.received == []
    urls = {row[0] for row in conn.execute("SELECT url FROM secure_webhooks.deliveries")}
    assert urls == {receiver.url + RESUMES_PATH}
    conn.execute('DROP TRIGGER "resumes_hook" ON public.resumes')


def test_forged_responses_never_make_an_event_delivered(cluster, evil):
    """A role with no grants at all writes pg_net's responses (PUBLIC may): planted for the next 5,000 request
    ids dated 2100, planted before a request exists, and planted beside the real failure of an attempt."""
    down, _ = down_url()  # every attempt fails to connect
    pipeline = webhooks(cluster, down)
    try:
        with pipeline.connect() as conn, acting_as(conn, "forger") as forger:
            forger.execute(
                "INSERT INTO net._http_response (id, status_code, headers, created)"
                " SELECT g, 200, '{}', timestamptz '2100-01-01' FROM pg_catalog.generate_series("
                "   (SELECT last_value + 1 FROM net.http_request_queue_id_seq),"
                "   (SELECT last_value + 5000 FROM net.http_request_queue_id_seq)) AS g"
            )
            forger.execute(
                "INSERT INTO net._http_response (id, status_code, headers)"
                " SELECT g, 200, '{}' FROM pg_catalog.generate_series("
                "   (SELECT last_value + 1 FROM net.http_request_queue_id_seq),"
                "   (SELECT last_value + 5000 FROM net.http_request_queue_id_seq)) AS g"
            )
            inserted = insert_rows(conn, "resumes", 5)
            reconcile(conn)  # queued; the worker has not picked them up
            in_flight = [r[0] for r in conn.execute("SELECT request_id FROM secure_webhooks.events").fetchall()]
            # While still queued, no response can be theirs.
            forger.execute(
                "INSERT INTO net._http_response (id, status_code, headers) SELECT unnest(%s::bigint[]), 200, '{}'",
                (in_flight,),
            )
            reconcile(conn)
            assert statuses(conn) == {"pending": 5}, statuses(conn)
            with PgNetWorker(cluster.admin_dsn) as worker:
                worker.drain()  # the real outcome: connection refused, beside the planted 200s
                settle(conn, worker, lambda: statuses(conn) == {"failed": 5})
                finished_attempts = "SELECT count(*) FROM secure_webhooks.attempts WHERE finished_at IS NOT NULL"
                settle(conn, worker, lambda: conn.execute(finished_attempts).fetchone()[0] >= 10)
            future = conn.execute("SELECT count(*) FROM net._http_response WHERE created > now()").fetchone()[0]
            result = statuses(conn)
            print(f"forged 200s: inserted {len(inserted)}, {result}, forged rows left in the future {future}")
            assert "delivered" not in result and future == 0
            finished = conn.execute(
                "SELECT count(*) FILTER (WHERE status_code IS NULL AND error IS NOT NULL), count(*)"
                " FROM secure_webhooks.attempts WHERE finished_at IS NOT NULL"
            ).fetchone()
            assert finished[0] == finished[1] >= 10  # every outcome taken is the real connection error
    finally:
        pipeline.remove()
    assert evil.received == []


def test_retry_after_never_shortens_the_backoff(conn, receiver, worker):
    """`Retry-After: 0` and an HTTP date 60 s in the past (a receiver's clock behind) wait the backoff: 1 s, 2 s."""
    past = format_datetime(datetime.now(UTC) - timedelta(seconds=60), usegmt=True)
    receiver.plan(
        PlannedResponse(503, headers={"Retry-After": "0"}),
        PlannedResponse(503, headers={"Retry-After": past}),
    )
    inserted = insert_rows(conn, "resumes", 1)
    settle(conn, worker, lambda: statuses(conn) == {"delivered": 1})
    print(f"Retry-After 0, then a past date: {tally(inserted, receiver.deliveries)}")
    sent = [row[0] for row in conn.execute("SELECT sent_at FROM secure_webhooks.attempts ORDER BY id")]
    gaps = [(later - earlier).total_seconds() for earlier, later in itertools.pairwise(sent)]
    assert len(gaps) == 2 and gaps[0] >= 1 and gaps[1] >= 2, gaps


def test_every_host_the_url_policy_accepts_pg_net_accepts_too(cluster):
    """The policy is checked against the libcurl the stand-in's net.http_post uses, as pg_net's does."""
    hosts = [f"orch{ch}estrator.example.com" for ch in "!*$&'(),;=^{}`\"<>\\+_-~|"] + [
        "orchestrator.example.com",
        "a-b_c.example.com",
        "xn--bcher-kva.example",
        "bücher.example",
        "127.0.0.1",
        "[::1]",
        "0x7f000001",
        "localhost",
        "a..b",
        "under_score",
        "trailing.dot.",
        "UPPER.example.com",
        "per%41cent.example.com",
        "1.2.3.4.5",
        "[fe80::1%25eth0]",
        "-leading-hyphen.example",
    ]
    accepted = refused = 0
    with psycopg.connect(cluster.dsn("postgres")) as conn:
        for host in hosts:
            url = f"https://{host}:9"
            try:
                check_base_url(url, production=False)
            except UrlPolicyError:
                refused += 1
                continue
            accepted += 1
            with conn.transaction(force_rollback=True):
                conn.execute("SELECT net.http_post(%s, '{}'::jsonb)", (check_base_url(url, production=False),))
    print(f"hosts: {len(hosts)}, accepted by the policy and by net.http_post {accepted}, refused at preview {refused}")
    assert accepted >= 10 and refused >= 20


def in_flight(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT count(*) FROM secure_webhooks.events WHERE state = 'sending'").fetchone()[0]


def test_with_receipts_required_only_the_receivers_own_receipt_delivers(cluster, receiver):
    """Issue 15 #4: a copied receipt, a 200 without one, then the real verifier's receipt."""
    pipeline = webhooks(cluster, receiver.url, delivery=dataclasses.replace(TEST_DELIVERY, receipts="required"))
    try:
        with pipeline.connect() as conn, acting_as(conn, "forger") as forger:
            inserted = insert_rows(conn, "resumes", 2)
            with PgNetWorker(cluster.admin_dsn) as worker:
                settle(conn, worker, lambda: statuses(conn) == {"delivered": 2})
            assert all(d.header("webhook-id") for d in receiver.deliveries)
            # The operator replays; before pg_net's worker sends the requests, a role with no grants deletes
            # them and answers each with the receipt of its earlier, real delivery.
            assert conn.execute("SELECT secure_webhooks.replay(statuses => ARRAY['delivered'])").fetchone() == (2,)
            # Rounds until both are queued: an event is not sent again within a second of its previous
            # attempt's outcome (its rate slot, docs/delivery.md "Sparing the orchestrator").
            eventually(lambda: reconcile(conn) >= 0 and in_flight(conn) == 2, "the replayed events queued", 30)
            forged = forger.execute(
                "WITH taken AS (DELETE FROM net.http_request_queue RETURNING id)"
                " INSERT INTO net._http_response (id, status_code, headers)"
                " SELECT taken.id, 200, (SELECT r.headers FROM net._http_response AS r WHERE r.status_code = 200"
                "                        ORDER BY r.created LIMIT 1) FROM taken"
            ).rowcount
            reconcile(conn)
            errors = {row[0] for row in conn.execute("SELECT last_error FROM secure_webhooks.deliveries")}
            assert forged == 2 and statuses(conn) == {"failed": 2}, (statuses(conn), errors)
            assert errors == {"HTTP 200 without a valid webhook-receipt (delivery.receipts is required)"}
            # A receiver that answers 200 without a receipt delivers nothing either.
            with ScriptedServer() as plain, PgNetWorker(cluster.admin_dsn) as worker:
                pipeline.route(Route("public", "resumes", "resumes_hook", plain.url + RESUMES_PATH))
                settle(conn, worker, lambda: len(plain.received) >= 2 and statuses(conn) == {"failed": 2})
                assert {row[0] for row in conn.execute("SELECT last_error FROM secure_webhooks.deliveries")} == errors
            # The real verifier's receipts deliver.
            with PgNetWorker(cluster.admin_dsn) as worker:
                pipeline.route(Route("public", "resumes", "resumes_hook", receiver.url + RESUMES_PATH))
                settle(conn, worker, lambda: statuses(conn) == {"delivered": 2})
            counts = tally(inserted, receiver.deliveries)
            print(
                f"receipts required: {counts}, forged responses {forged}, 200s without a receipt {len(plain.received)}"
            )
            assert counts.delivered == 2 and counts.lost == 0
    finally:
        pipeline.remove()


def test_a_trigger_on_pg_nets_tables_never_runs_as_postgres(conn, receiver, worker):
    """pg_net grants TRIGGER on its tables to PUBLIC: a role with no grants attaches code there, hoping
    the reconciler (SECURITY DEFINER, postgres) fires it. The round refuses instead; nothing is lost."""
    with acting_as(conn, "trigger_planter") as planter:
        planter.execute(
            "CREATE FUNCTION pg_temp.spy() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN RAISE EXCEPTION 'spy ran as %', current_user; END $$"
        )
        for table in ("net.http_request_queue", "net._http_response"):
            planter.execute(
                f"CREATE TRIGGER spy BEFORE INSERT OR UPDATE OR DELETE ON {table}"
                " FOR EACH ROW EXECUTE FUNCTION pg_temp.spy()"
            )
        inserted = insert_rows(conn, "resumes", 3)
        with pytest.raises(psycopg.errors.RaiseException) as refused:
            reconcile(conn)
        assert "not delivering while pg_net's tables have triggers" in str(refused.value)
        assert "spy ran" not in str(refused.value)
        assert statuses(conn) == {"pending": 3}
    # The planter's session ended; the server drops its temporary function, and the triggers with it,
    # as that backend exits.
    planted = "SELECT count(*) FROM pg_trigger WHERE tgname = 'spy' AND NOT tgisinternal"
    deadline = time.monotonic() + 60
    while conn.execute(planted).fetchone()[0]:
        assert time.monotonic() < deadline, "the planter's triggers outlived its session"
        time.sleep(0.05)
    settle(conn, worker, lambda: statuses(conn) == {"delivered": 3})
    counts = tally(inserted, receiver.deliveries)
    print(f"trigger planted on pg_net's tables: round refused, then {counts}")
    assert counts.delivered == 3 and counts.lost == 0


def test_with_receipts_required_a_forged_410_or_a_malformed_response_is_an_ordinary_failure(cluster):
    """A 410 kills an event and Retry-After stretches its wait only with a receipt; a planted response
    whose headers are not an object neither counts nor stalls the round."""
    down, _ = down_url()
    pipeline = webhooks(cluster, down, delivery=dataclasses.replace(TEST_DELIVERY, receipts="required"))
    try:
        with pipeline.connect() as conn, acting_as(conn, "forger") as forger:
            insert_rows(conn, "resumes", 3)
            reconcile(conn)
            forger.execute(
                "WITH taken AS (DELETE FROM net.http_request_queue RETURNING id)"
                " INSERT INTO net._http_response (id, status_code, headers)"
                " SELECT id, s, h::jsonb FROM (SELECT id, row_number() OVER (ORDER BY id) AS n FROM taken) AS t"
                " JOIN (VALUES (1, 410, '{}'), (2, 503, '{\"Retry-After\": \"86400\"}'), (3, 200, '[1]'))"
                "   AS f(n, s, h) USING (n)"
            )
            reconcile(conn)  # completes
            rows = conn.execute(
                "SELECT last_status_code, status, next_attempt_at < now() + interval '10 seconds'"
                " FROM secure_webhooks.deliveries ORDER BY last_status_code"
            ).fetchall()
            print(f"forged 410, Retry-After 86400 and a non-object header: {rows}")
            assert rows == [(200, "failed", True), (410, "failed", True), (503, "failed", True)]
    finally:
        pipeline.remove()


def test_a_413_says_the_body_is_over_the_receivers_limit(conn, receiver, worker):
    """Issue 15 #9: a row larger than the verifier's body limit is retried until dead; status says why."""
    receiver.plan(PlannedResponse(413))
    insert_rows(conn, "resumes", 1)
    settle(conn, worker, lambda: statuses(conn) == {"failed": 1})
    (error,) = conn.execute("SELECT last_error FROM secure_webhooks.deliveries").fetchone()
    assert error == "HTTP 413: the body is larger than the receiver accepts; raise its body limit, then replay"
    settle(conn, worker, lambda: statuses(conn) == {"delivered": 1})  # the next attempt fits (the plan is spent)
