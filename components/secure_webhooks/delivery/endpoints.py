"""Endpoints: the receivers the reconciler spares (issue 17 part 1; docs/delivery.md, "Sparing the orchestrator").

An endpoint is the origin of an event's URL, lower(scheme://host[:port]) without userinfo or path. Limits
hold per endpoint, not per webhook: several webhooks posting to one host share what that host can take.

Three mechanisms, each a SQL fragment the reconciler composes into its round:

- in flight: at most `maxInFlight` requests of an endpoint in state 'sending' (queued in pg_net, on
  the wire, or answered and not yet judged);
- rate slots: an attempt holds a slot from the moment it is queued until one second after the round
  that judged it. At most the endpoint's budget (`maxPerSecond`, lowered by 429/502/503/504) of slots
  are held at once. Every request arriving at the receiver in [t, t+1) was queued before t+1 and
  judged after t, so all of them hold a slot just before t+1: the receiver never sees more than the
  budget in any one-second window, whatever pg_net batches together. The price: a slot lasts the
  request's round trip plus a second, so a backlog drains at about budget / (1 + round trip) per second;
- circuit breaker: after `pauseAfterFailures` consecutive failures the endpoint is paused; its due
  events are parked (they use no attempts) and one probe, its oldest waiting event, goes out every
  `probeSeconds`. A failed probe gives its attempt back; any answer that shows the endpoint alive
  resumes it and the parked events flow again under the limits.

An event that cannot be sent now is *parked*: pending with `next_attempt_at` = PARKED and its endpoint
recorded, so it leaves the due index that every round scans (a backlog of one endpoint never hides
other endpoints' events) and waits in the endpoint's own queue (`events_parked`), sent oldest first as
the endpoint's allowance permits. Normal traffic never parks: it fits the limits.

The endpoint is stored on the event when it is sent or parked (the insert path does not change), and
everything counted per endpoint is read by partial indexes that hold only what is in flight, recently
judged or parked, so a round's cost does not grow with delivered history.
"""

from __future__ import annotations

from urllib.parse import urlsplit

ENDPOINTS = "endpoints"
#: `next_attempt_at` of a parked event: later than any schedule, and a timestamp psycopg can read.
PARKED = "'9999-12-31 00:00:00+00'::timestamptz"
#: `slot_until` of an attempt in flight: its slot lasts until one second after it is judged.
HELD = "'infinity'::timestamptz"
#: Answers that make an endpoint slow down (Standard Webhooks: back off on these).
SLOW_DOWN = (429, 502, 503, 504)


def endpoint_of(url: str) -> str:
    """The endpoint of a URL, as the SQL below computes it (for status, tests and docs)."""
    parts = urlsplit(url.strip())
    host = parts.netloc.rsplit("@", 1)[-1]
    return f"{parts.scheme}://{host}".lower()


def endpoint_sql(url: str) -> str:
    """SQL: the endpoint of the URL expression `url`; a URL without a scheme is its own odd endpoint."""
    return (
        f"COALESCE(pg_catalog.lower(pg_catalog.substring({url}, '^([A-Za-z][A-Za-z0-9+.-]*://)')"
        f" || pg_catalog.regexp_replace(pg_catalog.substring({url}, '^[A-Za-z][A-Za-z0-9+.-]*://([^/?#]*)'),"
        f" '^.*@', '')), 'invalid:')"
    )


def failure_sql(status: str) -> str:
    """SQL: does an outcome with HTTP status `status` (NULL: no answer) count against the endpoint?"""
    return f"({status} IS NULL OR {status} >= 500 OR {status} IN (408, 429))"


def ddl(schema: str, events: str) -> str:
    """Idempotent DDL: the endpoint columns of the events table, their indexes, the endpoints table."""
    return f"""
-- Issue 17 part 1 (secure_webhooks/delivery/endpoints.py): per-endpoint limits and circuit breaker.
ALTER TABLE {schema}.{events} ADD COLUMN IF NOT EXISTS endpoint text;
ALTER TABLE {schema}.{events} ADD COLUMN IF NOT EXISTS slot_until timestamptz;
ALTER TABLE {schema}.{events} ADD COLUMN IF NOT EXISTS probe boolean NOT NULL DEFAULT false;
CREATE INDEX IF NOT EXISTS events_endpoint_slots ON {schema}.{events} (endpoint, slot_until)
  WHERE slot_until IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_parked ON {schema}.{events} (endpoint, created_at)
  WHERE state = 'pending' AND next_attempt_at = {PARKED};
CREATE TABLE IF NOT EXISTS {schema}.{ENDPOINTS} (
    endpoint text PRIMARY KEY,
    state text NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'paused')),
    paused_since timestamptz,
    next_probe_at timestamptz,
    consecutive_failures integer NOT NULL DEFAULT 0,
    rate_budget integer,
    slowed_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);
"""


