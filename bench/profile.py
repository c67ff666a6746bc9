"""'Where the time goes': function-level timings of each variant's trigger path.

The INSERTs run under EXPLAIN ANALYZE (statement and AFTER-trigger time)
inside a transaction that is rolled back; the per-function timings are the
difference of pg_stat_xact_user_functions just before and just after them, in
that same transaction. That view is this backend's not-yet-flushed share of
pg_stat_user_functions, so each variant's figures are its own with no
pg_stat_reset() between variants and no waiting for PostgreSQL 15 to flush its
statistics (never inside a transaction, at most once a second otherwise; the
unflushed counts of earlier statements are why we take a difference). The
profiling session runs with track_functions = all, so SQL and C functions
(pgjwt's sign, pgcrypto's hmac) are counted too, not just PL/pgSQL ones; the
timed runs do not, because timing every call would tax function-heavy variants.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg
from psycopg import sql

from bench.measure import insert_many, insert_one
from bench.variants import Variant
from local_supabase.cluster import LocalSupabase

#: Signatures with argument types, so overloads (hmac(bytea,...) and hmac(text,...)) stay apart.
_FUNCTION_TIMES = """
    SELECT s.schemaname || '.' || s.funcname || '(' || coalesce(
               (SELECT pg_catalog.string_agg(pg_catalog.format_type(a.type, NULL), ',' ORDER BY a.n)
                  FROM pg_catalog.unnest(p.proargtypes::pg_catalog.oid[]) WITH ORDINALITY AS a(type, n)),
               '') || ')',
           s.calls, s.self_time, s.total_time
      FROM pg_catalog.pg_stat_xact_user_functions AS s
      JOIN pg_catalog.pg_proc AS p ON p.oid = s.funcid
"""


@dataclass(frozen=True)
class Workload:
    """What is profiled: `statements` INSERT statements of `rows_each` rows each."""

    mode: str
    statements: int
    rows_each: int

    @property
    def rows(self) -> int:
        return self.statements * self.rows_each

    def statement(self, variant: Variant) -> sql.Composed:
        return insert_one(variant) if self.rows_each == 1 else insert_many(variant, self.rows_each)

    def describe(self) -> str:
        return f"{self.mode}: {self.statements} INSERT statement(s) of {self.rows_each} row(s)"


@dataclass(frozen=True)
class FunctionTime:
    signature: str
    calls: int
    self_ms: float
    total_ms: float

    def minus(self, earlier: FunctionTime) -> FunctionTime:
        return FunctionTime(
            self.signature, self.calls - earlier.calls, self.self_ms - earlier.self_ms, self.total_ms - earlier.total_ms
        )


@dataclass(frozen=True)
class Profile:
    variant: Variant
    workload: Workload
    statement_ms: float
    trigger_ms: float
    firings: int
    #: Heaviest first, so the trigger function itself comes first.
    functions: list[FunctionTime]

    def biggest_cost(self) -> tuple[str, float]:
        """The largest single item under the trigger: a callee's total time or the trigger function's own.

        The trigger function's self time (PL/pgSQL, jsonb building, the hooks
        INSERT of (b), the transition-table scan of (d)) competes with its
        callees' totals (Vault read, signing, net.http_post).
        """
        trigger, *callees = self.functions
        items = [(f"{trigger.signature} itself", trigger.self_ms)]
        items += [(callee.signature, callee.total_ms) for callee in callees]
        return max(items, key=lambda item: item[1])


def _snapshot(conn: psycopg.Connection) -> dict[str, FunctionTime]:
    return {row[0]: FunctionTime(*row) for row in conn.execute(_FUNCTION_TIMES)}


def _since(before: dict[str, FunctionTime], after: dict[str, FunctionTime]) -> list[FunctionTime]:
    """The functions called between the two snapshots, heaviest (by total time) first."""
    spent = [now.minus(before[name]) if name in before else now for name, now in after.items()]
    return sorted((function for function in spent if function.calls), key=lambda f: f.total_ms, reverse=True)


@contextmanager
def instrumented_session(cluster: LocalSupabase, role: str) -> Iterator[psycopg.Connection]:
    """A session of `role` with track_functions = all (a superuser-only setting, so set per role)."""
    with psycopg.connect(cluster.admin_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("ALTER ROLE {} SET track_functions = 'all'").format(sql.Identifier(role)))
        try:
            with psycopg.connect(cluster.dsn(role), autocommit=True) as conn:
                yield conn
        finally:
            admin.execute(sql.SQL("ALTER ROLE {} RESET track_functions").format(sql.Identifier(role)))


def profile(conn: psycopg.Connection, variant: Variant, workload: Workload) -> Profile:
    """Run the workload under EXPLAIN ANALYZE, roll it back, and return where its time went."""
    explain = sql.SQL("EXPLAIN (ANALYZE, FORMAT JSON) {}").format(workload.statement(variant))
    with conn.transaction(force_rollback=True):
        before = _snapshot(conn)
        plans = [conn.execute(explain).fetchone()[0][0] for _ in range(workload.statements)]
        after = _snapshot(conn)
    triggers = [trigger for plan in plans for trigger in plan.get("Triggers", [])]
    return Profile(
        variant=variant,
        workload=workload,
        statement_ms=sum(plan["Execution Time"] for plan in plans),
        trigger_ms=sum(trigger["Time"] for trigger in triggers),
        firings=sum(trigger["Calls"] for trigger in triggers),
        functions=_since(before, after),
    )


def render(profiles: list[Profile], top: int = 8) -> str:
    """Per variant: statement and trigger time, the heaviest functions, and the biggest single cost."""
    lines = []
    for item in profiles:
        rows = item.workload.rows
        lines.append(
            f"{item.variant.label}: {item.statement_ms * 1000 / rows:.1f} us/row in the INSERT, of which "
            f"AFTER triggers {item.trigger_ms * 1000 / rows:.1f} us/row ({item.firings} firings for {rows} rows)"
        )
        if not item.functions:
            continue
        lines.append(f"    {'function':<56} {'calls':>6} {'self us/row':>12} {'total us/row':>12}")
        for function in item.functions[:top]:
            lines.append(
                f"    {function.signature[:56]:<56} {function.calls:>6} "
                f"{function.self_ms * 1000 / rows:>12.2f} {function.total_ms * 1000 / rows:>12.2f}"
            )
        name, ms = item.biggest_cost()
        share = ms / item.functions[0].total_ms
        lines.append(f"    biggest cost in the trigger path: {name} ({share:.0%} of the trigger function's time)")
    return "\n".join(lines)
