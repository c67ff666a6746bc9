"""Recovery throughput: how fast an at-least-once backlog drains once the orchestrator is back,
next to what pg_net's worker carries on its own, with and without the per-endpoint limits.

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

Since the circuit breaker (docs/delivery.md, "Sparing the orchestrator"), an outage no longer fails every
event once: after `pauseAfterFailures` failures the endpoint is paused and the other events wait (parked)
without using attempts, until a probe, its oldest waiting event, finds the orchestrator back (one every
`probeSeconds`, 30 s by default). So the drain is timed from that probe's acceptance (the resume), and the
wait from the replay to it is reported on its own. The drain runs twice, side by side: without limits
(`maxInFlight` and `maxPerSecond` 10,000, far above what pg_net carries: the figure the goal compares with
pg_net alone) and with the defaults (`DeliverySettings()`, 100 and 100), each time with the receiver
counting what the limits promise to bound: the most requests it served at once and the most that arrived
in any one-second window.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from bench.delivery import BACKLOG_WORK, PATH, TimedReceiver
from bench.measure import insert_many, wait_until
from bench.variants import Variant, install_reconciler
from local_supabase.pg_net_worker import PgNetWorker
from secure_webhooks.configuration.delivery_settings import DeliverySettings
from secure_webhooks.signing.trigger_function import FunctionSpec

#: Generous for 10,000 events on a loaded 2-core machine, at 200 a round about a second apart.
TIMEOUT_SECONDS = 600.0
#: The issue's goal: at-least-once recovery carries at least this share of pg_net's own rate.
GOAL_SHARE = 0.95
#: "Without limits": both at the highest value the keys accept, far above what pg_net carries.
UNLIMITED = DeliverySettings(max_in_flight=10_000, max_per_second=10_000)
#: The two drains of one run, side by side: the first is the one the goal compares with pg_net alone.
LIMITS = (("no limits", UNLIMITED), ("default limits", DeliverySettings()))


def describe(settings: DeliverySettings) -> str:
    return f"maxInFlight {settings.max_in_flight}, maxPerSecond {settings.max_per_second}"


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
    """One drain; seconds are counted from the replay (`secure_webhooks.replay()`), rates from the resume."""

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
    #: What ran: a label ("no limits", "default limits") and the settings.
    limits: str = ""
    settings: DeliverySettings = field(default_factory=DeliverySettings)
    #: Seconds from the replay until the orchestrator accepted its first request (the breaker's probe).
    resumed_seconds: float = 0.0
    #: During the outage: attempts the events used, and events that waited for the endpoint using none.
    outage_attempts: int = 0
    parked: int = 0
    #: At the receiver from the resume on: most requests served at once, most arriving in any second.
    peak_concurrency: int = 0
    busiest_second: int = 0

    def rate(self, seconds: float) -> float:
        """Events per second of a stage that ended `seconds` after the replay, counted from the resume."""
        return self.events / max(seconds - self.resumed_seconds, 1e-9)

    @property
    def within_limits(self) -> bool:
        settings = self.settings
        return self.peak_concurrency <= settings.max_in_flight and self.busiest_second <= settings.max_per_second


def _statuses(conn: psycopg.Connection, variant: Variant) -> dict[str, int]:
    table = sql.Literal(f"public.{variant.table}")
    return dict(conn.execute(_STATUS_COUNTS.format(table)).fetchall())


def wait_for_status(conn: psycopg.Connection, variant: Variant, status: str, events: int) -> None:
    wait_until(
        lambda: _statuses(conn, variant).get(status, 0) >= events,
        lambda: (
            f"{variant.label}: not all {events} events {status} within {TIMEOUT_SECONDS} s: {_statuses(conn, variant)}"
        ),
        TIMEOUT_SECONDS,
    )


_SETTLED = """
    SELECT EXISTS (SELECT FROM secure_webhooks.endpoints WHERE state = 'paused')
       AND NOT EXISTS (SELECT FROM secure_webhooks.events WHERE state = 'sending' OR endpoint IS NULL)
