"""What `delivery.ordering: per-row` costs next to `none` (issue 17 part 2), in the benchmark's own run.

Two kinds of cost, each side by side with (e), the at-least-once webhook without order:
- the insert path: the per-row trigger also takes a commit sequence number and builds the row's key
  (delivery/ordering.py), so single-row (pgbench, as the cost table measures) and bulk inserts are
  timed on (e)'s table and on an identical one with the per-row trigger, interleaved in rounds, with
  nothing delivering;
- delivery: a backlog committed in one transaction with the whole pipeline running (the pg_net worker,
  the reconciler's pg_cron loop, the receiver), from the commit until the outbox records every event
  delivered, once with the reconciler installed with `ordering: none` and once with `per-row`. The same
  backlog shapes for both: many rows with one event each (order costs one index probe per candidate),
  and few rows with many events each (per-row sends a row's events one at a time, by design: each waits
  for the previous one's outcome, so the drain is paced by round trips, not by pg_net's batches). The
  limits are set out of the way (bench/recovery.py's UNLIMITED), so order alone differs.

The receiver also checks what order promises: per row, the accepted deliveries in arrival order carry the
row's versions in commit order (each UPDATE appends a character to `name`, so a version's length is its
number). Rows received out of order are counted for both orderings (with `none` some may be, by chance).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import psycopg
from psycopg import sql

from bench import measure
from bench.delivery import BACKLOG_WORK, PATH, TimedReceiver
from bench.recovery import UNLIMITED, wait_for_status
from bench.variants import AT_LEAST_ONCE, ORDERED_VARIANT, VARIANTS_BY_KEY, Variant, install_reconciler
from local_supabase.cluster import LocalSupabase

#: Backlogs (rows, events per row): one INSERT of the rows, then events - 1 UPDATEs of every row.
FULL_SHAPES = ((1000, 1), (20, 50))
SMOKE_SHAPES = ((20, 1), (2, 5))
ORDERINGS = ("none", "per-row")


def compared() -> tuple[Variant, Variant]:
    """(e) without order, and the same webhook with per-row order."""
    return VARIANTS_BY_KEY[AT_LEAST_ONCE], ORDERED_VARIANT


@dataclass(frozen=True)
class InsertCost:
    #: Per variant key: single-row ms (pgbench latency average) and bulk us/row, one value per round.
    single_ms: dict[str, list[float]]
    bulk_us: dict[str, list[float]]


def measure_insert_cost(
    cluster: LocalSupabase,
    app: psycopg.Connection,
    admin: psycopg.Connection,
    jwt_secret: str,
    rounds: int,
    transactions: int,
    bulk_rows: int,
) -> InsertCost:
    """Single-row and bulk insert cost of (e) and of (e) with per-row order, alternating which goes first.

    Nothing may be delivering: every measurement is checked (one pending event per row) and reset.
    """
    single: dict[str, list[float]] = defaultdict(list)
    bulk: dict[str, list[float]] = defaultdict(list)
    pair = compared()
    for round_no in range(rounds):
        for variant in pair[round_no % 2 :] + pair[: round_no % 2]:
            single[variant.key].append(measure.single_row_ms(cluster, variant, transactions))
            measure.check_work(admin, {variant.key: transactions}, jwt_secret)
            measure.reset(admin)
            bulk[variant.key].append(measure.bulk_us_per_row(app, variant, bulk_rows))
            measure.check_work(admin, {variant.key: bulk_rows}, jwt_secret)
            measure.reset(admin)
    return InsertCost(dict(single), dict(bulk))


@dataclass(frozen=True)
class Drain:
    ordering: str
    rows: int
    per_row: int
    #: Seconds from the backlog's commit until the outbox recorded every event delivered.
    seconds: float
    #: Rows whose accepted deliveries arrived out of commit order.
    out_of_order: int

    @property
    def events(self) -> int:
        return self.rows * self.per_row


def _backlog(conn: psycopg.Connection, variant: Variant, rows: int, per_row: int) -> None:
    """One transaction: `rows` inserted, then every row updated `per_row - 1` times."""
    with conn.transaction():
        conn.execute(measure.insert_many(variant, rows))
        for _ in range(per_row - 1):
            conn.execute(sql.SQL("UPDATE {} SET name = name || '+'").format(variant.table_id))


def _out_of_order(receiver: TimedReceiver, table: str) -> int:
    """Rows whose first accepted deliveries, in arrival order, do not carry their versions in order."""
    versions: dict[int, list[int]] = defaultdict(list)
    for delivery in receiver.deliveries:
        body = delivery.body
        if delivery.status == 200 and not delivery.duplicate and isinstance(body, dict) and body["table"] == table:
            versions[body["record"]["id"]].append(len(body["record"]["name"]))
    return sum(1 for seen in versions.values() if seen != sorted(seen))


def measure_drains(
    conn: psycopg.Connection,
    admin: psycopg.Connection,
    secret: str,
    port: int,
    shapes: Sequence[tuple[int, int]],
    progress: Callable[[str], None],
) -> list[Drain]:
    """Every shape with ordering none, then per-row, each on its own webhook; the pipeline must be running.

    The reconciler is re-installed with each ordering (limits out of the way); the caller re-installs the
    defaults afterwards. `conn` is a postgres session in autocommit.
    """
    drains = []
    url = f"http://127.0.0.1:{port}{PATH}"
    with TimedReceiver(secret, port=port, work=BACKLOG_WORK) as receiver:
        for ordering, variant in zip(ORDERINGS, compared(), strict=True):
            install_reconciler(conn, dataclasses.replace(UNLIMITED, ordering=ordering), url)
            for rows, per_row in shapes:
                progress(f"ordering {ordering}: {rows} rows x {per_row} events")
                _backlog(conn, variant, rows, per_row)
                committed = time.perf_counter()
                wait_for_status(conn, variant, "delivered", rows * per_row)
                seconds = time.perf_counter() - committed
                drains.append(Drain(ordering, rows, per_row, seconds, _out_of_order(receiver, variant.table)))
                measure.reset(admin)
    receiver.check_accepted()
    return drains


def render(cost: InsertCost | None, drains: Sequence[Drain], rounds: int) -> str:
    """The insert path (median over the rounds) and the drains, `none` beside `per-row`."""
    lines = []
    if cost is not None:
        none, ordered = compared()
        medians = {
            key: (statistics.median(cost.single_ms[key]), statistics.median(cost.bulk_us[key]))
            for key in (none.key, ordered.key)
        }
        width = len(ordered.label)
        lines += [
            f"insert path, (e) beside the same webhook with per-row order, median of {rounds} alternating rounds:",
            f"    {'variant':<{width}}  single-row ms  bulk us/row",
        ]
        for variant in (none, ordered):
            single_ms, bulk_us = medians[variant.key]
            lines.append(f"    {variant.label:<{width}}  {single_ms:>13.3f}  {bulk_us:>11.1f}")
        ratio_single = medians[ordered.key][0] / medians[none.key][0]
        ratio_bulk = medians[ordered.key][1] / medians[none.key][1]
        lines.append(f"    {'per-row / none':<{width}}  {ratio_single:>12.2f}x  {ratio_bulk:>10.2f}x")
    lines.append(
        "a backlog committed in one transaction, delivered with the pipeline running (maxInFlight and "
        "maxPerSecond 10000);"
    )
    lines.append("seconds from the commit until the outbox had every event delivered (events/s), rows out of order:")
    by_shape: dict[tuple[int, int], dict[str, Drain]] = defaultdict(dict)
    for drain in drains:
        by_shape[(drain.rows, drain.per_row)][drain.ordering] = drain
    for (rows, per_row), pair in by_shape.items():
        cells = [
            f"{ordering} {d.seconds:6.1f} s ({d.events / max(d.seconds, 1e-9):4.0f}/s, {d.out_of_order} out of order)"
            for ordering, d in pair.items()
        ]
        ratio = pair["per-row"].seconds / max(pair["none"].seconds, 1e-9) if len(pair) == 2 else float("nan")
        lines.append(f"    {rows:>5} rows x {per_row:>2} events: " + "; ".join(cells) + f"; per-row {ratio:.1f}x")
    return "\n".join(lines)
