"""A token stolen from pg_net's world-readable queue is worthless: it is bound to its one request.

Tried as an attacker would: a role that can read (and update) net.http_request_queue
takes the Authorization header of a queued request and uses it elsewhere.
Real PostgreSQL, the stand-in pg_net worker, real HTTP; verification with the
orchestrator's verifier (webhook_verifier) and with plain PyJWT.
"""

from __future__ import annotations

import base64
import json

import jwt
import pytest
import standardwebhooks
from binding_support import PATH, authorization, direct_webhook, ensure_webhook_secret, insert_resumes
from outbox_support import (
    all_delivered,
    deliver_once,
    insert_rows,
    install_pipeline,
    reconcile,
    settle,
    supabase_with_secret,
)

from local_supabase.pg_net_worker import PgNetWorker
from local_supabase.scripted_server import Reply, ScriptedServer
from webhook_verifier import VerificationError, Verifier, body_sha256


@pytest.mark.parametrize("signer", ["pgcrypto", "pgjwt"])
def test_each_row_gets_its_own_token_bound_to_its_body(
    supabase_ready, pg_net_worker, postgres_conn, receiver_secret, signer
):
    with ScriptedServer() as endpoint, direct_webhook(supabase_ready, endpoint.url + PATH, signer=signer):
        insert_resumes(postgres_conn, "a.pdf", "b.pdf", "c.pdf")
        requests = endpoint.wait_for(3)
    verifier = Verifier(receiver_secret, expected_claims={"role": "service_role"})
    verified = [verifier.verify(r.headers, r.body) for r in requests]
    assert len({v.event_id for v in verified}) == 3 and not any(v.duplicate for v in verified)
    for request in requests:
        claims = jwt.decode(authorization(request).split()[1], receiver_secret, algorithms=["HS256"])
        assert claims["body_sha256"] == body_sha256(request.body)
        # pg_net posts the jsonb's text form: keys reordered, a space after ':' and ','.
        assert request.body.decode() == json.dumps(json.loads(request.body), separators=(", ", ": "))
        assert "aud" not in claims


def test_aud_names_the_exact_url_when_turned_on(supabase_ready, pg_net_worker, postgres_conn, receiver_secret):
    with ScriptedServer() as endpoint, direct_webhook(supabase_ready, endpoint.url + PATH, audience=True):
        insert_resumes(postgres_conn, "aud.pdf")
        (request,) = endpoint.wait_for(1)
    url = endpoint.url + PATH
    assert Verifier(receiver_secret, audience=url).verify(request.headers, request.body).claims["aud"] == url
    elsewhere = Verifier(receiver_secret, audience=endpoint.url + "/ingest/resumes/batch")
    with pytest.raises(VerificationError) as refused:
        elsewhere.verify(request.headers, request.body)
    assert refused.value.reason == "audience"
    # Like the Rust jsonwebtoken crate: a verifier that configured no audience refuses a token with one.
    with pytest.raises(VerificationError) as unexpected:
        Verifier(receiver_secret).verify(request.headers, request.body)
    assert unexpected.value.reason == "audience"


def test_a_token_read_from_the_queue_in_the_inserting_transaction_is_worthless(
    supabase_ready, pg_net_worker, postgres_conn, receiver_secret
):
    """Direct mode: `authenticated` inserts a row and reads its own request's token before commit."""
    with ScriptedServer() as endpoint, direct_webhook(supabase_ready, endpoint.url + PATH, audience=True):
        with postgres_conn.transaction():
            postgres_conn.execute("SET LOCAL ROLE authenticated")
            insert_resumes(postgres_conn, "victim.pdf")
            (stolen_headers,) = postgres_conn.execute(
                "SELECT headers FROM net.http_request_queue ORDER BY id DESC LIMIT 1"
            ).fetchone()
        (honest,) = endpoint.wait_for(1)
    real = endpoint.url + PATH
    orchestrator = Verifier(receiver_secret, audience=real)
    assert orchestrator.verify(honest.headers, honest.body).duplicate is False
    stolen = dict(stolen_headers)  # a thief reading the queue has every header
    # Same body again: the orchestrator already has this event id, so it is acknowledged, not processed.
    assert orchestrator.verify(stolen, honest.body).duplicate is True
    forged = json.dumps({"type": "INSERT", "table": "resumes", "record": {"name": "attacker.pdf"}}).encode()
    with pytest.raises(VerificationError) as other_body:
        orchestrator.verify(stolen, forged)
    assert other_body.value.reason == "body_hash"
    other_endpoint = Verifier(receiver_secret, audience=endpoint.url + "/ingest/resumes/batch")
    with pytest.raises(VerificationError) as other_url:
        other_endpoint.verify(stolen, honest.body)
    assert other_url.value.reason == "audience"


