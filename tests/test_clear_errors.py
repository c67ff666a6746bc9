"""Database errors are one clear line, never a password (issue 10 #16), and no adoption is
announced for a create that then failed (#17).

A refused connection surfaces in `check` (preview and before every change) as
a check failure naming host, port and database. A lock timeout during a
create, update or delete names the object and says to retry; Pulumi's
dynamic-provider server still prints a traceback above it, so the message is
kept to the traceback's last line.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from dynamic_grpc import DynamicProviderServer, ProviderCallError, secret
from providers import OWNER, configured, function_props, stack_config, trigger_props, unique
from psycopg import sql

from local_supabase.cluster import free_port
from secure_webhooks.installation.trigger_provider import WebhookTriggerProvider
from secure_webhooks.postgres.database import LOCK_TIMEOUT, DatabaseError
from secure_webhooks.signing.function_provider import SecureFunctionProvider
from secure_webhooks.signing.trigger_function import FunctionSpec
from secure_webhooks.signing.vault_secret_provider import VaultSecretProvider

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "secure-webhooks"
JWT_SECRET = "clear-errors-jwt-secret-" + "c" * 20


@contextmanager
def locked(dsn: str, statement: sql.Composable | str) -> Iterator[None]:
    """Hold the lock `statement` takes in an open transaction of another session."""
    with psycopg.connect(dsn) as conn:
        conn.execute(statement)
        yield
        conn.rollback()


def assert_clear(message: str, *expected: str, password: str) -> None:
    assert "\n" not in message, message
    assert password not in message
    for part in expected:
        assert part in message, message


@pytest.mark.parametrize("provider_class", [WebhookTriggerProvider, SecureFunctionProvider, VaultSecretProvider])
def test_refused_connection_is_a_check_failure_naming_host_port_and_database(supabase_ready, provider_class):
    port = free_port()
    config = {**stack_config(supabase_ready), "postgresql:port": str(port)}
    password = config["postgresql:password"]
    props = {
        WebhookTriggerProvider: trigger_props("resumes", "hook", "https://orchestrator.example.com/a", FunctionSpec()),
        SecureFunctionProvider: function_props(FunctionSpec()),
        VaultSecretProvider: {"name": "app_jwt_secret", "secret": secret(JWT_SECRET), "owner": OWNER},
    }[provider_class]
    with DynamicProviderServer(provider_class(), ROOT, project=PROJECT) as server:
        server.configure(config, secret_keys=["postgresql:password"])
        checked = server.check("urn:pulumi:test::secure-webhooks::pulumi-python:dynamic::x", {}, props)
        ((prop, reason),) = [f for f in checked.failures if "connect" in f[1]]
        assert prop == ""
        assert_clear(reason, "cannot connect to PostgreSQL", f"127.0.0.1:{port}/postgres", "refused", password=password)
        with pytest.raises(ProviderCallError) as raised:
            server.create("urn:pulumi:test::secure-webhooks::pulumi-python:dynamic::x", props)
        (line,) = raised.value.details.strip().splitlines()  # one line: no traceback above it
        assert line.startswith("secure_webhooks.postgres.database.DatabaseError: ")
        assert_clear(line, "cannot connect to PostgreSQL", f"127.0.0.1:{port}/postgres", password=password)
    assert not [line for line in server.logs if password in line or JWT_SECRET in line]


def test_lock_timeout_in_create_is_one_line_and_adopts_nothing(supabase_ready, postgres_conn, capfd):
    """A legacy trigger on a busy table: the swap times out, so nothing is adopted and none is announced."""
    table = unique("busy")
    postgres_conn.execute(sql.SQL("CREATE TABLE public.{} (id int)").format(sql.Identifier(table)))
    postgres_conn.execute(
        sql.SQL(
            "CREATE TRIGGER legacy AFTER INSERT ON public.{} FOR EACH ROW "
            "EXECUTE FUNCTION suppress_redundant_updates_trigger()"
        ).format(sql.Identifier(table))
    )
    triggers = configured(WebhookTriggerProvider, supabase_ready)
    any_trigger_function = FunctionSpec(schema="pg_catalog", name="suppress_redundant_updates_trigger")
    props = trigger_props(table, "legacy", "https://orchestrator.example.com/a", any_trigger_function)
    password = supabase_ready.password_for("postgres")
    lock = sql.SQL("LOCK TABLE public.{} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(table))
    with locked(supabase_ready.admin_dsn, lock), pytest.raises((DatabaseError, psycopg.Error)) as raised:
        triggers.create(props)
    assert "adopt" not in capfd.readouterr().err
    assert isinstance(raised.value, DatabaseError)
    where = f"{supabase_ready.host}:{supabase_ready.port}/{supabase_ready.dbname}"
    assert_clear(
        str(raised.value), f"creating trigger legacy on public.{table}", LOCK_TIMEOUT, where, "Retry", password=password
    )
    created = triggers.create(props)  # unlocked, it adopts and says so
    assert created.outs["adopted"] is not None
    assert "adopted existing trigger legacy" in capfd.readouterr().err
    triggers.delete(created.id, created.outs)
    postgres_conn.execute(sql.SQL("DROP TABLE public.{}").format(sql.Identifier(table)))


def test_lock_timeouts_in_update_and_delete_name_the_object(supabase_ready, postgres_conn):
    spec = FunctionSpec(name=unique("notify"))
    functions = configured(SecureFunctionProvider, supabase_ready)
    triggers = configured(WebhookTriggerProvider, supabase_ready)
    function = functions.create(function_props(spec))
    table = unique("busy")
    postgres_conn.execute(sql.SQL("CREATE TABLE public.{} (id int)").format(sql.Identifier(table)))
    props = trigger_props(table, "hook", "https://orchestrator.example.com/a", spec)
    trigger = triggers.create(props)
    password = supabase_ready.password_for("postgres")
    lock = sql.SQL("LOCK TABLE public.{} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(table))
    moved = {**props, "url": "https://orchestrator.example.com/b"}
    errors: dict[str, str] = {}

    def attempt(label: str, call) -> None:
        try:
            call()
        except DatabaseError as exc:
            errors[label] = str(exc)

    with locked(supabase_ready.admin_dsn, lock):
        attempt("update", lambda: triggers.update(trigger.id, trigger.outs, moved))
        attempt("delete", lambda: triggers.delete(trigger.id, trigger.outs))
    assert_clear(errors["update"], f"updating trigger hook on public.{table}", "Retry", password=password)
    assert_clear(errors["delete"], f"deleting trigger hook on public.{table}", "Retry", password=password)

    triggers.delete(trigger.id, trigger.outs)  # the lock is gone: it works now
    functions.delete(function.id, function.outs)
    postgres_conn.execute(sql.SQL("DROP TABLE public.{}").format(sql.Identifier(table)))
