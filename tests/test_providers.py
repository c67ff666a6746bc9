"""Provider lifecycle on the real database: create, read, update, drift, adoption, ownership."""

from __future__ import annotations

import psycopg
import pytest
from providers import (
    OWNER,
    as_stored,
    configured,
    function_props,
    installation_props,
    stack_config,
    trigger_props,
    unique,
)
from psycopg import sql
from pulumi.dynamic import ConfigureRequest
from pulumi.dynamic.config import Config
from supabase_lints import EXTENSION_IN_PUBLIC, lint

from local_supabase.bootstrap import LEGACY_WEBHOOK_HEADERS
from secure_webhooks.configuration.config_errors import IN_CODE, STACK_CONFIG, KeyNames
from secure_webhooks.installation.installation_provider import InstallationProvider
from secure_webhooks.installation.ownership import OwnershipError
from secure_webhooks.installation.preflight import extension_problem
from secure_webhooks.installation.trigger_provider import WebhookTriggerProvider
from secure_webhooks.signing.function_provider import SecureFunctionProvider
from secure_webhooks.signing.trigger_function import FunctionSpec
from secure_webhooks.signing.vault_secret_provider import VaultSecretProvider

URL = "http://127.0.0.1:9/ingest/a"


@pytest.fixture
def functions(supabase_ready):
    return configured(SecureFunctionProvider, supabase_ready)


@pytest.fixture
def triggers(supabase_ready):
    return configured(WebhookTriggerProvider, supabase_ready)


@pytest.fixture
def spec(functions):
    """A freshly created function of a unique name, dropped afterwards."""
    spec = FunctionSpec(name=unique("notify"))
    created = functions.create(function_props(spec))
    yield spec
    functions.delete(created.id, created.outs)


@pytest.fixture
def table(postgres_conn):
    name = unique("events")
    postgres_conn.execute(
        sql.SQL("CREATE TABLE public.{} (id bigserial PRIMARY KEY, note text)").format(sql.Identifier(name))
    )
    yield name
    postgres_conn.execute(sql.SQL("DROP TABLE public.{}").format(sql.Identifier(name)))


def no_changes(provider, result_id, outs, news) -> bool:
    diff = provider.diff(result_id, outs, news)
    return diff.changes is False and not diff.replaces


def findings_for(conn: psycopg.Connection, name: str) -> list:
    """Lint findings about our function, plus any extension left in public (our extensions live in `extensions`)."""
    return [f for f in lint(conn) if name in f.object or f.rule == EXTENSION_IN_PUBLIC]


def trigger_def(conn: psycopg.Connection, table: str, name: str) -> tuple[str, str, str | None] | None:
    return conn.execute(
        """SELECT pg_get_triggerdef(t.oid), t.tgenabled, obj_description(t.oid, 'pg_trigger')
             FROM pg_trigger t WHERE t.tgrelid = ('public.' || quote_ident(%s))::regclass AND t.tgname = %s""",
        (table, name),
    ).fetchone()


def test_function_create_read_update_and_lint(functions, admin_conn):
    spec = FunctionSpec(name=unique("notify"), signer="pgcrypto")
    props = function_props(spec)
    created = functions.create(props)
    try:
        assert created.id == f"public.{spec.name}()"
        assert created.outs["security_definer"] is True
        assert created.outs["settings"] == ['search_path=""', "plan_cache_mode=force_generic_plan"]
        assert created.outs["executable_by"] == []
        assert created.outs["managed_by"] == OWNER
        read = functions.read(created.id, created.outs)
        assert read.outs == created.outs
        assert no_changes(functions, created.id, read.outs, props)
        assert findings_for(admin_conn, spec.name) == []

        claims_changed = {**props, "claims": {"role": "worker", "sub": "orchestrator"}}
        diff = functions.diff(created.id, read.outs, claims_changed)
        assert diff.changes is True and diff.replaces == []
        updated = functions.update(created.id, read.outs, claims_changed)
        assert updated.outs["body_sha256"] != created.outs["body_sha256"]
        assert no_changes(functions, created.id, updated.outs, claims_changed)
        assert findings_for(admin_conn, spec.name) == []

        assert functions.diff(created.id, updated.outs, {**claims_changed, "name": "other"}).replaces == ["name"]
    finally:
        functions.delete(created.id, created.outs)
    assert admin_conn.execute("SELECT to_regprocedure(%s)", (f"public.{spec.name}()",)).fetchone()[0] is None


