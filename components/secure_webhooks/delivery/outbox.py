"""The SQL of the durable outbox: where at-least-once events live from commit to delivery.

The trigger writes one `events` row per affected row in the user's own
transaction, so an event exists exactly when its row committed. The tables
are ordinary logged tables (pg_net's own queue is UNLOGGED and emptied by
crash recovery). Everything is in a private schema that the Data API does
not expose, and no privilege reaches PUBLIC, `anon` or `authenticated`: the
outbox holds row data. `service_role` may read the log and replay.

Every statement is idempotent (IF NOT EXISTS / OR REPLACE), so the same
script creates the outbox and repairs it after an out-of-band change without
touching the events it holds.
"""

from __future__ import annotations

import hashlib

from psycopg import sql

from secure_webhooks.delivery import endpoints

SCHEMA = "secure_webhooks"
EVENTS = "events"
ATTEMPTS = "attempts"
#: One row, UNLOGGED like pg_net's tables, so crash recovery empties it together with them.
PG_NET_EPOCH = "pg_net_epoch"
#: Per-row order's commit sequence (delivery/ordering.py): CACHE 1, so no session holds numbers back.
EVENT_SEQUENCE = "event_seq"
DELIVERIES_VIEW = "deliveries"

TABLES = (EVENTS, ATTEMPTS, PG_NET_EPOCH, DELIVERIES_VIEW, endpoints.ENDPOINTS)
#: Operator functions: (name, identity arguments) as pg_get_function_identity_arguments prints them.
FUNCTIONS = (
    ("replay_event", "event_id uuid"),
    ("replay", "webhook text, since timestamp with time zone, until timestamp with time zone, statuses text[]"),
    ("purge", "statuses text[], older_than interval, webhook text"),
)

#: Roles that may read the delivery log and replay (besides the owner, postgres).
OPERATOR_ROLES = ("service_role",)
#: Roles that must reach nothing here (Supabase's API roles, and everyone).
CLIENT_ROLES = ("anon", "authenticated")

#: What the deliveries view calls each internal state: an event in flight is still
#: pending; a pending event that already failed an attempt is "failed" (a retry is scheduled).
STATUS_EXPRESSION = (
    "CASE WHEN e.state = 'sending' THEN 'pending' "
    "WHEN e.state = 'pending' AND e.attempts > 0 THEN 'failed' ELSE e.state END"
)
STATUSES = ("pending", "failed", "delivered", "dead")

