"""Session age: what a single-row insert costs on a connection that has already fired many webhooks.

pg_net 0.20.4's `net.wake()` registers a transaction callback in every
transaction that calls it and never removes it (the stand-in does the same,
local_supabase/DIFFERENCES.md), so every later transaction of that session runs
one more callback per webhook transaction it ever ran. PostgREST and Supavisor
keep connections for hours, so this is what uploads cost on a busy day. (b) and
(d) call `net.http_post` in the user's transaction; (e) only writes the outbox,
so an application session never collects callbacks (the reconciler's does, one
per round rather than per event, and pg_cron opens a new one for every run).

Each variant gets its own aged session: `age` single-row INSERT transactions
in a DO block that COMMITs after each one (the same callbacks pile up as from
as many client transactions, without the round trips). Then the aged session
and a fresh one (new in every round) time the same single-row inserts from this
client, in alternating rounds, so drift and noise hit both alike.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import psycopg
from psycopg import sql

from bench.measure import insert_one
from bench.variants import Variant
from local_supabase.cluster import LocalSupabase

#: (e) must stay within this of its fresh figure (the issue's goal); (b) is expected to grow several times.
GOAL_RATIO = 1.10


@dataclass(frozen=True)
class AgedCost:
    variant: Variant
    #: Per round, ms per single-row insert transaction from this client.
    fresh_ms: list[float]
    aged_ms: list[float]

    def ratios(self) -> list[float]:
        """Aged over fresh within each round: measured within the same seconds, so load cancels out."""
        return [aged / fresh for aged, fresh in zip(self.aged_ms, self.fresh_ms, strict=True)]

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios())


def age(conn: psycopg.Connection, variant: Variant, transactions: int) -> float:
    """Run `transactions` single-row insert transactions in `conn` (autocommit); return the seconds taken."""
    block = sql.SQL("DO $age$ BEGIN FOR i IN 1..{} LOOP {}; COMMIT; END LOOP; END $age$").format(
        sql.Literal(transactions), insert_one(variant)
    )
    started = time.perf_counter()
    conn.execute(block)
    return time.perf_counter() - started


#: Untimed inserts before each timed run: a new session's first transactions fill its catalog and
#: plan caches, which is not what the session's age costs.
WARMUP_INSERTS = 20


def _ms_per_insert(conn: psycopg.Connection, variant: Variant, inserts: int) -> float:
    statement = insert_one(variant)
    for _ in range(WARMUP_INSERTS):
        conn.execute(statement, prepare=True)
    started = time.perf_counter()
    for _ in range(inserts):
        conn.execute(statement, prepare=True)
    return (time.perf_counter() - started) * 1000 / inserts


def compare(
    cluster: LocalSupabase, role: str, aged: psycopg.Connection, variant: Variant, rounds: int, inserts: int
) -> AgedCost:
    """Median ms per insert in `aged` and in a new session per round, alternating which goes first."""
    fresh_ms: list[float] = []
    aged_ms: list[float] = []
    for round_no in range(rounds):
        with psycopg.connect(cluster.dsn(role), autocommit=True) as fresh:
            fresh.execute("SELECT 1")  # connection setup is not part of an insert
            sessions = [(fresh, fresh_ms), (aged, aged_ms)]
            for conn, samples in sessions if round_no % 2 == 0 else reversed(sessions):
                samples.append(_ms_per_insert(conn, variant, inserts))
    return AgedCost(variant, fresh_ms, aged_ms)


def measure(
    cluster: LocalSupabase,
    role: str,
    variants: Sequence[Variant],
    transactions: int,
    rounds: int,
    inserts: int,
    after_each: Callable[[Variant, int], None],
) -> list[AgedCost]:
    """Per variant: age a session by `transactions`, then compare it with fresh ones.

    `after_each(variant, rows)` runs after the aging and after the comparison
    with the rows inserted meanwhile: the caller checks the work and empties
    the tables, so the aged and fresh sessions insert into the same small table.
    """
    results = []
    for variant in variants:
        with psycopg.connect(cluster.dsn(role), autocommit=True) as aged:
            age(aged, variant, transactions)
            after_each(variant, transactions)
            results.append(compare(cluster, role, aged, variant, rounds, inserts))
            after_each(variant, 2 * rounds * (WARMUP_INSERTS + inserts))
    return results


def render(results: Sequence[AgedCost], transactions: int, rounds: int, inserts: int, subject: str) -> str:
    """The table and the goal line for `subject` (the key of the variant the goal is about)."""
    lines = [
        f"single-row INSERT transactions from this client (prepared, autocommit), {inserts} per session per round",
        f"after {WARMUP_INSERTS} untimed ones, "
        f"median of {rounds} rounds; 'aged' is a session that first ran {transactions} single-row insert",
        "transactions of the same variant, 'fresh' a new session every round; aged/fresh is the median of",
        "the per-round ratios (min-max after it):",
        f"    {'variant':<24} {'fresh ms':>9} {'aged ms':>9} {'aged/fresh':>11}",
    ]
    for result in results:
        fresh, aged, ratios = statistics.median(result.fresh_ms), statistics.median(result.aged_ms), result.ratios()
        lines.append(
            f"    {result.variant.label:<24} {fresh:>9.3f} {aged:>9.3f} {result.ratio:>10.2f}x"
            f"  ({min(ratios):.2f}-{max(ratios):.2f}x)"
        )
    for result in results:
        if result.variant.key == subject:
            verdict = "PASS" if result.ratio <= GOAL_RATIO else "MISS"
            lines.append(
                f"goal: {result.variant.label} aged <= {GOAL_RATIO:.2f}x fresh: {result.ratio:.2f}x  {verdict}"
            )
    return "\n".join(lines)
