"""Issue 15 #9: no other login role can stall `pulumi up` by holding the private stores' lock.

The claims and adoption stores used to serialise on
`pg_advisory_xact_lock(hashtext('<schema>'))`, a key any login role can take, so a
role holding it made every `up` fail after the 5 s lock timeout. They now lock
their own table, which only its owner (and superusers) may lock; and a lock
timeout names the session holding it.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator

import psycopg
import pytest
from providers import configured, function_props, installation_props, unique
from psycopg import sql
from test_providers import SEED_FUNCTION

from secure_webhooks.installation import adoption
from secure_webhooks.installation.installation_provider import SCHEMA, TABLE, InstallationProvider
from secure_webhooks.postgres.database import DatabaseError
from secure_webhooks.signing.function_provider import SecureFunctionProvider
from secure_webhooks.signing.trigger_function import FunctionSpec


@pytest.fixture
def squatter(supabase_ready, admin_conn) -> Iterator[psycopg.Connection]:
    """A login role of its own (no grant on anything of ours), connected, as any database user could be."""
    role, password = unique("squatter"), secrets.token_urlsafe(16)
    admin_conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(password)))
    dsn = psycopg.conninfo.make_conninfo(supabase_ready.dsn("postgres"), user=role, password=password)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            yield conn
    finally:
        admin_conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_a_role_holding_the_old_advisory_keys_stalls_nothing_and_cannot_take_the_new_lock(
    supabase_ready, squatter, postgres_conn
):
    for store in (SCHEMA, adoption.SCHEMA):
        assert squatter.execute("SELECT pg_advisory_lock(hashtext(%s))", (store,)).fetchone() == ("",)

    installations = configured(InstallationProvider, supabase_ready)
    spec = FunctionSpec(name=unique("notify"))
    props = installations.check({}, installation_props(spec)).inputs
    # A store that queued for the squatter's key would wait out the providers' lock_timeout (5 s) and raise
    # DatabaseError here: the creates succeeding is the proof that nothing waited, whatever this machine's speed.
    started = time.monotonic()
    claimed = installations.create(props)
    # The adoption store too: adopting a hand-made function records it there.
    postgres_conn.execute(sql.SQL(SEED_FUNCTION).format(sql.Identifier(spec.name)))
    functions = configured(SecureFunctionProvider, supabase_ready)
    function = functions.create(function_props(spec))
    assert function.outs["adopted"]
    elapsed = time.monotonic() - started
    print(f"\nclaim and adoption with the old advisory keys held by another role: {elapsed:.2f} s")

    # The lock that serialises the stores now is not the squatter's to take or to queue for.
    for relation in (f"{SCHEMA}.{TABLE}", f"{adoption.SCHEMA}.{adoption.TABLE}"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege), squatter.transaction():
            squatter.execute(sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(sql.SQL(relation)))

    functions.delete(function.id, function.outs)
    installations.delete(claimed.id, claimed.outs)
    for store in (SCHEMA, adoption.SCHEMA):
        assert postgres_conn.execute("SELECT to_regnamespace(%s)", (store,)).fetchone() == (None,)
    postgres_conn.execute(sql.SQL("DROP FUNCTION public.{}()").format(sql.Identifier(spec.name)))


def test_a_lock_timeout_names_the_session_that_holds_the_store(supabase_ready, postgres_conn):
    installations = configured(InstallationProvider, supabase_ready)
    first_spec, second_spec = FunctionSpec(name=unique("notify")), FunctionSpec(name=unique("notify"))
    first = installations.create(installations.check({}, installation_props(first_spec)).inputs)
    dsn = psycopg.conninfo.make_conninfo(supabase_ready.dsn("postgres"), application_name="long-maintenance")
    with psycopg.connect(dsn) as holder:
        holder.execute(f"LOCK TABLE {SCHEMA}.{TABLE} IN SHARE ROW EXCLUSIVE MODE")
        pid = holder.info.backend_pid
        second = installations.check({}, installation_props(second_spec)).inputs
        with pytest.raises(DatabaseError) as refused:
            installations.create(second)
        holder.rollback()
    message = str(refused.value)
    print(f"\n{message}")
    assert f"held by pid {pid} (role postgres, application_name 'long-maintenance')" in message
    assert f"{SCHEMA}.{TABLE}" in message and "\n" not in message
    assert supabase_ready.password_for("postgres") not in message
    installations.delete(first.id, first.outs)
