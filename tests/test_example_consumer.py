"""examples/python, a platform team's own Pulumi program, consumes the wheel (issue 11 #3).

The example is copied out of a fresh-clone-like tree, gets its own virtualenv with the wheel built
from that tree and its dependencies from the package index, and runs `pulumi up` and `destroy`
through the real engine against the local Supabase stand-in: the component and the program's own
dynamic resource (the delivery log for a read-only monitoring role) side by side, with nothing
of the repository on its path.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import psycopg
import pytest
from engine_support import JWT_SECRET
from package_support import build_wheel, fresh_tree

from devtools.pulumi_cli import REPO
from secure_webhooks.delivery.reconciler import JOB_NAME

PROJECT = "platform-supabase"
ROLE = "webhook_monitor"
FUNCTION = "monitoring.webhook_deliveries()"
#: Rows inserted per table, and the path of the example's webhook on it.
INSERTS = {"resumes": (3, "/ingest/interns/individual"), "zip_archives": (2, "/ingest/resumes/batch")}

#: Where the consumer's secure_webhooks comes from, asked of the consumer's own interpreter.
ORIGIN_PROBE = """
import importlib.metadata, json, sys
import secure_webhooks
dist = importlib.metadata.distribution("secure-webhooks")
print(json.dumps({"file": secure_webhooks.__file__, "direct_url": json.loads(dist.read_text("direct_url.json")),
                  "path": sys.path}))
