"""Issue 15 #7 with our providers on a real server: an old stack instance changes nothing of its successor's.

Stack `dev` in backend A installs; the same-named stack in backend B takes the
installation over (`replacesInstance`) and re-creates every resource. A's
resources still carry the same project/stack marker, so only the instance that
holds the claim tells them apart: each update and delete of A's is refused,
naming the holder and how to forget A's stale state. State written before
resources had an `instance` input (an upgraded stack) is told apart by the
instance the successor wrote into each object's marker, and shows no diff for
the new input.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from providers import OWNER, configured, function_props, installation_props, trigger_props, unique
from psycopg import sql
from pulumi.dynamic import CreateResult

from local_supabase.bootstrap import create_demo_tables
from secure_webhooks.delivery.outbox import script_sha256
from secure_webhooks.delivery.outbox_provider import OutboxProvider
from secure_webhooks.delivery.reconciler import JOB_NAME
from secure_webhooks.delivery.schedule_provider import ScheduleProvider
from secure_webhooks.installation.installation_provider import InstallationProvider
from secure_webhooks.installation.ownership import OwnershipError
from secure_webhooks.installation.trigger_provider import WebhookTriggerProvider
from secure_webhooks.signing.function_provider import SecureFunctionProvider
from secure_webhooks.signing.trigger_function import FunctionSpec
from secure_webhooks.signing.vault_secret_provider import VaultSecretProvider

URL = "http://127.0.0.1:9/ingest/a"


def snapshot(conn: psycopg.Connection, spec: FunctionSpec, secret: str) -> dict[str, Any]:
    """Every object the two instances share, as the catalog shows it."""
    return {
        "function": conn.execute(
            "SELECT pg_get_functiondef(p.oid), obj_description(p.oid, 'pg_proc') FROM pg_proc p"
            " WHERE p.oid = to_regprocedure(%s)",
            (f"public.{spec.name}()",),
        ).fetchall(),
        "triggers": conn.execute(
            "SELECT tgname, pg_get_triggerdef(oid), obj_description(oid, 'pg_trigger') FROM pg_trigger"
            " WHERE tgrelid = 'public.resumes'::regclass AND NOT tgisinternal ORDER BY 1"
        ).fetchall(),
        "outbox": conn.execute(
            "SELECT obj_description(oid, 'pg_namespace') FROM pg_namespace WHERE nspname = 'secure_webhooks'"
        ).fetchall(),
        "job": conn.execute("SELECT jobid, command FROM cron.job WHERE jobname = %s", (JOB_NAME,)).fetchall(),
        "secret": conn.execute(
            "SELECT description, decrypted_secret FROM vault.decrypted_secrets WHERE name = %s", (secret,)
        ).fetchall(),
    }


class Instance:
    """One stack instance's resources: created with our providers, as the engine would, in dependency order."""

    def __init__(self, cluster, spec: FunctionSpec, secret: str, replaces: str | None = None, old_state=False):
        self.installations = configured(InstallationProvider, cluster)
        props = installation_props(spec, replaces_instance=replaces)
        self.installation = self.installations.create(self.installations.check({}, props).inputs)
        self.instance = self.installation.outs["instance"]
        # Older state: the resources were created without an `instance` input (and wrote markers without one).
        with_instance = {} if old_state else {"instance": self.instance}
        schedule = configured(ScheduleProvider, cluster)
        resources = [
            (configured(VaultSecretProvider, cluster), {"name": secret, "secret": "s" * 40, "owner": OWNER}),
            (configured(OutboxProvider, cluster), {"owner": OWNER, "script_sha256": script_sha256()}),
            (configured(SecureFunctionProvider, cluster), function_props(spec)),
            (configured(WebhookTriggerProvider, cluster), trigger_props("resumes", unique("hook"), URL, spec)),
            (schedule, schedule.check({}, {"owner": OWNER, "schedule": "auto", "job_name": JOB_NAME}).inputs),
        ]
        self.created = [(provider, provider.create({**props, **with_instance})) for provider, props in resources]
        self.triggers = [created for provider, created in self.created if isinstance(provider, WebhookTriggerProvider)]

    def with_instance(self, instance: str) -> list[tuple[Any, Any]]:
        return [(p, c.outs | {"instance": instance}) for p, c in self.created]

    def destroy(self) -> None:
        for provider, created in reversed(self.created):
            provider.delete(created.id, created.outs)
        self.installations.delete(self.installation.id, self.installation.outs)