@pytest.mark.parametrize(
    ("tamper", "field"),
    [
        ("ALTER FUNCTION public.{}() SECURITY INVOKER", "security_definer"),
        ("ALTER FUNCTION public.{}() RESET search_path", "settings"),
        ("ALTER FUNCTION public.{}() RESET plan_cache_mode", "settings"),
        ("GRANT EXECUTE ON FUNCTION public.{}() TO anon", "executable_by"),
        (
            "CREATE OR REPLACE FUNCTION public.{}() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER "
            "SET search_path = '' AS 'BEGIN RETURN NULL; END'",
            "body_sha256",
        ),
        # Issue 10 #5: changes none of the fields above name, caught by the whole definition.
        ("ALTER FUNCTION public.{}() COST 10000", "definition_sha256"),
        ("ALTER FUNCTION public.{}() STABLE", "definition_sha256"),
    ],
)
def test_function_drift_is_read_and_repaired(functions, spec, admin_conn, tamper, field):
    props = function_props(spec)
    before = functions.read(f"public.{spec.name}()", functions.create(props).outs).outs
    admin_conn.execute(sql.SQL(tamper).format(sql.Identifier(spec.name)))
    drifted = functions.read(f"public.{spec.name}()", before).outs
    assert drifted[field] != before[field]
    assert functions.diff("id", drifted, props).changes is True
    repaired = functions.update("id", drifted, props).outs
    assert {k: repaired[k] for k in before} == before
    assert findings_for(admin_conn, spec.name) == []


def test_function_dropped_out_of_band_reads_as_gone(functions, admin_conn):
    spec = FunctionSpec(name=unique("notify"))
    created = functions.create(function_props(spec))
    admin_conn.execute(sql.SQL("DROP FUNCTION public.{}()").format(sql.Identifier(spec.name)))
    assert functions.read(created.id, created.outs).id is None


SEED_FUNCTION = """
CREATE FUNCTION public.{}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM sign(json_build_object('sub', 'orchestrator'), 'x');
  RETURN NEW;
END;
$$"""


#: Definition, grants (in a stable order) and comment of a function.
FUNCTION_FACTS = """
SELECT pg_get_functiondef(p.oid), (SELECT array_agg(a::text ORDER BY a::text) FROM unnest(p.proacl) a),
       obj_description(p.oid, 'pg_proc')
  FROM pg_proc p WHERE p.oid = %s::regprocedure"""


@pytest.mark.parametrize("comment", ["seed", None])
def test_function_adoption_restores_the_seed_version_exactly(functions, postgres_conn, admin_conn, comment):
    name = unique("notify")
    postgres_conn.execute(sql.SQL(SEED_FUNCTION).format(sql.Identifier(name)))
    postgres_conn.execute(
        sql.SQL("COMMENT ON FUNCTION public.{}() IS {}").format(sql.Identifier(name), sql.Literal(comment))
    )
    original = admin_conn.execute(FUNCTION_FACTS, (f"public.{name}()",)).fetchone()
    created = functions.create(function_props(FunctionSpec(name=name)))
    assert created.outs["adopted"]["comment"] == comment
    assert created.outs["executable_by"] == []
    functions.delete(created.id, as_stored(created.outs))
    restored = admin_conn.execute(FUNCTION_FACTS, (f"public.{name}()",)).fetchone()
    assert restored == original
    postgres_conn.execute(sql.SQL("DROP FUNCTION public.{}()").format(sql.Identifier(name)))