"""

#: What the example installs, counted in the database: all 1 after up (2 triggers), all 0 after destroy.
INSTALLED = {
    "triggers": "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'platform-%'",
    "function": "SELECT count(*) FROM pg_proc WHERE oid = to_regprocedure('public.notify_orchestrator_secure()')",
    "outbox schema": "SELECT count(*) FROM pg_namespace WHERE nspname = 'secure_webhooks'",
    "cron job": f"SELECT count(*) FROM cron.job WHERE jobname = '{JOB_NAME}'",
    "vault secret": "SELECT count(*) FROM vault.secrets WHERE name = 'platform_webhooks_jwt'",
    "monitoring function": f"SELECT count(*) FROM pg_proc WHERE oid = to_regprocedure('{FUNCTION}')",
    "role": f"SELECT count(*) FROM pg_roles WHERE rolname = '{ROLE}'",
}


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fresh_tree(tmp_path_factory.mktemp("clone"))


@pytest.fixture(scope="module")
def wheel(clone: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(clone, tmp_path_factory.mktemp("dist"))


def run(*argv: str | Path, cwd: Path) -> str:
    result = subprocess.run([str(arg) for arg in argv], cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def consumer_project(clone: Path, wheel: Path, target: Path) -> Path:
    """The example as its README installs it: its own venv, the wheel and requirements.txt in one pip run."""
    shutil.copytree(clone / "examples" / "python", target)
    run(sys.executable, "-m", "venv", "venv", cwd=target)
    run("venv/bin/pip", "install", "--disable-pip-version-check", "-q", wheel, "-r", "requirements.txt", cwd=target)
    return target


def installed(conn: psycopg.Connection) -> dict[str, int]:
    return {name: conn.execute(query).fetchone()[0] for name, query in INSTALLED.items()}


def test_the_example_program_installs_the_wheel_and_runs_up_and_destroy(engine, clone, wheel, tmp_path):
    project = consumer_project(clone, wheel, tmp_path / "example")
    origin = json.loads(run("venv/bin/python", "-c", ORIGIN_PROBE, cwd=project))
    assert origin["file"].startswith(str(project / "venv")), origin["file"]
    assert origin["direct_url"]["url"] == wheel.as_uri(), "installed from the wheel file, not editable or a checkout"
    assert not [entry for entry in origin["path"] if entry.startswith(str(REPO))]

    workspace = dataclasses.replace(engine.workspace, project_dir=project)
    stack = engine.database_stack(
        workspace,
        "dev",
        {f"{PROJECT}:orchestratorUrl": engine.orchestrator.url, f"{PROJECT}:manageExtensions": "false"},
    )
    stack.set_secret(f"{PROJECT}:jwtSecret", JWT_SECRET)
    printed = stack.up().stdout
    # Converged, and the program's own resource leaves nothing the component's drift checks would see.
    printed += stack.preview("--refresh", "--expect-no-changes").stdout
    state = stack.export()
    for secret in (JWT_SECRET, engine.cluster.password_for("postgres")):
        assert secret not in printed and secret not in json.dumps(state)

    resources = Counter(resource["type"] for resource in state["deployment"]["resources"])
    assert resources == {
        "pulumi:pulumi:Stack": 1,
        "pulumi:providers:pulumi-python": 1,
        "secure-webhooks:index:SecureWebhooks": 1,
        "pulumi-python:dynamic/secure-webhooks:Installation": 1,
        "pulumi-python:dynamic/secure-webhooks:VaultSecret": 1,
        "pulumi-python:dynamic/secure-webhooks:Outbox": 1,
        "pulumi-python:dynamic/secure-webhooks:Reconciler": 1,
        "pulumi-python:dynamic/secure-webhooks:ReconcilerSchedule": 1,
        "pulumi-python:dynamic/secure-webhooks:SecureFunction": 1,
        "pulumi-python:dynamic/secure-webhooks:WebhookTrigger": 2,
        "pulumi-python:dynamic/platform:DeliveriesMonitor": 1,
    }
    outputs = stack.outputs()
    assert (outputs["monitoringRole"], outputs["monitoringFunction"]) == (ROLE, FUNCTION)
    assert outputs["deliveriesView"] == "secure_webhooks.deliveries"
    assert {(hook["trigger"], hook["table"]) for hook in outputs["webhooks"]} == {
        ("platform-resume-uploaded", "public.resumes"),
        ("platform-archive-uploaded", "public.zip_archives"),
    }
    with engine.connect() as conn:
        assert installed(conn) == dict.fromkeys(INSTALLED, 1) | {"triggers": 2}

    sent = {}
    with engine.connect() as conn:
        conn.execute("SET ROLE authenticated")  # as the app inserts, through the Data API
        for table, (count, _) in INSERTS.items():
            for n in range(count):
                name = f"{table}-{n}"
                conn.execute(f"INSERT INTO public.{table} (name, storage_path) VALUES (%s, 'r/')", (name,))
                sent[name] = table
    deliveries = engine.orchestrator.wait_for(len(sent), timeout=60)  # the bound only ends a failure
    engine.wait_until_delivered()
    assert len(engine.orchestrator.deliveries) == len(sent) == 5
    assert all(d.status == 200 and d.rejection is None and not d.duplicate for d in deliveries)
    assert all(
        d.claims["exp"] - d.claims["iat"] == 300 and d.claims["jti"] == d.header("webhook-id") for d in deliveries
    )
    assert {d.body["record"]["name"]: d.body["table"] for d in deliveries} == sent
    assert Counter(d.path for d in deliveries) == {path: count for count, path in INSERTS.values()}

    # The example's role reads the delivery log through its function, and nothing of the component directly;
    # the app's role cannot call the function.
    with psycopg.connect(engine.cluster.admin_dsn, autocommit=True) as admin:
        admin.execute(f"SET ROLE {ROLE}")
        statuses = admin.execute(f"SELECT status, count(*) FROM {FUNCTION} GROUP BY 1").fetchall()
        assert statuses == [("delivered", 5)]
        for table in ("deliveries", "events"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                admin.execute(f"SELECT count(*) FROM secure_webhooks.{table}")
        admin.execute("RESET ROLE")
        admin.execute("SET ROLE authenticated")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            admin.execute(f"SELECT count(*) FROM {FUNCTION}")

    stack.destroy()
    assert stack.export()["deployment"].get("resources", []) == []
    with engine.connect() as conn:
        assert installed(conn) == dict.fromkeys(INSTALLED, 0)
        assert conn.execute("SELECT count(*) FROM public.resumes").fetchone()[0] == 3
