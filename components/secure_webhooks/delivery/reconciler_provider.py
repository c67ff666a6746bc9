"""Dynamic provider for the reconciler's functions (components/secure_webhooks/delivery/reconciler.py renders them).

They are replaced with CREATE OR REPLACE in one transaction, so a running
pg_cron loop picks up the new code at its next round. `read` fingerprints
the full definitions and grants, so an edited body or a loosened grant is
drift that `pulumi up` repairs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import psycopg
import pulumi
from psycopg import sql

from secure_webhooks.configuration.delivery_settings import DeliverySettings
from secure_webhooks.delivery import alerts
from secure_webhooks.delivery.outbox import CLIENT_ROLES, OPERATOR_ROLES, SCHEMA
from secure_webhooks.delivery.reconciler import (
    FUNCTIONS,
    RECONCILE,
    RETRY_AFTER,
    ReconcilerSpec,
    Route,
    endpoint_moves,
    function_sources,
    sources_sha256,
)
from secure_webhooks.installation.installation_provider import instance_input, refuse_stale_instance
from secure_webhooks.installation.ownership import claim, marker, owner_of
from secure_webhooks.postgres.catalog import existing_roles, fingerprint, revoked_roles
from secure_webhooks.postgres.fingerprinted_provider import FingerprintedProvider
from secure_webhooks.signing.function_provider import function_props, note_key_switches, spec_from

#: SECURITY DEFINER: the job runs as postgres, but an operator's service_role session may call a round too.
_DEFINER = {RECONCILE: True, RETRY_AFTER: False}


def reconciler_props(spec: ReconcilerSpec, owner: str) -> dict[str, Any]:
    return {
        **function_props(spec.function, owner),
        "delivery": dataclasses.asdict(spec.delivery),
        "routes": [dataclasses.asdict(route) for route in spec.routes],
        "sources_sha256": sources_sha256(spec),
    }


def reconciler_spec_from(props: dict[str, Any]) -> ReconcilerSpec:
    """The spec back from inputs or state; state written before routes existed has none."""
    return ReconcilerSpec(
        function=spec_from(props),
        delivery=DeliverySettings(**props["delivery"]),
        routes=tuple(Route(**route) for route in props.get("routes") or ()),
    )


def _name(function: str, arguments: str) -> sql.Composed:
    return sql.SQL("{}.{}({})").format(sql.Identifier(SCHEMA), sql.Identifier(function), sql.SQL(arguments))


def _reconcile_comment(cur: psycopg.Cursor) -> tuple[bool, str | None]:
    cur.execute(
        """
        SELECT pg_catalog.obj_description(p.oid, 'pg_proc') FROM pg_catalog.pg_proc p
          JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = %s AND p.proname = %s
        """,
        (SCHEMA, RECONCILE),
    )
    row = cur.fetchone()
    return (row is not None, row[0] if row else None)


class ReconcilerProvider(FingerprintedProvider):
    inputs = ("owner", "sources_sha256")

    def resource_id(self, props: dict[str, Any]) -> str:
        return f"{SCHEMA}.{RECONCILE}()"

    def install(self, cur: psycopg.Cursor, props: dict[str, Any], previous: dict[str, Any] | None) -> None:
        exists, comment = _reconcile_comment(cur)
        if exists:
            claim("function", f"{SCHEMA}.{RECONCILE}()", comment, props["owner"])
            refuse_stale_instance(cur, props, f"function {SCHEMA}.{RECONCILE}()", comment)
        revoked = revoked_roles(cur, SCHEMA, CLIENT_ROLES, OPERATOR_ROLES)
        nobody = sql.SQL(", ").join([sql.SQL("PUBLIC"), *(sql.Identifier(role) for role in revoked)])
        alerts.quiesce(cur)  # no round holds an alert table while their grants change
        for statement in alerts.install_statements(nobody, existing_roles(cur, OPERATOR_ROLES)):
            cur.execute(statement)
        sources = function_sources(reconciler_spec_from(props))
        for function, arguments in FUNCTIONS:
            declared, returns, body = sources[function]
            security = "SECURITY DEFINER" if _DEFINER.get(function, True) else "SECURITY INVOKER"
            cur.execute(
                sql.SQL(
                    "CREATE OR REPLACE FUNCTION {}.{}({}) RETURNS {} LANGUAGE plpgsql {} SET search_path = '' AS {}"
                ).format(
                    sql.Identifier(SCHEMA),
                    sql.Identifier(function),
                    sql.SQL(declared),
                    sql.SQL(returns),
                    sql.SQL(security),
                    sql.Literal(body),
                )
            )
            cur.execute(sql.SQL("REVOKE ALL ON FUNCTION {} FROM {}").format(_name(function, arguments), nobody))
        cur.execute(
            sql.SQL("COMMENT ON FUNCTION {} IS {}").format(
                _name(RECONCILE, dict(FUNCTIONS)[RECONCILE]), sql.Literal(marker(props["owner"], props.get("instance")))
            )
        )
        for statement in endpoint_moves(reconciler_spec_from(props)):
            cur.execute(sql.SQL(statement))
        if previous is not None:  # the next round signs with the new keys: the old ones stop signing now
            note_key_switches(cur, spec_from(previous), spec_from(props))

    def fingerprint(self, cur: psycopg.Cursor, props: dict[str, Any]) -> dict[str, str] | None:
        exists, comment = _reconcile_comment(cur)
        if not exists or owner_of(comment) != props["owner"]:
            return None
        return fingerprint(cur, SCHEMA, functions=[name for name, _ in FUNCTIONS])

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        with self.db.transaction() as cur:
            exists, comment = _reconcile_comment(cur)
            if not exists or owner_of(comment) != props["owner"]:
                return
            refuse_stale_instance(cur, props, f"function {SCHEMA}.{RECONCILE}()", comment)
            alerts.quiesce(cur)
            for function, arguments in FUNCTIONS:
                cur.execute(sql.SQL("DROP FUNCTION IF EXISTS {}").format(_name(function, arguments)))
            cur.execute(alerts.drop_statement())


class Reconciler(pulumi.dynamic.Resource, module="secure-webhooks", name="Reconciler"):
    """The functions that sign and send outbox events, record outcomes and retry."""

    installed: pulumi.Output[dict[str, str]]

    def __init__(
        self,
        name: str,
        spec: ReconcilerSpec,
        owner: str,
        instance: pulumi.Input[str] | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        props = {
            **reconciler_props(spec, owner),
            "instance": instance_input(instance, opts),
            "installed": None,
            "fingerprint": None,
        }
        super().__init__(ReconcilerProvider(), name, props, opts)
