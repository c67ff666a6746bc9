"""Several stacks and several versions of the program, driven by the real Pulumi engine.

Promotion from dev to prod, an `up` that fails halfway, two stacks aimed at
one database, and a stack created by an older version of the providers.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from engine_support import JWT_SECRET, PASSPHRASE

from devtools.pulumi_cli import REPO, Stack, Workspace
from local_supabase.bootstrap import create_demo_tables, install_legacy_webhooks
from local_supabase.cluster import LocalSupabase
from secure_webhooks.configuration.settings import DEFAULT_WEBHOOKS

FUNCTION = "public.notify_orchestrator_secure()"
NGROK_URL = "https://heliochromic-isenthalpic-aidyn.ngrok-free.dev"
PROD_URL = "https://orchestrator.example.com"

TRIGGERS = """
SELECT c.relname, t.tgname, pg_get_triggerdef(t.oid), t.tgenabled, obj_description(t.oid, 'pg_trigger')
  FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'public' AND NOT t.tgisinternal
 ORDER BY 1, 2"""
FUNCTION_DEF = """
SELECT pg_get_functiondef(p.oid), obj_description(p.oid, 'pg_proc'), p.proacl::text
  FROM pg_proc p WHERE p.oid = to_regprocedure(%s)"""


def database_objects(conn: psycopg.Connection) -> dict[str, Any]:
    """Every trigger on a public table and the signing function, exactly as the catalog shows them."""
    return {
        "triggers": conn.execute(TRIGGERS).fetchall(),
        "function": conn.execute(FUNCTION_DEF, (FUNCTION,)).fetchone(),
    }


def failure_output(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, f"expected the command to fail:\n{result.stdout}{result.stderr}"
    return result.stdout + result.stderr


def managed_resources(stack: Stack) -> dict[str, dict[str, Any]]:
    """The stack's dynamic resources (function and triggers) by name, as recorded in its state."""
    resources = stack.export()["deployment"].get("resources") or []
    return {r["urn"].rsplit("::", 1)[-1]: r for r in resources if r["type"].startswith("pulumi-python:dynamic")}


def insert(conn: psycopg.Connection, table: str, name: str) -> None:
    conn.execute(f"INSERT INTO public.{table} (name, storage_path) VALUES (%s, 'p/')", (name,))


def test_promotion_copies_dev_config_and_prod_refuses_a_tunnel_url(engine):
    """Promote dev to prod the way the README says: copy dev's config, then override what differs.

    prod lives in its own database (as on Supabase: one project per
    environment), so prod here gets a second stand-in cluster. A forgotten ngrok
    URL must be caught by the config contract, naming the key, before any
    provider connects: neither database may change. Fixing the URL then lets
    prod converge without disturbing dev.
    """
    dev = engine.stack("dev")
    dev.up()
    with engine.connect() as conn:
        dev_objects = database_objects(conn)

    with LocalSupabase.start(preinstall_pg_net=True) as prod_db:
        with psycopg.connect(prod_db.dsn("postgres"), autocommit=True) as conn:
            create_demo_tables(conn)
            conn.execute("SELECT vault.create_secret(%s, 'app_jwt_secret')", (JWT_SECRET,))
            empty_prod = database_objects(conn)
        assert empty_prod == {"triggers": [], "function": None}

        prod = engine.workspace.stack("prod").init()
        dev.run("config", "cp", "--dest", "prod")
        assert yaml.safe_load(prod.config_file.read_text())["config"].keys() == (
            yaml.safe_load(dev.config_file.read_text())["config"].keys()
        )
        copied_password = prod.run("config", "get", "postgresql:password").stdout.strip()
        assert copied_password == engine.cluster.password_for("postgres"), "secrets are re-encrypted for prod"

        prod.set_config(
            {
                "secure-webhooks:production": "true",
                "secure-webhooks:orchestratorUrl": NGROK_URL,
                "postgresql:port": str(prod_db.port),
            }
        )
        prod.set_secret("postgresql:password", prod_db.password_for("postgres"))
        for attempt in (prod.preview, prod.up):
            output = failure_output(attempt(check=False))
            assert "invalid configuration: secure-webhooks:orchestratorUrl" in output
            assert "tunnel host 'heliochromic-isenthalpic-aidyn.ngrok-free.dev'" in output
        with psycopg.connect(prod_db.dsn("postgres"), autocommit=True) as conn:
            assert database_objects(conn) == empty_prod
        with engine.connect() as conn:
            assert database_objects(conn) == dev_objects
        assert managed_resources(prod) == {}

        prod.set_config({"secure-webhooks:orchestratorUrl": PROD_URL})
        prod.up()
        prod.preview("--expect-no-changes")
        with psycopg.connect(prod_db.dsn("postgres"), autocommit=True) as conn:
            prod_objects = database_objects(conn)
        assert [(table, name) for table, name, *_ in prod_objects["triggers"]] == [
            ("resumes", "orchestrator-ingest-interns-individual"),
            ("zip_archives", "orchestrator-injest-resumes-batch"),
        ]
        for _, _, definition, enabled, comment in prod_objects["triggers"]:
            assert f"notify_orchestrator_secure('{PROD_URL}/ingest/" in definition and enabled == "O"
            assert comment.startswith("Managed by Pulumi stack secure-webhooks/prod;")
        assert prod_objects["function"][1].startswith("Managed by Pulumi stack secure-webhooks/prod;")
        prod.destroy()

    with engine.connect() as conn:
        assert database_objects(conn) == dev_objects
    dev.preview("--expect-no-changes")


