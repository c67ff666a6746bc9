"""No secret reaches the PostgreSQL server log, even with `log_statement = all` (issue 10 #6).

A statement's text and its bind parameters are logged; `COPY ... FROM STDIN`
data is not, and neither are the statements PL/pgSQL runs inside a function
(the trigger function and the reconciler read the Vault there). So the Vault
provider's whole lifecycle, for both kinds of secret, and deliveries in both
modes (which put bearer tokens through pg_net) must leave no trace of the
database passwords, the secrets or any `Authorization: Bearer` token.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator

import psycopg
import pytest
from outbox_support import all_delivered, install_pipeline, settle
from providers import OWNER, configured, function_props, trigger_props, unique
from psycopg import sql
from test_engine_stacks import database_objects, managed_resources

from local_supabase.bootstrap import create_demo_tables, install_legacy_webhooks
from local_supabase.cluster import LocalSupabase
from local_supabase.orchestrator import WebhookReceiver
from local_supabase.pg_net_worker import PgNetWorker
from secure_webhooks.installation.trigger_provider import WebhookTriggerProvider
from secure_webhooks.signing.function_provider import SecureFunctionProvider
from secure_webhooks.signing.trigger_function import FunctionSpec
from secure_webhooks.signing.vault_secret_provider import VaultSecretProvider

FIRST_SECRET = "logs-test-first-jwt-secret-" + "f" * 24
JWT_SECRET = "logs-test-jwt-secret-" + "a1" * 16
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"logs-test-webhook-key-32-bytes!!").decode()
ROTATED_WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"logs-test-rotated-key-32-bytes!!").decode()
JWT = re.compile(r"eyJ[A-Za-z0-9_-]+\.eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
#: Settings as a cautious operator might set them; the others stay at their defaults
#: (log_min_error_statement = error, log_parameter_max_length = -1: parameters in full).
LOGGING = {"log_statement": "all", "log_min_duration_statement": "0"}


@pytest.fixture(scope="module")
def logged_cluster() -> Iterator[LocalSupabase]:
    with LocalSupabase.start(settings=LOGGING, preinstall_pg_net=True) as cluster:
        yield cluster


def log_since(cluster: LocalSupabase, offset: int) -> str:
    with open(cluster.log_file, "rb") as log:
        log.seek(offset)
        return log.read().decode(errors="replace")


def assert_no_secret(log: str, cluster: LocalSupabase, *secrets: str) -> None:
    # Bootstrap's ALTER ROLE ... PASSWORD ran before `offset`: what follows is ours alone.
    for role, password in cluster.passwords.items():
        assert password not in log, f"the password of {role} is in the server log"
    for value in secrets:
        assert value not in log, f"secret {value[:12]}... is in the server log"
    # The function bodies (logged as DDL) hold the literal 'Bearer ' || token; a token itself never appears.
    assert re.findall(r"Bearer [A-Za-z0-9_-]", log, re.IGNORECASE) == []
    assert JWT.findall(log) == []


def secret_props(name: str, value: str, kind: str = "jwt") -> dict:
    props = {"name": name, "secret": value, "owner": OWNER, "secret_id": None}
    if kind != "jwt":
        props["kind"] = kind
    return props


def test_vault_secret_lifecycle_and_deliveries_log_no_secret(logged_cluster):
    cluster = logged_cluster
    offset = cluster.log_file.stat().st_size
    secrets = configured(VaultSecretProvider, cluster)
    out_of_band = "out-of-band-webhook-key-" + "0" * 20  # logged by our own setup below, never grepped
    with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as conn:
        webhook_name = unique("whsec")
        conn.execute("SELECT vault.create_secret(%s, %s, 'made by hand')", (out_of_band, webhook_name))
        offset = cluster.log_file.stat().st_size

        # The JWT key: created, drifted, updated (rotated), read.
        jwt_props = secret_props("app_jwt_secret", FIRST_SECRET)
        assert secrets.check({}, jwt_props).failures == []
        created = secrets.create(jwt_props)
        assert created.outs["value_matches"] is True
        rotated = secret_props("app_jwt_secret", JWT_SECRET)
        updated = secrets.update(created.id, created.outs, rotated)
        assert updated.outs["value_matches"] is True
        assert secrets.read(created.id, updated.outs).outs["value_matches"] is True
        assert secrets.read(created.id, created.outs).outs["value_matches"] is False  # compared in the database

        # The Standard Webhooks secret: adopted (it exists), rotated, read, deleted (restored to its description).
        webhook = secrets.create(secret_props(webhook_name, WEBHOOK_SECRET, "webhook"))
        assert webhook.outs["adopted_description"] == "made by hand"
        webhook_rotated = secrets.update(
            webhook.id, webhook.outs, secret_props(webhook_name, ROTATED_WEBHOOK_SECRET, "webhook")
        )
        assert secrets.read(webhook.id, webhook_rotated.outs).outs["value_matches"] is True
        secrets.delete(webhook.id, webhook_rotated.outs)
        stored = conn.execute(
            "SELECT decrypted_secret, description FROM vault.decrypted_secrets WHERE name = %s", (webhook_name,)
        ).fetchone()
        assert stored[1] == "made by hand"
        assert stored[0] == ROTATED_WEBHOOK_SECRET  # read back, not logged: results are not

        # Deliveries: direct (the trigger signs) and at-least-once (the reconciler signs).
        create_demo_tables(conn)
        with WebhookReceiver(JWT_SECRET) as receiver, PgNetWorker(cluster.admin_dsn) as worker:
            functions = configured(SecureFunctionProvider, cluster)
            triggers = configured(WebhookTriggerProvider, cluster)
            direct = FunctionSpec(name=unique("notify"), mode="direct")
            function = functions.create(function_props(direct))
            trigger = triggers.create(trigger_props("resumes", "direct_hook", f"{receiver.url}/ingest/direct", direct))
            conn.execute("INSERT INTO public.resumes (name, storage_path) VALUES ('direct.pdf', 'p/')")
            worker.drain()
            (delivery,) = receiver.wait_for(1)
            assert delivery.status == 200 and delivery.header("authorization").startswith("Bearer ")
            triggers.delete(trigger.id, trigger.outs)
            functions.delete(function.id, function.outs)

            pipeline = install_pipeline(cluster)
            pipeline.add_trigger("zip_archives", f"{receiver.url}/ingest/outbox")
            conn.execute("INSERT INTO public.zip_archives (name, storage_path) VALUES ('outbox.zip', 'p/')")
            settle(conn, worker, all_delivered(conn))
            assert [d.status for d in receiver.wait_for(2)] == [200, 200]
            pipeline.remove()

        secrets.delete(created.id, updated.outs)
        assert conn.execute("SELECT count(*) FROM vault.secrets WHERE name = 'app_jwt_secret'").fetchone()[0] == 0

    log = log_since(cluster, offset)
    assert "vault.create_secret" in log and "secure_webhooks.reconcile()" in log, "log_statement = all logged nothing?"
    assert_no_secret(log, cluster, FIRST_SECRET, JWT_SECRET, WEBHOOK_SECRET, ROTATED_WEBHOOK_SECRET)


def test_an_adopted_legacy_header_never_reaches_the_server_log(logged_cluster):
    """Issue 10 #1: adoption records are copied from the catalog and restored inside the server.

    Recording, restoring from the database and restoring a record that only older state holds
    (it enters as COPY data) must not write a legacy static header into the log, nor must a restore
    that fails (its error names no statement).
    """
    cluster = logged_cluster
    header = "x-webhook-secret: " + "legacy-static-" + "5" * 20
    functions = configured(SecureFunctionProvider, cluster)
    triggers = configured(WebhookTriggerProvider, cluster)
    spec = FunctionSpec(name=unique("notify"), mode="direct")
    with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as conn:
        create_demo_tables(conn)
        function = functions.create(function_props(spec))
        legacy = sql.SQL(
            "CREATE OR REPLACE TRIGGER {} AFTER INSERT ON public.resumes FOR EACH ROW EXECUTE FUNCTION {}({})"
        )
        conn.execute(
            legacy.format(sql.Identifier("hook"), sql.SQL("supabase_functions.http_request"), sql.Literal(header))
        )
        conn.execute(
            "CREATE FUNCTION public.gone_legacy() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NULL; END'"
        )
        conn.execute(legacy.format(sql.Identifier("gone"), sql.SQL("public.gone_legacy"), sql.Literal(header)))
        offset = cluster.log_file.stat().st_size

        hook = triggers.create(trigger_props("resumes", "hook", "http://127.0.0.1:9/a", spec))
        triggers.delete(hook.id, hook.outs)  # from the database's record
        hook = triggers.create(trigger_props("resumes", "hook", "http://127.0.0.1:9/a", spec))
        conn.execute("DELETE FROM secure_webhooks_rollback.adopted")
        triggers.delete(hook.id, hook.outs)  # from the state's copy, as older code left it
        gone = triggers.create(trigger_props("resumes", "gone", "http://127.0.0.1:9/a", spec))
        conn.execute("DROP FUNCTION public.gone_legacy()")
        with pytest.raises(RuntimeError, match="gone_legacy\\(\\) does not exist"):
            triggers.delete(gone.id, gone.outs)
        log = log_since(cluster, offset)
        assert header in hook.outs["adopted"]["definition"]  # what was recorded did hold it

        without_restore = configured(WebhookTriggerProvider, cluster)
        without_restore.restore_on_destroy = False
        without_restore.delete(gone.id, gone.outs)
        conn.execute('DROP TRIGGER "hook" ON public.resumes')
        functions.delete(function.id, function.outs)
    assert "secure_webhooks_rollback" in log, "log_statement = all logged nothing?"
    assert "legacy-static-" not in log


SECRET_SIG_KEY = "4dabf18193072939515e22adb298388d"


def plaintext_adoption_records(stack) -> str:
    """The stack's deployment as older code wrote it: every adoption record in plaintext."""
    deployment = stack.export()
    shown = json.loads(stack.run("stack", "export", "--show-secrets").stdout)
    plain = {r["urn"]: r.get("outputs", {}) for r in shown["deployment"]["resources"]}
    for resource in deployment["deployment"]["resources"]:
        adopted = plain[resource["urn"]].get("adopted")
        if isinstance(adopted, dict) and SECRET_SIG_KEY in adopted:
            resource["outputs"]["adopted"] = json.loads(adopted["plaintext"])
    return json.dumps(deployment)