@pytest.fixture
def spec(supabase_ready, postgres_conn):
    create_demo_tables(postgres_conn)
    return FunctionSpec(mode="at-least-once", name=unique("notify"))


@pytest.mark.parametrize("old_state", [False, True], ids=["instance-in-state", "state-before-instance-ids"])
def test_a_taken_over_instance_can_neither_update_nor_delete_anything_of_its_successor(
    supabase_ready, spec, postgres_conn, old_state
):
    secret = unique("jwt")
    first = Instance(supabase_ready, spec, secret, old_state=old_state)
    # The successor re-creates what the first installed (the triggers under their names) and rewrites the markers.
    successor = Instance(supabase_ready, spec, secret, replaces=first.instance)
    for provider, created in successor.created:
        if isinstance(provider, WebhookTriggerProvider):
            provider.delete(created.id, created.outs)
    successor.created = [(p, c) for p, c in successor.created if not isinstance(p, WebhookTriggerProvider)] + [
        (p, p.create(c.outs | {"instance": successor.instance})) for p, c in first.created if c in first.triggers
    ]
    taken_over = snapshot(postgres_conn, spec, secret)
    assert f"; instance {successor.instance};" in taken_over["function"][0][1]

    expected = "nothing was changed" if not old_state else "state predates instance ids"
    for provider, created in reversed(first.created):
        name = type(provider).__name__
        with pytest.raises(OwnershipError, match="`pulumi stack rm --force`") as refused:
            provider.delete(created.id, created.outs)
        message = str(refused.value)
        assert f"instance {successor.instance}" in message and expected in message and "\n" not in message, name
        with pytest.raises(OwnershipError, match=successor.instance):
            provider.update(created.id, created.outs, created.outs | {"instance": first.instance})
        assert snapshot(postgres_conn, spec, secret) == taken_over, name
    print(f"\nthe old instance's deletes and updates: {len(first.created)} refused each, nothing changed")

    # The first instance's Installation leaves the successor's claim (as before), and the successor still goes.
    first.installations.delete(first.installation.id, first.installation.outs)
    successor.destroy()
    assert snapshot(postgres_conn, spec, secret) == {
        "function": [],
        "triggers": [],
        "outbox": [],
        "job": [],
        "secret": [],
    }


def test_the_new_instance_input_is_no_change_for_state_written_without_it(supabase_ready, spec, postgres_conn):
    secret = unique("jwt")
    old = Instance(supabase_ready, spec, secret, old_state=True)
    for provider, created in old.created:
        read = provider.read(created.id, created.outs)
        news = {key: value for key, value in created.outs.items()} | {"instance": old.instance}
        assert provider.diff(created.id, read.outs, news).changes is False, type(provider).__name__
    # An update (for any reason) records the instance, in the state and in the object's marker.
    provider, created = next(item for item in old.created if isinstance(item[0], SecureFunctionProvider))
    updated = provider.update(created.id, created.outs, created.outs | {"instance": old.instance})
    assert updated.outs["instance"] == old.instance
    comment = postgres_conn.execute(
        sql.SQL("SELECT obj_description('public.{}()'::regprocedure, 'pg_proc')").format(sql.Identifier(spec.name))
    ).fetchone()[0]
    assert f"; instance {old.instance};" in comment
    old.created = [(p, CreateResult(c.id, updated.outs) if p is provider else c) for p, c in old.created]
    old.destroy()
