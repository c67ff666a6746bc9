"""Alerts: telling people when events go dead and when an endpoint is paused or resumed.

People need to hear about a problem without watching `status`: one alert per endpoint state
change, and dead events summarised (one alert per `delivery.alertIntervalSeconds`, never one per
event, so an outage cannot flood a chat channel). The reconciler's round calls `alerts_round()`
(`round_call`), which

1. reports dead events nobody was told about yet: each death reported is kept in `dead_reported`
   (the outbox's tables are not touched), and deaths are looked for back to DEAD_LAG_SECONDS before
   the last look, so a death a concurrent round commits late is reported by a later one, never twice;
2. compares `endpoints` (the circuit breaker's table) with `endpoint_alerts`, the last state it
   alerted per endpoint, and alerts each difference once;
3. records each alert in `alerts` and publishes it on the `pg_notify` channel in the same
   transaction (listeners get it on commit, with or without an alert URL);
4. posts pending alerts through pg_net to the alert URL, read from Vault at send time (the URL
   of a Slack or Teams incoming webhook is a credential), and takes their outcomes like events:
   a few retries with backoff, then `failed`.

The call runs in a subtransaction: whatever goes wrong with alerts is a warning of the round and
rolled back (retried next round), never a failed round or a delayed event. Alerts carry counts,
webhook names, event ids and endpoint origins: never row data, never the alert URL.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from secure_webhooks.configuration.delivery_settings import DeliverySettings
from secure_webhooks.delivery.endpoints import ENDPOINTS
from secure_webhooks.delivery.outbox import EVENTS, SCHEMA
from secure_webhooks.signing.trigger_function import sql_literal

ALERTS = "alerts"
ENDPOINT_ALERTS = "endpoint_alerts"
#: One row: when the last dead-events alert was made (the summary interval counts from it).
ALERT_STATE = "alert_state"
DEAD_REPORTED = "dead_reported"
TABLES = (ALERTS, ENDPOINT_ALERTS, ALERT_STATE, DEAD_REPORTED)
#: Deaths are looked for from this long before the last check: a round marks events dead at its start
#: (`now()`) and commits later, so a check may not see a death dated before it yet. A round that commits
#: more than this after it began could have its deaths go unreported (rounds last well under a second).
DEAD_LAG_SECONDS = 300

ROUND = "alerts_round"
FUNCTIONS = ((ROUND, "epoch uuid, round_started timestamp with time zone"),)

#: LISTEN secure_webhooks_alerts: every alert's JSON body, sent when the alert's transaction commits.
CHANNEL = "secure_webhooks_alerts"
#: The Vault secret holding the alert URL when the stack configures one.
ALERT_URL_SECRET = "secure_webhooks_alert_url"
#: Attempts per alert, and the wait after attempt n: min(3600, 10 * 3^(n-1)) s (10 s, 30 s, 90 s, 270 s).
MAX_ATTEMPTS = 5
TIMEOUT_MS = 5000
#: A request neither queued nor answered after this long is taken as lost (pg_net deletes a request
#: before sending it; twice the timeout plus slack, as for events).
GRACE_SECONDS = 2 * TIMEOUT_MS // 1000 + 5
#: Alerts posted per round; there are few, and each is one pg_net request beside the events'.
SEND_BATCH = 20
#: Dead events one summary reports at most; more are reported by the next one.
DEAD_BATCH = 10_000
#: Webhooks named one by one in a summary (the rest are counted): keeps a NOTIFY payload far below 8000 bytes.
NAMED_WEBHOOKS = 20
#: How long alerts wait for a lock before the round gives them up (a warning) and goes on delivering.
ALERT_LOCK_TIMEOUT = "1s"
#: Alerts are kept this long after they are done (posted, failed for good, or on the channel only), for `status`,
#: the metrics and inspection.
KEEP_ALERTS = "7 days"
KINDS = ("events.dead", "endpoint.paused", "endpoint.resumed")
#: pending: to be posted (first or next try); sending: posted, outcome not read yet; sent: a 2xx; failed: MAX_ATTEMPTS
#: tries without one; unsent: published on the channel only (no alert URL). The last three are done.
STATES = ("pending", "sending", "sent", "failed", "unsent")
DONE_STATES = ("sent", "failed", "unsent")
#: On their way to the alert URL: not done.
UNPOSTED_STATES = tuple(state for state in STATES if state not in DONE_STATES)

_SCRIPT = f"""
CREATE TABLE IF NOT EXISTS {SCHEMA}.{ALERTS} (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind text NOT NULL CHECK (kind IN {tuple(KINDS)!r}),
    body jsonb NOT NULL,
    state text NOT NULL CHECK (state IN {tuple(STATES)!r}),
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    request_id bigint,
    request_epoch uuid,
    sent_at timestamptz,
    last_status_code integer,
    last_error text,
    created_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    finished_at timestamptz
);
CREATE INDEX IF NOT EXISTS alerts_due ON {SCHEMA}.{ALERTS} (next_attempt_at) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS alerts_in_flight ON {SCHEMA}.{ALERTS} (sent_at) WHERE state = 'sending';
CREATE INDEX IF NOT EXISTS alerts_created ON {SCHEMA}.{ALERTS} (created_at);

