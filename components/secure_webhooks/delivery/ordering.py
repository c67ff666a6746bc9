"""Per-row order (`delivery.ordering: per-row`): a row's events reach the orchestrator in commit order.

Two facts are recorded with each event, in the outbox trigger, and only when ordering is per-row (with
`none` the trigger's body and the reconciler's SQL are exactly what they were, so the insert path costs
the same):
- `seq`, from a sequence with CACHE 1, taken in the AFTER trigger. PostgreSQL's row locks serialize the
  changes of one row: a later change of the row waits for the earlier transaction to commit before its
  trigger runs, so one row's `seq` values follow commit order. `created_at` does not (it is the
  transaction's start: a later-starting transaction can commit first).
- `row_key`: `[schema, table, {primary key columns: values}]` of the row (NEW for INSERT and UPDATE, OLD
  for DELETE), as text in the "C" collation: jsonb's text form is canonical, and comparing bytes makes
  the index probe about five times faster than comparing jsonb. It is computed in the trigger rather
  than by the reconciler from the routes: the reconciler would have to write every event once more to
  key it, and the index the condition reads needs a column. The primary key is read from the catalog
  once per statement (per row for row-level triggers), so it follows the table even if its key changes
  after `up`. A table without a primary key (preview refuses it; one dropped later) gives NULL: such
  events are not ordered.

The reconciler then leaves a due event alone while an earlier event (smaller `seq`) of the same row and
the same webhook is pending, failed or in flight, and, with `orderingOnDead: block`, dead. "The same
webhook" is every trigger of one configured webhook: an INSERT and an UPDATE of one row go through two
triggers (`name`, `name-update`) and are ordered together; triggers are grouped by table and URL, as
the stack routes them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

import psycopg
from psycopg import sql

from secure_webhooks.delivery.outbox import EVENT_SEQUENCE, EVENTS, SCHEMA

ORDERINGS = ("none", "per-row")
ON_DEAD = ("block", "skip")
DEFAULT_ORDERING = "none"
#: Whoever opts into order wants every change in order: a dead event holds its row's later events until
#: it is replayed or purged (and dead events are rare and reported). `skip` lets them go.
DEFAULT_ON_DEAD = "block"

# ---------------------------------------------------------------------------------------------------
# The outbox trigger's part (signing/trigger_function.py renders the body).

#: The variable the trigger fills once per call: the table's columns outside its primary key.
OTHER_COLUMNS = "other_columns"

DECLARATIONS = f"""DECLARE
  {OTHER_COLUMNS} text[];