def _slot_free(alias: str) -> str:
    """An event is not sent again while its own previous slot is held."""
    return f"({alias}.slot_until IS NULL OR {alias}.slot_until <= pg_catalog.now())"


def due_condition(alias: str) -> str:
    """The extra condition on the due-event window (the reconciler's selection stays its own)."""
    return _slot_free(alias)


def limited_due(
    schema: str, events: str, window: str, route_join: str, max_in_flight: int, max_per_second: int, condition: str = ""
) -> str:
    """SQL rows (id, url, payload, endpoint, probe, send) for the send loop.

    `window` selects the due events (id, url, payload, queued_at) as the reconciler always has; this
    adds, per endpoint, the parked events its allowance lets go (oldest first), and marks each row to
    send (`send`) or to park (a due event its endpoint cannot take now). `route_join` resolves the URL
    of an event aliased `e` to `route.url`, as the window does; `condition` (`AND ...` on `e`) holds
    parked events back as the window holds due ones (per-row order, ordering.py).
    """
    table = f"{schema}.{events}"
    allowance = f"""CASE WHEN COALESCE(p.state = 'paused', false)
                THEN CASE WHEN p.next_probe_at <= pg_catalog.now() AND c.probes = 0 THEN 1 ELSE 0 END
              ELSE GREATEST(0, LEAST({int(max_in_flight)} - c.in_flight,
                   LEAST(COALESCE(p.rate_budget, {int(max_per_second)}), {int(max_per_second)}) - c.slots)) END"""
    return f"""WITH due_window AS (
    {window}
  ), named AS (
    SELECT w.id, w.url, w.payload, w.queued_at, {endpoint_sql("w.url")} AS endpoint FROM due_window AS w
  ), considered AS (
    SELECT n.endpoint FROM named AS n
    UNION
    SELECT p.endpoint FROM {schema}.{ENDPOINTS} AS p
     WHERE EXISTS (SELECT FROM {table} AS x
                    WHERE x.endpoint = p.endpoint AND x.state = 'pending' AND x.next_attempt_at = {PARKED})
  ), budget AS (
    SELECT h.endpoint, COALESCE(p.state = 'paused', false) AS paused, {allowance} AS allowed
      FROM considered AS h
      LEFT JOIN {schema}.{ENDPOINTS} AS p ON p.endpoint = h.endpoint
     CROSS JOIN LATERAL (
       SELECT pg_catalog.count(*) FILTER (WHERE s.slot_until = {HELD}) AS in_flight,
              pg_catalog.count(*) AS slots,
              pg_catalog.count(*) FILTER (WHERE s.slot_until = {HELD} AND s.probe) AS probes
         FROM {table} AS s
        WHERE s.endpoint = h.endpoint AND s.slot_until > pg_catalog.now()) AS c
  ), picked AS (
    SELECT x.id, x.url, x.payload, x.created_at AS queued_at, b.endpoint
      FROM budget AS b
     CROSS JOIN LATERAL (
       SELECT e.id, COALESCE(route.url, e.url) AS url, e.payload, e.created_at FROM {table} AS e
         {route_join}
        WHERE e.endpoint = b.endpoint AND e.state = 'pending' AND e.next_attempt_at = {PARKED}
          AND {_slot_free("e")}{condition}
        ORDER BY e.created_at
        LIMIT b.allowed
          FOR UPDATE OF e SKIP LOCKED) AS x
  ), ranked AS (
    SELECT c.*, b.paused, b.allowed,
           pg_catalog.row_number() OVER (PARTITION BY c.endpoint ORDER BY c.parked DESC, c.queued_at) AS place
      FROM (SELECT id, url, payload, queued_at, endpoint, true AS parked FROM picked
            UNION ALL
            SELECT id, url, payload, queued_at, endpoint, false FROM named) AS c
      JOIN budget AS b ON b.endpoint = c.endpoint
  ), turns AS (
    SELECT r.*, r.place <= r.allowed AS allowed_now,
           pg_catalog.row_number() OVER (ORDER BY r.place <= r.allowed DESC, r.parked DESC, r.queued_at) AS turn
      FROM ranked AS r
  )
  SELECT t.id, t.url, t.payload, t.endpoint, t.paused AS probe, t.allowed_now AS send
    FROM turns AS t
   WHERE (t.allowed_now AND t.turn <= room) OR NOT (t.allowed_now OR t.parked)
   ORDER BY t.turn"""


