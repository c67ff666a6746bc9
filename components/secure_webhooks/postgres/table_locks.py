"""DDL on tables a running transaction uses in another order: every lock at once, or none held while waiting.

`DROP TABLE a, b` or `ALTER TABLE a` followed by `CREATE INDEX ON b` takes its locks one table at a time.
A reconciler round that holds `b` and then writes `a` deadlocks with it, and PostgreSQL ends one of the two:
found when a round still running at `destroy` made the outbox's DROP fail with "deadlock detected".
Taking every lock in one `LOCK TABLE ... NOWAIT` either gets them all or gets none and waits holding
nothing (the savepoint releases any it got), so the round finishes and the DDL goes next.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import psycopg
from psycopg import sql

from secure_webhooks.postgres.database import DatabaseError

#: How long to keep trying: a round's transaction lasts milliseconds to a second or two.
WAIT_SECONDS = 60.0
_RETRY_SECONDS = 0.05

#: For each qualified name, in order: whether the relation exists.
_EXISTING = (
    "SELECT pg_catalog.to_regclass(n) IS NOT NULL FROM pg_catalog.unnest(%s::text[]) WITH ORDINALITY AS u(n, i)"
    " ORDER BY i"
)
_HOLDERS = """
SELECT DISTINCT a.pid, coalesce(a.usename::text, '?'), coalesce(a.application_name, '')
  FROM pg_catalog.pg_locks l JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
 WHERE l.locktype = 'relation' AND l.granted
   AND l.relation IN (SELECT pg_catalog.to_regclass(r) FROM pg_catalog.unnest(%s::text[]) AS r)
   AND l.pid <> pg_catalog.pg_backend_pid()
 ORDER BY 1"""


def lock_all_at_once(cur: psycopg.Cursor, schema: str, tables: Sequence[str]) -> None:
    """ACCESS EXCLUSIVE on those of `schema`.`tables` that exist, all in one step, until the transaction ends.

    Waits (holding none of them) while another transaction holds any; after WAIT_SECONDS it fails naming
    the sessions that hold them, with nothing changed.
    """
    cur.execute(_EXISTING, ([sql.Identifier(schema, table).as_string(cur) for table in tables],))
    existing = [table for table, (found,) in zip(tables, cur.fetchall(), strict=True) if found]
    if not existing:
        return
    relations = [sql.Identifier(schema, table) for table in existing]
    statement = sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE NOWAIT").format(sql.SQL(", ").join(relations))
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        try:
            with cur.connection.transaction():  # a savepoint: a refused attempt releases what it got
                cur.execute(statement)
            return
        except psycopg.errors.LockNotAvailable:
            if time.monotonic() > deadline:
                break
            time.sleep(_RETRY_SECONDS)
    names = [f"{schema}.{table}" for table in existing]
    raise DatabaseError(
        f"waited {WAIT_SECONDS:.0f} s to lock {', '.join(names)}, held by "
        f"{lock_holders(cur, names) or 'sessions that have ended since'}; nothing was changed. Retry once their "
        "transactions have ended (pg_stat_activity shows them)"
    )


def lock_holders(cur: psycopg.Cursor, relations: Sequence[str]) -> str:
    """The other sessions holding a lock on any of `relations`, for an error that names them."""
    cur.execute(_HOLDERS, (list(relations),))
    return "; ".join(f"pid {pid} (role {role}, application_name {app!r})" for pid, role, app in cur)