def test_up_failing_on_a_missing_table_leaves_a_consistent_state_and_converges_once_fixed(engine):
    """A typo'd table must fail `up` with its name, and a half-done `up` must not leave a mess.

    Whatever the engine managed before the failure must be fully ours in the
    database and recorded in the state (no orphaned trigger, no recorded
    trigger that is missing), so fixing the cause and re-running `up` is all
    the user has to do.
    """
    missing = {"name": "orchestrator-ingest-missing", "table": "missing_table", "path": "/ingest/missing"}
    stack = engine.stack("dev", webhooks=[*map(dict, DEFAULT_WEBHOOKS), missing])

    output = failure_output(stack.up(check=False))
    assert "table public.missing_table does not exist" in output
    # The function's check names the config key, before the function or any trigger is created.
    assert "secure-webhooks:webhooks[2].table" in output

    with engine.connect() as conn:
        objects = database_objects(conn)
    recorded = managed_resources(stack)
    in_database = {f"secure-webhooks-public.{table}-{name}" for table, name, *_ in objects["triggers"]}
    assert in_database == {name for name, r in recorded.items() if r["type"].endswith(":WebhookTrigger")}
    for _, _, definition, enabled, comment in objects["triggers"]:
        assert "notify_orchestrator_secure" in definition and enabled == "O"
        assert comment.startswith("Managed by Pulumi stack secure-webhooks/dev;")
    if objects["function"] is None:
        assert not in_database and "secure-webhooks-function" not in recorded
    else:
        assert "secure-webhooks-function" in recorded
    stack.refresh()
    assert managed_resources(stack).keys() == recorded.keys(), "refresh finds what the state records"

    with engine.connect() as conn:
        conn.execute("CREATE TABLE public.missing_table (id bigserial PRIMARY KEY, name text, storage_path text)")
    stack.up()
    stack.preview("--expect-no-changes")
    with engine.connect() as conn:
        for table in ("resumes", "zip_archives", "missing_table"):
            insert(conn, table, f"{table}-row")
    deliveries = engine.orchestrator.wait_for(3)
    assert sorted((d.path, d.body["record"]["name"], d.status) for d in deliveries) == [
        ("/ingest/interns/individual", "resumes-row", 200),
        ("/ingest/missing", "missing_table-row", 200),
        ("/ingest/resumes/batch", "zip_archives-row", 200),
    ]


