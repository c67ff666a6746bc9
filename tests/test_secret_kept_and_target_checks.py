"""Issue 10 #3 and #15 on the real database.

#3: deleting a Vault secret (e.g. after `pulumi config rm secure-webhooks:jwtSecret`) never pulls it
out from under a function this stack still manages; it is kept, no longer marked as ours.
#15: webhook targets that `up` could not hook (views, system catalogs, tables owned by another
role, missing tables) fail the function's check, so nothing is created.
"""

from __future__ import annotations

import base64

import pytest
import test_providers
from providers import OWNER, configured, function_props, installation_props, trigger_props, unique
from psycopg import sql

from secure_webhooks.installation.installation_provider import InstallationProvider
from secure_webhooks.installation.ownership import owner_of
from secure_webhooks.installation.trigger_provider import WebhookTriggerProvider
from secure_webhooks.signing.trigger_function import FunctionSpec
from secure_webhooks.signing.vault_secret_provider import VaultSecretProvider

URL = "http://127.0.0.1:9/ingest/a"
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()


functions, table = test_providers.functions, test_providers.table  # the same fixtures


@pytest.fixture
def secrets(supabase_ready):
    return configured(VaultSecretProvider, supabase_ready)


def vault_row(conn, name: str):
    return conn.execute(
        "SELECT decrypted_secret, description FROM vault.decrypted_secrets WHERE name = %s", (name,)
    ).fetchone()


@pytest.mark.parametrize("kind", ["jwt", "webhook"])
def test_a_secret_the_function_still_reads_is_kept_not_deleted(
    kind, secrets, functions, supabase_ready, postgres_conn, table
):
    jwt_name, webhook_name = unique("jwt"), unique("whsec")
    jwt = secrets.create({"name": jwt_name, "secret": "j" * 40, "owner": OWNER})
    webhook = secrets.create({"name": webhook_name, "secret": WEBHOOK_SECRET, "owner": OWNER, "kind": "webhook"})
    spec = FunctionSpec(name=unique("notify"), secret_name=jwt_name, webhook_secret_name=webhook_name)
    function = functions.create(function_props(spec))
    triggers = configured(WebhookTriggerProvider, supabase_ready)
    trigger = triggers.create(trigger_props(table, "hook", URL, spec))
    removed, other = (jwt, webhook) if kind == "jwt" else (webhook, jwt)
    try:
        # `pulumi config rm` of the key: the engine deletes the secret while the function stays.
        secrets.delete(removed.id, removed.outs)
        value, description = vault_row(postgres_conn, removed.outs["name"])
        assert value == removed.outs["secret"]
        assert owner_of(description) is None  # the stack no longer claims it
        assert f"public.{spec.name}()" in description and "still read" in description
        # ... so inserts keep working (the seed's direct mode raises when the key is missing).
        postgres_conn.execute(sql.SQL("INSERT INTO public.{} (note) VALUES ('x')").format(sql.Identifier(table)))

        # Setting the key again takes the secret back as ours, not as an adopted one to leave on destroy.
        again = secrets.create({k: v for k, v in removed.outs.items() if k in ("name", "secret", "owner", "kind")})
        assert again.outs["adopted_description"] is None
        assert again.outs["managed_by"] == OWNER
    finally:
        triggers.delete(trigger.id, trigger.outs)
        functions.delete(function.id, function.outs)
    # `pulumi destroy`: the function went first, so now both secrets are deleted.
    secrets.delete(again.id, again.outs)
    secrets.delete(other.id, other.outs)
    assert vault_row(postgres_conn, jwt_name) is None
    assert vault_row(postgres_conn, webhook_name) is None


def test_a_secret_read_only_by_another_stacks_function_is_deleted(secrets, functions, postgres_conn):
    name = unique("jwt")
    created = secrets.create({"name": name, "secret": "j" * 40, "owner": OWNER})
    spec = FunctionSpec(name=unique("notify"), secret_name=name)
    function = functions.create(function_props(spec, owner="secure-webhooks/other"))
    try:
        secrets.delete(created.id, created.outs)
        assert vault_row(postgres_conn, name) is None
    finally:
        functions.delete(function.id, function.outs)


def test_installation_check_refuses_webhook_targets_up_could_not_hook(supabase_ready, table, postgres_conn, admin_conn):
    view, foreign = unique("events_view"), unique("not_ours")
    postgres_conn.execute(sql.SQL("CREATE VIEW public.{} AS SELECT 1 AS x").format(sql.Identifier(view)))
    admin_conn.execute(sql.SQL("CREATE TABLE public.{} (id int)").format(sql.Identifier(foreign)))
    targets = [("public", table), ("public", view), ("pg_catalog", "pg_class"), ("public", foreign)]
    targets += [("information_schema", "tables"), ("public", "no_such_table")]
    tables = [
        {"schema": schema, "table": name, "key": f"secure-webhooks:webhooks[{index}].table"}
        for index, (schema, name) in enumerate(targets)
    ]
    props = installation_props(FunctionSpec(name=unique("notify")), secret_managed=True, webhook_tables=tables)
    try:
        reasons = [f.reason for f in configured(InstallationProvider, supabase_ready).check({}, props).failures]
    finally:
        postgres_conn.execute(sql.SQL("DROP VIEW public.{}").format(sql.Identifier(view)))
        admin_conn.execute(sql.SQL("DROP TABLE public.{}").format(sql.Identifier(foreign)))
    assert reasons == [
        f"secure-webhooks:webhooks[1].table: public.{view} is a view; webhooks can only watch tables",
        "secure-webhooks:webhooks[2].table: pg_catalog.pg_class is a system catalog; "
        "webhooks can only watch your own tables",
        f"secure-webhooks:webhooks[3].table: table public.{foreign} is owned by supabase_admin, not postgres "
        "(the role this stack connects as): it cannot install or comment a trigger there; "
        f"ALTER TABLE public.{foreign} OWNER TO postgres, or drop this webhook",
        "secure-webhooks:webhooks[4].table: information_schema.tables is a system catalog; "
        "webhooks can only watch your own tables",
        "secure-webhooks:webhooks[5].table: table public.no_such_table does not exist",
    ]
