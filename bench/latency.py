"""First-attempt latency: from the client's commit to the orchestrator's receipt, direct vs at-least-once.

Direct mode queues the signed request in the user's transaction, so it leaves
as soon as pg_net's worker takes the queue. At-least-once adds a hop: the
reconciler's loop must find the outbox row (at once when a round is running,
else after its idle sleep of up to 0.2 s), sign it and hand it to pg_net in
a round that commits. This is what that hop costs a webhook that arrives
alone, as uploads do: inserts are spaced by random gaps (so they meet the
loop at every point of its sleep) and alternate between the two variants
(so both see the same machine at the same time).
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import psycopg

from bench.delivery import RowKey, TimedReceiver, insert_returning_id
from bench.variants import Variant

#: Pause between two inserts: uniform in [0, MAX_GAP_SECONDS).
MAX_GAP_SECONDS = 0.05
#: The reconciler loop's idle sleep plus slack for a loaded machine.
ARRIVAL_TIMEOUT_SECONDS = 60.0
#: The issue's goal for at-least-once.
GOAL_P50_SECONDS = 1.0


@dataclass(frozen=True)
class Latencies:
    variant: Variant
    #: Seconds from the client's commit (the INSERT's return in autocommit) to the receiver's record.
    seconds: list[float]

    def percentile(self, p: int) -> float:
        """The p-th percentile (1-99), interpolated between samples."""
        return statistics.quantiles(self.seconds, n=100, method="inclusive")[p - 1]


def measure(
    conn: psycopg.Connection, receiver: TimedReceiver, variants: Sequence[Variant], samples: int, seed: int = 0
) -> list[Latencies]:
    """`samples` single-row inserts per variant, alternating, each variant first in every other pair."""
    spacing = random.Random(seed)
    committed: dict[RowKey, float] = {}
    for sample in range(samples):
        ordered = variants if sample % 2 == 0 else list(reversed(variants))
        for variant in ordered:
            key = insert_returning_id(conn, variant)
            committed[key] = time.perf_counter()
            time.sleep(spacing.uniform(0, MAX_GAP_SECONDS))
    arrived = receiver.wait_for_rows(list(committed), ARRIVAL_TIMEOUT_SECONDS)
    return [_latencies(variant, committed, arrived) for variant in variants]


def _latencies(variant: Variant, committed: Mapping[RowKey, float], arrived: Mapping[RowKey, float]) -> Latencies:
    return Latencies(variant, [arrived[key] - at for key, at in committed.items() if key[0] == variant.table])


def render(results: Sequence[Latencies], subject: str) -> str:
    """The table and the goal line for `subject` (the key of the at-least-once variant)."""
    samples = len(results[0].seconds)
    lines = [
        f"{samples} single-row inserts per variant, alternating, 0-{MAX_GAP_SECONDS * 1000:.0f} ms apart; "
        "commit (client) to first accepted delivery (receiver), ms:",
        f"    {'variant':<24} {'p50':>8} {'p99':>8} {'max':>8}",
    ]
    for result in results:
        lines.append(
            f"    {result.variant.label:<24} {result.percentile(50) * 1000:>8.1f} "
            f"{result.percentile(99) * 1000:>8.1f} {max(result.seconds) * 1000:>8.1f}"
        )
    for result in results:
        if result.variant.key == subject:
            p50 = result.percentile(50)
            verdict = "PASS" if p50 < GOAL_P50_SECONDS else "MISS"
            lines.append(f"goal: {result.variant.label} p50 < {GOAL_P50_SECONDS:.0f} s: {p50 * 1000:.0f} ms  {verdict}")
    return "\n".join(lines)
