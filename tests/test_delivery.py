"""End to end on the real database: inserts become signed requests that PyJWT accepts.

The function and triggers are installed by our providers, pg_net's stand-in
worker delivers over real HTTP on loopback, and the receiver verifies every
token the way the orchestrator does.
"""

from __future__ import annotations

import base64
import json

import jwt
import psycopg
import pytest
from outbox_support import TEST_DELIVERY, TIMEOUT_MS, Pipeline, all_delivered, settle
from providers import OWNER, configured, function_props, trigger_props, unique
from psycopg import sql
from test_claims_wire import over_the_wire

from local_supabase.bootstrap import create_demo_tables
from local_supabase.orchestrator import WebhookReceiver
from secure_webhooks.configuration.settings import DEFAULT_CLAIMS, DEFAULT_WEBHOOKS, check_webhooks
from secure_webhooks.delivery.outbox import script_sha256
from secure_webhooks.delivery.outbox_provider import OutboxProvider
from secure_webhooks.delivery.reconciler import ReconcilerSpec
from secure_webhooks.delivery.reconciler_provider import ReconcilerProvider, reconciler_props
from secure_webhooks.installation.trigger_provider import WebhookTriggerProvider
from secure_webhooks.signing.function_provider import SecureFunctionProvider
from secure_webhooks.signing.trigger_function import (
    FunctionSpec,
    base64url,
    jwt_header,
    jwt_header_statement,
    key_id,
    sign_statement,
)

TTL = 600


@pytest.fixture
def install(supabase_ready, pg_net_worker, postgres_conn):
    """Install the function and the default webhooks for a signer; remove them afterwards."""
    create_demo_tables(postgres_conn)
    functions = configured(SecureFunctionProvider, supabase_ready)
    triggers = configured(WebhookTriggerProvider, supabase_ready)
    installed = []

    def _install(base_url: str, signer: str = "pgjwt", webhooks=DEFAULT_WEBHOOKS, **spec_overrides) -> FunctionSpec:
        spec = FunctionSpec(name=unique("notify"), signer=signer, token_ttl_seconds=TTL, **spec_overrides)
        installed.append((functions, functions.create(over_the_wire(function_props(spec)))))
        for webhook in check_webhooks([dict(w) for w in webhooks], base_url):
            for event, trigger_name in webhook.triggers:
                props = trigger_props(webhook.table, trigger_name, webhook.url, spec, event=event)
                installed.append((triggers, triggers.create(props)))
        return spec

    yield _install
    pg_net_worker.drain()
    for provider, created in reversed(installed):
        provider.delete(created.id, created.outs)


@pytest.fixture
def orchestrator(receiver_secret):
    with WebhookReceiver(receiver_secret, expected_claims=DEFAULT_CLAIMS, expected_ttl=TTL) as receiver:
        yield receiver


def insert(conn: psycopg.Connection, table: str, name: str) -> dict:
    row = conn.execute(
        sql.SQL("INSERT INTO public.{} (name, storage_path) VALUES (%s, %s) RETURNING to_jsonb({}.*)").format(
            sql.Identifier(table), sql.Identifier(table)
        ),
        (name, f"{table}/{name}"),
    ).fetchone()
    return row[0]


@pytest.mark.parametrize("signer", ["pgjwt", "pgcrypto"])
def test_inserts_into_both_tables_arrive_signed(install, orchestrator, postgres_conn, pg_net_worker, signer):
    install(orchestrator.url, signer=signer)
    resume = insert(postgres_conn, "resumes", "ada.pdf")
    archive = insert(postgres_conn, "zip_archives", "batch.zip")
    deliveries = {d.path: d for d in orchestrator.wait_for(2)}
    assert set(deliveries) == {"/ingest/interns/individual", "/ingest/resumes/batch"}
    for path, table, row in (
        ("/ingest/interns/individual", "resumes", resume),
        ("/ingest/resumes/batch", "zip_archives", archive),
    ):
        delivery = deliveries[path]
        assert delivery.status == 200, delivery.rejection
        assert delivery.header("Content-Type") == "application/json"
        assert delivery.body == {
            "old_record": None,
            "record": row,
            "type": "INSERT",
            "table": table,
            "schema": "public",
        }
        assert delivery.claims["exp"] - delivery.claims["iat"] == TTL
        assert {k: delivery.claims[k] for k in DEFAULT_CLAIMS} == DEFAULT_CLAIMS
    pg_net_worker.drain()
    statuses = postgres_conn.execute("SELECT status_code FROM net._http_response ORDER BY id DESC LIMIT 2").fetchall()
    assert statuses == [(200,), (200,)]


#: Configured claims that JSON and SQL quoting both have to get right, and numbers and nulls that
#: must survive Pulumi's wire exactly (issue 10 #8): a map's numbers travel as floats.
AWKWARD_CLAIMS = {
    "sub": 'o\'brien \\ "ü" ☃',
    "role": "worker",
    "scopes": ["ingest", "read", 7],
    "tier": 2,
    "beta": True,
    "org_id": 42,
    "big": 12345678901234567890123,
    "ratio": 1.5,
    "revoked": None,
    "limits": {"rows": 1000, "nothing": None, "negative": -9007199254740993},
}