def test_second_stack_on_the_same_database_is_refused_and_changes_nothing(engine):
    """Two stacks on one database would overwrite each other's triggers on every `up`.

    The second stack must stop at preview and at `up` with a message naming the
    stack that owns the objects, leave every trigger and the function byte-for-byte
    as they were, and the owning stack must still see no changes.
    """
    owner = engine.stack("dev")
    owner.up()
    with engine.connect() as conn:
        before = database_objects(conn)

    intruder = engine.stack("feature")
    for attempt in (intruder.preview, intruder.up):
        output = failure_output(attempt(check=False))
        assert "is managed by Pulumi stack secure-webhooks/dev, not secure-webhooks/feature" in output
        assert "belongs to Pulumi stack secure-webhooks/dev (instance " in output and "nothing was changed" in output

    with engine.connect() as conn:
        assert database_objects(conn) == before
        insert(conn, "resumes", "still-dev.pdf")
    assert managed_resources(intruder) == {}
    owner.preview("--expect-no-changes")
    (delivery,) = engine.orchestrator.wait_for(1)
    assert delivery.status == 200 and delivery.body["record"]["name"] == "still-dev.pdf"


#: The earliest commit whose program runs against the offline toolchain: it is
#: the first with `manageExtensions` (without it the program needs the
#: pulumi-resource-postgresql plugin, which the toolchain may lack). Its
#: providers predate 80507ad: destroying with them an adopted legacy trigger
#: (which has no comment) fails with KeyError: 'comment', so the legacy
#: webhooks below only come back if the current code runs the destroy.
OLD_COMMIT = "df4c18a"
OLD_PROJECT_FILES = ("Pulumi.yaml", "__main__.py", "components")


def checkout_project(commit: str, target: Path) -> Path:
    """The program's files as of `commit` in `target`, sharing the repo's virtualenv."""
    resolved = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}"],
        capture_output=True,
        text=True,
    )
    if resolved.returncode != 0:
        pytest.fail(f"commit {commit} is not in the history of {REPO}; pick another commit for OLD_COMMIT")
    target.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", resolved.stdout.strip(), *OLD_PROJECT_FILES],
        check=True,
        capture_output=True,
    )
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    (target / "venv").symlink_to(REPO / "venv")
    return target


def upgrade_to_current_code(project: Path) -> None:
    """The upgrade a user runs: today's program files over yesterday's, the stack's state untouched."""
    for name in OLD_PROJECT_FILES:
        if (project / name).is_dir():
            shutil.rmtree(project / name)
            shutil.copytree(REPO / name, project / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, project / name)


def pickled_providers(stack: Stack) -> dict[str, str]:
    """Each dynamic resource's serialized provider (a Pulumi secret, hence --show-secrets)."""
    resources = json.loads(stack.run("stack", "export", "--show-secrets").stdout)["deployment"]["resources"]
    return {
        r["urn"].rsplit("::", 1)[-1]: r["inputs"]["__provider"]["plaintext"]
        for r in resources
        if r["type"].startswith("pulumi-python:dynamic")
    }


