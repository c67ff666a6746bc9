"""Capture the exact requests the database sends, with our function and triggers installed by the providers."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from providers import configured, function_props, trigger_props, unique

from local_supabase.bootstrap import create_demo_tables
from local_supabase.cluster import LocalSupabase
from local_supabase.scripted_server import Received
from secure_webhooks.installation.trigger_provider import WebhookTriggerProvider
from secure_webhooks.signing.function_provider import SecureFunctionProvider
from secure_webhooks.signing.trigger_function import FunctionSpec

PATH = "/ingest/interns/individual"


@contextmanager
def direct_webhook(cluster: LocalSupabase, url: str, **spec: object) -> Iterator[FunctionSpec]:
    """A direct-mode function and one INSERT trigger on public.resumes posting to `url`."""
    with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as conn:
        create_demo_tables(conn)
    function = FunctionSpec(name=unique("bound"), **spec)  # type: ignore[arg-type]
    functions = configured(SecureFunctionProvider, cluster)
    triggers = configured(WebhookTriggerProvider, cluster)
    created_function = functions.create(function_props(function))
    created_trigger = triggers.create(trigger_props("resumes", unique("hook"), url, function))
    try:
        yield function
    finally:
        triggers.delete(created_trigger.id, created_trigger.outs)
        functions.delete(created_function.id, created_function.outs)


def insert_resumes(conn: psycopg.Connection, *names: str) -> None:
    """One statement, so a statement-level trigger sees every row at once."""
    query = "INSERT INTO public.resumes (name, storage_path) SELECT n, 'r/' || n FROM unnest(%s::text[]) AS n"
    conn.execute(query, (list(names),))


def authorization(request: Received) -> str:
    return next(value for key, value in request.headers.items() if key.lower() == "authorization")


#: A Standard Webhooks secret: whsec_ and the base64 of a 31-byte key.
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"standard-webhooks-test-key-0123").decode()


def ensure_webhook_secret(cluster: LocalSupabase) -> str:
    """WEBHOOK_SECRET in the Vault as app_webhook_secret (the default webhookSecretName)."""
    with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as conn:
        missing = "SELECT NOT EXISTS (SELECT FROM vault.secrets WHERE name = 'app_webhook_secret')"
        if conn.execute(missing).fetchone()[0]:
            conn.execute("SELECT vault.create_secret(%s, 'app_webhook_secret')", (WEBHOOK_SECRET,))
    return WEBHOOK_SECRET