"""

#: No row when the table has no primary key: the variable stays NULL, and so does every row key. Two index
#: lookups (pg_index by table, pg_attribute by table), about as cheap as reading the catalog gets.
READ_PRIMARY_KEY = f"""SELECT ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute AS a
                 WHERE a.attrelid = i.indrelid AND a.attnum > 0 AND NOT a.attisdropped
                   AND a.attnum <> ALL (i.indkey::pg_catalog.int2[]))
    INTO {OTHER_COLUMNS}
    FROM pg_catalog.pg_index AS i
   WHERE i.indrelid = TG_RELID AND i.indisprimary;"""

COLUMNS = "seq, row_key"


def values(body: str) -> str:
    """SQL for `seq, row_key` of an event whose payload is `body`: the row is `record`, or for a DELETE
    `old_record`; its key is that object minus every column outside the primary key."""
    record = f"CASE WHEN TG_OP = 'DELETE' THEN {body} -> 'old_record' ELSE {body} -> 'record' END"
    return (
        f"pg_catalog.nextval('{SCHEMA}.{EVENT_SEQUENCE}'), CASE WHEN {OTHER_COLUMNS} IS NOT NULL THEN "
        "pg_catalog.jsonb_build_array(COALESCE(TG_ARGV[1], TG_TABLE_SCHEMA), COALESCE(TG_ARGV[2], TG_TABLE_NAME), "
        f"{record} - {OTHER_COLUMNS})::text END"
    )


# ---------------------------------------------------------------------------------------------------
# The reconciler's part: which due events may go.


class RouteLike(Protocol):
    schema: str
    table: str
    webhook: str
    url: str


def _literal(value: object) -> str:
    return sql.Literal(value).as_string(None)


def _same_webhook(alias: str, routes: Sequence[RouteLike]) -> str:
    """SQL: the trigger names whose events are ordered with those of event `alias`: the triggers of its
    configured webhook (those of one table and URL). The row key already pins the table."""
    groups: dict[tuple[str, str, str], set[str]] = {}
    for route in routes:
        groups.setdefault((route.schema, route.table, route.url), set()).add(route.webhook)
    together: dict[str, set[str]] = {}
    for names in groups.values():
        for name in names:
            together.setdefault(name, set()).update(names)
    if not together:
        return f"ARRAY[{alias}.webhook]"
    cases = " ".join(
        f"WHEN {_literal(name)} THEN ARRAY[{', '.join(_literal(n) for n in sorted(names))}]"
        for name, names in sorted(together.items())
    )
    return f"CASE {alias}.webhook {cases} ELSE ARRAY[{alias}.webhook] END"


def blocking_states(on_dead: str) -> str:
    states = ["pending", "sending"] + (["dead"] if on_dead == "block" else [])
    return ", ".join(_literal(state) for state in states)


def may_send(alias: str, ordering: str, on_dead: str, routes: Sequence[RouteLike]) -> str:
    """An `AND ...` condition for the due-event selection: no earlier event of the row is still open.

    Empty with ordering `none`: the round is exactly what it was. The probe is one index lookup on
    `events_row_order` (row_key, seq) per candidate.
    """
    if ordering != "per-row":
        return ""
    return (
        f"\n       AND NOT EXISTS (SELECT FROM {SCHEMA}.{EVENTS} AS earlier"
        f"\n                        WHERE earlier.row_key = {alias}.row_key AND earlier.seq < {alias}.seq"
        f"\n                          AND earlier.state IN ({blocking_states(on_dead)})"
        f"\n                          AND earlier.webhook = ANY ({_same_webhook(alias, routes)})"
        # One probe per candidate, down the index in row and number order, that stops at the row's earliest
        # open event: OFFSET 0 keeps it a probe (as an anti join it compared every pair of a row's waiting
        # events: 0.9 s for 5,000 of 10 rows), and the ORDER BY makes the index the cheapest way to it.
        "\n                        ORDER BY earlier.row_key, earlier.seq LIMIT 1 OFFSET 0)"
    )


# ---------------------------------------------------------------------------------------------------
# What `status` shows, and what preview refuses.

#: Per webhook: pending events with an earlier event of their row still open, and those behind a dead
#: one (what an operator must act on: replay or purge it). `status` does not know the stack's routes, so
#: "the same webhook" is the same trigger or the same URL.
WAITING_QUERY = f"""
SELECT w.webhook, pg_catalog.count(*), pg_catalog.count(*) FILTER (WHERE w.earliest_open_state = 'dead')
  FROM (SELECT e.webhook,
               (SELECT o.state FROM {SCHEMA}.{EVENTS} AS o
                 WHERE o.row_key = e.row_key AND o.seq < e.seq AND o.state IN ('pending', 'sending', 'dead')
                   AND (o.webhook = e.webhook OR o.url = e.url)
                 ORDER BY o.seq LIMIT 1) AS earliest_open_state
          FROM {SCHEMA}.{EVENTS} AS e
         WHERE e.row_key IS NOT NULL AND e.state = 'pending') AS w
 WHERE w.earliest_open_state IS NOT NULL
 GROUP BY w.webhook
 ORDER BY w.webhook
"""


def read_waiting(conn: psycopg.Connection) -> dict[str, tuple[int, int]]:
    """{webhook: (events waiting behind an earlier one, of which behind a dead one)}; empty on outboxes
    without the columns (ordering never installed by this version)."""
    try:
        with conn.transaction():
            return {webhook: (waiting, dead) for webhook, waiting, dead in conn.execute(WAITING_QUERY).fetchall()}
    except psycopg.errors.UndefinedColumn:
        return {}


def tables_without_primary_key(cur: psycopg.Cursor, tables: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
    """Which of the existing (schema, table) have no primary key (a missing table is another check's)."""
    wanted = sorted(set(tables))
    if not wanted:
        return set()
    cur.execute(
        """
        SELECT t.schema_name, t.table_name
          FROM ROWS FROM (pg_catalog.unnest(%s::text[]), pg_catalog.unnest(%s::text[])) AS t(schema_name, table_name)
          JOIN pg_catalog.pg_namespace AS n ON n.nspname = t.schema_name
          JOIN pg_catalog.pg_class AS c ON c.relnamespace = n.oid AND c.relname = t.table_name
         WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_index AS i WHERE i.indrelid = c.oid AND i.indisprimary)
        """,
        ([schema for schema, _ in wanted], [table for _, table in wanted]),
    )
    return {(schema, table) for schema, table in cur.fetchall()}