#: What the verifiers can compare: they read JSON as the Rust crate's serde_json does, so an integer
#: beyond 64 bits is a float there (docs/security.md, "Tokens bound to their request"); the token
#: itself carries it in full.
COMPARABLE_CLAIMS = {name: value for name, value in AWKWARD_CLAIMS.items() if name != "big"}


def assert_signed_exactly(delivery, claims: dict, secret: str) -> None:
    """The token carries `claims` to the byte (42, not 42.0; the big integer in full; null kept)
    before the claims the function adds; the receiver checked those binding claims, and PyJWT
    reads every configured claim back exactly."""
    assert delivery.status == 200, delivery.rejection
    bound = ("iat", "exp", "jti", "body_sha256")
    token = delivery.header("Authorization").removeprefix("Bearer ")
    decoded = jwt.decode(token, secret, algorithms=["HS256"], options={"verify_exp": False})
    assert {name: value for name, value in decoded.items() if name not in bound} == claims
    payload = base64.urlsafe_b64decode(token.split(".")[1] + "==").decode()
    configured = json.dumps(claims, sort_keys=True, separators=(",", ":"))
    assert payload.startswith(configured[:-1] + ',"iat":'), payload
    assert all(type(decoded[name]) is type(value) for name, value in claims.items())


@pytest.mark.parametrize("signer", ["pgjwt", "pgcrypto"])
def test_configured_claims_arrive_exactly(install, receiver_secret, postgres_conn, signer):
    with WebhookReceiver(receiver_secret, expected_claims=COMPARABLE_CLAIMS, expected_ttl=TTL) as receiver:
        install(receiver.url, signer=signer, claims=AWKWARD_CLAIMS)
        insert(postgres_conn, "resumes", "claims.pdf")
        (delivery,) = receiver.wait_for(1)
    assert_signed_exactly(delivery, AWKWARD_CLAIMS, receiver_secret)


def test_the_reconciler_signs_the_configured_claims_exactly(supabase_ready, pg_net_worker, receiver_secret):
    """At-least-once mode: the reconciler, rendered from the same props, signs the same exact claims."""
    # The tests' 5 s request timeout, not 1 s: a reply a loaded machine slowed past a second was taken for a
    # timeout and sent again, and the one delivery below was two.
    function = FunctionSpec(
        name=unique("notify"), mode="at-least-once", claims=AWKWARD_CLAIMS, token_ttl_seconds=TTL, timeout_ms=TIMEOUT_MS
    )
    pipeline = Pipeline(supabase_ready, function)
    steps = [
        (OutboxProvider, {"owner": OWNER, "script_sha256": script_sha256()}),
        (ReconcilerProvider, reconciler_props(ReconcilerSpec(function=function, delivery=TEST_DELIVERY), OWNER)),
        (SecureFunctionProvider, function_props(function)),
    ]
    with WebhookReceiver(receiver_secret, expected_claims=COMPARABLE_CLAIMS, expected_ttl=TTL) as receiver:
        try:
            with pipeline.connect() as conn:
                create_demo_tables(conn)
            for provider_class, props in steps:
                provider = configured(provider_class, supabase_ready)
                pipeline.installed.append((provider, provider.create(over_the_wire(props))))
            pipeline.add_trigger("resumes", receiver.url + "/ingest/interns/individual", name=unique("hook"))
            with pipeline.connect() as conn:
                insert(conn, "resumes", "reconciled.pdf")
                settle(conn, None, all_delivered(conn))
            (delivery,) = receiver.wait_for(1)
        finally:
            pg_net_worker.drain()
            pipeline.remove()
    assert_signed_exactly(delivery, AWKWARD_CLAIMS, receiver_secret)


def test_a_wrong_secret_is_rejected_by_the_orchestrator(install, postgres_conn):
    with WebhookReceiver("another-secret-that-is-long-enough-0123456789") as impostor_check:
        install(impostor_check.url)
        insert(postgres_conn, "resumes", "eve.pdf")
        (delivery,) = impostor_check.wait_for(1)
    assert delivery.status == 401
    # the token names its key (kid), which the receiver does not hold: refused before any MAC is computed
    assert delivery.rejection.endswith("names no key this verifier holds")


def test_insert_as_authenticated_with_an_empty_search_path(install, orchestrator, postgres_conn):
    """The seed broke here: `sign()` unqualified and no SECURITY DEFINER."""
    install(orchestrator.url, signer="pgjwt")
    with postgres_conn.transaction():
        postgres_conn.execute("SET LOCAL ROLE authenticated")
        postgres_conn.execute("SET LOCAL search_path = ''")
        row = insert(postgres_conn, "resumes", "user-upload.pdf")
    (delivery,) = orchestrator.wait_for(1)
    assert delivery.status == 200 and delivery.body["record"] == row


