"""The stack instance's claim on the database (issue 10 #12, #14), with our provider on a real server.

One stack instance claims the database's installation at its first create;
another instance (a same-named stack in another backend, a lost state, a
second stack racing the first) is refused before it changes anything, with a
message naming both. `replacesInstance` is the deliberate way to take over.
"""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
from providers import OWNER, configured, function_props, installation_props, unique
from psycopg import sql

from secure_webhooks.installation.installation_provider import SCHEMA, TABLE, InstallationProvider
from secure_webhooks.installation.ownership import OwnershipError
from secure_webhooks.signing.function_provider import SecureFunctionProvider
from secure_webhooks.signing.trigger_function import FunctionSpec

CLAIMS = f"SELECT function, owner, instance::text FROM {SCHEMA}.{TABLE} ORDER BY 1"


@pytest.fixture
def installations(supabase_ready):
    return configured(InstallationProvider, supabase_ready)


@pytest.fixture
def spec(postgres_conn):
    spec = FunctionSpec(name=unique("notify"))
    yield spec
    claims = postgres_conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{SCHEMA}.{TABLE}",)).fetchone()[0]
    if claims:
        postgres_conn.execute(
            sql.SQL("DELETE FROM {}.{} WHERE function = %s").format(sql.Identifier(SCHEMA), sql.Identifier(TABLE)),
            (f"public.{spec.name}()",),
        )


def checked(provider: InstallationProvider, props: dict, olds: dict | None = None) -> dict:
    """The inputs as the engine records them: check mints the instance id (or keeps the old one)."""
    return provider.check(olds or {}, props).inputs


def claims(conn: psycopg.Connection) -> list[tuple[str, str, str]]:
    if conn.execute("SELECT to_regclass(%s) IS NULL", (f"{SCHEMA}.{TABLE}",)).fetchone()[0]:
        return []
    return conn.execute(CLAIMS).fetchall()


def test_one_instance_claims_and_another_is_refused_naming_both(installations, spec, postgres_conn):
    props = checked(installations, installation_props(spec))
    first = installations.create(props)
    assert first.id == props["instance"]
    assert claims(postgres_conn) == [(f"public.{spec.name}()", OWNER, first.id)]
    # This instance's later runs keep its id and pass.
    again = installations.check(props, installation_props(spec))
    assert again.failures == [] and again.inputs["instance"] == first.id
    read = installations.read(first.id, first.outs)
    assert installations.diff(first.id, read.outs, again.inputs).changes is False
    installations.update(first.id, read.outs, again.inputs)

    # The same project/stack from another backend: a new instance, refused at preview and at create.
    other = installations.check({}, installation_props(spec))
    (failure,) = other.failures
    assert f"instance {first.id}" in failure.reason and f"a new instance, {other.inputs['instance']}" in failure.reason
    assert OWNER in failure.reason and "secure-webhooks:replacesInstance" in failure.reason
    with pytest.raises(OwnershipError, match=first.id):
        installations.create(other.inputs)
    assert claims(postgres_conn) == [(f"public.{spec.name}()", OWNER, first.id)]

    installations.delete(first.id, first.outs)
    assert postgres_conn.execute("SELECT to_regnamespace(%s)", (SCHEMA,)).fetchone()[0] is None


def test_replaces_instance_takes_over_and_the_old_instance_is_then_refused(installations, spec, postgres_conn):
    props = checked(installations, installation_props(spec))
    lost = installations.create(props)
    taking_over = installations.check({}, installation_props(spec, replaces_instance=lost.id))
    assert taking_over.failures == []
    successor = installations.create(taking_over.inputs)
    assert claims(postgres_conn) == [(f"public.{spec.name}()", OWNER, successor.id)]
    # The old instance, if its state comes back: its preview is refused, and so is its update.
    (failure,) = installations.check(props, installation_props(spec)).failures
    assert f"belongs to Pulumi stack {OWNER} (instance {successor.id}" in failure.reason
    read = installations.read(lost.id, lost.outs)
    assert read.outs["claimed_by"] == successor.id
    assert installations.diff(lost.id, read.outs, props).changes is True
    with pytest.raises(OwnershipError, match=successor.id):
        installations.update(lost.id, read.outs, props)
    installations.delete(lost.id, lost.outs)  # leaves the successor's claim
    assert claims(postgres_conn) == [(f"public.{spec.name}()", OWNER, successor.id)]
    installations.delete(successor.id, successor.outs)