def moves(schema: str, events: str, route_join: str, routes: str) -> list[str]:
    """SQL for the `up` that changes where webhooks post (their routes).

    A parked event waits in the queue of the endpoint it was parked for; if its webhook now posts
    elsewhere, it would go to the new URL while counting against the old endpoint's limits, so the new
    endpoint could see more than its own. It moves to its route's endpoint (which gets its row, open, if it
    has none yet: rounds find parked events through the rows). An endpoint paused that no
    route names any more and that nothing waits for has nothing left to probe: it would stay paused
    for good (and fail `status --check`), so it is opened. `route_join` resolves an event aliased `e` to
    `route.url`; `routes` are the rows (schema, table, webhook, url) it joins.
    """
    table = f"{schema}.{events}"
    return [
        f"""UPDATE {table} AS t
   SET endpoint = moved.endpoint
  FROM (SELECT e.id, {endpoint_sql("COALESCE(route.url, e.url)")} AS endpoint
          FROM {table} AS e
          {route_join}
         WHERE e.state = 'pending' AND e.next_attempt_at = {PARKED}) AS moved
 WHERE t.id = moved.id AND t.endpoint IS DISTINCT FROM moved.endpoint""",
        # A round looks for parked events through the endpoints' rows: one that never answered yet has none.
        f"""INSERT INTO {schema}.{ENDPOINTS} (endpoint)
SELECT DISTINCT e.endpoint FROM {table} AS e
 WHERE e.state = 'pending' AND e.next_attempt_at = {PARKED} AND e.endpoint IS NOT NULL
ON CONFLICT (endpoint) DO NOTHING""",
        f"""UPDATE {schema}.{ENDPOINTS} AS p
   SET state = 'open', paused_since = NULL, next_probe_at = NULL, consecutive_failures = 0,
       updated_at = pg_catalog.now()
 WHERE p.state = 'paused'
   AND p.endpoint NOT IN (SELECT {endpoint_sql("r.url")} FROM ({routes}) AS r(schema_name, table_name, webhook, url)
                           WHERE r.url IS NOT NULL)
   AND NOT EXISTS (SELECT FROM {table} AS e
                    WHERE e.endpoint = p.endpoint AND e.slot_until IS NOT NULL AND e.slot_until > pg_catalog.now())
   AND NOT EXISTS (SELECT FROM {table} AS e
                    WHERE e.endpoint = p.endpoint AND e.state = 'pending' AND e.next_attempt_at = {PARKED})""",
    ]


def park_statement(schema: str, events: str) -> str:
    """PL/pgSQL: park the loop's `due` event (its endpoint cannot take it now); no attempt is used."""
    return f"""UPDATE {schema}.{events} AS e
         SET next_attempt_at = {PARKED}, endpoint = due.endpoint
       WHERE e.id = due.id;"""


def sent_columns() -> str:
    """SET items for an event just queued in pg_net: its endpoint, its slot, whether it is a probe."""
    return f"endpoint = due.endpoint, slot_until = {HELD}, probe = due.probe"


def probe_sent_statement(schema: str, probe_seconds: int) -> str:
    """PL/pgSQL: a probe went out; the next one is due a probe interval later, whatever its outcome."""
    return f"""IF due.probe THEN
        UPDATE {schema}.{ENDPOINTS} AS p
           SET next_probe_at = pg_catalog.now() + interval '{int(probe_seconds)} seconds',
               updated_at = pg_catalog.now()
         WHERE p.endpoint = due.endpoint;
      END IF;"""


