"""A one-table private schema of ours, created by its first row and dropped with its last.

The adoption records (components/secure_webhooks/installation/adoption.py) and the installation claims
(components/secure_webhooks/installation/installation_provider.py) each live in one: readable by their
owner (`postgres`) only, never by PUBLIC, Supabase's API roles or any role we
never granted, and every transaction that writes one serialises on a lock of
its table.

Why a table lock and not an advisory lock: any login role may take any
advisory lock, and `hashtext('<schema>')` is easy to guess, so a role holding
it made every `pulumi up` fail after the lock timeout. `LOCK TABLE ... IN SHARE
ROW EXCLUSIVE MODE` needs UPDATE, DELETE or TRUNCATE on the table (and USAGE
on its schema), which only its owner and superusers have: no other role can
take it or queue for it.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql

from secure_webhooks.postgres.catalog import existing_roles, revoked_roles
from secure_webhooks.postgres.database import LOCK_TIMEOUT, DatabaseError
from secure_webhooks.postgres.table_locks import lock_holders

#: Supabase's API roles, and everyone: none may read a private store.
READERS_REFUSED = ("anon", "authenticated", "service_role")
#: Conflicts with itself and with every write, not with plain reads of the owner.
LOCK_MODE = "SHARE ROW EXCLUSIVE"
#: Creating the store races another session creating or dropping it at most a few times in a row.
_CREATE_ATTEMPTS = 5


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

    @property
    def name(self) -> str:
        return f"{self.schema}.{self.table}"

    def lock(self, cur: psycopg.Cursor) -> bool:
        """Lock the store against every other writer until the transaction ends; False when it does not exist.

        Taken before the store is read for a write or written, so a transaction that drops it with its
        last row cannot race one that writes a row (a session that waited while the store was dropped
        gets False). Only the store's owner (and superusers) may take this lock. A lock timeout names
        the sessions holding it.
        """
        try:
            with cur.connection.transaction():  # a savepoint: a missing store must not abort the caller
                cur.execute(sql.SQL("LOCK TABLE {} IN {} MODE").format(self.relation, sql.SQL(LOCK_MODE)))
        except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName):
            return False
        except psycopg.errors.LockNotAvailable:
            raise DatabaseError(
                f"timed out after lock_timeout {LOCK_TIMEOUT} waiting to lock {self.name}, held by "
                f"{lock_holders(cur, [self.name]) or 'a session that has ended since'}; nothing was changed. "
                "Retry once that session's transaction has ended (another `pulumi up` or `destroy` on this "
                "database, or a session of the database owner: pg_stat_activity shows it)"
            ) from None
        return True

    def exists(self, cur: psycopg.Cursor) -> bool:
        cur.execute("SELECT pg_catalog.to_regclass(%s) IS NOT NULL", (self.name,))
        return cur.fetchone()[0]

    def ensure(self, cur: psycopg.Cursor) -> None:
        """Create the store unless it exists, readable by its owner only, and `lock` it.

        Another session may create the store at the same moment (our CREATE then fails on the
        catalog's unique index once it commits) or drop it with its last row while we wait for the
        lock: either way the store is created or locked again. Grants and the comment are applied under
        the lock (two sessions changing one ACL at once would fail with "tuple concurrently updated").
        """
        schema = sql.Identifier(self.schema)
        for _ in range(_CREATE_ATTEMPTS):
            try:
                with cur.connection.transaction():
                    cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(schema))
                    cur.execute(
                        sql.SQL("CREATE TABLE IF NOT EXISTS {} {}").format(self.relation, sql.SQL(self.columns))
                    )
            except (
                psycopg.errors.UniqueViolation,
                psycopg.errors.InvalidSchemaName,
                psycopg.errors.UndefinedTable,
            ):
                continue
            if self.lock(cur):
                break
        else:
            raise DatabaseError(f"could not create {self.name}: other sessions kept creating and dropping it")
        cur.execute(sql.SQL("COMMENT ON SCHEMA {} IS {}").format(schema, sql.Literal(self.comment)))
        self._revoke(cur)

    def revoke_foreign(self, cur: psycopg.Cursor) -> None:
        """Revoke every privilege in the store from everyone but its owner (a no-op without the store)."""
        if self.lock(cur):
            self._revoke(cur)

    def _revoke(self, cur: psycopg.Cursor) -> None:
        schema = sql.Identifier(self.schema)
        # PUBLIC, the API roles, and any role granted anything here out of band: we grant nothing.
        refused = sql.SQL(", ").join(
            [
                sql.SQL("PUBLIC"),
                *(sql.Identifier(role) for role in existing_roles(cur, READERS_REFUSED)),
                *(sql.Identifier(role) for role in revoked_roles(cur, self.schema, (), ())),
            ]
        )
        cur.execute(sql.SQL("REVOKE ALL ON SCHEMA {} FROM {}").format(schema, refused))
        cur.execute(sql.SQL("REVOKE ALL ON TABLE {} FROM {}").format(self.relation, refused))

    def foreign_grantees(self, cur: psycopg.Cursor) -> list[str]:
        """Roles holding a privilege in the store (besides its owner), PUBLIC included: we grant none."""
        if not self.exists(cur):
            return []
        cur.execute(
            "SELECT EXISTS (SELECT FROM pg_catalog.aclexplode(c.relacl) a WHERE a.grantee = 0)"
            " OR EXISTS (SELECT FROM pg_catalog.aclexplode(n.nspacl) a WHERE a.grantee = 0)"
            " FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
            " WHERE c.oid = pg_catalog.to_regclass(%s)",
            (self.name,),
        )
        public = cur.fetchone()[0]
        return (["PUBLIC"] if public else []) + revoked_roles(cur, self.schema, (), ())

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