def test_stack_created_by_older_providers_previews_refreshes_updates_and_destroys_with_new_code(engine, tmp_path):
    """Users upgrade this repo under live stacks; the new code must drive the old state.

    A dynamic provider is pickled into the state by reference to its module
    (`components.trigger_provider.WebhookTriggerProvider` then,
    `secure_webhooks.installation.trigger_provider...` now), so after an upgrade
    every operation, including `refresh` and `destroy` of resources created
    earlier, runs the *current* code against what the old code recorded. The
    old stack adopted the legacy webhooks; the new code must still give them
    back exactly on destroy.
    """
    old_project = checkout_project(OLD_COMMIT, tmp_path / "old-project")
    changed = [
        name
        for name in ("signing/function_provider.py", "installation/trigger_provider.py")
        if (old_project / "components" / Path(name).name).read_text()
        != (REPO / "components" / "secure_webhooks" / name).read_text()
    ]
    assert changed, f"{OLD_COMMIT}'s providers equal today's; the test would prove nothing"
    old_engine = dataclasses.replace(
        engine,
        workspace=Workspace(old_project, tmp_path / "old-pulumi", PASSPHRASE, engine.workspace.bin_dir),
    )
    with engine.connect() as conn:
        install_legacy_webhooks(conn, engine.orchestrator.url)
        legacy = database_objects(conn)
    stack = old_engine.stack("dev")
    stack.up()
    old_blobs = pickled_providers(stack)
    assert len(old_blobs) == 3
    for blob in old_blobs.values():
        assert b"components." in base64.b64decode(json.loads(blob)), "pickled by module path, not by value"

    upgrade_to_current_code(old_project)

    stack.preview()
    stack.refresh()
    stack.up()
    stack.preview("--expect-no-changes")
    blobs = pickled_providers(stack)
    for name in old_blobs:  # the state now names the installed package's classes
        decoded = base64.b64decode(json.loads(blobs[name]))
        assert b"secure_webhooks." in decoded and b"components." not in decoded, name
    assert set(blobs) - set(old_blobs) == {  # the upgrade switched the stack to at-least-once
        "secure-webhooks-installation",
        "secure-webhooks-outbox",
        "secure-webhooks-reconciler",
        "secure-webhooks-reconciler-schedule",
    }
    with engine.connect() as conn:
        insert(conn, "zip_archives", "after-upgrade.zip")
    (delivery,) = engine.orchestrator.wait_for(1)
    assert delivery.status == 200 and delivery.path == "/ingest/resumes/batch"

    engine.wait_until_delivered()
    stack.destroy()
    with engine.connect() as conn:
        assert database_objects(conn) == legacy
    assert not stack.export()["deployment"].get("resources")


#: The last commit before components/ became the installable `secure_webhooks` package: its state names
#: the providers `components.<module>.<Class>`.
PRE_PACKAGE_COMMIT = "d0d9c75"


def test_state_written_before_the_package_existed_keeps_working_and_migrates(engine, tmp_path):
    """Stacks deployed before `pip install`-able packaging must not notice the rename (issue 11 #2).

    Their state unpickles `components.*` classes, which the repository still
    has (components/ is the package's source), while today's program pickles
    `secure_webhooks.*`. Every operation must work on such a state, and each
    resource the new code writes moves to the new name.
    """
    old_project = checkout_project(PRE_PACKAGE_COMMIT, tmp_path / "old-project")
    assert "from components." in (old_project / "__main__.py").read_text()
    old_engine = dataclasses.replace(
        engine,
        workspace=Workspace(old_project, tmp_path / "old-pulumi", PASSPHRASE, engine.workspace.bin_dir),
    )
    stack = old_engine.stack("dev")
    stack.up()
    old_blobs = pickled_providers(stack)
    assert len(old_blobs) == 6, sorted(old_blobs)
    for blob in old_blobs.values():
        assert b"components." in base64.b64decode(json.loads(blob))

    upgrade_to_current_code(old_project)
    stack.preview()
    stack.refresh()
    stack.set_config({"tokenTtlSeconds": 600})  # an update of the function, through the old state
    steps = stack.preview_steps()
    assert any(op == "update" and urn.endswith("::secure-webhooks-function") for op, urn in steps), steps
    stack.up()
    stack.preview("--expect-no-changes")
    blobs = pickled_providers(stack)
    assert set(blobs) == set(old_blobs) | {"secure-webhooks-installation"}
    function_blob = base64.b64decode(json.loads(blobs["secure-webhooks-function"]))
    assert b"secure_webhooks." in function_blob and b"components." not in function_blob

    with engine.connect() as conn:
        insert(conn, "resumes", "after-packaging.pdf")
    (delivery,) = engine.orchestrator.wait_for(1)
    assert delivery.status == 200 and delivery.body["record"]["name"] == "after-packaging.pdf"
    assert 0 < delivery.claims["exp"] - delivery.claims["iat"] <= 600

    engine.wait_until_delivered()
    stack.destroy()
    with engine.connect() as conn:
        assert conn.execute(FUNCTION_DEF, (FUNCTION,)).fetchone() is None
        assert conn.execute(TRIGGERS).fetchall() == []
    assert not stack.export()["deployment"].get("resources")