# pg_net >= 0.12 grants its queue to PUBLIC and `postgres` cannot revoke that (see docs/security.md,
# "Known limits"), so the queued token is only protected by its short lifetime.
@pytest.mark.parametrize("relation", ["vault.decrypted_secrets", "vault.secrets"])
def test_the_inserting_role_cannot_read_the_secret(install, orchestrator, postgres_conn, relation):
    install(orchestrator.url)
    with pytest.raises(psycopg.errors.InsufficientPrivilege), postgres_conn.transaction():
        postgres_conn.execute("SET LOCAL ROLE authenticated")
        insert(postgres_conn, "resumes", "curious.pdf")
        postgres_conn.execute(sql.SQL("SELECT * FROM {}").format(sql.SQL(relation)))


def test_a_rolled_back_insert_sends_nothing(install, orchestrator, postgres_conn, pg_net_worker):
    install(orchestrator.url)
    with pytest.raises(RuntimeError), postgres_conn.transaction():
        insert(postgres_conn, "resumes", "never.pdf")
        raise RuntimeError("the application aborts")
    insert(postgres_conn, "resumes", "kept.pdf")
    orchestrator.wait_for(1)
    pg_net_worker.drain()
    assert [d.body["record"]["name"] for d in orchestrator.deliveries] == ["kept.pdf"]


def test_bulk_insert_sends_one_request_per_row(install, orchestrator, postgres_conn):
    install(orchestrator.url, signer="pgcrypto")
    postgres_conn.execute(
        "INSERT INTO public.resumes (name, storage_path) SELECT 'r' || i, 'zip/' || i FROM generate_series(1, 50) i"
    )
    deliveries = orchestrator.wait_for(50)
    assert all(d.status == 200 for d in deliveries)
    assert sorted(d.body["record"]["name"] for d in deliveries) == sorted(f"r{i}" for i in range(1, 51))


def test_update_and_delete_events_carry_old_and_new_rows(install, orchestrator, postgres_conn):
    webhooks = [{"name": "audit", "table": "resumes", "path": "/audit", "events": ["UPDATE", "DELETE"]}]
    install(orchestrator.url, webhooks=webhooks)
    row = insert(postgres_conn, "resumes", "before.pdf")
    updated = postgres_conn.execute(
        "UPDATE public.resumes SET name = 'after.pdf' WHERE id = %s RETURNING to_jsonb(resumes.*)", (row["id"],)
    ).fetchone()[0]
    postgres_conn.execute("DELETE FROM public.resumes WHERE id = %s", (row["id"],))
    deliveries = {d.body["type"]: d for d in orchestrator.wait_for(2)}  # pg_net sends concurrently
    update, delete = deliveries["UPDATE"], deliveries["DELETE"]
    assert update.body == {
        "old_record": row,
        "record": updated,
        "type": "UPDATE",
        "table": "resumes",
        "schema": "public",
    }
    assert delete.body == {
        "old_record": updated,
        "record": None,
        "type": "DELETE",
        "table": "resumes",
        "schema": "public",
    }
    assert update.status == delete.status == 200


def test_a_missing_vault_secret_fails_the_insert_with_the_seed_message(install, orchestrator, postgres_conn):
    install(orchestrator.url, secret_name="not_in_vault")
    with pytest.raises(psycopg.errors.RaiseException, match=r"^not_in_vault not found in vault"):
        insert(postgres_conn, "resumes", "x.pdf")


def test_both_signers_mint_byte_identical_tokens_that_pyjwt_accepts(postgres_conn, receiver_secret):
    claims = '{"iat":1700000000,"exp":1700003600,"role":"service_role","iss":"supabase","sub":"ü"}'
    tokens = {}
    for signer in ("pgjwt", "pgcrypto"):
        postgres_conn.execute(
            sql.SQL(
                "CREATE FUNCTION pg_temp.mint(claims text, secret text) RETURNS text LANGUAGE plpgsql "
                "SET search_path = '' AS {}"
            ).format(
                sql.Literal(
                    "DECLARE jwt_header text; signing_input text; token text; "
                    f"BEGIN {jwt_header_statement()} {sign_statement(signer)} RETURN token; END"
                )
            )
        )
        tokens[signer] = postgres_conn.execute("SELECT pg_temp.mint(%s, %s)", (claims, receiver_secret)).fetchone()[0]
        postgres_conn.execute("DROP FUNCTION pg_temp.mint(text, text)")
    assert tokens["pgjwt"] == tokens["pgcrypto"]
    decoded = jwt.decode(tokens["pgjwt"], receiver_secret, algorithms=["HS256"], options={"verify_exp": False})
    assert decoded == {"iat": 1700000000, "exp": 1700003600, "role": "service_role", "iss": "supabase", "sub": "ü"}
    # the key's id, as the program and both verifiers compute it (docs/key-rotation.md)
    assert jwt.get_unverified_header(tokens["pgjwt"]) == {"alg": "HS256", "kid": key_id(receiver_secret), "typ": "JWT"}
    assert tokens["pgjwt"].split(".")[0] == base64url(jwt_header(key_id(receiver_secret)).encode())