def test_function_owned_by_another_stack_is_refused(functions, spec, admin_conn):
    other = function_props(spec, owner="secure-webhooks/other")
    failures = functions.check({}, other).failures
    assert [f.property for f in failures] == ["name"]
    assert "managed by Pulumi stack secure-webhooks/test" in failures[0].reason
    body = admin_conn.execute(
        "SELECT prosrc FROM pg_proc WHERE oid = %s::regprocedure", (f"public.{spec.name}()",)
    ).fetchone()
    with pytest.raises(OwnershipError, match="secure-webhooks/test"):
        functions.create({**other, "claims": {"sub": "intruder"}})
    assert (
        admin_conn.execute(
            "SELECT prosrc FROM pg_proc WHERE oid = %s::regprocedure", (f"public.{spec.name}()",)
        ).fetchone()
        == body
    )


def test_installation_check_reports_a_missing_vault_secret(supabase_ready):
    installations = configured(InstallationProvider, supabase_ready)
    spec = FunctionSpec(name=unique("notify"), secret_name="no_such_secret")
    (failure,) = installations.check({}, installation_props(spec)).failures
    assert failure.property == "secret_name"
    assert "'no_such_secret' (secure-webhooks:secretName) does not exist" in failure.reason
    assert installations.check({}, installation_props(spec, secret_managed=True)).failures == []


def test_trigger_create_read_update_in_place(triggers, spec, table, admin_conn):
    props = trigger_props(table, "hook", URL, spec)
    created = triggers.create(props)
    assert created.id == f"public.{table}/hook"
    assert created.outs["adopted"] is None
    assert {k: created.outs[k] for k in ("url", "events", "level", "timing", "enabled", "managed_by")} == {
        "url": URL,
        "events": ["INSERT"],
        "level": "STATEMENT",
        "timing": "AFTER",
        "enabled": True,
        "managed_by": OWNER,
    }
    read = triggers.read(created.id, created.outs)
    assert read.outs == created.outs
    assert no_changes(triggers, created.id, read.outs, props)

    moved = {**props, "url": "http://127.0.0.1:9/ingest/b"}
    diff = triggers.diff(created.id, read.outs, moved)
    assert diff.changes is True and diff.replaces == []
    updated = triggers.update(created.id, read.outs, moved)
    assert updated.outs["url"] == moved["url"]
    assert no_changes(triggers, created.id, triggers.read(created.id, updated.outs).outs, moved)
    for identity in ("table", "name", "schema"):
        assert triggers.diff(created.id, updated.outs, {**moved, identity: "x"}).replaces == [identity]

    as_update = {**moved, "event": "UPDATE"}
    assert triggers.update(created.id, updated.outs, as_update).outs["level"] == "ROW"
    triggers.delete(created.id, as_update)
    assert trigger_def(admin_conn, table, "hook") is None


@pytest.mark.parametrize(
    ("tamper", "field", "value"),
    [
        ("ALTER TABLE public.{table} DISABLE TRIGGER hook", "enabled", False),
        (
            "CREATE OR REPLACE TRIGGER hook AFTER INSERT ON public.{table} FOR EACH ROW "
            "EXECUTE FUNCTION public.{function}('http://127.0.0.1:9/elsewhere')",
            "url",
            "http://127.0.0.1:9/elsewhere",
        ),
        (
            "CREATE OR REPLACE TRIGGER hook AFTER INSERT OR UPDATE ON public.{table} FOR EACH ROW "
            "EXECUTE FUNCTION public.{function}('" + URL + "')",
            "events",
            ["INSERT", "UPDATE"],
        ),
        # Issue 10 #5: both passed as unchanged when only a handful of fields was compared.
        (
            "CREATE OR REPLACE TRIGGER hook AFTER INSERT ON public.{table} REFERENCING NEW TABLE AS new_rows "
            "FOR EACH STATEMENT WHEN (false) EXECUTE FUNCTION public.{function}('" + URL + "')",
            "definition_matches",
            False,
        ),
        (
            "CREATE OR REPLACE TRIGGER hook AFTER INSERT ON public.{table} REFERENCING NEW TABLE AS other_rows "
            "FOR EACH STATEMENT EXECUTE FUNCTION public.{function}('" + URL + "')",
            "definition_matches",
            False,
        ),
    ],
)
def test_trigger_drift_is_read_and_repaired(triggers, spec, table, admin_conn, tamper, field, value):
    props = trigger_props(table, "hook", URL, spec)
    created = triggers.create(props)
    admin_conn.execute(sql.SQL(tamper).format(table=sql.Identifier(table), function=sql.Identifier(spec.name)))
    drifted = triggers.read(created.id, created.outs).outs
    assert drifted[field] == value
    assert triggers.diff(created.id, drifted, props).changes is True
    repaired = triggers.update(created.id, drifted, props).outs
    assert {k: repaired[k] for k in created.outs} == created.outs