def gives_back(outcome: str) -> str:
    """SQL: a failed probe (outcome alias `outcome`): its attempt is given back and it is parked again."""
    return f"({outcome}.probe AND {failure_sql(f'{outcome}.status_code')})"


def judged_columns(round_started: str) -> str:
    """SET items for a judged event: its slot lasts one second past this round; it is no probe now."""
    return (
        f"slot_until = CASE WHEN e.endpoint IS NOT NULL THEN {round_started} + interval '1 second' END, probe = false"
    )


def judge_statements(schema: str, outcomes: str, pause_after: int, probe_seconds: int, max_per_second: int) -> str:
    """PL/pgSQL: the round's outcomes (jsonb array `outcomes` of {endpoint, status_code, probe, at})
    move each endpoint's circuit breaker and rate budget.

    A run of failures counts outcomes in the order they finished; any answer showing the endpoint alive
    (2xx, or a 4xx other than 408/429) ends it. The budget halves on 429/502/503/504, at most once a
    second, never below 1, and grows by one per 2xx back to maxPerSecond (NULL: the full budget).
    """
    table = f"{schema}.{ENDPOINTS}"
    fail = failure_sql("o.status_code")
    slow = ", ".join(map(str, SLOW_DOWN))
    full = int(max_per_second)
    run = "(CASE WHEN r.alive THEN r.since_alive ELSE p.consecutive_failures + r.failures END)"
    return f"""IF {outcomes} IS NOT NULL THEN
    INSERT INTO {table} (endpoint)
    SELECT DISTINCT o.endpoint FROM pg_catalog.jsonb_to_recordset({outcomes}) AS o(endpoint text)
    ON CONFLICT (endpoint) DO NOTHING;
    UPDATE {table} AS p
       SET consecutive_failures = {run},
           state = CASE WHEN {run} >= {int(pause_after)} THEN 'paused' ELSE 'open' END,
           paused_since = CASE WHEN {run} < {int(pause_after)} THEN NULL
                               WHEN p.state = 'paused' AND NOT r.alive THEN p.paused_since
                               ELSE pg_catalog.now() END,
           next_probe_at = CASE WHEN {run} < {int(pause_after)} THEN NULL
                                WHEN p.state = 'paused' AND NOT r.alive AND NOT r.probe_failed THEN p.next_probe_at
                                ELSE pg_catalog.now() + interval '{int(probe_seconds)} seconds' END,
           rate_budget = CASE
             WHEN r.slow AND (p.slowed_at IS NULL OR p.slowed_at <= pg_catalog.now() - interval '1 second')
               THEN GREATEST(1, LEAST(COALESCE(p.rate_budget, {full}), {full}) / 2)
             WHEN r.slow OR p.rate_budget IS NULL THEN p.rate_budget
             WHEN p.rate_budget + r.successes >= {full} THEN NULL
             ELSE p.rate_budget + r.successes END,
           slowed_at = CASE
             WHEN r.slow AND (p.slowed_at IS NULL OR p.slowed_at <= pg_catalog.now() - interval '1 second')
               THEN pg_catalog.now() ELSE p.slowed_at END,
           updated_at = pg_catalog.now()
      FROM (SELECT m.endpoint,
                   pg_catalog.count(*) FILTER (WHERE m.fail) AS failures,
                   COALESCE(pg_catalog.bool_or(NOT m.fail), false) AS alive,
                   pg_catalog.count(*) FILTER (WHERE m.fail AND m.at > m.last_alive) AS since_alive,
                   COALESCE(pg_catalog.bool_or(m.status_code IN ({slow})), false) AS slow,
                   pg_catalog.count(*) FILTER (WHERE m.status_code BETWEEN 200 AND 299) AS successes,
                   COALESCE(pg_catalog.bool_or(m.probe AND m.fail), false) AS probe_failed
              FROM (SELECT o.endpoint, o.status_code, o.probe, o.at, {fail} AS fail,
                           pg_catalog.max(o.at) FILTER (WHERE NOT {fail}) OVER (PARTITION BY o.endpoint) AS last_alive
                      FROM pg_catalog.jsonb_to_recordset({outcomes})
                           AS o(endpoint text, status_code integer, probe boolean, at timestamptz)) AS m
             GROUP BY m.endpoint) AS r
     WHERE p.endpoint = r.endpoint;
  END IF;"""