CREATE TABLE IF NOT EXISTS {SCHEMA}.{ALERT_STATE} (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    last_dead_alert_at timestamptz,
    -- Deaths before this minus DEAD_LAG_SECONDS have all been looked at.
    dead_checked_until timestamptz
);
INSERT INTO {SCHEMA}.{ALERT_STATE} DEFAULT VALUES ON CONFLICT DO NOTHING;

CREATE TABLE IF NOT EXISTS {SCHEMA}.{ENDPOINT_ALERTS} (
    endpoint text PRIMARY KEY,
    state text NOT NULL,
    paused_since timestamptz,
    alerted_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);

-- Each death an alert reported (the event's dead_at then): a replayed event that dies again is reported again.
CREATE TABLE IF NOT EXISTS {SCHEMA}.{DEAD_REPORTED} (
    event_id uuid PRIMARY KEY,
    dead_at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_reported_dead_at ON {SCHEMA}.{DEAD_REPORTED} (dead_at);
"""


def install_statements(nobody: sql.Composable, operators: list[str]) -> list[sql.Composable]:
    """The alert tables (idempotent, so an existing outbox is upgraded in place), installed with the
    reconciler's functions; `nobody` (PUBLIC and the API roles) gets nothing, as in outbox.install_statements,
    and operators may read the alerts (`status`)."""
    schema = sql.Identifier(SCHEMA)
    tables = sql.SQL(", ").join(sql.SQL("{}.{}").format(schema, sql.Identifier(name)) for name in TABLES)
    statements: list[sql.Composable] = [
        sql.SQL(_SCRIPT),
        sql.SQL("REVOKE ALL ON {} FROM {}").format(tables, nobody),
    ]
    statements += [
        sql.SQL("GRANT SELECT ON {}.{} TO {}").format(schema, sql.Identifier(ALERTS), sql.Identifier(role))
        for role in operators
    ]
    return statements


def quiesce(cur: psycopg.Cursor) -> None:
    """Wait for a round that is making alerts to commit, and keep later rounds out of them until this
    transaction ends (they skip the locked state row and alerts). Taken before the alert tables are
    dropped: a round holding one alert table while it waits for the next would deadlock with the DROP."""
    cur.execute("SELECT pg_catalog.to_regclass(%s) IS NOT NULL", (f"{SCHEMA}.{ALERT_STATE}",))
    if cur.fetchone()[0]:
        cur.execute(sql.SQL("SELECT FROM {}.{} FOR UPDATE").format(sql.Identifier(SCHEMA), sql.Identifier(ALERT_STATE)))


def drop_statement() -> sql.Composable:
    """The alert tables go with the reconciler, before the outbox drops its schema (which it does
    without CASCADE)."""
    schema = sql.Identifier(SCHEMA)
    return sql.SQL("DROP TABLE IF EXISTS {}").format(
        sql.SQL(", ").join(sql.SQL("{}.{}").format(schema, sql.Identifier(name)) for name in TABLES)
    )


def _origin(expression: str) -> str:
    """SQL: an endpoint as it may be shown, the URL's origin without userinfo, at most 300 characters."""
    return (
        f"pg_catalog.left(pg_catalog.regexp_replace({expression}, "
        "'^([A-Za-z][A-Za-z0-9+.-]*://)?([^/@]*@)?([^/?#]*).*$', '\\1\\3'), 300)"
    )


def _make_alert(kind: str, body: str, initial_state: str) -> str:
    """PL/pgSQL: record an alert with `body` (jsonb SQL) and publish it on the channel (delivered on commit)."""
    return f"""alert_body := {body};
    INSERT INTO {SCHEMA}.{ALERTS} (kind, body, state) VALUES ({sql_literal(kind)}, alert_body, {initial_state})
    RETURNING id INTO alert_id;
    PERFORM pg_catalog.pg_notify({sql_literal(CHANNEL)},
      (alert_body || pg_catalog.jsonb_build_object('alert_id', alert_id))::text);
    made := made + 1;"""


def _when(expression: str) -> str:
    return f"pg_catalog.to_char({expression} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"


def _body(kind: str, text: str, **fields: str) -> str:
    """SQL: an alert's JSON body, `text` first (what Slack and Teams show), then its type and `fields`
    (name: SQL expression)."""
    pairs = [("text", text), ("type", sql_literal(kind)), ("source", "'secure-webhooks'")]
    pairs += [("created_at", _when("pg_catalog.now()")), *fields.items()]
    return "pg_catalog.jsonb_build_object(" + ", ".join(f"'{name}', {value}" for name, value in pairs) + ")"


def _dead_summary(delivery: DeliverySettings, initial_state: str) -> str:
    events = f"{SCHEMA}.{EVENTS}"
    text = (
        "'secure-webhooks: ' || total || ' webhook event' || CASE WHEN total = 1 THEN '' ELSE 's' END"
        " || ' went dead (' || summary || '): they are not retried any more. '"
        " || 'See `webhook-deliveries list --status dead`; send them again with `webhook-deliveries replay`.'"
    )
    body = _body(
        "events.dead",
        text,
        dead="total",
        first_dead_at=_when("first_dead"),
        last_dead_at=_when("last_dead"),
        webhooks="named",
        more_webhooks="more",
    )
    reported = f"{SCHEMA}.{DEAD_REPORTED}"
    unreported = (
        f"SELECT e.id, e.webhook, e.dead_at, e.created_at FROM {events} AS e"
        " WHERE e.state = 'dead' AND e.dead_at > since"
        f" AND NOT EXISTS (SELECT FROM {reported} AS r WHERE r.event_id = e.id AND r.dead_at = e.dead_at)"
    )
    lag = f"interval '{DEAD_LAG_SECONDS} seconds'"
    return f"""IF last_dead_alert IS NULL
     OR last_dead_alert <= pg_catalog.now() - interval '{int(delivery.alert_interval_seconds)} seconds' THEN
    since := COALESCE(checked_until, pg_catalog.now()) - {lag};
    total := 0;
    -- The cheap question first: most rounds find no unreported death.
    IF EXISTS ({unreported}) THEN
    WITH unreported AS (
      {unreported}
       ORDER BY e.dead_at
       LIMIT {DEAD_BATCH}
    ), marked AS (
      INSERT INTO {reported} AS r (event_id, dead_at) SELECT u.id, u.dead_at FROM unreported AS u
      ON CONFLICT (event_id) DO UPDATE SET dead_at = excluded.dead_at
    ), per_webhook AS (
      SELECT u.webhook, pg_catalog.count(*) AS dead, pg_catalog.min(u.dead_at) AS first_dead_at,
             pg_catalog.max(u.dead_at) AS last_dead_at,
             (pg_catalog.array_agg(u.id ORDER BY u.created_at))[1] AS oldest_event_id,
             pg_catalog.row_number() OVER (ORDER BY pg_catalog.count(*) DESC, u.webhook) AS rank
        FROM unreported AS u
       GROUP BY u.webhook
    )
    SELECT COALESCE(pg_catalog.sum(w.dead)::integer, 0), pg_catalog.min(w.first_dead_at),
           pg_catalog.max(w.last_dead_at),
           COALESCE(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
             'webhook', w.webhook, 'dead', w.dead, 'oldest_event_id', w.oldest_event_id,
             'first_dead_at', {_when("w.first_dead_at")}) ORDER BY w.rank) FILTER (WHERE w.rank <= {NAMED_WEBHOOKS}),
             '[]'::jsonb),
           pg_catalog.string_agg(w.webhook || ' ' || w.dead, ', ' ORDER BY w.rank)
             FILTER (WHERE w.rank <= {NAMED_WEBHOOKS}),
           pg_catalog.count(*) FILTER (WHERE w.rank > {NAMED_WEBHOOKS})
      INTO total, first_dead, last_dead, named, summary, more
      FROM per_webhook AS w;
    IF total > 0 THEN
      IF more > 0 THEN
        summary := summary || ' and ' || more || ' more webhook' || CASE WHEN more = 1 THEN '' ELSE 's' END;
      END IF;
      {_make_alert("events.dead", body, initial_state)}
      UPDATE {SCHEMA}.{ALERT_STATE} SET last_dead_alert_at = pg_catalog.now();
    END IF;
    END IF;
    -- The window moves on (at most once a minute, so an idle round writes nothing); a full batch
    -- leaves the rest of its deaths inside it. Marks older than the window are never looked at again.
    IF total < {DEAD_BATCH} AND (checked_until IS NULL OR checked_until < pg_catalog.now() - interval '1 minute') THEN
      UPDATE {SCHEMA}.{ALERT_STATE} SET dead_checked_until = pg_catalog.now();
      DELETE FROM {reported} AS r WHERE r.dead_at < pg_catalog.now() - {lag};
    END IF;
  END IF;"""


def _endpoint_transitions(initial_state: str) -> str:
    endpoint = _origin("change.endpoint")
    paused_text = (
        f"'secure-webhooks: endpoint ' || {endpoint} || ' is paused'"
        " || COALESCE(' after ' || change.consecutive_failures || ' consecutive failures', '')"
        " || ': its events wait without using attempts'"
        f" || COALESCE('; next probe at ' || {_when('change.next_probe_at')}, '') || '.'"
    )
    paused = _body(
        "endpoint.paused",
        paused_text,
        endpoint=endpoint,
        paused_since=_when("change.paused_since"),
        next_probe_at=_when("change.next_probe_at"),
        consecutive_failures="change.consecutive_failures",
    )
    resumed_text = (
        f"'secure-webhooks: endpoint ' || {endpoint} || ' resumed'"
        f" || COALESCE(' (paused since ' || {_when('change.alerted_since')} || ')', '')"
        " || ': its waiting events are being delivered.'"
    )
    resumed = _body(
        "endpoint.resumed",
        resumed_text,
        endpoint=endpoint,
        paused_since=_when("change.alerted_since"),
        resumed_at=_when("pg_catalog.now()"),
    )
    endpoints = f"{SCHEMA}.{ENDPOINTS}"
    alerted = f"{SCHEMA}.{ENDPOINT_ALERTS}"
    return f"""FOR change IN
    SELECT p.endpoint, p.state, p.paused_since, p.next_probe_at, p.consecutive_failures,
           a.endpoint IS NOT NULL AS known, a.state AS alerted_state, a.paused_since AS alerted_since
      FROM {endpoints} AS p
      LEFT JOIN {alerted} AS a ON a.endpoint = p.endpoint
     WHERE a.endpoint IS NULL OR a.state IS DISTINCT FROM p.state
        OR (p.state = 'paused' AND a.paused_since IS DISTINCT FROM p.paused_since)
     LIMIT 100
  LOOP
    IF change.state = 'paused' THEN
      {_make_alert("endpoint.paused", paused, initial_state)}
    ELSIF change.alerted_state = 'paused' THEN
      {_make_alert("endpoint.resumed", resumed, initial_state)}
    END IF;
    INSERT INTO {alerted} AS a (endpoint, state, paused_since, alerted_at)
    VALUES (change.endpoint, change.state, change.paused_since, pg_catalog.now())
    ON CONFLICT (endpoint) DO UPDATE
       SET state = excluded.state, paused_since = excluded.paused_since, alerted_at = excluded.alerted_at;
  END LOOP;
  -- An endpoint the breaker forgot: nothing to say about it any more.
  DELETE FROM {alerted} AS a WHERE NOT EXISTS (SELECT FROM {endpoints} AS p WHERE p.endpoint = a.endpoint);"""


def _retry_at(attempts: str) -> str:
    """SQL: when an alert that failed its `attempts`-th attempt is tried again (MAX_ATTEMPTS says the waits)."""
    return f"pg_catalog.now() + pg_catalog.make_interval(secs => LEAST(3600, 10 * 3 ^ GREATEST({attempts} - 1, 0)))"


def _outcomes() -> str:
    alerts = f"{SCHEMA}.{ALERTS}"
    return f"""IF EXISTS (SELECT FROM {alerts} AS a WHERE a.state = 'sending') THEN
  WITH in_flight AS (
    SELECT a.id, a.request_id, a.request_epoch, a.sent_at FROM {alerts} AS a
     WHERE a.state = 'sending'
       FOR UPDATE SKIP LOCKED
  ), queued AS (
    SELECT q.id FROM net.http_request_queue AS q JOIN in_flight AS i ON q.id = i.request_id
  ), outcome AS (
    SELECT DISTINCT ON (i.id) i.id, r.status_code, r.timed_out
      FROM in_flight AS i
      JOIN net._http_response AS r ON r.id = i.request_id
     WHERE i.request_epoch = epoch AND r.created >= i.sent_at AND r.created <= round_started
       AND NOT EXISTS (SELECT FROM queued WHERE queued.id = i.request_id)
     ORDER BY i.id, (r.status_code BETWEEN 200 AND 299) IS TRUE, r.created
  ), judged AS (
    SELECT i.id, o.status_code,
           CASE
             WHEN i.request_epoch IS DISTINCT FROM epoch THEN 'request lost: crash recovery emptied pg_net''s queue'
             WHEN o.id IS NULL THEN 'no response within {GRACE_SECONDS} s'
             WHEN o.status_code BETWEEN 200 AND 299 THEN NULL
             WHEN o.timed_out THEN 'timed out'
             WHEN o.status_code IS NULL THEN 'request failed (no HTTP response)'
             ELSE 'HTTP ' || o.status_code
           END AS error
      FROM in_flight AS i
      LEFT JOIN outcome AS o ON o.id = i.id
     WHERE o.id IS NOT NULL OR i.request_epoch IS DISTINCT FROM epoch
        OR (i.sent_at < pg_catalog.now() - interval '{GRACE_SECONDS} seconds'
            AND NOT EXISTS (SELECT FROM queued WHERE queued.id = i.request_id))
  )
  UPDATE {alerts} AS a
     SET state = CASE WHEN j.error IS NULL THEN 'sent' WHEN a.attempts >= {MAX_ATTEMPTS} THEN 'failed'
                      ELSE 'pending' END,
         finished_at = CASE WHEN j.error IS NULL OR a.attempts >= {MAX_ATTEMPTS} THEN pg_catalog.now() END,
         next_attempt_at = {_retry_at("a.attempts")},
         last_status_code = j.status_code,
         last_error = j.error
    FROM judged AS j
   WHERE a.id = j.id;
  END IF;"""


def _sending(secret_name: str) -> str:
    alerts = f"{SCHEMA}.{ALERTS}"
    missing = sql_literal(f"the alert URL is not in Vault (secret {secret_name}); run pulumi up")
    due_now = "a.state = 'pending' AND a.next_attempt_at <= pg_catalog.now()"
    return f"""IF EXISTS (SELECT FROM {alerts} AS a WHERE {due_now}) THEN
    SELECT s.decrypted_secret INTO url FROM vault.decrypted_secrets AS s WHERE s.name = {sql_literal(secret_name)};
    failure := CASE WHEN url IS NULL THEN {missing} END;
    IF failure IS NULL THEN
      BEGIN
        PERFORM net._encode_url_with_params_array(url, '{{}}'::text[]);
      EXCEPTION WHEN others THEN
        -- pg_net's message quotes the URL: only the SQLSTATE is kept.
        failure := 'pg_net refuses the alert URL (SQLSTATE ' || SQLSTATE || ')';
      END;
    END IF;
    FOR due IN
      SELECT a.id, a.body FROM {alerts} AS a
       WHERE a.state = 'pending' AND a.next_attempt_at <= pg_catalog.now()
       ORDER BY a.next_attempt_at
       LIMIT {SEND_BATCH}
         FOR UPDATE SKIP LOCKED
    LOOP
      IF failure IS NULL THEN
        request := net.http_post(url, due.body || pg_catalog.jsonb_build_object('alert_id', due.id), '{{}}'::jsonb,
                                 '{{"Content-Type": "application/json"}}'::jsonb, {TIMEOUT_MS});
        UPDATE {alerts} AS a
           SET state = 'sending', attempts = a.attempts + 1, request_id = request, request_epoch = epoch,
               sent_at = pg_catalog.now()
         WHERE a.id = due.id;
      ELSE
        UPDATE {alerts} AS a
           SET attempts = a.attempts + 1,
               state = CASE WHEN a.attempts + 1 >= {MAX_ATTEMPTS} THEN 'failed' ELSE 'pending' END,
               finished_at = CASE WHEN a.attempts + 1 >= {MAX_ATTEMPTS} THEN pg_catalog.now() END,
               next_attempt_at = {_retry_at("a.attempts + 1")},
               last_status_code = NULL, last_error = failure
         WHERE a.id = due.id;
      END IF;
    END LOOP;
  END IF;"""


def render_round(delivery: DeliverySettings) -> str:
    """The body of `alerts_round(epoch, round_started)`; it returns the number of alerts it made."""
    secret_name = delivery.alert_url_secret
    initial_state = "'pending'" if secret_name else "'unsent'"
    if secret_name:
        send = f"{_outcomes()}\n  {_sending(secret_name)}"
    else:
        # No alert URL (any more): alerts are published on the channel only.
        send = (
            f"UPDATE {SCHEMA}.{ALERTS} AS a SET state = 'unsent', finished_at = pg_catalog.now(),"
            " last_error = 'no alert URL is configured'"
            " WHERE a.state IN ('pending', 'sending');"
        )
    return f"""
DECLARE
  made integer := 0;
  round_lock_timeout text;
  last_dead_alert timestamptz;
  checked_until timestamptz;
  since timestamptz;
  total integer;
  first_dead timestamptz;
  last_dead timestamptz;
  named jsonb;
  summary text;
  more integer;
  alert_body jsonb;
  alert_id bigint;
  change record;
  due record;
  url text;
  failure text;
  request bigint;
BEGIN
  -- A lock held on an alert table delays the round's deliveries by at most this (then the round's
  -- subtransaction gives up with a warning); the round's own lock_timeout is put back at the end.
  round_lock_timeout := pg_catalog.current_setting('lock_timeout');
  PERFORM pg_catalog.set_config('lock_timeout', '{ALERT_LOCK_TIMEOUT}', true);
  -- One round at a time makes alerts; a concurrent round skips them (a later round reports what it saw).
  -- The turn is the state row's lock, which only the owner may take (an advisory lock key, which any
  -- role may hold, let any role silence every alert). Not found: taken, or the row is missing (put
  -- back; a row that is there and locked is left alone: ON CONFLICT DO NOTHING does not wait for it).
  SELECT s.last_dead_alert_at, s.dead_checked_until INTO last_dead_alert, checked_until
    FROM {SCHEMA}.{ALERT_STATE} AS s FOR UPDATE SKIP LOCKED;
  IF NOT FOUND THEN
    INSERT INTO {SCHEMA}.{ALERT_STATE} DEFAULT VALUES ON CONFLICT DO NOTHING;
    PERFORM pg_catalog.set_config('lock_timeout', round_lock_timeout, true);
    RETURN 0;
  END IF;
  {_dead_summary(delivery, initial_state)}
  {_endpoint_transitions(initial_state)}
  {send}
  PERFORM pg_catalog.set_config('lock_timeout', round_lock_timeout, true);
  RETURN made;
END
"""


def round_call() -> str:
    """PL/pgSQL for the reconciler's round (`epoch` and `round_started` are its variables): alerts
    in a subtransaction, so their failure is a warning and never fails the round or delays an event."""
    return f"""BEGIN
    PERFORM {SCHEMA}.{ROUND}(epoch, round_started);
  EXCEPTION WHEN others THEN
    -- A URL in the message is cut to its origin: the alert URL's path is a credential.
    RAISE WARNING USING MESSAGE = 'secure_webhooks: alerts skipped this round (SQLSTATE ' || SQLSTATE || '): '
      || pg_catalog.left(pg_catalog.regexp_replace(SQLERRM,
           '([A-Za-z][A-Za-z0-9+.-]*://)([^/@[:space:]]*@)?([^/?#[:space:]"'']*)[^[:space:]"'']*', '\\1\\3', 'g'), 200);
  END;"""


def purge_statement() -> str:
    """PL/pgSQL for purge_expired: alerts done for longer than KEEP_ALERTS go; pending and sending ones never,
    however old, so no alert goes untried. Counted from when an alert was done, not made: one made while no round
    ran for days (a paused job, a database down) and failing on their return would otherwise go at the next
    purge, before `status --check` or the metrics could report it. The condition on `created_at` (an alert is
    done after it is made) lets the alerts_created index find the candidates; an alert made `unsent` (no alert
    URL) has no finished_at: it was done when it was made."""
    keep = f"pg_catalog.now() - interval '{KEEP_ALERTS}'"
    return (
        f"DELETE FROM {SCHEMA}.{ALERTS} AS a WHERE a.created_at < {keep}"
        f" AND a.state IN {tuple(DONE_STATES)!r} AND (a.finished_at IS NULL OR a.finished_at < {keep});"
    )


def function_sources(delivery: DeliverySettings) -> dict[str, tuple[str, str, str]]:
    """{name: (arguments, return type, body)}, installed with the reconciler's functions."""
    return {ROUND: ("epoch uuid, round_started timestamptz", "integer", render_round(delivery))}
