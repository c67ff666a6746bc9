"""First-attempt latency: from the client's commit to the orchestrator's receipt, per variant.

Every variant's request goes through the same pg_net worker (the stand-in with
upstream's timing), so Supabase's static webhook (b) is the anchor: its
latency is pg_net's loop alone. Direct mode (d) queues its signed request in
the user's transaction just as (b) does. At-least-once (e) adds a hop: the
reconciler's loop must find the outbox row (at once when a round is running,
else after its idle sleep), sign it and hand it to pg_net in a round that
commits; between two pg_cron runs (a `1 seconds` schedule) nobody looks.

Two workloads, both alternating the variants so all see the same machine:
- a steady stream: single-row inserts 0-50 ms apart at random, so the worker
  stays busy and requests wait for its next round (up to a second);
- isolated inserts: each one only once the pg_net worker sleeps (idle, as
  after a quiet spell), plus a random pause of up to 1 s so it meets the
  reconciler's loop and pg_cron's second at every phase.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import psycopg

from bench.delivery import RowKey, TimedReceiver, insert_returning_id
from bench.measure import wait_until
from bench.variants import Variant
from local_supabase.pg_net_worker import PgNetWorker

#: Pause between two inserts of the steady stream: uniform in [0, MAX_GAP_SECONDS).
MAX_GAP_SECONDS = 0.05
#: Pause after the worker fell asleep before an isolated insert: uniform in [0, ISOLATED_PHASE_SECONDS).
ISOLATED_PHASE_SECONDS = 1.0
#: Slack for a loaded machine.
ARRIVAL_TIMEOUT_SECONDS = 60.0
#: The issue's goal: at-least-once at most the static webhook's latency plus this, at p50 and p99.
GOAL_MARGIN_SECONDS = 0.150
WORKLOADS = ("steady", "isolated")


@dataclass(frozen=True)
class Latencies:
    variant: Variant
    #: "steady" or "isolated".
    workload: str
    #: Seconds from the client's commit (the INSERT's return in autocommit) to the receiver's record.
    seconds: list[float]

    def percentile(self, p: int) -> float:
        """The p-th percentile (1-99), interpolated between samples."""
        return statistics.quantiles(self.seconds, n=100, method="inclusive")[p - 1]


def measure_steady(
    conn: psycopg.Connection, receiver: TimedReceiver, variants: Sequence[Variant], samples: int, seed: int = 0
) -> list[Latencies]:
    """`samples` single-row inserts per variant, round robin (each round starting one further along)."""
    spacing = random.Random(seed)
    committed: dict[RowKey, float] = {}
    for sample in range(samples):
        for offset in range(len(variants)):
            variant = variants[(sample + offset) % len(variants)]
            key = insert_returning_id(conn, variant)
            committed[key] = time.perf_counter()
            time.sleep(spacing.uniform(0, MAX_GAP_SECONDS))
    arrived = receiver.wait_for_rows(list(committed), ARRIVAL_TIMEOUT_SECONDS)
    return [_latencies(variant, "steady", committed, arrived) for variant in variants]


def _wait_idle(worker: PgNetWorker, timeout: float = 30.0) -> None:
    wait_until(
        lambda: worker.idle,
        lambda: f"the pg_net worker did not fall asleep within {timeout} s",
        timeout,
        interval=0.005,
    )


def measure_isolated(
    conn: psycopg.Connection,
    receiver: TimedReceiver,
    worker: PgNetWorker,
    variants: Sequence[Variant],
    samples: int,
    seed: int = 1,
) -> list[Latencies]:
    """`samples` single-row inserts per variant, each after the worker fell asleep and a random pause."""
    phase = random.Random(seed)
    committed: dict[RowKey, float] = {}
    for sample in range(samples):
        for offset in range(len(variants)):
            variant = variants[(sample + offset) % len(variants)]
            _wait_idle(worker)
            time.sleep(phase.uniform(0, ISOLATED_PHASE_SECONDS))
            if not worker.idle:
                _wait_idle(worker)
            key = insert_returning_id(conn, variant)
            committed[key] = time.perf_counter()
            receiver.wait_for_rows([key], ARRIVAL_TIMEOUT_SECONDS)
    arrived = receiver.wait_for_rows(list(committed), ARRIVAL_TIMEOUT_SECONDS)
    return [_latencies(variant, "isolated", committed, arrived) for variant in variants]


def _latencies(
    variant: Variant, workload: str, committed: Mapping[RowKey, float], arrived: Mapping[RowKey, float]
) -> Latencies:
    seconds = [arrived[key] - at for key, at in committed.items() if key[0] == variant.table]
    return Latencies(variant, workload, seconds)


@dataclass(frozen=True)
class Goal:
    workload: str
    percentile: int
    anchor_ms: float
    subject_ms: float

    @property
    def holds(self) -> bool:
        return self.subject_ms <= self.anchor_ms + GOAL_MARGIN_SECONDS * 1000


def goals(results: Sequence[Latencies], anchor: str, subject: str) -> list[Goal]:
    """At-least-once (`subject`) against the static webhook (`anchor`) + 150 ms, per workload, p50 and p99."""
    found = []
    for workload in WORKLOADS:
        by_key = {r.variant.key: r for r in results if r.workload == workload}
        if anchor in by_key and subject in by_key:
            for p in (50, 99):
                found.append(
                    Goal(workload, p, by_key[anchor].percentile(p) * 1000, by_key[subject].percentile(p) * 1000)
                )
    return found


def render(results: Sequence[Latencies], anchor: str, subject: str, verdicts: bool = True) -> str:
    """The table, and the goal lines unless `verdicts` is false (a smoke run's samples are too few)."""
    lines = []
    for workload in WORKLOADS:
        rows = [r for r in results if r.workload == workload]
        if not rows:
            continue
        samples = len(rows[0].seconds)
        how = (
            f"0-{MAX_GAP_SECONDS * 1000:.0f} ms apart (the worker stays busy)"
            if workload == "steady"
            else f"each after the pg_net worker fell asleep, plus 0-{ISOLATED_PHASE_SECONDS:.0f} s"
        )
        lines += [
            f"{workload}: {samples} single-row inserts per variant, alternating, {how};",
            "commit (client) to first delivery (receiver), ms:",
            f"    {'variant':<28} {'p50':>8} {'p99':>8} {'max':>8}",
        ]
        for r in rows:
            lines.append(
                f"    {r.variant.label:<28} {r.percentile(50) * 1000:>8.1f} "
                f"{r.percentile(99) * 1000:>8.1f} {max(r.seconds) * 1000:>8.1f}"
            )
    for goal in goals(results, anchor, subject) if verdicts else []:
        lines.append(
            f"goal: at-least-once first attempt, {goal.workload}, p{goal.percentile} <= static webhook "
            f"+ {GOAL_MARGIN_SECONDS * 1000:.0f} ms: {goal.subject_ms:.0f} ms vs {goal.anchor_ms:.0f} + "
            f"{GOAL_MARGIN_SECONDS * 1000:.0f} ms; goal holds: {'yes' if goal.holds else 'no'}"
        )
    return "\n".join(lines)


def render_gaps(gaps: Sequence[float]) -> str:
    """How long nobody looked at the outbox between two reconciler runs (pg_cron's start of the next)."""
    if len(gaps) < 2:
        return f"reconciler runs: {len(gaps) + 1}"
    cuts = statistics.quantiles(gaps, n=100, method="inclusive")
    return (
        f"between two reconciler runs (one's end to the next one's session), over {len(gaps)} gaps: "
        f"p50 {cuts[49] * 1000:.1f} ms, p99 {cuts[98] * 1000:.1f} ms, max {max(gaps) * 1000:.1f} ms"
    )
