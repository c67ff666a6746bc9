"""One database, one stack instance: the claim, through the real engine (issue 10 #12, #14, #15; issue 15 #7).

A same-named stack in another backend, two stacks racing their first `up`,
and a bad webhook under `up --skip-preview` must each stop before anything in
the database changes; and once another instance has taken the installation
over, the old instance's `destroy` must change nothing of it either. Each test
compares the catalog (and the Vault) before and after.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import psycopg
from engine_support import PASSPHRASE, Engine
from test_engine_stacks import database_objects, failure_output, insert, managed_resources

from devtools.pulumi_cli import REPO, Workspace, copy_project
from secure_webhooks.installation.installation_provider import SCHEMA as CLAIMS_SCHEMA


def in_another_backend(engine: Engine, root: Path) -> Engine:
    """The same program and database, with its own project copy and file backend."""
    project = copy_project(REPO, root / "project")
    return dataclasses.replace(
        engine, workspace=Workspace(project, root / "pulumi", PASSPHRASE, engine.workspace.bin_dir)
    )


def vault_value(conn: psycopg.Connection, name: str = "app_jwt_secret") -> str | None:
    row = conn.execute("SELECT decrypted_secret FROM vault.decrypted_secrets WHERE name = %s", (name,)).fetchone()
    return row[0] if row else None


def claims(conn: psycopg.Connection) -> list[tuple[str, str]]:
    if conn.execute("SELECT to_regnamespace(%s) IS NULL", (CLAIMS_SCHEMA,)).fetchone()[0]:
        return []
    return conn.execute(f"SELECT owner, instance::text FROM {CLAIMS_SCHEMA}.claims ORDER BY 1").fetchall()


def everything(conn: psycopg.Connection) -> dict[str, object]:
    """What any `up` could change: triggers, function, the Vault value, our schemas and the cron job."""
    return {
        **database_objects(conn),
        "vault": vault_value(conn),
        "schemas": conn.execute(
            "SELECT nspname, obj_description(oid, 'pg_namespace') FROM pg_namespace"
            " WHERE nspname LIKE 'secure\\_webhooks%' ORDER BY 1"
        ).fetchall(),
        "claims": claims(conn),
        "cron": conn.execute("SELECT jobname, schedule, command FROM cron.job ORDER BY 1").fetchall(),
    }


_INSTANCE = re.compile(r"; instance [0-9a-f-]{36};")


def without_instances(value: Any) -> Any:
    """`value` with the instance ids taken out of every ownership marker (a takeover rewrites them)."""
    if isinstance(value, str):
        return _INSTANCE.sub(";", value)
    if isinstance(value, (list, tuple)):
        return type(value)(without_instances(item) for item in value)
    if isinstance(value, dict):
        return {key: without_instances(item) for key, item in value.items()}
    return value


def outbox_counts(conn: psycopg.Connection) -> dict[str, int]:
    return dict(conn.execute("SELECT status, count(*) FROM secure_webhooks.deliveries GROUP BY 1").fetchall())


def test_a_same_named_stack_in_another_backend_is_refused_until_it_takes_over(engine, tmp_path):
    original = engine.stack("dev")
    original.up()
    instance = original.outputs()["instance"]
    with engine.connect() as conn:
        before = everything(conn)
    assert before["claims"] == [("secure-webhooks/dev", instance)]

    twin = in_another_backend(engine, tmp_path / "other-backend").stack("dev")
    for attempt in (twin.preview, twin.up):
        output = failure_output(attempt(check=False))
        assert f"belongs to Pulumi stack secure-webhooks/dev (instance {instance}" in output
        assert "not to this stack secure-webhooks/dev (a new instance, " in output
        assert f"pulumi config set secure-webhooks:replacesInstance {instance}" in output
    with engine.connect() as conn:
        assert everything(conn) == before, "the refused stack changed nothing"
    assert managed_resources(twin) == {}

    # The documented way out when the first stack's state is gone: take its installation over.
    twin.set_config({"secure-webhooks:replacesInstance": instance})
    twin.up()
    successor = twin.outputs()["instance"]
    assert successor != instance
    with engine.connect() as conn:
        after = everything(conn)
        assert after["claims"] == [("secure-webhooks/dev", successor)]
        assert without_instances({k: v for k, v in after.items() if k != "claims"}) == without_instances(
            {k: v for k, v in before.items() if k != "claims"}
        )
        assert f"; instance {successor};" in after["function"][1], "the successor's marker"
        insert(conn, "resumes", "taken-over.pdf")
    (delivery,) = engine.orchestrator.wait_for(1)
    assert delivery.status == 200 and delivery.body["record"]["name"] == "taken-over.pdf"
    # The old instance, should its state come back, is now the one refused.
    assert f"(instance {successor}" in failure_output(original.preview(check=False))

    # Issue 15 #7: and its destroy changes nothing of the successor's (it used to drop all of it).
    engine.wait_until_delivered()
    with engine.connect() as conn:
        taken_over = everything(conn)
    output = failure_output(original.destroy(check=False))
    assert (
        f"belongs to the secure-webhooks installation of Pulumi stack secure-webhooks/dev (instance {successor}"
        in output
    )
    assert f"not to this stack secure-webhooks/dev (instance {instance}); nothing was changed" in output
    assert "`pulumi stack rm --force`" in output and "Traceback" not in output
    with engine.connect() as conn:
        assert everything(conn) == taken_over, "the old instance's destroy changed the successor's installation"
        insert(conn, "resumes", "after-old-destroy.pdf")
        engine.wait_until_delivered()
        counts = outbox_counts(conn)
    delivered = engine.orchestrator.wait_for(2)
    rows = [d.body["record"]["name"] for d in delivered if d.status == 200]
    print(f"\nafter the old instance's destroy: rows inserted 2, delivered {len(rows)}, outbox {counts}")
    assert rows == ["taken-over.pdf", "after-old-destroy.pdf"] and counts == {"delivered": 2}

    # The way out the message names: forget the stale stack; the database is untouched.
    original.remove()
    with engine.connect() as conn:
        assert everything(conn) == taken_over
    twin.preview("--refresh", "--expect-no-changes")
    twin.destroy()
    with engine.connect() as conn:
        assert conn.execute("SELECT to_regnamespace(%s)", (CLAIMS_SCHEMA,)).fetchone()[0] is None


def test_racing_ups_of_two_stacks_leave_one_owner_and_the_loser_changes_nothing(engine):
    secrets = {"dev": "dev-stack-jwt-secret-" + "d" * 24, "feature": "feature-stack-jwt-secret-" + "f" * 24}
    stacks = {name: engine.stack(name) for name in secrets}
    for name, stack in stacks.items():
        stack.set_secret("secure-webhooks:jwtSecret", secrets[name])
    with engine.connect() as conn:
        before = everything(conn)

    runs = {name: stack.start("up", "--yes", "--skip-preview") for name, stack in stacks.items()}
    outputs = {name: run.communicate(timeout=300)[0] for name, run in runs.items()}
    won = [name for name, run in runs.items() if run.returncode == 0]
    print(f"\nracing ups: {len(runs)} stacks, {len(won)} deployed, {len(runs) - len(won)} refused")
    assert len(won) == 1, outputs
    (winner,) = won
    (loser,) = set(runs) - {winner}
    assert f"Pulumi stack secure-webhooks/{winner}" in outputs[loser], outputs[loser]
    assert "nothing was changed" in outputs[loser] and "Traceback" not in outputs[loser]

    with engine.connect() as conn:
        after = everything(conn)
    assert after["vault"] == secrets[winner], "the loser never wrote the shared Vault secret"
    assert after["claims"] == [(f"secure-webhooks/{winner}", stacks[winner].outputs()["instance"])]
    assert all(f"Managed by Pulumi stack secure-webhooks/{winner};" in t[4] for t in after["triggers"])
    assert f"secure-webhooks/{winner};" in after["function"][1]
    assert managed_resources(stacks[loser]) == {}
    stacks[winner].preview("--expect-no-changes")

    stacks[winner].destroy()
    with engine.connect() as conn:  # the adopted Vault secret stays, with the winner's value (README)
        assert {k: v for k, v in everything(conn).items() if k != "vault"} == {
            k: v for k, v in before.items() if k != "vault"
        }


def test_a_bad_webhook_under_skip_preview_changes_nothing(engine):
    """Issue 10 #15: every resource waits for the Installation, whose check refuses the view first."""
    with engine.connect() as conn:
        conn.execute("CREATE VIEW public.resume_view AS SELECT * FROM public.resumes")
        before = everything(conn)
    webhooks = [
        {"name": "good-first", "table": "resumes", "path": "/ingest/a"},
        {"name": "bad", "table": "resume_view", "path": "/ingest/b"},
        {"name": "good-last", "table": "zip_archives", "path": "/ingest/c"},
    ]
    stack = engine.stack("dev", webhooks=webhooks)
    stack.set_secret("secure-webhooks:jwtSecret", "skip-preview-jwt-secret-" + "s" * 24)
    output = failure_output(stack.up("--skip-preview", check=False))
    assert "secure-webhooks:webhooks[1].table: public.resume_view is a view; webhooks can only watch tables" in output
    assert "Traceback" not in output
    with engine.connect() as conn:
        assert everything(conn) == before
    assert managed_resources(stack) == {}
