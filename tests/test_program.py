"""The resource graph of the real program for the dev and prod stacks, with Pulumi's mocks.

These run __main__.py exactly as `pulumi up` would, with the engine replaced
by pulumi.runtime.Mocks (the way Pulumi's docs unit-test programs), and with
each stack's committed Pulumi.<stack>.yaml as its config.
"""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pulumi
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SECRET = "s" * 40
FUNCTION = "pulumi-python:dynamic/secure-webhooks:SecureFunction"
TRIGGER = "pulumi-python:dynamic/secure-webhooks:WebhookTrigger"
VAULT_SECRET = "pulumi-python:dynamic/secure-webhooks:VaultSecret"
EXTENSION = "postgresql:index/extension:Extension"
OUTBOX = "pulumi-python:dynamic/secure-webhooks:Outbox"
RECONCILER = "pulumi-python:dynamic/secure-webhooks:Reconciler"
SCHEDULE = "pulumi-python:dynamic/secure-webhooks:ReconcilerSchedule"
INSTALLATION = "pulumi-python:dynamic/secure-webhooks:Installation"


class RecordingMocks(pulumi.runtime.Mocks):
    def __init__(self) -> None:
        self.resources: list[pulumi.runtime.MockResourceArgs] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        self.resources.append(args)
        return f"{args.name}-id", dict(args.inputs)

    def call(self, args: pulumi.runtime.MockCallArgs):
        return {}

    def of_type(self, typ: str) -> list[pulumi.runtime.MockResourceArgs]:
        return [r for r in self.resources if r.typ == typ]


def stack_config(stack: str) -> dict[str, str]:
    return yaml.safe_load((ROOT / f"Pulumi.{stack}.yaml").read_text())["config"]


def run_program(stack: str, config: dict[str, str], secret_keys: tuple[str, ...] = ()) -> RecordingMocks:
    """Run __main__.py under mocks and wait until every resource is registered."""
    mocks = RecordingMocks()
    # Structured values (the delivery object in Pulumi.prod.yaml) reach programs as JSON text.
    as_text = {k: json.dumps(v) if isinstance(v, (dict, list)) else str(v) for k, v in config.items()}
    pulumi.runtime.set_all_config(as_text, list(secret_keys))
    pulumi.runtime.set_mocks(mocks, project="secure-webhooks", stack=stack, preview=False)

    @pulumi.runtime.test
    def program():
        runpy.run_path(str(ROOT / "__main__.py"))
        return pulumi.Output.from_input(None)

    try:
        program()
    finally:
        # No mock engine left behind: pulumi.log would write to it, not to stderr, in later tests' providers.
        pulumi.runtime.settings.reset_options()
    return mocks


def test_dev_stack_graph():
    mocks = run_program("dev", stack_config("dev"))
    extensions = mocks.of_type(EXTENSION)
    assert sorted((e.inputs["name"], e.inputs["schema"]) for e in extensions) == [
        ("pg_net", "extensions"),
        ("pgcrypto", "extensions"),
    ]
    (function,) = mocks.of_type(FUNCTION)
    assert function.inputs["schema"] == "public" and function.inputs["name"] == "notify_orchestrator_secure"
    assert function.inputs["signer"] == "pgcrypto"
    assert function.inputs["owner"] == "secure-webhooks/dev"
    (installation,) = mocks.of_type(INSTALLATION)
    assert installation.inputs["secret_managed"] is False
    triggers = mocks.of_type(TRIGGER)
    assert sorted(
        (t.inputs["schema"], t.inputs["table"], t.inputs["name"], t.inputs["event"], t.inputs["url"]) for t in triggers
    ) == [
        (
            "public",
            "resumes",
            "orchestrator-ingest-interns-individual",
            "INSERT",
            "https://heliochromic-isenthalpic-aidyn.ngrok-free.dev/ingest/interns/individual",
        ),
        (
            "public",
            "zip_archives",
            "orchestrator-injest-resumes-batch",
            "INSERT",
            "https://heliochromic-isenthalpic-aidyn.ngrok-free.dev/ingest/resumes/batch",
        ),
    ]
    assert not mocks.of_type(VAULT_SECRET)


def test_prod_stack_uses_its_own_url_and_pgcrypto():
    mocks = run_program("prod", stack_config("prod"))
    assert sorted(e.inputs["name"] for e in mocks.of_type(EXTENSION)) == ["pg_net", "pgcrypto"]
    (function,) = mocks.of_type(FUNCTION)
    assert function.inputs["signer"] == "pgcrypto"
    assert function.inputs["owner"] == "secure-webhooks/prod"
    assert {t.inputs["url"] for t in mocks.of_type(TRIGGER)} == {
        "https://orchestrator.example.com/ingest/interns/individual",
        "https://orchestrator.example.com/ingest/resumes/batch",
    }


