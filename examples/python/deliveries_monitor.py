"""Read-only access to the webhook delivery log for a monitoring role: this program's own resource.

The role calls `<schema>.webhook_deliveries()`, a SECURITY DEFINER function in a schema of this
program's own, and gets no privilege on secure-webhooks' objects. Granting on those directly would
not do: their grants are part of the component's drift detection (`pulumi up --refresh` then
refuses the change as unrepairable), the view is security_invoker (any view over it also reads
with the caller's rights, so it would need SELECT on the outbox table too), and that table holds
row data, which monitoring does not need. The function reads the view with its owner's rights.

With the pulumi-resource-postgresql plugin at hand, `pulumi_postgresql.Role`, `Schema` and `Grant`
cover the role and its grants; a dynamic resource needs only psycopg. It connects with the stack's
`postgresql:*` config, read in `configure` as secure-webhooks' providers do, so the password is
never a resource input and never lands in the state.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pulumi
from psycopg import sql
from pulumi.dynamic import ConfigureRequest, CreateResult, DiffResult, ReadResult, ResourceProvider, UpdateResult

FUNCTION = "webhook_deliveries"
#: libpq parameter -> `postgresql:*` config key (the keys pulumi-postgresql reads too).
CONNECTION_KEYS = {
    "host": "host",
    "port": "port",
    "dbname": "database",
    "user": "username",
    "password": "password",
    "sslmode": "sslmode",
}


class DeliveriesMonitorProvider(ResourceProvider):
    def configure(self, req: ConfigureRequest) -> None:
        self.conninfo = {param: req.config.get(f"postgresql:{key}") for param, key in CONNECTION_KEYS.items()}

    def _connect(self) -> psycopg.Connection:
        """Used as `with self._connect() as conn`: one transaction, committed or rolled back as a whole."""
        return psycopg.connect(**{k: v for k, v in self.conninfo.items() if v}, connect_timeout=10)

    def _install(self, conn: psycopg.Connection, props: dict[str, Any]) -> None:
        """The function and the role's grants; idempotent, so update repairs either."""
        schema, role = sql.Identifier(props["schema"]), sql.Identifier(props["role"])
        function, source = sql.Identifier(props["schema"], FUNCTION), sql.Identifier(*props["source"].split(".", 1))
        conn.execute(
            sql.SQL(
                "CREATE OR REPLACE FUNCTION {0}() RETURNS SETOF {1} LANGUAGE sql STABLE SECURITY DEFINER"
                " SET search_path = '' AS $body$SELECT * FROM {1}$body$"
            ).format(function, source)
        )
        conn.execute(sql.SQL("REVOKE ALL ON FUNCTION {}() FROM PUBLIC").format(function))
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(schema, role))
        conn.execute(sql.SQL("GRANT EXECUTE ON FUNCTION {}() TO {}").format(function, role))

    def create(self, props: dict[str, Any]) -> CreateResult:
        # Plain CREATE: an existing schema or role of that name is someone else's, and fails the create.
        with self._connect() as conn:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(props["schema"])))
            conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(props["role"])))
            self._install(conn, props)
        return CreateResult(props["role"], {**props, "can_read": True})

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        """Gone with the role; `can_read` false when the function or the role's grant on it is."""
        with self._connect() as conn:
            row = conn.execute(
                "SELECT coalesce(has_function_privilege(oid, to_regprocedure(%s), 'EXECUTE'), false)"
                "  FROM pg_roles WHERE rolname = %s",
                (f"{props['schema']}.{FUNCTION}()", id_),
            ).fetchone()
        return ReadResult(id_, {**props, "can_read": row[0]}) if row else ReadResult(None, {})

    def diff(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        # Another role or schema name is a new one; another source, or a lost grant, is repaired in place.
        replaces = [key for key in ("role", "schema") if olds[key] != news[key]]
        changes = bool(replaces) or olds["source"] != news["source"] or not olds.get("can_read", True)
        return DiffResult(changes=changes, replaces=replaces, delete_before_replace=True)

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        with self._connect() as conn:
            self._install(conn, news)
        return UpdateResult({**news, "can_read": True})

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        # No CASCADE: a schema someone added objects to fails the delete instead of losing them.
        with self._connect() as conn:
            conn.execute(sql.SQL("DROP FUNCTION IF EXISTS {}()").format(sql.Identifier(props["schema"], FUNCTION)))
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {}").format(sql.Identifier(props["schema"])))
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(id_)))


class DeliveriesMonitor(pulumi.dynamic.Resource, module="platform", name="DeliveriesMonitor"):
    """Schema `schema` with `webhook_deliveries()`, the rows of view `source`, for the NOLOGIN role `role`."""

    role: pulumi.Output[str]
    function: pulumi.Output[str]
    can_read: pulumi.Output[bool]

    def __init__(
        self,
        name: str,
        role: str,
        schema: str,
        source: pulumi.Input[str],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        props = {
            "role": role,
            "schema": schema,
            "source": source,
            "function": f"{schema}.{FUNCTION}()",
            "can_read": None,
        }
        super().__init__(DeliveriesMonitorProvider(), name, props, opts)
