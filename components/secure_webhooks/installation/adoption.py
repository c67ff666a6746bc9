"""What this stack adopted, recorded in the database itself, so a rollback survives anything.

Pulumi state can lose an adoption record: a refresh that finds our object
missing drops its state (and the record with it) before `up` re-creates it, a
CLI killed while the provider waits for a lock leaves a pending create
without outputs, and a stack can be removed with `--force`. So the record of
an adopted object (a legacy trigger, the seed's function, a Vault secret) is
written into the database in the same transaction as the swap, straight from
the catalog, and restore reads it from there; the state only caches it. A
re-create keeps an existing record, never overwrites it with "nothing
adopted"; a refresh that finds ours missing keeps the resource (as drift)
while its record exists, so destroy still reaches it; destroy restores from
the record and deletes it in one transaction.

The store is a small private schema of its own, in both delivery modes (the
outbox schema exists only in at-least-once mode and goes with its stack).
It is created by the first record and dropped with the last one, and it is
readable by its owner (`postgres`) only: a legacy webhook's static header may
be a secret. For the same reason a recorded definition never travels as SQL
text or a bind parameter, which `log_statement = all` would log: it is
copied from the catalog inside the server, executed there on restore, and an
old record that exists only in Pulumi state enters as binary `COPY` data.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from secure_webhooks.installation.private_store import PrivateStore

SCHEMA = "secure_webhooks_rollback"
TABLE = "adopted"

TRIGGER, FUNCTION, VAULT_SECRET = "trigger", "function", "vault secret"
#: The transaction-local setting that tells the restore block which record to execute.
_KEY_SETTING = "secure_webhooks.restoring"
_IMPORT_TABLE = "secure_webhooks_imported_record"
COMMENT = (
    "secure-webhooks: what each stack adopted (legacy webhooks, the seed function, Vault secrets), which "
    "`pulumi destroy` gives back. Dropped with its last record; do not drop it by hand."
)


STORE = PrivateStore(
    SCHEMA,
    TABLE,
    "(kind text NOT NULL, object text[] NOT NULL, adopted_by text NOT NULL, record jsonb NOT NULL,"
    " adopted_at timestamptz NOT NULL DEFAULT pg_catalog.now(), PRIMARY KEY (kind, object))",
    COMMENT,
)
#: Taken before the store or the adopted object is touched (PrivateStore.lock).
lock = STORE.lock


def record_from_catalog(
    cur: psycopg.Cursor, kind: str, key: list[str], owner: str, query: str, params: dict[str, Any]
) -> None:
    """Record what `query` (one jsonb row, read from the catalog) says of the object, unless it has a record.

    Call it under `lock`, before the swap changes the object: the record commits with the swap.
    """
    STORE.ensure(cur)
    cur.execute(
        sql.SQL(
            "INSERT INTO {} (kind, object, adopted_by, record) SELECT %(kind)s, %(key)s, %(owner)s, ({}) "
            "ON CONFLICT (kind, object) DO NOTHING"
        ).format(STORE.relation, sql.SQL(query)),
        {**params, "kind": kind, "key": key, "owner": owner},
    )


def _record_from_state(cur: psycopg.Cursor, kind: str, key: list[str], owner: str, record: dict[str, Any]) -> None:
    """Move a record that older code kept only in Pulumi state into the store, as COPY data (never logged)."""
    STORE.ensure(cur)
    cur.execute(
        sql.SQL("CREATE TEMPORARY TABLE {} (record jsonb NOT NULL) ON COMMIT DROP").format(
            sql.Identifier(_IMPORT_TABLE)
        )
    )
    with cur.copy(sql.SQL("COPY {} (record) FROM STDIN (FORMAT BINARY)").format(sql.Identifier(_IMPORT_TABLE))) as copy:
        copy.set_types(["jsonb"])
        copy.write_row((Jsonb(record),))
    cur.execute(
        sql.SQL(
            "INSERT INTO {} (kind, object, adopted_by, record) SELECT %s, %s, %s, record FROM {} "
            "ON CONFLICT (kind, object) DO NOTHING"
        ).format(STORE.relation, sql.Identifier(_IMPORT_TABLE)),
        (kind, key, owner),
    )
    cur.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(_IMPORT_TABLE)))


def recorded(cur: psycopg.Cursor, kind: str, key: list[str]) -> dict[str, Any] | None:
    """The record of the object, or None when nothing of it was adopted. Call it under `lock`."""
    if not STORE.exists(cur):
        return None
    cur.execute(sql.SQL("SELECT record FROM {} WHERE kind = %s AND object = %s").format(STORE.relation), (kind, key))
    row = cur.fetchone()
    return row[0] if row else None


def recorded_or_moved(
    cur: psycopg.Cursor, kind: str, key: list[str], owner: str, cached: dict[str, Any] | None
) -> dict[str, Any] | None:
    """The object's record; one that only the state's cache holds (written by older code) moves in first.

    Called by update and delete, so the database holds it from then on. Call it under `lock`.
    """
    record = recorded(cur, kind, key)
    if record is None and cached:
        _record_from_state(cur, kind, key, owner, cached)
        record = recorded(cur, kind, key)
    return record


def execute_definition(cur: psycopg.Cursor, kind: str, key: list[str]) -> None:
    """Run the record's `definition` (a CREATE statement) inside the server: its text is never logged,
    nor shown in an error."""
    cur.execute("SELECT pg_catalog.set_config(%s, %s, true)", (_KEY_SETTING, json.dumps([kind, key])))
    cur.execute(
        sql.SQL(
            """
            DO $restore$
            DECLARE
              wanted jsonb := pg_catalog.current_setting({setting})::jsonb;
            BEGIN
              EXECUTE (SELECT a.record ->> 'definition' FROM {store} a
                        WHERE a.kind = wanted ->> 0
                          AND a.object = ARRAY(SELECT pg_catalog.jsonb_array_elements_text(wanted -> 1)));
            EXCEPTION WHEN OTHERS THEN
              -- Raised again without the failed statement's text, which an error's CONTEXT would show.
              RAISE EXCEPTION USING ERRCODE = SQLSTATE, MESSAGE = SQLERRM;
            END
            $restore$
            """
        ).format(setting=sql.Literal(_KEY_SETTING), store=STORE.relation)
    )


def forget(cur: psycopg.Cursor, kind: str, key: list[str]) -> None:
    """Delete the object's record; the last one takes the store with it. Call it under `lock`."""
    if not STORE.exists(cur):
        return
    cur.execute(sql.SQL("DELETE FROM {} WHERE kind = %s AND object = %s").format(STORE.relation), (kind, key))
    STORE.drop_if_empty(cur)