def test_the_pgjwt_signer_also_installs_pgjwt():
    mocks = run_program("dev", {**stack_config("dev"), "secure-webhooks:signer": "pgjwt"})
    assert sorted(e.inputs["name"] for e in mocks.of_type(EXTENSION)) == ["pg_net", "pgcrypto", "pgjwt"]
    (function,) = mocks.of_type(FUNCTION)
    assert function.inputs["signer"] == "pgjwt"


def test_extensions_left_to_the_database_are_only_verified():
    mocks = run_program("dev", {**stack_config("dev"), "secure-webhooks:manageExtensions": "false"})
    assert mocks.of_type(EXTENSION) == []
    (installation,) = mocks.of_type(INSTALLATION)
    assert installation.inputs["extensions_managed"] is False


def test_every_resource_is_a_child_of_the_component():
    mocks = run_program("dev", stack_config("dev"))
    (component,) = [r for r in mocks.resources if r.typ == "secure-webhooks:index:SecureWebhooks"]
    children = [r for r in mocks.resources if r is not component]
    assert children and all(r.name.startswith("secure-webhooks-") for r in children)


def test_multi_event_webhook_gets_one_trigger_per_event():
    config = {
        **stack_config("dev"),
        "secure-webhooks:webhooks": json.dumps(
            [{"name": "audit", "table": "resumes", "path": "/audit", "events": ["INSERT", "UPDATE", "DELETE"]}]
        ),
    }
    triggers = run_program("dev", config).of_type(TRIGGER)
    assert sorted((t.inputs["name"], t.inputs["event"]) for t in triggers) == [
        ("audit", "INSERT"),
        ("audit-delete", "DELETE"),
        ("audit-update", "UPDATE"),
    ]


def test_jwt_secret_adds_a_vault_secret_resource_as_a_secret():
    config = {**stack_config("dev"), "secure-webhooks:jwtSecret": SECRET}
    mocks = run_program("dev", config, secret_keys=("secure-webhooks:jwtSecret",))
    (vault_secret,) = mocks.of_type(VAULT_SECRET)
    assert vault_secret.inputs["name"] == "app_jwt_secret"
    assert vault_secret.inputs["secret"] == {
        pulumi.runtime.rpc._special_sig_key: pulumi.runtime.rpc._special_secret_sig,
        "value": SECRET,
    }
    (installation,) = mocks.of_type(INSTALLATION)
    assert installation.inputs["secret_managed"] is True
    assert installation.inputs["vault_secrets"] == ["app_jwt_secret"]


@pytest.mark.parametrize(
    ("override", "secret_keys", "message"),
    [
        (
            {"secure-webhooks:orchestratorUrl": "https://heliochromic-isenthalpic-aidyn.ngrok-free.dev"},
            (),
            "secure-webhooks:orchestratorUrl: production stacks must not point at tunnel host",
        ),
        ({"secure-webhooks:timeoutMs": "0"}, (), "secure-webhooks:timeoutMs: must be between 1 and 300000"),
        ({"secure-webhooks:jwtSecret": SECRET}, (), "secure-webhooks:jwtSecret: must be set as a secret"),
        ({"postgresql:password": "pw"}, (), "postgresql:password: must be set as a secret"),
        (
            {"secure-webhooks:jwtSecret": "too-short"},
            ("secure-webhooks:jwtSecret",),
            "secure-webhooks:jwtSecret: is 9 bytes; HS256 needs at least 32",
        ),
    ],
)
def test_bad_prod_config_fails_before_any_resource(override, secret_keys, message):
    with pytest.raises(pulumi.RunError) as info:
        run_program("prod", {**stack_config("prod"), **override}, secret_keys)
    assert message in str(info.value)
    assert "too-short" not in str(info.value)


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_at_least_once_is_the_default_and_adds_outbox_reconciler_and_schedule(stack):
    mocks = run_program(stack, stack_config(stack))
    (function,) = mocks.of_type(FUNCTION)
    assert function.inputs["mode"] == "at-least-once"
    (outbox,) = mocks.of_type(OUTBOX)
    (reconciler,) = mocks.of_type(RECONCILER)
    (schedule,) = mocks.of_type(SCHEDULE)
    assert (
        outbox.inputs["owner"] == reconciler.inputs["owner"] == schedule.inputs["owner"] == f"secure-webhooks/{stack}"
    )
    assert schedule.inputs["schedule"] == "auto" and schedule.inputs["job_name"] == "secure_webhooks_reconciler"
    assert reconciler.inputs["delivery"]["max_attempts"] == 12
    assert reconciler.inputs["signer"] == function.inputs["signer"]