def test_a_redirected_queued_request_gives_the_attacker_nothing(receiver_secret):
    """At-least-once: the attacker re-points a queued request; the event still reaches the orchestrator.

    A cluster of its own: no other worker may pick the request up before the attacker moves it.
    """
    with (
        supabase_with_secret(receiver_secret) as cluster,
        ScriptedServer() as orchestrator_endpoint,
        ScriptedServer(Reply(status=500)) as attacker,
    ):
        pipeline = install_pipeline(cluster)
        try:
            pipeline.add_trigger("resumes", orchestrator_endpoint.url + PATH)
            with pipeline.connect() as conn:
                insert_rows(conn, "resumes", 1, prefix="redirected")
                reconcile(conn)  # queued; pg_net's worker has not picked it up yet
                with conn.transaction():
                    conn.execute("SET LOCAL ROLE authenticated")
                    moved = conn.execute("UPDATE net.http_request_queue SET url = %s", (attacker.url + PATH,)).rowcount
                assert moved == 1
                with PgNetWorker(cluster.admin_dsn) as worker:
                    settle(conn, worker, all_delivered(conn))  # the 500 made the reconciler retry, to the real URL
        finally:
            pipeline.remove()
    (captured,) = attacker.received
    (honest,) = orchestrator_endpoint.received
    orchestrator = Verifier(receiver_secret)
    assert orchestrator.verify(honest.headers, honest.body).duplicate is False
    replayed = orchestrator.verify(captured.headers, captured.body)
    assert replayed.duplicate is True and replayed.event_id == orchestrator.verify(honest.headers, honest.body).event_id
    with pytest.raises(VerificationError) as other_body:
        orchestrator.verify(captured.headers, base64.b64encode(captured.body))
    assert other_body.value.reason == "body_hash"


def test_direct_requests_carry_their_jti_as_webhook_id(supabase_ready, pg_net_worker, postgres_conn, receiver_secret):
    with ScriptedServer() as endpoint, direct_webhook(supabase_ready, endpoint.url + PATH):
        insert_resumes(postgres_conn, "one.pdf", "two.pdf")
        requests = endpoint.wait_for(2)
    for request in requests:
        verified = Verifier(receiver_secret).verify(request.headers, request.body)
        assert verified.event_id == next(v for k, v in request.headers.items() if k.lower() == "webhook-id")


@pytest.fixture
def webhook_secret(supabase_ready) -> str:
    return ensure_webhook_secret(supabase_ready)


def check_standard_webhooks(request, secret: str, jwt_secret: str) -> None:
    """The reference library (standardwebhooks) and our verifier both accept the signature."""
    headers = {k.lower(): v for k, v in request.headers.items()}
    assert standardwebhooks.Webhook(secret).verify(request.body, headers) == json.loads(request.body)
    verified = Verifier(jwt_secret, webhook_secret=secret).verify(request.headers, request.body)
    assert verified.event_id == headers["webhook-id"]
    tampered = {**headers, "webhook-signature": "v1," + base64.b64encode(b"x" * 32).decode()}
    with pytest.raises(VerificationError) as refused:
        Verifier(jwt_secret, webhook_secret=secret).verify(tampered, request.body)
    assert refused.value.reason == "webhook_signature"


def test_standard_webhooks_signatures_in_direct_mode(
    supabase_ready, pg_net_worker, postgres_conn, receiver_secret, webhook_secret
):
    with (
        ScriptedServer() as endpoint,
        direct_webhook(supabase_ready, endpoint.url + PATH, webhook_secret_name="app_webhook_secret"),
    ):
        insert_resumes(postgres_conn, "signed-1.pdf", "signed-2.pdf")
        requests = endpoint.wait_for(2)
    for request in requests:
        check_standard_webhooks(request, webhook_secret, receiver_secret)


def test_standard_webhooks_signatures_in_at_least_once_mode(supabase_ready, receiver_secret, webhook_secret):
    with ScriptedServer() as endpoint:
        deliver_once(supabase_ready, endpoint.url + PATH, 2, "signed", webhook_secret_name="app_webhook_secret")
        requests = endpoint.received
    assert len(requests) == 2
    for request in requests:
        check_standard_webhooks(request, webhook_secret, receiver_secret)