def test_adopted_legacy_header_is_a_pulumi_secret_in_state(engine):
    """Issue 10 #7: the seed's `x-webhook-secret: static` header never sits in the state in plaintext.

    State that older code wrote (the record in plaintext) still restores on
    destroy, and the next `up` turns its record into a secret.
    """
    with engine.connect() as conn:
        install_legacy_webhooks(conn, engine.orchestrator.url)
        legacy = database_objects(conn)
    assert any("static" in trigger[2] for trigger in legacy["triggers"])
    stack = engine.stack("dev")
    stack.up()
    assert "static" not in json.dumps(stack.export())
    adopted = [r for r in managed_resources(stack).values() if "adopted" in r.get("outputs", {})]
    assert adopted and all(SECRET_SIG_KEY in r["outputs"]["adopted"] for r in adopted if r["outputs"]["adopted"])

    older = plaintext_adoption_records(stack)
    assert "static" in older
    stack.run("stack", "import", stdin=older)
    assert "static" in json.dumps(stack.export())
    stack.up()
    assert "static" not in json.dumps(stack.export())

    stack.run("stack", "import", stdin=plaintext_adoption_records(stack))
    engine.wait_until_delivered()
    stack.destroy()
    with engine.connect() as conn:
        assert database_objects(conn) == legacy
