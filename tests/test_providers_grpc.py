"""Our dynamic providers driven through the real `python -m pulumi.dynamic` gRPC server.

This is how the engine calls them: the provider is pickled into `__provider`,
configured from the stack's config (the database password arrives as a secret),
and every call crosses the wire. It proves that the pickled providers carry no
state, that secrets stay secret in what the engine records, and that neither
the password nor the JWT secret shows up in anything the provider prints.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest
from dynamic_grpc import DynamicProviderServer, ProviderCallError, secret
from providers import OWNER, function_props, stack_config, trigger_props, unique
from psycopg import sql
from waiting import eventually

from secure_webhooks.installation.trigger_provider import WebhookTriggerProvider
from secure_webhooks.signing.function_provider import SecureFunctionProvider
from secure_webhooks.signing.trigger_function import FunctionSpec
from secure_webhooks.signing.vault_secret_provider import VaultSecretProvider

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "secure-webhooks"
JWT_SECRET = "grpc-test-jwt-secret-" + "9" * 20


def urn(kind: str, name: str) -> str:
    return f"urn:pulumi:test::{PROJECT}::pulumi-python:dynamic/secure-webhooks:{kind}::{name}"


@pytest.fixture
def serve(supabase_ready) -> Iterator:
    servers: list[DynamicProviderServer] = []

    def _serve(provider_class) -> DynamicProviderServer:
        server = DynamicProviderServer(provider_class(), ROOT, project=PROJECT).__enter__()
        servers.append(server)
        server.configure(stack_config(supabase_ready), secret_keys=["postgresql:password"])
        return server

    yield _serve
    for server in servers:
        server.__exit__(None, None, None)
        leaked = [line for line in server.logs if supabase_ready.password_for("postgres") in line or JWT_SECRET in line]
        assert leaked == []


def test_function_and_trigger_lifecycle_over_grpc(serve, postgres_conn):
    functions, triggers = serve(SecureFunctionProvider), serve(WebhookTriggerProvider)
    spec = FunctionSpec(name=unique("notify"), signer="pgcrypto")
    function_urn = urn("SecureFunction", spec.name)

    checked = functions.check(function_urn, {}, function_props(spec))
    assert checked.failures == ()
    created = functions.create(function_urn, checked.state())
    assert created.id == f"public.{spec.name}()"
    assert created.outputs["security_definer"] is True
    read = functions.read(created.id, function_urn, created.state())
    assert read.outputs == created.outputs
    assert functions.diff(created.id, function_urn, read.state(), checked.state()).changes is False

    table = unique("events")
    postgres_conn.execute(sql.SQL("CREATE TABLE public.{} (id bigserial PRIMARY KEY)").format(sql.Identifier(table)))
    trigger_urn = urn("WebhookTrigger", table)
    props = trigger_props(table, "hook", "https://orchestrator.example.com/a", spec)
    trigger = triggers.create(trigger_urn, triggers.check(trigger_urn, {}, props).state())
    assert trigger.outputs["managed_by"] == OWNER and trigger.outputs["level"] == "STATEMENT"
    moved = {**props, "url": "https://orchestrator.example.com/b"}
    diff = triggers.diff(trigger.id, trigger_urn, trigger.state(), moved)
    assert diff.changes is True and diff.replaces == ()
    updated = triggers.update(trigger.id, trigger_urn, trigger.state(), moved)
    assert updated.outputs["url"] == moved["url"]
    assert triggers.read(trigger.id, trigger_urn, updated.state()).outputs["url"] == moved["url"]

    triggers.delete(trigger.id, trigger_urn, updated.state())
    functions.delete(created.id, function_urn, read.state())
    assert postgres_conn.execute("SELECT to_regprocedure(%s)", (f"public.{spec.name}()",)).fetchone()[0] is None
    postgres_conn.execute(sql.SQL("DROP TABLE public.{}").format(sql.Identifier(table)))


def test_check_failures_reach_the_engine_as_clear_messages(serve):
    triggers = serve(WebhookTriggerProvider)
    props = trigger_props("no_such_table", "hook", "https://orchestrator.example.com/a", FunctionSpec())
    checked = triggers.check(urn("WebhookTrigger", "missing"), {}, props)
    assert checked.failures == (
        ("table", "table public.no_such_table does not exist (secure-webhooks:webhooks entry 'hook')"),
    )


def test_vault_secret_stays_secret_across_the_wire(serve, postgres_conn):
    secrets = serve(VaultSecretProvider)
    name = unique("jwt")
    secret_urn = urn("VaultSecret", name)
    news = {"name": name, "secret": secret(JWT_SECRET), "owner": OWNER}

    short = secrets.check(secret_urn, {}, {**news, "secret": secret("too-short")})
    assert short.failures == (
        ("secret", "secure-webhooks:jwtSecret: is 9 bytes; HS256 needs at least 32 (RFC 7518 section 3.2)"),
    )

    created = secrets.create(secret_urn, secrets.check(secret_urn, {}, news).state())
    assert "secret" in created.secret_keys
    assert created.outputs["value_matches"] is True
    stored = postgres_conn.execute(
        "SELECT secret, decrypted_secret FROM vault.decrypted_secrets WHERE name = %s", (name,)
    ).fetchone()
    assert stored[1] == JWT_SECRET and JWT_SECRET not in stored[0]

    postgres_conn.execute(
        "SELECT vault.update_secret(id, %s) FROM vault.secrets WHERE name = %s",
        ("rotated-out-of-band-" + "x" * 20, name),
    )
    drifted = secrets.read(created.id, secret_urn, created.state())
    assert "secret" in drifted.secret_keys and drifted.outputs["value_matches"] is False
    assert secrets.diff(created.id, secret_urn, drifted.state(), news).changes is True

    rotated = {**news, "secret": secret(JWT_SECRET + "-rotated")}
    updated = secrets.update(created.id, secret_urn, drifted.state(), rotated)
    assert updated.outputs["value_matches"] is True and "secret" in updated.secret_keys

    secrets.delete(created.id, secret_urn, updated.state())
    assert postgres_conn.execute("SELECT count(*) FROM vault.secrets WHERE name = %s", (name,)).fetchone()[0] == 0


LOCKED = """
SELECT count(*) FROM pg_stat_activity
 WHERE application_name = 'secure-webhooks (pulumi)' AND wait_event_type = 'Lock'"""
WAITING_PID = """
SELECT pid FROM pg_stat_activity
 WHERE application_name = 'secure-webhooks (pulumi)' AND wait_event_type = 'Lock' LIMIT 1"""


def test_provider_whose_engine_dies_while_it_waits_for_a_lock_commits_nothing_and_exits(
    serve, supabase_ready, postgres_conn
):
    """Issue 10 #2: the CLI killed (SIGKILL) while the provider waits for a table lock.

    The orphaned provider used to wait on, take the lock and commit the adoption that no state
    would ever record. Now it cancels its statement and exits within about a second.
    """
    functions = serve(SecureFunctionProvider)
    spec = FunctionSpec(name=unique("notify"))
    function_urn = urn("SecureFunction", spec.name)
    function = functions.create(function_urn, functions.check(function_urn, {}, function_props(spec)).state())
    table = unique("events")
    postgres_conn.execute(sql.SQL("CREATE TABLE public.{} (id bigserial PRIMARY KEY)").format(sql.Identifier(table)))
    postgres_conn.execute(
        sql.SQL("CREATE TRIGGER hook AFTER INSERT ON public.{} FOR EACH ROW EXECUTE FUNCTION public.{}()").format(
            sql.Identifier(table), sql.Identifier(spec.name)
        )
    )
    legacy = postgres_conn.execute(
        "SELECT tgfoid, obj_description(oid, 'pg_trigger') FROM pg_trigger WHERE tgname = 'hook'"
    ).fetchone()

    server = DynamicProviderServer(WebhookTriggerProvider(), ROOT, project=PROJECT).__enter__()
    try:
        server.configure(stack_config(supabase_ready), secret_keys=["postgresql:password"])
        trigger_urn = urn("WebhookTrigger", table)
        props = trigger_props(table, "hook", "https://orchestrator.example.com/a", spec)
        checked = server.check(trigger_urn, {}, props).state()
        with psycopg.connect(supabase_ready.dsn("postgres")) as locker:
            locker.execute(sql.SQL("LOCK TABLE public.{} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(table)))
            with ThreadPoolExecutor(max_workers=1) as pool:
                create = pool.submit(server.create, trigger_urn, checked)
                # The bound only ends a failure: the provider's lock_timeout (5 s) starts once it waits, and this
                # loop sees the wait within 50 ms, however long the provider took to get there.
                deadline = time.monotonic() + 60
                while (waiting := postgres_conn.execute(WAITING_PID).fetchone()) is None:
                    assert not create.done() and time.monotonic() < deadline, "the provider never waited for the lock"
                    time.sleep(0.05)
                (waiter,) = waiting
                server.stop_engine()
                # Its watchdog notices within about a second; the server never exits on its own (and the locker
                # holds the lock until it has), so the bound only ends a failure.
                assert server.wait_for_exit(timeout=60) != 0
                # The cancel reaches the session asynchronously; the server log below says it was a cancel, not
                # the lock timeout.
                eventually(lambda: postgres_conn.execute(LOCKED).fetchone()[0] == 0, "its statement ends", 60)
                with pytest.raises(ProviderCallError):
                    create.result()
            locker.rollback()
    finally:
        server.__exit__(None, None, None)
    # The session that waited has ended, so nothing of it can commit any more.
    gone = "SELECT NOT EXISTS (SELECT FROM pg_stat_activity WHERE pid = %s)"
    eventually(lambda: postgres_conn.execute(gone, (waiter,)).fetchone()[0], "the provider's session ends", 60)
    errors = [line for line in supabase_ready.log_file.read_text().splitlines() if f"[{waiter}] ERROR:" in line]
    assert any("canceling statement due to user request" in line for line in errors), errors
    assert (
        postgres_conn.execute(
            "SELECT tgfoid, obj_description(oid, 'pg_trigger') FROM pg_trigger WHERE tgname = 'hook'"
        ).fetchone()
        == legacy
    ), "nothing was committed"
    assert postgres_conn.execute("SELECT to_regclass('secure_webhooks_rollback.adopted')").fetchone()[0] is None
    postgres_conn.execute(sql.SQL("DROP TABLE public.{}").format(sql.Identifier(table)))
    functions.delete(function.id, function_urn, function.state())
