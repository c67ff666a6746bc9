"""examples/yaml, a Pulumi YAML program, uses the component through the plugin package (issue 11 #4).

The engine runs plugin/ (PulumiPlugin.yaml, runtime python) through our language host, the
component provider host constructs `secure-webhooks:index:Webhooks`, and its children, all
dynamic-provider resources, are created, refreshed, updated in place and deleted by the engine's
pulumi-python provider. Everything goes through the real engine and pulumi-language-yaml against the stand-in.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections import Counter
from pathlib import Path

import psycopg
from engine_support import JWT_SECRET

from devtools.pulumi_cli import REPO, Stack
from secure_webhooks.delivery.reconciler import JOB_NAME

PROJECT = "secure-webhooks-yaml"
#: The example's triggers: (table, trigger, event).
TRIGGERS = [
    ("resumes", "yaml-resume-created", "INSERT"),
    ("zip_archives", "yaml-archive-changed", "INSERT"),
    ("zip_archives", "yaml-archive-changed-update", "UPDATE"),
]
#: What the program installs, counted in the database.
INSTALLED = {
    "triggers": "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'yaml-%'",
    "function": "SELECT count(*) FROM pg_proc WHERE oid = to_regprocedure('public.notify_orchestrator_secure()')",
    "outbox schema": "SELECT count(*) FROM pg_namespace WHERE nspname = 'secure_webhooks'",
    "cron job": f"SELECT count(*) FROM cron.job WHERE jobname = '{JOB_NAME}'",
}
#: The Vault secret the fixture created: the program's jwtSecret adopts it.
VAULT_SECRET = "SELECT id, description FROM vault.secrets WHERE name = 'app_jwt_secret'"
#: The resources of one `up`, by type: the stack, the two components and their dynamic-provider children.
RESOURCES = Counter(
    {
        "pulumi:pulumi:Stack": 1,
        "secure-webhooks:index:Webhooks": 1,
        "secure-webhooks:index:SecureWebhooks": 1,
        **{
            f"pulumi-python:dynamic/secure-webhooks:{kind}": 1
            for kind in ("Installation", "VaultSecret", "Outbox", "Reconciler", "ReconcilerSchedule", "SecureFunction")
        },
        "pulumi-python:dynamic/secure-webhooks:WebhookTrigger": len(TRIGGERS),
    }
)


def yaml_project(root: Path) -> Path:
    """examples/yaml under `root`, beside links to plugin/ and venv/, so its relative paths resolve as in the repo."""
    project = root / "examples" / "yaml"
    shutil.copytree(REPO / "examples" / "yaml", project)
    for name in ("plugin", "venv"):
        (root / name).symlink_to(REPO / name)
    return project


def installed(conn: psycopg.Connection) -> dict[str, int]:
    return {name: conn.execute(query).fetchone()[0] for name, query in INSTALLED.items()}


def resource_types(stack: Stack) -> Counter[str]:
    resources = stack.export()["deployment"].get("resources") or []
    return Counter(r["type"] for r in resources if not r["type"].startswith("pulumi:providers:"))


def test_yaml_program_creates_signed_webhooks_through_the_plugin_and_destroys_them(engine, tmp_path):
    workspace = dataclasses.replace(engine.workspace, project_dir=yaml_project(tmp_path / "checkout"))
    stack = engine.database_stack(workspace, "dev", {f"{PROJECT}:orchestratorUrl": "http://orchestrator.example.com"})
    stack.set_secret(f"{PROJECT}:jwtSecret", JWT_SECRET)
    with engine.connect() as conn:
        vault_before = conn.execute(VAULT_SECRET).fetchall()

    # The plugin parses its inputs with parse_settings: the same check, worded as for stack config.
    refused = stack.preview(check=False)
    assert refused.returncode != 0
    assert "invalid configuration: secure-webhooks:orchestratorUrl: " in refused.stdout + refused.stderr
    stack.set_config({f"{PROJECT}:orchestratorUrl": engine.orchestrator.url})

    up = stack.up()
    assert resource_types(stack) == RESOURCES
    outputs = stack.outputs()
    assert outputs["functionName"] == "public.notify_orchestrator_secure()"
    assert [(w["table"], w["trigger"], w["event"]) for w in outputs["webhooks"]] == [
        (f"public.{table}", trigger, event) for table, trigger, event in TRIGGERS
    ]
    assert outputs["delivery"]["mode"] == "at-least-once"
    with engine.connect() as conn:
        assert installed(conn) == {"triggers": 3, "function": 1, "outbox schema": 1, "cron job": 1}
        comments = conn.execute("SELECT obj_description(oid, 'pg_trigger') FROM pg_trigger WHERE tgname LIKE 'yaml-%'")
        assert all(c.startswith(f"Managed by Pulumi stack {PROJECT}/dev;") for (c,) in comments)

        conn.execute("SET ROLE authenticated")  # as the app inserts, through the Data API
        conn.execute("INSERT INTO public.resumes (name, storage_path) VALUES ('cv.pdf', 'p/')")
        conn.execute("INSERT INTO public.zip_archives (name, storage_path) VALUES ('batch.zip', 'p/')")
        conn.execute("UPDATE public.zip_archives SET storage_path = 'q/' WHERE name = 'batch.zip'")
        conn.execute("RESET ROLE")
    deliveries = engine.orchestrator.wait_for(3)
    assert sorted((d.path, d.body["type"], d.body["record"]["name"], d.status) for d in deliveries) == [
        ("/ingest/interns/individual", "INSERT", "cv.pdf", 200),
        ("/ingest/resumes/batch", "INSERT", "batch.zip", 200),
        ("/ingest/resumes/batch", "UPDATE", "batch.zip", 200),
    ]
    for delivery in deliveries:
        assert delivery.rejection is None
        assert delivery.claims["exp"] - delivery.claims["iat"] == 300, "tokenTtlSeconds from the YAML program"
    engine.wait_until_delivered()

    refresh = stack.refresh()
    stack.preview("--expect-no-changes")
    assert resource_types(stack) == RESOURCES
    # The key came in as a secret: encrypted in the state, never printed.
    state = json.dumps(stack.export())
    for text in (state, up.stdout + up.stderr, refresh.stdout + refresh.stderr):
        assert JWT_SECRET not in text

    # A property changed in the YAML program: the plugin's children update in place, nothing is replaced.
    program = workspace.project_dir / "Pulumi.yaml"
    program.write_text(program.read_text().replace("tokenTtlSeconds: 300", "tokenTtlSeconds: 600"))
    operations = Counter(op for op, _ in stack.preview_steps())
    assert set(operations) == {"same", "update"}, operations
    stack.up()
    with engine.connect() as conn:
        conn.execute("SET ROLE authenticated")
        conn.execute("INSERT INTO public.resumes (name, storage_path) VALUES ('cv-2.pdf', 'p/')")
    (delivery,) = engine.orchestrator.wait_for(4)[3:]
    assert delivery.body["record"]["name"] == "cv-2.pdf" and delivery.status == 200
    assert delivery.claims["exp"] - delivery.claims["iat"] == 600
    engine.wait_until_delivered()

    destroy = stack.destroy()
    assert f"- {RESOURCES.total()} deleted" in destroy.stdout
    assert resource_types(stack) == Counter()
    with engine.connect() as conn:
        assert installed(conn) == dict.fromkeys(INSTALLED, 0)
        # The Vault secret existed before the stack: adopted, so left in place as it was.
        vault_after = conn.execute(VAULT_SECRET).fetchall()
        assert vault_after == vault_before
