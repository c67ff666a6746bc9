"""Issue 10 #1 and #2 on the real database: adoption records live in the database, not only in Pulumi state.

Each test adopts something (a legacy trigger, the seed's function, a Vault secret), then plays what
loses the state's copy of the record: a refresh that found our object missing followed by a
re-create, a create that never reported back (a killed CLI: the next create finds our object), or
a state written by older code that holds the only copy. Destroy must still restore exactly, and
the store must be private, keep one row per adopted object and disappear with its last row.
"""

from __future__ import annotations

import psycopg
import pytest
import test_providers
from providers import OWNER, configured, function_props, trigger_props, unique
from psycopg import sql
from test_providers import FUNCTION_FACTS, SEED_FUNCTION, trigger_def

from local_supabase.bootstrap import LEGACY_WEBHOOK_HEADERS
from secure_webhooks.installation import adoption
from secure_webhooks.signing.trigger_function import FunctionSpec
from secure_webhooks.signing.vault_secret_provider import VaultSecretProvider

URL = "http://127.0.0.1:9/ingest/a"
LEGACY = "orchestrator-ingest-interns-individual"

functions, triggers, spec, table = (
    test_providers.functions,
    test_providers.triggers,
    test_providers.spec,
    test_providers.table,
)


def records(conn: psycopg.Connection) -> list[tuple[str, list[str], str]]:
    """(kind, object, adopted_by) of every record in the store; [] when the store does not exist."""
    if conn.execute("SELECT to_regclass('secure_webhooks_rollback.adopted')").fetchone()[0] is None:
        return []
    return conn.execute(
        "SELECT kind, object, adopted_by FROM secure_webhooks_rollback.adopted ORDER BY 1, 2"
    ).fetchall()


def store_exists(conn: psycopg.Connection) -> bool:
    return conn.execute("SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = %s)", (adoption.SCHEMA,)).fetchone()[0]


def install_legacy(conn: psycopg.Connection, table: str) -> tuple:
    conn.execute(
        sql.SQL(
            "CREATE TRIGGER {} AFTER INSERT ON public.{} FOR EACH ROW EXECUTE FUNCTION "
            "supabase_functions.http_request('http://127.0.0.1:9/legacy', 'POST', {}, '{{}}', '5000')"
        ).format(sql.Identifier(LEGACY), sql.Identifier(table), sql.Literal(LEGACY_WEBHOOK_HEADERS))
    )
    conn.execute(
        sql.SQL("COMMENT ON TRIGGER {} ON public.{} IS 'dashboard'").format(
            sql.Identifier(LEGACY), sql.Identifier(table)
        )
    )
    return trigger_def(conn, table, LEGACY)


def without_record(outs: dict) -> dict:
    """The state a lost `adopted` output leaves: a refresh that dropped the resource, a killed CLI."""
    return {**outs, "adopted": None}


def test_trigger_record_survives_a_re_create_and_a_lost_state(triggers, spec, table, postgres_conn, admin_conn):
    legacy = install_legacy(postgres_conn, table)
    props = trigger_props(table, LEGACY, URL, spec)
    created = triggers.create(props)
    assert created.outs["adopted"] == {"definition": legacy[0], "enabled_flag": legacy[1], "comment": legacy[2]}
    assert records(admin_conn) == [("trigger", ["public", table, LEGACY], OWNER)]

    # Drift: ours dropped out of band, the refresh drops its state, `up` creates it again.
    postgres_conn.execute(sql.SQL("DROP TRIGGER {} ON public.{}").format(sql.Identifier(LEGACY), sql.Identifier(table)))
    recreated = triggers.create(props)
    assert recreated.outs["adopted"] == created.outs["adopted"]
    # A killed CLI: the create committed but never reached the state, so `up` creates it again over ours.
    again = triggers.create(props)
    assert again.outs["adopted"] == created.outs["adopted"]
    assert records(admin_conn) == [("trigger", ["public", table, LEGACY], OWNER)]

    triggers.delete(again.id, without_record(again.outs))
    assert trigger_def(admin_conn, table, LEGACY) == legacy
    assert records(admin_conn) == [] and not store_exists(admin_conn)