def test_trigger_dropped_out_of_band_reads_as_gone(triggers, spec, table, admin_conn):
    created = triggers.create(trigger_props(table, "hook", URL, spec))
    admin_conn.execute(sql.SQL("DROP TRIGGER hook ON public.{}").format(sql.Identifier(table)))
    assert triggers.read(created.id, created.outs).id is None


@pytest.mark.parametrize(("disabled", "commented"), [(False, True), (True, False)])
def test_legacy_trigger_is_adopted_and_restored_exactly(
    triggers, spec, table, postgres_conn, admin_conn, disabled, commented
):
    name = "orchestrator-ingest-interns-individual"
    postgres_conn.execute(
        sql.SQL(
            "CREATE TRIGGER {} AFTER INSERT ON public.{} FOR EACH ROW EXECUTE FUNCTION "
            "supabase_functions.http_request('http://127.0.0.1:9/legacy', 'POST', {}, '{{}}', '5000')"
        ).format(sql.Identifier(name), sql.Identifier(table), sql.Literal(LEGACY_WEBHOOK_HEADERS))
    )
    if commented:
        postgres_conn.execute(
            sql.SQL("COMMENT ON TRIGGER {} ON public.{} IS 'from the dashboard'").format(
                sql.Identifier(name), sql.Identifier(table)
            )
        )
    if disabled:
        postgres_conn.execute(
            sql.SQL("ALTER TABLE public.{} DISABLE TRIGGER {}").format(sql.Identifier(table), sql.Identifier(name))
        )
    legacy = trigger_def(admin_conn, table, name)

    created = triggers.create(trigger_props(table, name, URL, spec))
    assert created.outs["adopted"] == {"definition": legacy[0], "enabled_flag": legacy[1], "comment": legacy[2]}
    ours = trigger_def(admin_conn, table, name)
    assert f"{spec.name}('{URL}')" in ours[0] and ours[1] == "O"

    triggers.delete(created.id, as_stored(created.outs))
    assert trigger_def(admin_conn, table, name) == legacy


def test_trigger_owned_by_another_stack_is_refused(triggers, spec, table, admin_conn):
    triggers.create(trigger_props(table, "hook", URL, spec))
    before = trigger_def(admin_conn, table, "hook")
    intruder = trigger_props(table, "hook", "http://127.0.0.1:9/intruder", spec, owner="secure-webhooks/other")
    (failure,) = triggers.check({}, intruder).failures
    assert failure.property == "name"
    assert f"trigger hook on public.{table} is managed by Pulumi stack {OWNER}" in failure.reason
    with pytest.raises(OwnershipError, match="refusing to take it over"):
        triggers.create(intruder)
    triggers.delete("id", intruder)  # another stack's destroy leaves our trigger alone
    assert trigger_def(admin_conn, table, "hook") == before


def test_trigger_check_names_a_missing_table(triggers, spec):
    (failure,) = triggers.check({}, trigger_props("no_such_table", "hook", URL, spec)).failures
    assert failure.property == "table"
    assert failure.reason == "table public.no_such_table does not exist (secure-webhooks:webhooks entry 'hook')"