_SCRIPT = f"""
CREATE SCHEMA IF NOT EXISTS {SCHEMA};

CREATE TABLE IF NOT EXISTS {SCHEMA}.{EVENTS} (
    id uuid PRIMARY KEY DEFAULT pg_catalog.gen_random_uuid(),
    webhook text NOT NULL,
    url text NOT NULL,
    payload jsonb NOT NULL,
    state text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sending', 'delivered', 'dead')),
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    request_id bigint,
    request_epoch uuid,
    sent_at timestamptz,
    missing_since timestamptz,
    token_iat bigint,
    last_status_code integer,
    last_error text,
    seq bigint,
    row_key text COLLATE "C",
    created_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    delivered_at timestamptz,
    dead_at timestamptz
);
-- Added after the first release; the CREATE TABLE above has it for new outboxes.
ALTER TABLE {SCHEMA}.{EVENTS} ADD COLUMN IF NOT EXISTS missing_since timestamptz;
-- The `iat` of the attempt in flight: its receipt is bound to it (README, "Delivery receipts").
ALTER TABLE {SCHEMA}.{EVENTS} ADD COLUMN IF NOT EXISTS token_iat bigint;
CREATE INDEX IF NOT EXISTS events_due ON {SCHEMA}.{EVENTS} (next_attempt_at) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS events_in_flight ON {SCHEMA}.{EVENTS} (sent_at) WHERE state = 'sending';
CREATE INDEX IF NOT EXISTS events_delivered ON {SCHEMA}.{EVENTS} (delivered_at) WHERE state = 'delivered';
-- Per-row order (delivery/ordering.py), filled only when it is on: columns without defaults (a catalog-only
-- change on an outbox from before; the CREATE TABLE above has them), and the index its condition reads (before
-- events_dead: catalog.fingerprint lists indexes in creation order, and a test restores events_dead).
ALTER TABLE {SCHEMA}.{EVENTS} ADD COLUMN IF NOT EXISTS seq bigint;
ALTER TABLE {SCHEMA}.{EVENTS} ADD COLUMN IF NOT EXISTS row_key text COLLATE "C";
CREATE SEQUENCE IF NOT EXISTS {SCHEMA}.{EVENT_SEQUENCE} AS bigint CACHE 1 NO CYCLE;
CREATE INDEX IF NOT EXISTS events_row_order ON {SCHEMA}.{EVENTS} (row_key, seq)
 WHERE row_key IS NOT NULL AND state IN ('pending', 'sending', 'dead');
CREATE INDEX IF NOT EXISTS events_dead ON {SCHEMA}.{EVENTS} (dead_at) WHERE state = 'dead';

CREATE TABLE IF NOT EXISTS {SCHEMA}.{ATTEMPTS} (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id uuid NOT NULL REFERENCES {SCHEMA}.{EVENTS} (id) ON DELETE CASCADE,
    attempt integer NOT NULL,
    request_id bigint,
    sent_at timestamptz NOT NULL,
    finished_at timestamptz,
    status_code integer,
    error text
);
CREATE INDEX IF NOT EXISTS attempts_event ON {SCHEMA}.{ATTEMPTS} (event_id);
-- The metrics' recent attempts (docs/metrics.md): a scrape reads a window, not every attempt kept.
CREATE INDEX IF NOT EXISTS attempts_finished ON {SCHEMA}.{ATTEMPTS} (finished_at);

{endpoints.ddl(SCHEMA, EVENTS)}
CREATE UNLOGGED TABLE IF NOT EXISTS {SCHEMA}.{PG_NET_EPOCH} (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    epoch uuid NOT NULL DEFAULT pg_catalog.gen_random_uuid(),
    started_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);

CREATE OR REPLACE VIEW {SCHEMA}.{DELIVERIES_VIEW} WITH (security_invoker = true) AS
SELECT e.id AS event_id,
       e.webhook,
       (e.payload ->> 'schema') || '.' || (e.payload ->> 'table') AS "table",
       {STATUS_EXPRESSION} AS status,
       e.attempts,
       e.last_status_code,
       e.last_error,
       CASE WHEN e.state = 'pending' THEN e.next_attempt_at END AS next_attempt_at,
       e.created_at,
       e.delivered_at,
       e.request_id,
       e.url
  FROM {SCHEMA}.{EVENTS} AS e;

CREATE OR REPLACE FUNCTION {SCHEMA}.replay_event(event_id uuid) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $body$
BEGIN
  -- A replay is a fresh start: a full attempt budget, due now. An event in flight is left alone.
  UPDATE {SCHEMA}.{EVENTS} AS e
     SET state = 'pending', attempts = 0, next_attempt_at = pg_catalog.now(), dead_at = NULL
   WHERE e.id = replay_event.event_id AND e.state <> 'sending';
  RETURN FOUND;
END
$body$;

CREATE OR REPLACE FUNCTION {SCHEMA}.replay(
    webhook text DEFAULT NULL,
    since timestamptz DEFAULT NULL,
    until timestamptz DEFAULT NULL,
    statuses text[] DEFAULT ARRAY['failed', 'dead']
) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $body$
DECLARE
  replayed integer;
BEGIN
  UPDATE {SCHEMA}.{EVENTS} AS e
     SET state = 'pending', attempts = 0, next_attempt_at = pg_catalog.now(), dead_at = NULL
   WHERE e.state <> 'sending'
     AND {STATUS_EXPRESSION} = ANY (replay.statuses)
     AND (replay.webhook IS NULL OR e.webhook = replay.webhook)
     AND (replay.since IS NULL OR e.created_at >= replay.since)
     AND (replay.until IS NULL OR e.created_at < replay.until);
  GET DIAGNOSTICS replayed = ROW_COUNT;
  RETURN replayed;
END
$body$;

CREATE OR REPLACE FUNCTION {SCHEMA}.purge(
    statuses text[],
    older_than interval DEFAULT '0 seconds',
    webhook text DEFAULT NULL
) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $body$
DECLARE
  purged integer;
BEGIN
  -- Only explicit statuses: discarding pending events is a decision an operator has to spell out.
  DELETE FROM {SCHEMA}.{EVENTS} AS e
   WHERE {STATUS_EXPRESSION} = ANY (purge.statuses)
     AND e.created_at < pg_catalog.now() - purge.older_than
     AND (purge.webhook IS NULL OR e.webhook = purge.webhook);
  GET DIAGNOSTICS purged = ROW_COUNT;
  RETURN purged;
END
$body$;
"""


def _role_list(cur_roles: list[str]) -> sql.Composable:
    return sql.SQL(", ").join([sql.SQL("PUBLIC"), *(sql.Identifier(role) for role in cur_roles)])


def install_statements(revoked_roles: list[str], existing_operator_roles: list[str]) -> list[sql.Composable]:
    """The outbox script plus its grants: everything revoked from PUBLIC and `revoked_roles` (the API
    roles this database has, and any role granted something out of band), then the operators' grants."""
    schema = sql.Identifier(SCHEMA)
    nobody = _role_list(revoked_roles)
    statements: list[sql.Composable] = [sql.SQL(_SCRIPT)]
    statements += [
        sql.SQL("REVOKE ALL ON SCHEMA {} FROM {}").format(schema, nobody),
        sql.SQL("REVOKE ALL ON ALL TABLES IN SCHEMA {} FROM {}").format(schema, nobody),
        sql.SQL("REVOKE ALL ON ALL SEQUENCES IN SCHEMA {} FROM {}").format(schema, nobody),
        sql.SQL("REVOKE ALL ON ALL FUNCTIONS IN SCHEMA {} FROM {}").format(schema, nobody),
    ]
    for role in existing_operator_roles:
        operator = sql.Identifier(role)
        statements += [
            sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(schema, operator),
            sql.SQL("GRANT SELECT ON {}.{}, {}.{}, {}.{} TO {}").format(
                schema,
                sql.Identifier(DELIVERIES_VIEW),
                schema,
                sql.Identifier(EVENTS),
                schema,
                sql.Identifier(ATTEMPTS),
                operator,
            ),
            sql.SQL("GRANT SELECT ON {}.{} TO {}").format(schema, sql.Identifier(endpoints.ENDPOINTS), operator),
            *(
                sql.SQL("GRANT EXECUTE ON FUNCTION {}.{}({}) TO {}").format(
                    schema, sql.Identifier(name), sql.SQL(arguments), operator
                )
                for name, arguments in FUNCTIONS
            ),
        ]
    return statements


def script_sha256() -> str:
    """Changes whenever this module's SQL does, so an upgrade re-applies it."""
    return hashlib.sha256(_SCRIPT.encode()).hexdigest()