def test_trigger_record_only_in_older_state_moves_into_the_database(triggers, spec, table, postgres_conn, admin_conn):
    legacy = install_legacy(postgres_conn, table)
    props = trigger_props(table, LEGACY, URL, spec)
    created = triggers.create(props)
    for step in ("update", "refresh", "delete"):
        admin_conn.execute("DELETE FROM secure_webhooks_rollback.adopted")  # as older code left it: state only
        if step == "update":
            updated = triggers.update(created.id, created.outs, {**props, "url": URL + "/moved"})
            assert records(admin_conn) == [("trigger", ["public", table, LEGACY], OWNER)]
            assert updated.outs["adopted"] == created.outs["adopted"]
        elif step == "refresh":
            postgres_conn.execute(
                sql.SQL("DROP TRIGGER {} ON public.{}").format(sql.Identifier(LEGACY), sql.Identifier(table))
            )
            assert triggers.read(created.id, created.outs).id == created.id, "owed: the state's copy says so"
        else:
            triggers.delete(created.id, created.outs)
    assert trigger_def(admin_conn, table, LEGACY) == legacy
    assert not store_exists(admin_conn)


def test_refresh_keeps_a_dropped_trigger_that_owes_a_rollback_so_destroy_restores_it(
    triggers, spec, table, postgres_conn, admin_conn
):
    legacy = install_legacy(postgres_conn, table)
    props = trigger_props(table, LEGACY, URL, spec)
    created = triggers.create(props)
    postgres_conn.execute(sql.SQL("DROP TRIGGER {} ON public.{}").format(sql.Identifier(LEGACY), sql.Identifier(table)))
    refreshed = triggers.read(created.id, created.outs)
    assert refreshed.id == created.id, "a refresh must not drop it from the state"
    assert triggers.diff(created.id, refreshed.outs, props).changes is True  # drift: `up` re-creates it
    triggers.delete(created.id, refreshed.outs)  # or destroy right away
    assert trigger_def(admin_conn, table, LEGACY) == legacy
    assert not store_exists(admin_conn)


def test_store_is_private_to_its_owner(triggers, spec, table, postgres_conn, admin_conn, supabase_ready):
    install_legacy(postgres_conn, table)
    created = triggers.create(trigger_props(table, LEGACY, URL, spec))
    try:
        for role in ("anon", "authenticated", "service_role", "authenticator"):
            assert admin_conn.execute(
                "SELECT has_schema_privilege(%s, %s, 'USAGE'), has_table_privilege(%s, %s, 'SELECT')",
                (role, adoption.SCHEMA, role, f"{adoption.SCHEMA}.{adoption.TABLE}"),
            ).fetchone() == (False, False), role
        with psycopg.connect(supabase_ready.admin_dsn, autocommit=True) as conn:
            conn.execute("SET ROLE service_role")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("SELECT record FROM secure_webhooks_rollback.adopted")
    finally:
        triggers.delete(created.id, created.outs)


def test_store_keeps_the_other_records_and_goes_with_the_last(triggers, spec, table, postgres_conn, admin_conn):
    """Two adopted triggers: deleting one keeps the other's record (and the store) until it goes too."""
    install_legacy(postgres_conn, table)
    postgres_conn.execute(
        sql.SQL(
            "CREATE TRIGGER other AFTER INSERT ON public.{} FOR EACH ROW EXECUTE FUNCTION "
            "supabase_functions.http_request('http://127.0.0.1:9/o', 'POST', '{{}}', '{{}}', '5000')"
        ).format(sql.Identifier(table))
    )
    first = triggers.create(trigger_props(table, LEGACY, URL, spec))
    second = triggers.create(trigger_props(table, "other", URL, spec))
    assert len(records(admin_conn)) == 2
    triggers.delete(first.id, first.outs)
    assert records(admin_conn) == [("trigger", ["public", table, "other"], OWNER)]
    triggers.delete(second.id, second.outs)
    assert not store_exists(admin_conn)