"""
_OUTAGE = "SELECT COALESCE(sum(attempts), 0), count(*) FILTER (WHERE attempts = 0) FROM secure_webhooks.events"


def _wait_until_settled(conn: psycopg.Connection, variant: Variant) -> None:
    """Until the breaker has paused the endpoint and every event failed an attempt or waits for it."""
    wait_until(
        lambda: conn.execute(_SETTLED).fetchone()[0],
        lambda: f"{variant.label}: the outage did not pause the endpoint within {TIMEOUT_SECONDS} s",
        TIMEOUT_SECONDS,
    )


def measure(
    conn: psycopg.Connection,
    variant: Variant,
    events: int,
    secret: str,
    port: int,
    worker: PgNetWorker,
    limits: tuple[str, DeliverySettings] = LIMITS[0],
) -> Recovery:
    """With no receiver on `port` (where `variant` posts), insert a backlog, let the breaker pause the
    endpoint, then bring the receiver back, replay and drain it, with the reconciler re-installed with
    `limits` (a label and the settings).

    The reconciler and the pg_net worker must be running, the outbox empty. `conn` is a
    postgres session in autocommit, so each statement is its own transaction.
    """
    label, settings = limits
    install_reconciler(conn, settings, f"http://127.0.0.1:{port}{PATH}")
    started = time.perf_counter()
    ids = conn.execute(insert_many(variant, events) + sql.SQL(" RETURNING id")).fetchall()
    _wait_until_settled(conn, variant)
    all_failed = time.perf_counter() - started
    outage_attempts, parked = conn.execute(_OUTAGE).fetchone()
    with TimedReceiver(secret, port=port, work=BACKLOG_WORK) as receiver:
        replayed_at = time.perf_counter()
        rounds = worker.rounds
        replayed, replayed_db = conn.execute("SELECT secure_webhooks.replay(), pg_catalog.now()").fetchone()
        arrivals = receiver.wait_for_rows([(variant.table, row_id) for (row_id,) in ids], TIMEOUT_SECONDS)
        arrived = max(arrivals.values()) - replayed_at
        resumed = min(arrivals.values()) - replayed_at
        rounds = worker.rounds - rounds
        wait_for_status(conn, variant, "delivered", events)
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
        limits=label,
        settings=settings,
        resumed_seconds=resumed,
        outage_attempts=outage_attempts,
        parked=parked,
        peak_concurrency=receiver.peak,
        busiest_second=receiver.busiest_second(),
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
    """The drain, stage by stage, in seconds after the replay and in events per second from the resume; then
    the goal, unless `verdicts` is false (a smoke run's backlog is too small to judge it)."""
    stages = (
        ("handed to pg_net by the reconciler", result.handed_seconds),
        ("accepted by the orchestrator", result.arrived_seconds),
        ("recorded as delivered in the outbox", result.recorded_seconds),
    )
    lines = [
        f"{result.events} events inserted in one statement with the orchestrator down ({result.limits}: "
        f"{describe(result.settings)});",
        f"{result.all_failed_seconds:.1f} s later the breaker had paused the endpoint: {result.outage_attempts} "
        f"attempts used, {result.parked} events waiting without one.",
        f"Then it came back, and secure_webhooks.replay() made {result.replayed} of them due now (an event whose "
        "retry is in flight is left to that retry);",
        f"the breaker's probe was accepted {result.resumed_seconds:.2f} s after the replay (probeSeconds "
        f"{result.settings.probe_seconds}) and resumed the endpoint; seconds after the replay, events/s from the "
        "resume:",
    ]
    for label, seconds in stages:
        lines.append(f"    {label:<36} {seconds:>7.2f} s {_rate(result, seconds):>8} events/s")
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
        f"at most {result.peak_concurrency} requests at once, at most {result.busiest_second} in any one-second "
        "window;",
        f"the attempts' outcomes as the reconciler logged them: {outcomes}",
    ]
    for anchor in anchors if verdicts else []:
        share = result.rate(result.arrived_seconds) / anchor.per_second
        holds = share >= GOAL_SHARE and result.duplicates == 0
        lines.append(
            f"goal: recovery >= {GOAL_SHARE:.0%} of pg_net's own rate ({anchor.label}, same batch size), none "
            f"re-sent without a crash: {share:.0%}, {result.duplicates} re-sent; goal holds: {'yes' if holds else 'no'}"
        )
    return "\n".join(lines)


def render_side_by_side(results: Sequence[Recovery], verdicts: bool = True) -> str:
    """The drains of one run in columns: what the limits cost in time and spare the orchestrator."""
    rows: list[tuple[str, Callable[[Recovery], str]]] = [
        ("maxInFlight / maxPerSecond", lambda r: f"{r.settings.max_in_flight} / {r.settings.max_per_second}"),
        ("outage: attempts used / events waiting", lambda r: f"{r.outage_attempts} / {r.parked}"),
        ("replay to the probe's acceptance (resume)", lambda r: f"{r.resumed_seconds:.1f} s"),
        ("resume to all at the receiver", lambda r: _stage(r, r.arrived_seconds)),
        ("resume to all delivered in the outbox", lambda r: _stage(r, r.recorded_seconds)),
        ("most requests at once at the receiver", lambda r: str(r.peak_concurrency)),
        ("most requests in any 1 s window", lambda r: str(r.busiest_second)),
        ("requests re-sent (duplicates at the receiver)", lambda r: str(r.duplicates)),
    ]
    width = max(len(label) for label, _ in rows)
    lines = [f"{'':<{width}}  " + "".join(f"{r.limits:>22}" for r in results)]
    lines += [f"{label:<{width}}  " + "".join(f"{cell(r):>22}" for r in results) for label, cell in rows]
    # Without limits there is nothing to hold (10,000 is beyond any batch pg_net sends).
    for result in [r for r in results if r.settings != UNLIMITED] if verdicts else []:
        lines.append(
            f"goal: {result.limits}: at most {result.settings.max_in_flight} at once and "
            f"{result.settings.max_per_second} in any second at the receiver: {result.peak_concurrency} and "
            f"{result.busiest_second}; goal holds: {'yes' if result.within_limits else 'no'}"
        )
    return "\n".join(lines)


def _stage(result: Recovery, seconds: float) -> str:
    return f"{seconds - result.resumed_seconds:.1f} s, {result.rate(seconds):.0f}/s"


def _rate(result: Recovery, seconds: float) -> str:
    """Events/s from the resume, or "-" for a stage over before it had lasted a tenth of a second."""
    return f"{result.rate(seconds):.0f}" if seconds - result.resumed_seconds >= 0.1 else "-"
