"""Recovery throughput: how fast an at-least-once backlog drains once the orchestrator is back,
next to what pg_net's worker carries on its own.

An outage leaves every event of its duration in the outbox with a failed
attempt and a backoff that grows with each one. An operator who sees the
orchestrator healthy again runs `secure_webhooks.replay()`, which makes every
failed event due now; the reconciler then signs and sends them batch after
batch while pg_net's worker sends up to pg_net.batch_size (200) per round,
rounds up to a second apart while it has work. This measures that drain from
the replay until the orchestrator has every event, and until the outbox has
recorded every one as delivered. The anchor is pg_net alone with the same
batch size: the same number of requests queued at once by Supabase's static
webhook (one INSERT of as many rows into (b)'s table), from its commit until
the orchestrator had every request. The stand-in's worker is a Python thread
(16 concurrent requests), not pg_net's curl multi loop, so the rates speak for
this machine; their ratio is what the goal compares.

It also counts what at-least-once allows and the drain's timing depends on:
requests the orchestrator received more than once per event (the verifier
flags a repeated `jti` as a duplicate and acknowledges it), pg_net's timeouts
and errors after the replay (with the request timeout the function sends,
`FunctionSpec.timeout_ms`, 5 s as in production), and the attempts the
reconciler handed over after the orchestrator already had every event.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
from psycopg import sql

from bench.delivery import TimedReceiver
from bench.measure import BenchError, insert_many
from bench.variants import Variant
from local_supabase.pg_net_worker import PgNetWorker
from secure_webhooks.signing.trigger_function import FunctionSpec

#: Generous for 10,000 events on a loaded 2-core machine, at 200 a round about a second apart.
TIMEOUT_SECONDS = 600.0
#: The issue's goal: at-least-once recovery carries at least this share of pg_net's own rate.
GOAL_SHARE = 0.95


@dataclass(frozen=True)
class Anchor:
    """pg_net alone: `events` requests queued in one statement by a direct webhook (`label`)."""

    label: str
    events: int
    #: Seconds from the INSERT's commit until the orchestrator had every request.
    seconds: float
    #: pg_net rounds run meanwhile.
    rounds: int

    @property
    def per_second(self) -> float:
        return self.events / max(self.seconds, 1e-9)


def measure_anchor(
    conn: psycopg.Connection, variant: Variant, events: int, receiver: TimedReceiver, worker: PgNetWorker
) -> Anchor:
    """Queue `events` requests through `variant` (the static webhook) at once; time pg_net's drain."""
    rounds = worker.rounds
    ids = conn.execute(insert_many(variant, events) + sql.SQL(" RETURNING id")).fetchall()
    committed = time.perf_counter()
    arrived = receiver.wait_for_rows([(variant.table, row_id) for (row_id,) in ids], TIMEOUT_SECONDS)
    return Anchor(variant.label, events, max(arrived.values()) - committed, worker.rounds - rounds)


_STATUS_COUNTS = sql.SQL('SELECT status, count(*) FROM secure_webhooks.deliveries WHERE "table" = {} GROUP BY status')


@dataclass(frozen=True)
class Recovery:
    events: int
    #: Events the replay made due (the others' retries were in flight, and deliver them).
    replayed: int
    #: Seconds to the first failed attempt of every event, with the orchestrator down.
    all_failed_seconds: float
    #: Seconds from the replay until the reconciler had handed the last event to pg_net (server clock).
    handed_seconds: float
    #: Seconds from the replay until the orchestrator had accepted every event.
    arrived_seconds: float
    #: Seconds from the replay until the outbox recorded every event as delivered.
    recorded_seconds: float
    #: Requests the orchestrator received from the replay on, and how many it accepted.
    received: int
    accepted: int
    #: Accepted requests whose event id (jti, webhook-id) it had accepted before: acknowledged, not processed.
    duplicates: int
    #: Events whose id it accepted more than once.
    events_received_twice: int
    #: pg_net's responses recorded after the replay: 2xx, timed out, other errors (no status), other statuses.
    responses: dict[str, int]
    #: The reconciler's attempts after the replay: all, first attempts after it, and those sent
    #: after the orchestrator had accepted every event.
    attempts: int
    attempts_after_all_arrived: int
    #: Those attempts by the outcome the reconciler logged: "delivered", or its error text.
    attempt_outcomes: dict[str, int]
    #: The request timeout pg_net was given (ms).
    timeout_ms: int
    #: pg_net rounds from the replay until the orchestrator had every event.
    rounds: int = 0


def _statuses(conn: psycopg.Connection, variant: Variant) -> dict[str, int]:
    table = sql.Literal(f"public.{variant.table}")
    return dict(conn.execute(_STATUS_COUNTS.format(table)).fetchall())


def _wait_for_status(conn: psycopg.Connection, variant: Variant, status: str, events: int) -> None:
    deadline = time.monotonic() + TIMEOUT_SECONDS
    while (counts := _statuses(conn, variant)).get(status, 0) < events:
        if time.monotonic() > deadline:
            raise BenchError(f"{variant.label}: not all {events} events {status} within {TIMEOUT_SECONDS} s: {counts}")
        time.sleep(0.05)