def test_racing_creates_of_two_stacks_leave_exactly_one_claim(supabase_ready, spec, postgres_conn):
    outcomes: dict[str, object] = {}
    start = threading.Barrier(2)

    def run(owner: str) -> None:
        provider = configured(InstallationProvider, supabase_ready)  # a connection per provider process
        start.wait()
        try:
            outcomes[owner] = provider.create(checked(provider, installation_props(spec, owner=owner))).id
        except OwnershipError as exc:
            outcomes[owner] = exc

    threads = [threading.Thread(target=run, args=(owner,)) for owner in ("secure-webhooks/a", "secure-webhooks/b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    won = {owner: value for owner, value in outcomes.items() if isinstance(value, str)}
    lost = {owner: value for owner, value in outcomes.items() if isinstance(value, OwnershipError)}
    print(f"\nracing claims: 2 creates, {len(won)} claimed, {len(lost)} refused")
    assert len(won) == 1 and len(lost) == 1
    ((winner, instance),) = won.items()
    assert claims(postgres_conn) == [(f"public.{spec.name}()", winner, instance)]
    assert winner in str(next(iter(lost.values())))


def test_an_object_another_stack_marks_is_refused_before_the_claim(supabase_ready, installations, spec, postgres_conn):
    functions = configured(SecureFunctionProvider, supabase_ready)
    other = functions.create(function_props(spec, owner="secure-webhooks/other"))
    try:
        props = checked(installations, installation_props(spec))
        (failure,) = installations.check({}, props).failures
        assert failure.reason == (
            f"function public.{spec.name}() is managed by Pulumi stack secure-webhooks/other, not {OWNER}"
        )
        with pytest.raises(OwnershipError, match="nothing was changed"):
            installations.create(props)
        assert not [c for c in claims(postgres_conn) if c[0] == f"public.{spec.name}()"]
    finally:
        functions.delete(other.id, other.outs)


@pytest.mark.parametrize("role", ["anon", "authenticated", "service_role"])
def test_api_roles_cannot_read_the_claims(installations, spec, postgres_conn, role):
    created = installations.create(checked(installations, installation_props(spec)))
    try:
        with pytest.raises(psycopg.errors.InsufficientPrivilege), postgres_conn.transaction():
            postgres_conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
            postgres_conn.execute(CLAIMS)
    finally:
        installations.delete(created.id, created.outs)


def test_a_deleted_claim_reads_as_gone_so_up_claims_again(installations, spec, postgres_conn):
    created = installations.create(checked(installations, installation_props(spec)))
    postgres_conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(SCHEMA)))
    assert installations.read(created.id, created.outs).id is None


def test_a_trigger_on_pg_nets_tables_fails_the_check(installations, spec, postgres_conn):
    """Issue 15: any role may create triggers on pg_net's tables; they would run as postgres when a
    webhook queues a request, so preview refuses to install while one exists (the reconciler refuses too)."""
    with psycopg.connect(postgres_conn.info.dsn, password=postgres_conn.info.password, autocommit=True) as planter:
        planter.execute(
            "CREATE FUNCTION pg_temp.spy() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$"
        )
        planter.execute("CREATE TRIGGER spy AFTER INSERT ON net.http_request_queue EXECUTE FUNCTION pg_temp.spy()")
        props = checked(installations, installation_props(spec))
        (failure,) = installations.check({}, props).failures
        assert failure.reason.startswith("trigger spy on net.http_request_queue was created by someone else")
    # Only pg_net's owner may drop it; ending the session drops its temporary function, and the trigger with it.
    deadline = time.monotonic() + 60
    while installations.check({}, props).failures:
        assert time.monotonic() < deadline, "the planter's trigger outlived its session"
        time.sleep(0.05)
