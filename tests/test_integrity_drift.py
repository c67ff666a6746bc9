"""Issue 15 #8: drift the stack used to miss, seen by `read` and repaired by `update`, on a real server.

- A grant of EXECUTE on the SECURITY DEFINER function to any role (only PUBLIC, anon and
  authenticated were checked): with it a role attaches the function to a trigger of its own,
  with arguments naming another URL. We grant nothing, so every grant is drift.
- A grant in our private stores (claims, adoption records) to any role.
- The pg_cron job's connection (database, nodename, nodeport): `nodeport = 1` stopped every
  delivery while `preview --refresh` reported nothing.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from providers import OWNER, configured, function_props, installation_props, unique
from psycopg import sql

from local_supabase.bootstrap import create_demo_tables
from secure_webhooks.delivery.reconciler import JOB_NAME
from secure_webhooks.delivery.schedule_provider import ScheduleProvider
from secure_webhooks.installation import adoption
from secure_webhooks.installation.installation_provider import SCHEMA as CLAIMS_SCHEMA
from secure_webhooks.installation.installation_provider import TABLE as CLAIMS_TABLE
from secure_webhooks.installation.installation_provider import InstallationProvider
from secure_webhooks.signing.function_provider import SecureFunctionProvider
from secure_webhooks.signing.trigger_function import FunctionSpec


@pytest.fixture
def role(admin_conn) -> Iterator[str]:
    """A role of the database that is none of Supabase's API roles."""
    name = unique("reporting")
    admin_conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(name)))
    admin_conn.execute(sql.SQL("GRANT {} TO postgres").format(sql.Identifier(name)))
    yield name
    admin_conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
    admin_conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def refreshed(provider, created, inputs):
    read = provider.read(created.id, created.outs)
    return read.outs, provider.diff(created.id, read.outs, inputs)


def test_execute_granted_to_any_role_is_drift_and_up_revokes_it(supabase_ready, postgres_conn, role):
    create_demo_tables(postgres_conn)
    spec = FunctionSpec(name=unique("notify"))
    functions = configured(SecureFunctionProvider, supabase_ready)
    props = function_props(spec)
    created = functions.create(props)
    function = sql.SQL("public.{}()").format(sql.Identifier(spec.name))
    assert not refreshed(functions, created, props)[1].changes

    postgres_conn.execute(sql.SQL("GRANT EXECUTE ON FUNCTION {} TO {}").format(function, sql.Identifier(role)))
    outs, diff = refreshed(functions, created, props)
    print(f"\nEXECUTE granted to {role}: executable_by {outs['executable_by']}, drift {diff.changes}")
    assert outs["executable_by"] == [role] and diff.changes
    functions.update(created.id, outs, props)
    assert not refreshed(functions, created, props)[1].changes
    assert postgres_conn.execute(
        sql.SQL("SELECT has_function_privilege({}, {}::regprocedure, 'EXECUTE')").format(
            sql.Literal(role), sql.Literal(f"public.{spec.name}()")
        )
    ).fetchone() == (False,)
    functions.delete(created.id, created.outs)


def test_a_grant_in_a_private_store_is_drift_and_up_revokes_it(supabase_ready, postgres_conn, role):
    installations = configured(InstallationProvider, supabase_ready)
    spec = FunctionSpec(name=unique("notify"))
    props = installations.check({}, installation_props(spec)).inputs
    created = installations.create(props)
    assert not refreshed(installations, created, props)[1].changes

    postgres_conn.execute(
        sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(CLAIMS_SCHEMA), sql.Identifier(role))
    )
    postgres_conn.execute(
        sql.SQL("GRANT SELECT ON {}.{} TO {}").format(
            sql.Identifier(CLAIMS_SCHEMA), sql.Identifier(CLAIMS_TABLE), sql.Identifier(role)
        )
    )
    outs, diff = refreshed(installations, created, props)
    assert outs["foreign_grants"] == [f"{CLAIMS_SCHEMA}: {role}"] and diff.changes
    updated = installations.update(created.id, outs, props)
    assert updated.outs["foreign_grants"] == []
    assert not refreshed(installations, created, props)[1].changes
    assert postgres_conn.execute(
        "SELECT has_table_privilege(%s, %s, 'SELECT')", (role, f"{CLAIMS_SCHEMA}.{CLAIMS_TABLE}")
    ).fetchone() == (False,)
    assert adoption.STORE.name != CLAIMS_SCHEMA
    installations.delete(created.id, created.outs)


@pytest.mark.parametrize(
    "out_of_band",
    [
        "UPDATE cron.job SET nodeport = 1 WHERE jobname = %s",
        "UPDATE cron.job SET nodename = 'elsewhere.invalid' WHERE jobname = %s",
        "UPDATE cron.job SET database = 'template1' WHERE jobname = %s",
    ],
)
def test_the_cron_job_connection_is_drift_and_up_repairs_it(supabase_ready, postgres_conn, out_of_band):
    schedules = configured(ScheduleProvider, supabase_ready)
    inputs = schedules.check({}, {"owner": OWNER, "schedule": "auto", "job_name": JOB_NAME}).inputs
    created = schedules.create(inputs)
    try:
        live = "SELECT username, database, nodename, nodeport FROM cron.job WHERE jobname = %s"
        scheduled = postgres_conn.execute(live, (JOB_NAME,)).fetchone()
        # What pg_cron itself wrote at create is what the provider expects (not a guessed localhost:5432).
        expected = created.outs["expected_connection"]
        assert (expected["username"], expected["database"], expected["nodename"], expected["nodeport"]) == scheduled
        assert not refreshed(schedules, created, inputs)[1].changes

        postgres_conn.execute(out_of_band, (JOB_NAME,))
        outs, diff = refreshed(schedules, created, inputs)
        print(f"\n{out_of_band % JOB_NAME!r}: drift {diff.changes}")
        assert diff.changes
        schedules.update(created.id, outs, inputs)
        assert postgres_conn.execute(live, (JOB_NAME,)).fetchone() == scheduled
        assert not refreshed(schedules, created, inputs)[1].changes
        assert postgres_conn.execute(
            "SELECT count(*) FROM cron.job WHERE jobname LIKE 'secure_webhooks%%'"
        ).fetchone() == (1,), "the probe job never stays"
    finally:
        schedules.delete(created.id, created.outs)


def test_state_written_before_the_connection_was_compared_learns_it_at_refresh(supabase_ready, postgres_conn):
    schedules = configured(ScheduleProvider, supabase_ready)
    inputs = schedules.check({}, {"owner": OWNER, "schedule": "auto", "job_name": JOB_NAME}).inputs
    created = schedules.create(inputs)
    try:
        older = {k: v for k, v in created.outs.items() if k not in ("connection", "expected_connection")}
        assert not schedules.diff(created.id, older, inputs).changes  # no refresh: no change
        postgres_conn.execute("UPDATE cron.job SET nodeport = 1 WHERE jobname = %s", (JOB_NAME,))
        read = schedules.read(created.id, older)
        assert read.outs["expected_connection"] == created.outs["expected_connection"]
        assert schedules.diff(created.id, read.outs, inputs).changes
    finally:
        schedules.delete(created.id, created.outs)
