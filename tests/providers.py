"""Test helpers: our dynamic providers configured for the local cluster, and their props."""

from __future__ import annotations

import uuid
from typing import Any

from pulumi.dynamic import ConfigureRequest
from pulumi.dynamic.config import Config

from local_supabase.cluster import LocalSupabase
from secure_webhooks.installation.installation_provider import installation_props as props_for_installation
from secure_webhooks.installation.preflight import preflight_props
from secure_webhooks.installation.trigger_provider import trigger_props as props_for_trigger
from secure_webhooks.postgres.database import DatabaseProvider
from secure_webhooks.signing.function_provider import function_props as props_for_function
from secure_webhooks.signing.trigger_function import FunctionSpec

OWNER = "secure-webhooks/test"


def stack_config(cluster: LocalSupabase) -> dict[str, str]:
    """The postgresql:* config a stack pointed at the local cluster carries."""
    return {
        "postgresql:host": cluster.host,
        "postgresql:port": str(cluster.port),
        "postgresql:database": cluster.dbname,
        "postgresql:username": "postgres",
        "postgresql:password": cluster.password_for("postgres"),
        "postgresql:sslmode": "disable",
    }


def configured(provider_class: type[DatabaseProvider], cluster: LocalSupabase) -> DatabaseProvider:
    provider = provider_class()
    provider.configure(ConfigureRequest(Config(stack_config(cluster), "secure-webhooks")))
    return provider


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def function_props(spec: FunctionSpec, owner: str = OWNER) -> dict[str, Any]:
    return props_for_function(spec, owner)


def installation_props(
    spec: FunctionSpec,
    owner: str = OWNER,
    *,
    secret_managed: bool = False,
    webhook_tables: list[dict[str, str]] | None = None,
    **touched: Any,
) -> dict[str, Any]:
    """An Installation's inputs for a stack with `spec`'s function; `touched` overrides what it would touch."""
    return props_for_installation(
        owner=owner,
        function_schema=spec.schema,
        function_name=spec.name,
        **{"replaces_instance": None, "triggers": [], "vault_secrets": [], "outbox_schema": None, "cron_job": None}
        | touched,
        preflight=preflight_props(
            signer=spec.signer,
            secret_name=spec.secret_name,
            secret_managed=secret_managed,
            webhook_secret_name=spec.webhook_secret_name,
            webhook_secret_managed=False,
            extensions_managed=True,
            webhook_tables=webhook_tables or [],
        ),
    )


def trigger_props(
    table: str, name: str, url: str, spec: FunctionSpec, event: str = "INSERT", owner: str = OWNER
) -> dict[str, Any]:
    return props_for_trigger(schema="public", table=table, name=name, event=event, url=url, function=spec, owner=owner)


def as_stored(outs: dict[str, Any]) -> dict[str, Any]:
    """Outputs as the engine hands them back: Pulumi drops null values inside maps."""
    return {
        key: {k: v for k, v in value.items() if v is not None} if isinstance(value, dict) else value
        for key, value in outs.items()
    }
