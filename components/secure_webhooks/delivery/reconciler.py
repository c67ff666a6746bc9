"""The SQL of the reconciler: it turns outbox rows into signed pg_net requests until they land.

One call of `reconcile()` is one round in one transaction:
1. outcomes: an event in flight whose pg_net response arrived is delivered
   (2xx), dead (410, or out of attempts) or rescheduled with backoff (anything
   else; `Retry-After` wins over the backoff). A request that vanished (its
   queue row gone with no response after a grace period, e.g. deleted by
   another role) or was lost to crash recovery is rescheduled too;
2. sending: due events get a freshly minted token (new iat/exp, `jti` = the
   event id) and a `webhook-id` header with the same id, and go to
   `net.http_post`; the request id is remembered per attempt. Each endpoint (the URL's origin) gets
   only what its limits and circuit breaker allow; the rest waits in its queue (endpoints.py).
Rows are claimed with FOR UPDATE SKIP LOCKED, so rounds never block inserts
or each other, and two rounds never send one event twice.

pg_net's queue, responses and id sequence are UNLOGGED: crash recovery empties
them and request ids start again, so an id remembered from before a crash
could match a new request's response. Each attempt is therefore tagged with
the pg_net "epoch", a row of an UNLOGGED table of ours that the same recovery
empties: an attempt from another epoch is lost, never matched.

pg_cron runs `cron_command()`: a DO block that loops rounds with COMMIT in
between (a procedure could not: SET search_path forbids transaction control,
and the linter demands SET search_path) for the schedule's interval
(`loop_seconds`), so first attempts reach pg_net's queue within about
IDLE_SLEEP_SECONDS (plus, between two runs, the next run's session start) even
where pg_cron only schedules by the minute. pg_net itself then sends them in its next round.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

from secure_webhooks.configuration.delivery_settings import DeliverySettings
from secure_webhooks.configuration.settings import NEXT_SUFFIX, rotation_partner
from secure_webhooks.delivery import alerts, endpoints
from secure_webhooks.delivery.ordering import may_send
from secure_webhooks.delivery.outbox import ATTEMPTS, EVENTS, PG_NET_EPOCH, SCHEMA
from secure_webhooks.signing.trigger_function import (
    FunctionSpec,
    body_sha256_expression,
    claims_expression,
    jwt_header_statement,
    key_id_expression,
    missing_secret_error,
    read_webhook_key,
    sign_statement,
    sql_literal,
    standard_webhook_headers,
    urlsafe_base64,
)

#: Function names (all in the outbox schema) and their identity arguments.
RECONCILE = "reconcile"
PURGE_EXPIRED = "purge_expired"
RETRY_AFTER = "retry_after_seconds"
FUNCTIONS = ((RECONCILE, "batch_size integer"), (PURGE_EXPIRED, ""), (RETRY_AFTER, "headers jsonb"), *alerts.FUNCTIONS)

JOB_NAME = "secure_webhooks_reconciler"
#: How long an idle loop waits before the next round: what a first attempt after a quiet spell
#: waits at most before it is signed and handed to pg_net. An idle round costs about 0.2 ms
#: (bench/README.md, "Ideas tried").
IDLE_SLEEP_SECONDS = 0.05
#: pg_net's batch size when its setting cannot be read (pg_net's default).
PG_NET_BATCH_SIZE = 200
#: A round hands pg_net no more than this many of its batches, counting what already waits in
#: pg_net's queue: pg_net takes one batch per round, up to a second apart, so more would only wait
#: there (and make every round's check of the requests in flight slower) without leaving sooner.
QUEUED_BATCHES = 2
#: pg_cron's own log of our job's runs is trimmed to this (it grows with every run otherwise).
KEEP_RUN_DETAILS = "1 hour"


@dataclass(frozen=True)
class Route:
    """Where the events of one webhook go: trigger `webhook` on `schema.table` posts to `url`."""

    schema: str
    table: str
    webhook: str
    url: str


@dataclass(frozen=True)
class ReconcilerSpec:
    """Everything the reconciler's SQL depends on (nothing secret).

    `routes` are the webhooks the stack configures now. The reconciler never
    reads a URL from the catalog: a trigger anyone else created, or a restored
    legacy trigger, could carry our webhook's name.
    """

    function: FunctionSpec = field(default_factory=FunctionSpec)
    delivery: DeliverySettings = field(default_factory=DeliverySettings)
    routes: tuple[Route, ...] = ()

    @property
    def grace_seconds(self) -> int:
        """After this long without a queue row or a response, a request is taken as vanished.

        pg_net deletes a request from its queue before it sends it and records the
        outcomes of a batch together, so an honest request is invisible for up to
        about its timeout; twice that plus 5 s is slack for a busy worker.
        """
        return 2 * -(-self.function.timeout_ms // 1000) + 5


def _backoff(attempts_expr: str, delivery: DeliverySettings) -> str:
    """SQL seconds before the next attempt after `attempts_expr` attempts: exponential, capped, jittered."""
    base = (
        f"LEAST({float(delivery.retry_max_seconds)}, "
        f"{float(delivery.retry_initial_seconds)} * {float(delivery.retry_multiplier)}"
        f" ^ GREATEST({attempts_expr} - 1, 0))"
    )
    if delivery.retry_jitter == 0:
        return base
    return f"({base} * (1 + {float(delivery.retry_jitter)} * (2 * pg_catalog.random() - 1)))"


def _next_state(attempts_expr: str, delivery: DeliverySettings, *, gone: str = "false") -> str:
    return f"CASE WHEN {gone} OR {attempts_expr} >= {int(delivery.max_attempts)} THEN 'dead' ELSE 'pending' END"


def _routes(spec: ReconcilerSpec) -> str:
    """SQL rows (schema, table, webhook, url) of the configured webhooks, for a LEFT JOIN."""
    rows = [
        f"({sql_literal(r.schema)}, {sql_literal(r.table)}, {sql_literal(r.webhook)}, {sql_literal(r.url)})"
        for r in spec.routes
    ]
    if not rows:
        return "SELECT NULL::text, NULL::text, NULL::text, NULL::text WHERE false"
    return "VALUES " + ",\n                ".join(rows)


def route_join(spec: ReconcilerSpec) -> str:
    """SQL joining the event aliased `e` to its webhook's configured route (`route.url`, NULL when the webhook
    is no longer configured).

    Each attempt goes to the URL the stack configures for the event's webhook now (`pulumi up` of a new
    orchestratorUrl re-points waiting events too), or, for a webhook no longer configured, to the URL our
    trigger recorded at insert. Never to a URL read from the catalog.
    """
    return f"""LEFT JOIN ({_routes(spec)}) AS route(schema_name, table_name, webhook, url)
        ON route.webhook = e.webhook AND route.schema_name = e.payload ->> 'schema'
       AND route.table_name = e.payload ->> 'table'"""


def endpoint_moves(spec: ReconcilerSpec) -> list[str]:
    """SQL the `up` that installs these routes runs: parked events move to their route's endpoint now, and
    an endpoint paused that no route names and nothing waits for is opened (endpoints.py, `moves`)."""
    return endpoints.moves(SCHEMA, EVENTS, route_join(spec), _routes(spec))


def receipt_expression(event_id: str, issued_at: str, body: str, key: str = "secret") -> str:
    """SQL for the MAC of a receipt: base64url(HMAC-SHA256(`key`, "<event id>.<iat>.<body_sha256>")).

    A receiver holding the JWT key answers `v1,<kid>,<mac>` (and, for reconcilers older than key ids,
    `v1,<mac>` beside it: README, "Delivery receipts"). `iat` ties it to one attempt: a receipt read
    from an earlier attempt's response (pg_net's responses are readable by every role) does not fit
    a retry or a replay.
    """
    signed = f"({event_id})::text || '.' || ({issued_at})::text || '.' || {body_sha256_expression(body)}"
    return urlsafe_base64(f"extensions.hmac({signed}, {key}, 'sha256')")


def _receipts_ctes(spec: ReconcilerSpec) -> str:
    """CTEs `receipt_key`, `receipt` (the receipts each event with a 2xx candidate may carry) and `scored`
    (the candidates with `receipted`: does it carry one? Always true when receipts are off).

    An attempt was signed with the key the round reads (`secret`) or, around a promote, with the key of
    the other Vault secret of the rotation (`<name>_next`, or `<name>` once it is promoted): a receipt
    `v1,<kid>,<mac>` is checked with the key its kid names, of those two, so an answer to an attempt
    signed just before a promote, arriving after it, still delivers (docs/key-rotation.md). A receipt
    without kid (`v1,<mac>`, receivers older than key ids) is checked with the key that signs now.
    """
    if spec.delivery.receipts != "required":
        return "scored AS (SELECT c.*, true AS receipted FROM candidate AS c)"
    mac = receipt_expression("i.id", "i.token_iat", "i.payload", "k.key")
    header = (
        "(SELECT h.value FROM pg_catalog.jsonb_each_text(c.headers) AS h"
        " WHERE pg_catalog.lower(h.key) = 'webhook-receipt' LIMIT 1)"
    )
    # The partner's name is computed, not written as a literal: the Vault secret provider keeps a secret
    # that a function's body names (vault_secret_provider.readers), and this one is optional (absent
    # outside a rotation), so a retire must be able to delete it.
    name = spec.function.secret_name
    partner = rotation_partner(name)
    if partner == name + NEXT_SUFFIX:
        partner_sql = f"{sql_literal(name)} || {sql_literal(NEXT_SUFFIX)}"
    else:
        partner_sql = f"pg_catalog.left({sql_literal(name)}, -{len(NEXT_SUFFIX)})"
    return f"""receipt_key AS MATERIALIZED (
    SELECT k.key, {key_id_expression("k.key")} AS kid, k.signing
      FROM (SELECT secret AS key, true AS signing
            UNION ALL
            SELECT s.decrypted_secret, false FROM vault.decrypted_secrets AS s WHERE s.name = {partner_sql}) AS k
     WHERE k.key IS NOT NULL
  ), receipt AS (
    SELECT i.id, e.expected
      FROM in_flight AS i
      CROSS JOIN LATERAL (
        SELECT pg_catalog.array_agg(r.value) AS expected
          FROM receipt_key AS k
          CROSS JOIN LATERAL (SELECT {mac} AS mac) AS m
          CROSS JOIN LATERAL (VALUES ('v1,' || k.kid || ',' || m.mac),
                                     (CASE WHEN k.signing THEN 'v1,' || m.mac END)) AS r(value)
         WHERE r.value IS NOT NULL) AS e
     WHERE i.token_iat IS NOT NULL
       AND EXISTS (SELECT FROM candidate AS c WHERE c.id = i.id AND c.status_code BETWEEN 200 AND 299)
  ), scored AS (
    SELECT c.*, COALESCE(c.status_code BETWEEN 200 AND 299
                         AND t.expected && pg_catalog.string_to_array(pg_catalog.btrim({header}), ' '), false)
             AS receipted
      FROM candidate AS c
      LEFT JOIN receipt AS t ON t.id = c.id
  )"""


def _preference(spec: ReconcilerSpec) -> str:
    """ORDER BY terms that put the outcome to take first: with receipts, a receipted success."""
    return "c.receipted DESC, " if spec.delivery.receipts == "required" else ""


def _clean(text: str) -> str:
    """SQL: text another role may have written (pg_net's error_msg), made safe to show in `status`."""
    return f"pg_catalog.left(pg_catalog.regexp_replace({text}, '[[:cntrl:]]', ' ', 'g'), 300)"


#: Errors that say nothing about the one event being prepared (a lock timeout, a cancel, no memory, a
#: missing function): they end the round, as before, instead of costing every due event an attempt.
_ROUND_ERRORS = "^(40|42|53|55|57|58|XX001|XX002)"


def render_reconcile(spec: ReconcilerSpec) -> str:
    d = spec.delivery
    f = spec.function
    events = f"{SCHEMA}.{EVENTS}"
    attempts = f"{SCHEMA}.{ATTEMPTS}"
    receipts = d.receipts == "required"
    in_order = may_send("e", d.ordering, d.ordering_on_dead, spec.routes)
    note_missing_webhook_key = f"failure := COALESCE(failure, {missing_secret_error(f.webhook_secret_name or '')});"
    malformed_webhook_key = sql_literal(
        f"{f.webhook_secret_name} in vault is not a valid Standard Webhooks secret (whsec_ followed by base64)"
    )
    # Retry-After may lengthen the wait, never shorten it below the backoff schedule; never beyond
    # retryMaxSeconds (LEAST ignores NULLs, so no header counts as 0). With receipts required, only
    # a response that carries its receipt may lengthen it, or make the event dead with a 410.
    retry_delay = (
        f"GREATEST({_backoff('e.attempts', d)}, LEAST(COALESCE("
        f"CASE WHEN o.receipted THEN {SCHEMA}.{RETRY_AFTER}(o.headers) END, 0), {float(d.retry_max_seconds)}))"
    )
    gives_back = endpoints.gives_back("o")
    due_window = f"""SELECT e.id, COALESCE(route.url, e.url) AS url, e.payload, e.next_attempt_at AS queued_at
      FROM {events} AS e
      {route_join(spec)}
     WHERE e.state = 'pending' AND e.next_attempt_at <= pg_catalog.now() AND {endpoints.due_condition("e")}{in_order}
     ORDER BY e.next_attempt_at
     LIMIT room
       FOR UPDATE OF e SKIP LOCKED"""
    unreceipted = (
        f"""WHEN o.status_code BETWEEN 200 AND 299 AND secret IS NULL
               THEN 'HTTP ' || o.status_code || ', but its receipt cannot be checked: '
                 || {missing_secret_error(f.secret_name)}
             WHEN o.status_code BETWEEN 200 AND 299
               THEN 'HTTP ' || o.status_code || ' without a valid webhook-receipt (delivery.receipts is required)'"""
        if receipts
        else ""
    )
    # A failed attempt: logged, retried with backoff, dead once out of attempts. Used for an event that
    # could not be prepared, and for every due event while a key is missing.
    fail_event = f"""attempts = e.attempts + 1,
             state = {_next_state("e.attempts + 1", d)},
             dead_at = CASE WHEN e.attempts + 1 >= {int(d.max_attempts)} THEN pg_catalog.now() END,
             next_attempt_at = pg_catalog.now() + pg_catalog.make_interval(secs => {_backoff("e.attempts + 1", d)}),
             last_status_code = NULL,
             last_error = failure"""
    return f"""
DECLARE
  epoch uuid;
  round_started timestamptz := pg_catalog.clock_timestamp();
  handled integer := 0;
  n integer;
  due record;
  secret text;
  jwt_header text;
  issued_at bigint;
  claims text;
  signing_input text;
  token text;
  headers jsonb;
  request bigint;
  webhook_key bytea;
  previous_webhook_key bytea;
  failure text;
  step text;
  foreign_triggers text;
  room integer;
  outcomes jsonb;
BEGIN
  -- 0. pg_net grants ALL on its tables to PUBLIC, TRIGGER included: a trigger there would run as
  -- postgres whenever this round queues a request or reads outcomes. The lock (which CREATE TRIGGER
  -- waits for) makes the check hold for the whole round; a PUBLIC role can hold a stronger lock, so
  -- the wait is bounded and the round fails visibly (cron.job_run_details) instead of hanging.
  PERFORM pg_catalog.set_config('lock_timeout', '5s', true);
  LOCK TABLE net.http_request_queue, net._http_response IN ROW EXCLUSIVE MODE;
  SELECT pg_catalog.string_agg(pg_catalog.quote_ident(t.tgname) || ' on ' || t.tgrelid::regclass::text, ', ')
    INTO foreign_triggers
    FROM pg_catalog.pg_trigger AS t
   WHERE t.tgrelid IN ('net.http_request_queue'::regclass, 'net._http_response'::regclass) AND NOT t.tgisinternal;
  IF foreign_triggers IS NOT NULL THEN
    RAISE EXCEPTION USING
      MESSAGE = 'secure_webhooks: not delivering while pg_net''s tables have triggers (' || foreign_triggers
        || '): they would run as postgres',
      HINT = 'Every role may create triggers there (pg_net grants ALL to PUBLIC); the owner of pg_net''s '
        || 'tables must drop them, or drop their functions. Events wait; none is lost.';
  END IF;

  INSERT INTO {SCHEMA}.{PG_NET_EPOCH} DEFAULT VALUES ON CONFLICT DO NOTHING;
  SELECT p.epoch INTO epoch FROM {SCHEMA}.{PG_NET_EPOCH} AS p;
  SELECT s.decrypted_secret INTO secret FROM vault.decrypted_secrets AS s WHERE s.name = {sql_literal(f.secret_name)};

  -- Responses no worker can have written: dated after this round began (pg_net stamps a row with its
  -- own transaction's start, before it commits). Any role may insert them; pg_net's TTL purge never
  -- would reach them. Rows another session holds are left for a later round.
  DELETE FROM net._http_response AS r
   WHERE r.ctid = ANY (ARRAY(SELECT f.ctid FROM net._http_response AS f WHERE f.created > round_started
                              LIMIT 1000 FOR UPDATE SKIP LOCKED));

  -- 1. Outcomes of the attempts in flight.
  -- A request neither queued nor answered may be on the wire (pg_net deletes before sending) or
  -- gone (deleted by another role, its response expired). Only after it has been seen missing for a
  -- whole grace period is it taken as vanished: the time it waited in a long queue does not count.
  UPDATE {events} AS e
     SET missing_since = pg_catalog.now()
    FROM (SELECT m.id FROM {events} AS m
           WHERE m.state = 'sending' AND m.missing_since IS NULL AND m.request_epoch = epoch
             AND NOT EXISTS (SELECT FROM net.http_request_queue AS q WHERE q.id = m.request_id)
             AND NOT EXISTS (SELECT FROM net._http_response AS r WHERE r.id = m.request_id AND r.created >= m.sent_at)
           LIMIT batch_size
             FOR UPDATE OF m SKIP LOCKED) AS missing
   WHERE e.id = missing.id;

  -- An outcome counts only if it can belong to the attempt: recorded after the attempt was queued and
  -- before this round, once the request has left the queue (pg_net deletes it before sending). Any
  -- role may add rows, so of several a failure is taken over a success (a forged 2xx never hides the
  -- real outcome), except that with receipts required a 2xx carrying this attempt's receipt is proof
  -- on its own (planted rows beside it cannot hold a delivery back). The receipt is computed once per
  -- event, and only for an event with a 2xx: planted rows cost a string comparison each.
  WITH in_flight AS (
    SELECT e.id, e.request_id, e.request_epoch, e.sent_at, e.missing_since, e.payload, e.token_iat,
           e.endpoint, e.probe
      FROM {events} AS e
     WHERE e.state = 'sending'
     ORDER BY e.sent_at
     LIMIT batch_size
       FOR UPDATE SKIP LOCKED
  ), queued AS (
    SELECT DISTINCT q.id FROM net.http_request_queue AS q JOIN in_flight AS i ON q.id = i.request_id
  ), candidate AS (
    SELECT i.id, r.status_code, r.timed_out, r.error_msg, r.created,
           CASE WHEN pg_catalog.jsonb_typeof(r.headers) = 'object' THEN r.headers END AS headers
      FROM in_flight AS i
      JOIN net._http_response AS r ON r.id = i.request_id
     WHERE i.request_epoch = epoch AND r.created >= i.sent_at AND r.created <= round_started
       AND NOT EXISTS (SELECT FROM queued WHERE queued.id = i.request_id)
  ), {_receipts_ctes(spec)}, chosen AS (
    SELECT DISTINCT ON (c.id) c.*
      FROM scored AS c
     ORDER BY c.id, {_preference(spec)}(c.status_code BETWEEN 200 AND 299) IS TRUE, c.created
  ), judged AS (
    SELECT i.id, i.request_id, o.status_code, o.headers, o.created AS finished_at, COALESCE(o.receipted, false)
             AS receipted, i.endpoint, i.probe,
           CASE
             WHEN i.request_epoch IS DISTINCT FROM epoch
               THEN 'request lost: crash recovery emptied pg_net''s queue'
             WHEN o.id IS NULL THEN 'request vanished from pg_net''s queue without a response'
             WHEN o.status_code BETWEEN 200 AND 299 AND o.receipted THEN NULL
             {unreceipted}
             WHEN o.timed_out THEN {_clean("COALESCE(o.error_msg, 'timed out')")}
             WHEN o.status_code IS NULL THEN {_clean("COALESCE(o.error_msg, 'request failed')")}
             WHEN o.status_code = 413
               THEN 'HTTP 413: the body is larger than the receiver accepts; raise its body limit, then replay'
             ELSE 'HTTP ' || o.status_code
           END AS error
      FROM in_flight AS i
      LEFT JOIN chosen AS o ON o.id = i.id
     WHERE o.id IS NOT NULL
        OR i.request_epoch IS DISTINCT FROM epoch
        OR i.missing_since < pg_catalog.now() - interval '{spec.grace_seconds} seconds'
  ), logged AS (
    UPDATE {attempts} AS a
       SET finished_at = COALESCE(o.finished_at, pg_catalog.now()), status_code = o.status_code, error = o.error
      FROM judged AS o
     WHERE a.event_id = o.id AND a.request_id = o.request_id AND a.finished_at IS NULL
  ), updated AS (
  UPDATE {events} AS e
     SET state = CASE WHEN o.error IS NULL THEN 'delivered' WHEN {gives_back} THEN 'pending'
                      ELSE {_next_state("e.attempts", d, gone="(o.status_code = 410 AND o.receipted)")} END,
         delivered_at = CASE WHEN o.error IS NULL THEN o.finished_at END,
         dead_at = CASE WHEN o.error IS NOT NULL AND NOT {gives_back}
                         AND ((o.status_code = 410 AND o.receipted) OR e.attempts >= {int(d.max_attempts)})
                        THEN pg_catalog.now() END,
         next_attempt_at = CASE WHEN o.error IS NULL THEN e.next_attempt_at
                                WHEN {gives_back} THEN {endpoints.PARKED}
                                ELSE pg_catalog.now() + pg_catalog.make_interval(secs => {retry_delay}) END,
         attempts = CASE WHEN {gives_back} THEN e.attempts - 1 ELSE e.attempts END,
         {endpoints.judged_columns("round_started")},
         last_status_code = o.status_code,
         last_error = o.error
    FROM judged AS o
   WHERE e.id = o.id
  RETURNING o.endpoint, o.status_code, o.probe, COALESCE(o.finished_at, pg_catalog.now()) AS at
  )
  SELECT pg_catalog.count(*), pg_catalog.jsonb_agg(pg_catalog.to_jsonb(u)) FILTER (WHERE u.endpoint IS NOT NULL)
    INTO n, outcomes
    FROM updated AS u;
  handled := handled + n;
  {endpoints.judge_statements(SCHEMA, "outcomes", d.pause_after_failures, d.probe_seconds, d.max_per_second)}
  {alerts.round_call()}

  -- 2. Due events: a fresh token each, then pg_net.
  IF secret IS NULL THEN
    failure := {missing_secret_error(f.secret_name)};
  ELSE
    {jwt_header_statement()}
  END IF;
  {_guarded_webhook_key(f, note_missing_webhook_key, malformed_webhook_key)}
  IF failure IS NOT NULL THEN
    -- A failed attempt, logged and retried like any other: the event waits for the key.
    WITH due_events AS (
      SELECT e.id FROM {events} AS e
       WHERE e.state = 'pending' AND e.next_attempt_at <= pg_catalog.now(){in_order}
       ORDER BY e.next_attempt_at
       LIMIT batch_size
         FOR UPDATE SKIP LOCKED
    ), failed AS (
      UPDATE {events} AS e
         SET {fail_event}
        FROM due_events
       WHERE e.id = due_events.id
      RETURNING e.id, e.attempts
    )
    INSERT INTO {attempts} (event_id, attempt, sent_at, finished_at, error)
    SELECT failed.id, failed.attempts, pg_catalog.now(), pg_catalog.now(), failure FROM failed;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
      RAISE WARNING USING MESSAGE = failure || ': ' || n || ' webhook events will be retried',
        HINT = 'Create it with vault.create_secret() or set it in the stack config and run pulumi up.';
    END IF;
    RETURN handled + n;
  END IF;

  -- Pacing, not a limit on correctness: requests still waiting in pg_net's queue (ours or anyone's;
  -- pg_net takes them in id order) count against {QUEUED_BATCHES} of its batches, so the queue never
  -- holds more than pg_net sends in its next rounds. Counting stops at that, so it costs at most that.
  room := {QUEUED_BATCHES} * COALESCE(CASE WHEN pg_catalog.current_setting('pg_net.batch_size', true) ~ '^[0-9]{{1,5}}$'
                          THEN GREATEST(pg_catalog.current_setting('pg_net.batch_size', true)::integer, 1) END,
                          {PG_NET_BATCH_SIZE});
  room := LEAST(batch_size,
                room - (SELECT pg_catalog.count(*) FROM (SELECT FROM net.http_request_queue LIMIT room) AS q));

  issued_at := pg_catalog.floor(pg_catalog.date_part('epoch', pg_catalog.clock_timestamp()))::bigint;
  -- Per endpoint (endpoints.py): the due events and the parked ones its limits let go now, or park.
  -- Rounds that send take turns, so two never both see the same free slots: the turn is the lock on
  -- the epoch row, which only the outbox's owner may take (an advisory lock key, which any role may
  -- hold, let any role stall every delivery). A round that finds it taken sends nothing this time.
  PERFORM 1 FROM {SCHEMA}.{PG_NET_EPOCH} FOR UPDATE SKIP LOCKED;
  IF NOT FOUND THEN
    room := 0;
  END IF;
  FOR due IN
    {endpoints.limited_due(SCHEMA, EVENTS, due_window, route_join(spec), d.max_in_flight, d.max_per_second, in_order)}
  LOOP
    IF NOT due.send THEN
      {endpoints.park_statement(SCHEMA, EVENTS)}
      handled := handled + 1;
      CONTINUE;
    END IF;
    -- One event's error fails that event only: everything that can fail for one event (its claims,
    -- token, headers, and the URL check net.http_post makes) runs in a subtransaction that writes
    -- nothing, so it takes no transaction id (500 of those would overflow the subtransaction cache).
    BEGIN
      step := 'build its claims';
      claims := {claims_expression(f, jti="due.id", body="due.payload", url="due.url")};
      step := 'sign its token';
      {sign_statement(f.signer)}
      step := 'build its headers';
      headers := pg_catalog.jsonb_build_object(
        'Content-Type', 'application/json',
        'Authorization', 'Bearer ' || token,
        'webhook-id', due.id{standard_webhook_headers(f, "due.id", "due.payload")});
      step := 'send it: net.http_post refuses its URL';
      PERFORM net._encode_url_with_params_array(due.url, '{{}}'::text[]);
      failure := NULL;
    EXCEPTION WHEN others THEN
      IF SQLSTATE ~ '{_ROUND_ERRORS}' THEN
        RAISE;
      END IF;
      -- Only pg_net's own message (it names the URL, never a key) is kept; others say where it failed.
      failure := 'could not ' || step || ' (SQLSTATE ' || SQLSTATE || ')'
        || CASE WHEN step LIKE 'send%' THEN ': ' || {_clean("SQLERRM")} ELSE '' END;
    END;
    IF failure IS NOT NULL THEN
      UPDATE {events} AS e
         SET {fail_event}, url = due.url
       WHERE e.id = due.id
      RETURNING e.attempts INTO n;
      INSERT INTO {attempts} (event_id, attempt, sent_at, finished_at, error)
      VALUES (due.id, n, pg_catalog.now(), pg_catalog.now(), failure);
      failure := NULL;
    ELSE
      request := net.http_post(due.url, due.payload, '{{}}'::jsonb, headers, {int(f.timeout_ms)});
      UPDATE {events} AS e
         SET state = 'sending', attempts = e.attempts + 1, request_id = request, request_epoch = epoch,
             sent_at = pg_catalog.now(), missing_since = NULL, url = due.url, token_iat = issued_at,
             {endpoints.sent_columns()}
       WHERE e.id = due.id
      RETURNING e.attempts INTO n;
      {endpoints.probe_sent_statement(SCHEMA, d.probe_seconds)}
      INSERT INTO {attempts} (event_id, attempt, request_id, sent_at) VALUES (due.id, n, request, pg_catalog.now());
    END IF;
    handled := handled + 1;
  END LOOP;
  RETURN handled;
END
"""


def _guarded_webhook_key(f: FunctionSpec, on_missing: str, malformed: str) -> str:
    """Read the whsec_ key; a value that does not decode is a failure of the round's sends, named
    without any part of the value (PostgreSQL's decode error quotes the offending character)."""
    read = read_webhook_key(f, on_missing)
    if not read:
        return ""
    return f"""BEGIN
    {read}
  EXCEPTION WHEN others THEN
    failure := COALESCE(failure, {malformed});
  END;"""


def render_purge_expired(spec: ReconcilerSpec) -> str:
    d = spec.delivery
    events = f"{SCHEMA}.{EVENTS}"
    return f"""
DECLARE
  purged integer;
  n integer;
BEGIN
  DELETE FROM {events} AS e
   WHERE e.state = 'delivered' AND e.delivered_at < pg_catalog.now() - interval '{int(d.keep_delivered_hours)} hours';
  GET DIAGNOSTICS purged = ROW_COUNT;
  DELETE FROM {events} AS e
   WHERE e.state = 'dead' AND e.dead_at < pg_catalog.now() - interval '{int(d.keep_dead_hours)} hours';
  GET DIAGNOSTICS n = ROW_COUNT;
  {alerts.purge_statement()}
  DELETE FROM cron.job_run_details AS d
   WHERE d.jobid IN (SELECT j.jobid FROM cron.job AS j WHERE j.jobname = {sql_literal(JOB_NAME)})
     AND d.end_time < pg_catalog.now() - interval '{KEEP_RUN_DETAILS}';
  RETURN purged + n;
END
"""


RETRY_AFTER_BODY = """
DECLARE
  value text;
BEGIN
  SELECT h.value INTO value FROM pg_catalog.jsonb_each_text(headers) AS h
   WHERE pg_catalog.lower(h.key) = 'retry-after' LIMIT 1;
  IF value IS NULL THEN
    RETURN NULL;
  ELSIF value ~ '^\\s*[0-9]{1,9}\\s*$' THEN
    RETURN value::double precision;
  END IF;
  -- An HTTP-date (RFC 9110); anything unparsable is ignored rather than failing the round.
  RETURN GREATEST(0, pg_catalog.date_part('epoch', value::timestamptz - pg_catalog.now()));
EXCEPTION WHEN others THEN
  RETURN NULL;
END
"""


def function_sources(spec: ReconcilerSpec) -> dict[str, tuple[str, str, str]]:
    """{name: (arguments with defaults, return type, PL/pgSQL body)} of the reconciler's functions."""
    return {
        RECONCILE: (f"batch_size integer DEFAULT {int(spec.delivery.batch_size)}", "integer", render_reconcile(spec)),
        PURGE_EXPIRED: ("", "integer", render_purge_expired(spec)),
        RETRY_AFTER: ("headers jsonb", "double precision", RETRY_AFTER_BODY),
        **alerts.function_sources(spec.delivery),
    }


def sources_sha256(spec: ReconcilerSpec) -> str:
    sources = function_sources(spec).items()
    text = "\n".join(f"{name}({args}) {returns}\n{body}" for name, (args, returns, body) in sources)
    return hashlib.sha256(text.encode()).hexdigest()


_SECONDS = re.compile(r"^(\d+) seconds$")


def loop_seconds(schedule: str) -> float:
    """How long one cron run keeps reconciling.

    On an 'N seconds' schedule, the whole interval: pg_cron (1.5 and later, src/pg_cron.c,
    StartAllPendingRuns) starts an interval job one interval after its last start, and while a run
    is still going it queues the next one once and starts it as soon as that run ends. Runs that
    last their interval therefore follow back to back, and nobody looks at the outbox only while
    the next run opens its session. On a minute schedule, 59 s: pg_cron (1.4 too) queues a run for
    every minute that passes, so a run ends within its minute lest runs pile up.
    """
    match = _SECONDS.match(schedule)
    if match:
        return float(match.group(1))
    return 59.0


def cron_command(schedule: str) -> str:
    """The job's command: rounds with COMMIT in between, so pg_net sends each round's requests at once."""
    return f"""DO $reconciler$
DECLARE
  stop_at timestamptz := pg_catalog.clock_timestamp() + interval '{loop_seconds(schedule)} seconds';
  busy boolean;
BEGIN
  PERFORM {SCHEMA}.{PURGE_EXPIRED}();
  COMMIT;
  LOOP
    busy := {SCHEMA}.{RECONCILE}() > 0;
    COMMIT;
    EXIT WHEN pg_catalog.clock_timestamp() >= stop_at;
    IF NOT busy THEN
      PERFORM pg_catalog.pg_sleep({IDLE_SLEEP_SECONDS});
    END IF;
  END LOOP;
END
$reconciler$"""