def measure(
    conn: psycopg.Connection, variant: Variant, events: int, secret: str, port: int, worker: PgNetWorker
) -> Recovery:
    """With no receiver on `port` (where `variant` posts), insert a backlog, fail it, then replay and drain it.

    The reconciler and the pg_net worker must be running. `conn` is a
    postgres session in autocommit, so each statement is its own transaction.
    """
    started = time.perf_counter()
    ids = conn.execute(insert_many(variant, events) + sql.SQL(" RETURNING id")).fetchall()
    _wait_for_status(conn, variant, "failed", events)
    all_failed = time.perf_counter() - started
    with TimedReceiver(secret, port=port) as receiver:
        replayed_at = time.perf_counter()
        rounds = worker.rounds
        replayed, replayed_db = conn.execute("SELECT secure_webhooks.replay(), pg_catalog.now()").fetchone()
        arrivals = receiver.wait_for_rows([(variant.table, row_id) for (row_id,) in ids], TIMEOUT_SECONDS)
        arrived = max(arrivals.values()) - replayed_at
        rounds = worker.rounds - rounds
        _wait_for_status(conn, variant, "delivered", events)
        recorded = time.perf_counter() - replayed_at
    receiver.check_accepted()
    accepted = [delivery for delivery in receiver.deliveries if delivery.status == 200]
    per_event = Counter(delivery.header("webhook-id") for delivery in accepted)
    handed, attempts, late = conn.execute(_ATTEMPTS_AFTER, {"replayed": replayed_db, "arrived": arrived}).fetchone()
    responses = dict(conn.execute(_RESPONSES_AFTER, {"replayed": replayed_db}).fetchall())
    outcomes = dict(conn.execute(_ATTEMPT_OUTCOMES, {"replayed": replayed_db}).fetchall())
    return Recovery(
        events,
        replayed,
        all_failed,
        float(handed),
        arrived,
        recorded,
        received=len(receiver.deliveries),
        accepted=len(accepted),
        duplicates=sum(1 for delivery in accepted if delivery.duplicate),
        events_received_twice=sum(1 for count in per_event.values() if count > 1),
        responses=responses,
        attempts=attempts,
        attempts_after_all_arrived=late,
        attempt_outcomes=outcomes,
        timeout_ms=FunctionSpec().timeout_ms,
        rounds=rounds,
    )


#: The reconciler's attempts from the replay on (server clock): when the last was handed to pg_net,
#: how many there were, and how many left after the orchestrator had every event (`arrived` s later).
_ATTEMPTS_AFTER = """
    SELECT extract(epoch FROM max(sent_at) - %(replayed)s),
           count(*),
           count(*) FILTER (WHERE sent_at > %(replayed)s + make_interval(secs => %(arrived)s))
      FROM secure_webhooks.attempts
     WHERE sent_at >= %(replayed)s
"""
_ATTEMPT_OUTCOMES = """
    SELECT CASE WHEN finished_at IS NULL THEN 'unfinished' ELSE coalesce(left(error, 60), 'delivered') END, count(*)
      FROM secure_webhooks.attempts
     WHERE sent_at >= %(replayed)s
     GROUP BY 1
"""
_RESPONSES_AFTER = """
    SELECT CASE WHEN status_code BETWEEN 200 AND 299 THEN '2xx'
                WHEN timed_out THEN 'timed out'
                WHEN status_code IS NULL THEN 'error'
                ELSE 'HTTP ' || status_code END,
           count(*)
      FROM net._http_response
     WHERE created >= %(replayed)s
     GROUP BY 1
"""


def render(result: Recovery, anchors: Sequence[Anchor] = (), verdicts: bool = True) -> str:
    """The drain, stage by stage, in seconds after the replay and in events per second; then the goal,
    unless `verdicts` is false (a smoke run's backlog is too small to judge it)."""
    stages = (
        ("handed to pg_net by the reconciler", result.handed_seconds),
        ("accepted by the orchestrator", result.arrived_seconds),
        ("recorded as delivered in the outbox", result.recorded_seconds),
    )
    lines = [
        f"{result.events} events inserted in one statement with the orchestrator down; all had failed an attempt",
        f"{result.all_failed_seconds:.1f} s later. Then it came back, and secure_webhooks.replay() made "
        f"{result.replayed} of them due now",
        "(an event whose retry is in flight is left to that retry); seconds after the replay:",
    ]
    for label, seconds in stages:
        per_second = result.events / max(seconds, 1e-9)
        lines.append(f"    {label:<36} {seconds:>7.2f} s {per_second:>8.0f} events/s")
    lines.append(f"    pg_net rounds from the replay until the orchestrator had every event: {result.rounds}")
    for anchor in anchors:
        lines.append(
            f"    pg_net alone, {anchor.label}: {anchor.events} requests queued at once, all at the "
            f"orchestrator {anchor.seconds:.2f} s after the commit: {anchor.per_second:.0f} requests/s, "
            f"{anchor.rounds} rounds"
        )
    responses = ", ".join(f"{count} {kind}" for kind, count in sorted(result.responses.items())) or "none"
    outcomes = "; ".join(f"{count} {kind}" for kind, count in sorted(result.attempt_outcomes.items()))
    lines += [
        f"from the replay on: the reconciler made {result.attempts} attempts for {result.events} events, "
        f"{result.attempts_after_all_arrived} of them after the",
        f"orchestrator had every event; pg_net's responses (request timeout {result.timeout_ms} ms): {responses};",
        f"the orchestrator received {result.received} requests, accepted {result.accepted}, of which "
        f"{result.duplicates} duplicates (an event id",
        f"it had accepted before; {result.events_received_twice} events arrived more than once);",
        f"the attempts' outcomes as the reconciler logged them: {outcomes}",
    ]
    for anchor in anchors if verdicts else []:
        share = (result.events / max(result.arrived_seconds, 1e-9)) / anchor.per_second
        holds = share >= GOAL_SHARE and result.duplicates == 0
        lines.append(
            f"goal: recovery >= {GOAL_SHARE:.0%} of pg_net's own rate ({anchor.label}, same batch size), none "
            f"re-sent without a crash: {share:.0%}, {result.duplicates} re-sent; goal holds: {'yes' if holds else 'no'}"
        )
    return "\n".join(lines)