def test_direct_mode_is_the_seeds_fire_and_forget():
    mocks = run_program("dev", {**stack_config("dev"), "secure-webhooks:delivery": {"mode": "direct"}})
    (function,) = mocks.of_type(FUNCTION)
    assert function.inputs["mode"] == "direct"
    assert not mocks.of_type(OUTBOX) and not mocks.of_type(RECONCILER) and not mocks.of_type(SCHEDULE)


def test_retry_policy_reaches_the_reconciler():
    delivery = {"maxAttempts": 4, "retryInitialSeconds": 2, "schedule": "*/2 * * * *"}
    mocks = run_program("dev", {**stack_config("dev"), "secure-webhooks:delivery": delivery})
    (reconciler,) = mocks.of_type(RECONCILER)
    assert (reconciler.inputs["delivery"]["max_attempts"], reconciler.inputs["delivery"]["retry_initial_seconds"]) == (
        4,
        2,
    )
    (schedule,) = mocks.of_type(SCHEDULE)
    assert schedule.inputs["schedule"] == "*/2 * * * *"


def test_bad_delivery_config_names_its_key():
    with pytest.raises(pulumi.RunError) as info:
        run_program("dev", {**stack_config("dev"), "secure-webhooks:delivery": {"maxAttempts": 0}})
    assert "invalid configuration: secure-webhooks:delivery.maxAttempts: must be between 1 and 100" in str(info.value)


def test_standard_webhooks_secret_adds_a_second_vault_secret():
    whsec = "whsec_" + "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3"
    config = {
        **stack_config("dev"),
        "secure-webhooks:jwtSecret": SECRET,
        "secure-webhooks:standardWebhooks": "true",
        "secure-webhooks:webhookSecret": whsec,
    }
    mocks = run_program("dev", config, secret_keys=("secure-webhooks:jwtSecret", "secure-webhooks:webhookSecret"))
    secrets = {v.inputs["name"]: v.inputs for v in mocks.of_type(VAULT_SECRET)}
    assert set(secrets) == {"app_jwt_secret", "app_webhook_secret"}
    assert secrets["app_webhook_secret"]["kind"] == "webhook" and "kind" not in secrets["app_jwt_secret"]
    (function,) = mocks.of_type(FUNCTION)
    assert function.inputs["webhook_secret_name"] == "app_webhook_secret"
    (installation,) = mocks.of_type(INSTALLATION)
    assert installation.inputs["webhook_secret_managed"] is True
    (reconciler,) = mocks.of_type(RECONCILER)
    assert reconciler.inputs["webhook_secret_name"] == "app_webhook_secret"


def test_a_plaintext_webhook_secret_is_refused():
    config = {**stack_config("dev"), "secure-webhooks:standardWebhooks": "true", "secure-webhooks:webhookSecret": "x"}
    with pytest.raises(pulumi.RunError) as info:
        run_program("dev", config)
    assert "secure-webhooks:webhookSecret: must be set as a secret" in str(info.value)


def test_the_installation_sees_every_webhook_table_and_every_object_first():
    """Issue 10 #14, #15: its check refuses a bad target, and its create a foreign claim, before any change."""
    mocks = run_program("dev", stack_config("dev"))
    (installation,) = mocks.of_type(INSTALLATION)
    assert installation.inputs["webhook_tables"] == [
        {"schema": "public", "table": "resumes", "key": "secure-webhooks:webhooks[0].table"},
        {"schema": "public", "table": "zip_archives", "key": "secure-webhooks:webhooks[1].table"},
    ]
    assert installation.inputs["triggers"] == [
        {"schema": "public", "table": "resumes", "name": "orchestrator-ingest-interns-individual"},
        {"schema": "public", "table": "zip_archives", "name": "orchestrator-injest-resumes-batch"},
    ]
    assert installation.inputs["schemas"] == ["secure_webhooks"]
    assert installation.inputs["cron_job"] == "secure_webhooks_reconciler"


def test_colliding_resource_names_fail_before_any_resource():
    config = {
        **stack_config("dev"),
        "secure-webhooks:webhooks": json.dumps(
            [{"name": "x-y", "table": "t1", "path": "/a"}, {"name": "y", "table": "t1-x", "path": "/b"}]
        ),
    }
    with pytest.raises(Exception, match=r"secure-webhooks:webhooks\[1\]\.name"):
        run_program("dev", config)