def test_preflight_explains_each_extension_problem_on_the_input_to_fix(supabase_ready, postgres_conn):
    def problem(extension: str, managed: bool, names: KeyNames = STACK_CONFIG) -> tuple[str, str] | None:
        failure = extension_problem(cur, extension, "pgjwt", managed, names)
        return None if failure is None else (failure.property, failure.reason)

    with postgres_conn.transaction(force_rollback=True), postgres_conn.cursor() as cur:
        assert extension_problem(cur, "pg_net", "pgcrypto", managed=False) is None
        assert problem("no_such_extension", managed=True) == (
            "signer",
            "extension no_such_extension is not available on this server (needed by signer 'pgjwt' and pg_net)",
        )
        prop, reason = problem("citext", managed=False)
        assert prop == "extensions_managed" and "secure-webhooks:manageExtensions is false" in reason
        # A program that passed settings in code reads the key it wrote, not a stack config key.
        prop, reason = problem("citext", managed=False, names=IN_CODE)
        assert prop == "extensions_managed" and 'parse_settings(...)["manageExtensions"] is false' in reason
        assert "secure-webhooks:" not in reason
        assert problem("citext", managed=True) is None
        cur.execute("CREATE EXTENSION citext SCHEMA public")
        assert problem("citext", managed=True) == (
            "signer",
            "extension citext is installed in schema 'public', but the function calls it as extensions.*; "
            "move it with ALTER EXTENSION citext SET SCHEMA extensions",
        )


def test_vault_secret_adoption_leaves_the_secret_and_restores_its_description(supabase_ready, postgres_conn):
    secrets = configured(VaultSecretProvider, supabase_ready)
    name = unique("jwt")
    postgres_conn.execute("SELECT vault.create_secret(%s, %s, 'created by hand')", ("h" * 40, name))
    props = {"name": name, "secret": "n" * 40, "owner": OWNER}
    created = secrets.create(props)
    assert created.outs["adopted_description"] == "created by hand"
    assert created.outs["value_matches"] is True

    intruder = {**props, "owner": "secure-webhooks/other"}
    (failure,) = secrets.check({}, intruder).failures
    assert failure.property == "name" and f"managed by Pulumi stack {OWNER}" in failure.reason
    with pytest.raises(OwnershipError):
        secrets.create(intruder)

    # Issue 10 #2: a killed CLI loses the create's outputs; the next create finds the secret ours,
    # and the record in the database still says what it was. Destroy reads it from there.
    again = secrets.create(props)
    assert again.outs["adopted_description"] == "created by hand"
    secrets.delete(again.id, {**again.outs, "adopted_description": None})
    kept = postgres_conn.execute(
        "SELECT decrypted_secret, description FROM vault.decrypted_secrets WHERE name = %s", (name,)
    ).fetchone()
    assert kept == ("n" * 40, "created by hand")
    postgres_conn.execute("DELETE FROM vault.secrets WHERE name = %s", (name,))


def test_destroy_when_the_legacy_triggers_function_is_gone_says_how_to_proceed(
    triggers, spec, table, postgres_conn, supabase_ready
):
    """Issue 10 #4: it used to fail with a traceback and stay stuck."""
    legacy_function = unique("legacy_fn")
    postgres_conn.execute(
        sql.SQL("CREATE FUNCTION public.{}() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NULL; END'").format(
            sql.Identifier(legacy_function)
        )
    )
    postgres_conn.execute(
        sql.SQL("CREATE TRIGGER hook AFTER INSERT ON public.{} FOR EACH ROW EXECUTE FUNCTION public.{}()").format(
            sql.Identifier(table), sql.Identifier(legacy_function)
        )
    )
    created = triggers.create(trigger_props(table, "hook", URL, spec))
    assert created.outs["adopted"] is not None
    postgres_conn.execute(sql.SQL("DROP FUNCTION public.{}()").format(sql.Identifier(legacy_function)))

    with pytest.raises(RuntimeError) as refused:
        triggers.delete(created.id, created.outs)
    message = str(refused.value)
    assert f"public.{legacy_function}() does not exist" in message and "Nothing was changed" in message
    assert "secure-webhooks:restoreOnDestroy false" in message
    assert trigger_def(postgres_conn, table, "hook") is not None  # ours is still there

    without_restore = WebhookTriggerProvider()
    without_restore.configure(
        ConfigureRequest(
            Config({**stack_config(supabase_ready), "secure-webhooks:restoreOnDestroy": "false"}, "secure-webhooks")
        )
    )
    without_restore.delete(created.id, created.outs)
    assert trigger_def(postgres_conn, table, "hook") is None