def test_function_record_survives_a_re_create_and_a_lost_state(functions, postgres_conn, admin_conn):
    name = unique("notify")
    postgres_conn.execute(sql.SQL(SEED_FUNCTION).format(sql.Identifier(name)))
    postgres_conn.execute(sql.SQL("GRANT EXECUTE ON FUNCTION public.{}() TO service_role").format(sql.Identifier(name)))
    original = admin_conn.execute(FUNCTION_FACTS, (f"public.{name}()",)).fetchone()
    props = function_props(FunctionSpec(name=name))
    created = functions.create(props)
    assert records(admin_conn) == [("function", ["public", f"{name}()"], OWNER)]
    assert ["service_role", False] in created.outs["adopted"]["grants"]

    postgres_conn.execute(sql.SQL("DROP FUNCTION public.{}()").format(sql.Identifier(name)))
    refreshed = functions.read(created.id, created.outs)
    assert refreshed.id == created.id and functions.diff(created.id, refreshed.outs, props).changes is True
    recreated = functions.create(props)
    assert recreated.outs["adopted"] == created.outs["adopted"]
    functions.delete(recreated.id, without_record(recreated.outs))
    assert admin_conn.execute(FUNCTION_FACTS, (f"public.{name}()",)).fetchone() == original
    assert not store_exists(admin_conn)
    postgres_conn.execute(sql.SQL("DROP FUNCTION public.{}()").format(sql.Identifier(name)))


def test_function_provider_and_trigger_provider_share_one_store(functions, triggers, table, postgres_conn, admin_conn):
    name = unique("notify")
    postgres_conn.execute(sql.SQL(SEED_FUNCTION).format(sql.Identifier(name)))
    install_legacy(postgres_conn, table)
    spec = FunctionSpec(name=name)
    function = functions.create(function_props(spec))
    trigger = triggers.create(trigger_props(table, LEGACY, URL, spec))
    assert [kind for kind, *_ in records(admin_conn)] == ["function", "trigger"]
    triggers.delete(trigger.id, trigger.outs)
    functions.delete(function.id, function.outs)
    assert not store_exists(admin_conn)
    postgres_conn.execute(sql.SQL("DROP FUNCTION public.{}()").format(sql.Identifier(name)))


def test_vault_secret_deleted_out_of_band_stays_owed_through_a_refresh(supabase_ready, postgres_conn, admin_conn):
    secrets = configured(VaultSecretProvider, supabase_ready)
    name = unique("jwt")
    postgres_conn.execute("SELECT vault.create_secret(%s, %s, 'created by hand')", ("h" * 40, name))
    props = {"name": name, "secret": "n" * 40, "owner": OWNER}
    created = secrets.create(props)
    for then_destroy in (False, True):
        postgres_conn.execute("DELETE FROM vault.secrets WHERE name = %s", (name,))
        refreshed = secrets.read(created.id, created.outs)
        assert refreshed.id == created.id and secrets.diff(created.id, refreshed.outs, props).changes is True
        if then_destroy:  # nothing left to give back: the record goes
            secrets.delete(created.id, refreshed.outs)
            assert not store_exists(admin_conn)
            break
        repaired = secrets.update(created.id, refreshed.outs, props)  # `up` puts the value back
        assert repaired.outs["adopted_description"] == "created by hand" and repaired.outs["value_matches"]
        assert records(admin_conn) == [("vault secret", [name], OWNER)]
    assert postgres_conn.execute("SELECT count(*) FROM vault.secrets WHERE name = %s", (name,)).fetchone()[0] == 0
