"""A one-table private schema of ours, created by its first row and dropped with its last.

The adoption records (components/adoption.py) and the installation claims
(components/installation_provider.py) each live in one: readable by their
owner (`postgres`) only, never by PUBLIC or Supabase's API roles, and every
transaction that uses one serialises on an advisory lock named after it.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql

from .catalog import existing_roles

#: Supabase's API roles, and everyone: none may read a private store.
READERS_REFUSED = ("anon", "authenticated", "service_role")


@dataclass(frozen=True)
class PrivateStore:
    schema: str
    table: str
    #: The table's column list, e.g. "(id text PRIMARY KEY, ...)": constant SQL of ours.
    columns: str
    comment: str

    @property
    def relation(self) -> sql.Composed:
        return sql.SQL("{}.{}").format(sql.Identifier(self.schema), sql.Identifier(self.table))

    def lock(self, cur: psycopg.Cursor) -> None:
        """Serialise every transaction that uses the store, across stacks and provider processes.

        Taken before the store is read or written, so two sessions cannot both create it, and a
        transaction that drops it with its last row cannot race one that writes a row.
        """
        cur.execute("SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext(%s))", (self.schema,))

    def exists(self, cur: psycopg.Cursor) -> bool:
        cur.execute("SELECT pg_catalog.to_regclass(%s) IS NOT NULL", (f"{self.schema}.{self.table}",))
        return cur.fetchone()[0]

    def ensure(self, cur: psycopg.Cursor) -> None:
        """Create the store unless it exists, readable by its owner only. Call it under `lock`.

        The statements run even when `exists` says yes: only a statement that locks the table sees a
        store another session created while this one waited for the lock (to_regclass can miss it).
        """
        schema = sql.Identifier(self.schema)
        cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(schema))
        cur.execute(sql.SQL("COMMENT ON SCHEMA {} IS {}").format(schema, sql.Literal(self.comment)))
        cur.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} {}").format(self.relation, sql.SQL(self.columns)))
        refused = sql.SQL(", ").join(
            [sql.SQL("PUBLIC"), *(sql.Identifier(role) for role in existing_roles(cur, READERS_REFUSED))]
        )
        cur.execute(sql.SQL("REVOKE ALL ON SCHEMA {} FROM {}").format(schema, refused))
        cur.execute(sql.SQL("REVOKE ALL ON TABLE {} FROM {}").format(self.relation, refused))

    def drop_if_empty(self, cur: psycopg.Cursor) -> None:
        """Drop the table once it holds no row, and the schema once nothing else is in it. Call it under `lock`."""
        cur.execute(sql.SQL("SELECT EXISTS (SELECT FROM {})").format(self.relation))
        if cur.fetchone()[0]:
            return
        cur.execute(sql.SQL("DROP TABLE {}").format(self.relation))
        # Only ours: anything someone else put in the schema keeps it (and its dependency on it) alive.
        cur.execute(
            "SELECT NOT EXISTS (SELECT FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_namespace n ON n.oid = d.refobjid"
            " WHERE d.refclassid = 'pg_catalog.pg_namespace'::pg_catalog.regclass AND n.nspname = %s)",
            (self.schema,),
        )
        if cur.fetchone()[0]:
            cur.execute(sql.SQL("DROP SCHEMA {}").format(sql.Identifier(self.schema)))
