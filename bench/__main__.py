"""`python -m bench [--smoke]`: per-insert cost of the webhook variants, side by side in one run.

Starts its own local Supabase stand-in, installs every variant on its own
table, then measures in interleaved rounds (each round runs every variant,
starting with a different one) so that machine noise and drift hit all
variants alike. Timing runs uninstrumented; only the profile that follows
runs in a session with track_functions = all. Prints the results table, the
goal lines (full runs only: a smoke run's figures cannot support a verdict) and
where the time goes. The exit status is 0 whatever the figures; only errors (a
variant not doing its work, a tool failing) make it non-zero. See bench/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import secrets
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg

from bench import delivery, latency, measure, ordering, pieces, profile, recovery, report, session_age
from bench.variants import (
    AT_LEAST_ONCE,
    BASELINE,
    DIRECT,
    ORDERED_VARIANT,
    VARIANTS,
    VARIANTS_BY_KEY,
    Variant,
    install_all,
    install_reconciler,
)
from local_supabase.cluster import LocalSupabase
from secure_webhooks.configuration.delivery_settings import DeliverySettings


@dataclass(frozen=True)
class Sizes:
    rounds: int
    #: pgbench transactions (one single-row INSERT each) per variant per round.
    transactions: int
    #: Rows of the one INSERT statement per variant per round, and of the profiled one.
    bulk_rows: int
    #: Single-row INSERT statements profiled per variant.
    profiled_statements: int
    #: Rows of the untimed first INSERT per variant that warms caches and checks the tokens.
    warmup_rows: int
    #: Transactions per piece and round in the piece-by-piece breakdown (one new session each: few, so
    #: that pg_net's leaked callbacks stay few).
    piece_iterations: int
    #: Single-row insert transactions that age a session before it is compared with fresh ones.
    age_transactions: int = 30_000
    #: Rounds, and timed inserts per session and round, of that comparison.
    age_rounds: int = 21
    age_inserts: int = 200
    #: Spaced single-row inserts per variant whose commit-to-receipt latency is measured (steady stream).
    latency_samples: int = 200
    #: Single-row inserts per variant, each after the pg_net worker fell asleep (isolated).
    isolated_samples: int = 30
    #: Events of the backlog that the recovery measurement fails and replays.
    recovery_events: int = 10_000
    #: Backlogs (rows, events per row) the ordering measurement drains with ordering none and per-row.
    ordering_shapes: tuple[tuple[int, int], ...] = ordering.FULL_SHAPES
    #: The breaker's probe interval in the recovery (None: the default, 30 s). Each drain waits for one
    #: probe after the replay; a smoke run shortens that wait.
    probe_seconds: int | None = None
    #: Whether the interleaved rounds must account for pgbench's wall time (measure.check_attributed).
    #: A smoke run's round is some 140 ms, which one scheduler stall on a loaded machine upsets: there
    #: the mismatch is printed, as its figures support no verdict anyway.
    strict_attribution: bool = True


FULL = Sizes(
    rounds=9, transactions=2000, bulk_rows=10_000, profiled_statements=1000, warmup_rows=100, piece_iterations=300
)
SMOKE = Sizes(
    rounds=1,
    transactions=20,
    bulk_rows=200,
    profiled_statements=20,
    warmup_rows=10,
    piece_iterations=20,
    age_transactions=300,
    age_rounds=2,
    age_inserts=20,
    latency_samples=10,
    isolated_samples=2,
    strict_attribution=False,
    recovery_events=200,
    ordering_shapes=ordering.SMOKE_SHAPES,
    probe_seconds=2,
)
#: Session age and first-attempt latency: Supabase's webhook, ours direct and ours at-least-once.
AGED = (BASELINE, DIRECT, AT_LEAST_ONCE)

NOTE = """\
Deliveries are not part of an insert's cost: pg_net sends after commit, in its background worker,
and (e)'s reconciler signs and sends after commit too. Neither the stand-in's delivery worker nor
the reconciler runs during timing; net.http_request_queue, supabase_functions.hooks, the outbox
(and the tables) are truncated after every measurement, and every measurement is checked: one
queued request per row, one hooks row per firing for (b), for (c) and (d) a JWT that PyJWT
verifies, and for (e) one pending outbox event per row and no queued request."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny sizes (CI): every variant and mode runs, figures noisy, no goal verdicts",
    )
    parser.add_argument("--rounds", type=int, help=f"interleaved rounds (default {FULL.rounds})")
    parser.add_argument(
        "--transactions", type=int, help=f"pgbench single-row transactions per variant and round ({FULL.transactions})"
    )
    parser.add_argument("--bulk-rows", type=int, help=f"rows of the bulk INSERT ({FULL.bulk_rows})")
    parser.add_argument(
        "--delivery-only", action="store_true", help="only first-attempt latency and recovery (no cost table)"
    )
    parser.add_argument(
        "--latency-samples", type=int, help=f"steady-stream inserts per variant ({FULL.latency_samples})"
    )
    parser.add_argument("--isolated-samples", type=int, help=f"isolated inserts per variant ({FULL.isolated_samples})")
    parser.add_argument("--recovery-events", type=int, help=f"events of the recovery backlog ({FULL.recovery_events})")
    parser.add_argument(
        "--limits-only",
        action="store_true",
        help="only the limits and per-row order section: recovery with and without limits (and pg_net alone, "
        "with (d)'s signed requests), per-row order's insert and delivery cost (no cost table, no latency)",
    )
    return parser


def _sizes(args: argparse.Namespace) -> Sizes:
    base = SMOKE if args.smoke else FULL
    return dataclasses.replace(
        base,
        rounds=args.rounds or base.rounds,
        transactions=args.transactions or base.transactions,
        bulk_rows=args.bulk_rows or base.bulk_rows,
        latency_samples=args.latency_samples or base.latency_samples,
        isolated_samples=args.isolated_samples or base.isolated_samples,
        recovery_events=args.recovery_events or base.recovery_events,
    )


_STARTED = time.monotonic()


def _progress(message: str) -> None:
    print(f"[{time.monotonic() - _STARTED:5.0f} s] {message}", file=sys.stderr, flush=True)


def interleaved(round_no: int) -> Iterator[Variant]:
    """Every variant once, starting one further along each round, so none is always first."""
    for offset in range(len(VARIANTS)):
        yield VARIANTS[(round_no + offset) % len(VARIANTS)]


@dataclass(frozen=True)
class Delivered:
    latencies: list[latency.Latencies]
    #: Seconds from one reconciler run's end to the next run's session, during the latency workloads.
    cron_gaps: list[float]
    anchors: list[recovery.Anchor]
    #: The same backlog drained without limits (the goal's figure), then with the default limits.
    recoveries: list[recovery.Recovery]
    drains: list[ordering.Drain]


@dataclass(frozen=True)
class Results:
    single_ms: dict[str, list[float]]
    interleaved_ms: dict[str, list[float]]
    bulk_us: dict[str, list[float]]
    profiles: dict[profile.Workload, list[profile.Profile]]
    pieces_us: dict[str, dict[str, float]]
    aged: list[session_age.AgedCost]
    ordering_cost: ordering.InsertCost
    delivered: Delivered


def run(cluster: LocalSupabase, sizes: Sizes) -> Results:
    """Install every variant, warm up, time the interleaved rounds, then profile."""
    jwt_secret = secrets.token_urlsafe(48)
    single: dict[str, list[float]] = defaultdict(list)
    interleaved_ms: dict[str, list[float]] = defaultdict(list)
    bulk: dict[str, list[float]] = defaultdict(list)
    with (
        psycopg.connect(cluster.admin_dsn, autocommit=True) as admin,
        psycopg.connect(cluster.dsn(measure.APP_ROLE), autocommit=True) as app,
    ):
        install_all(app, jwt_secret)
        for variant in VARIANTS:
            measure.bulk_us_per_row(app, variant, sizes.warmup_rows)
            measure.check_work(admin, {variant.key: sizes.warmup_rows}, jwt_secret)
            measure.reset(admin)
        for round_no in range(sizes.rounds):
            _progress(f"round {round_no + 1}/{sizes.rounds}: single-row")
            for variant in interleaved(round_no):
                single[variant.key].append(measure.single_row_ms(cluster, variant, sizes.transactions))
                measure.check_work(admin, {variant.key: sizes.transactions}, jwt_secret)
                measure.reset(admin)
            _progress(f"round {round_no + 1}/{sizes.rounds}: single-row, interleaved")
            results = measure.interleaved_single_row_ms(
                cluster, VARIANTS, sizes.transactions, strict=sizes.strict_attribution
            )
            for key, result in results.items():
                interleaved_ms[key].append(result.latency_ms)
            measure.check_work(admin, {key: result.transactions for key, result in results.items()}, jwt_secret)
            measure.reset(admin)
            _progress(f"round {round_no + 1}/{sizes.rounds}: bulk")
            for variant in interleaved(round_no):
                bulk[variant.key].append(measure.bulk_us_per_row(app, variant, sizes.bulk_rows))
                measure.check_work(admin, {variant.key: sizes.bulk_rows}, jwt_secret)
                measure.reset(admin)
        _progress("timing the pieces of a single-row insert")
        pieces_us = pieces.time_pieces(
            cluster, jwt_secret, sizes.rounds, sizes.piece_iterations, sizes.bulk_rows, lambda: measure.reset(admin)
        )
        _progress("per-row order: the insert path beside (e)'s")
        ordering_cost = ordering.measure_insert_cost(
            cluster, app, admin, jwt_secret, sizes.rounds, sizes.transactions, sizes.bulk_rows
        )
        _progress(f"session age: {sizes.age_transactions} transactions per aged session")

        def check_and_reset(variant: Variant, rows: int) -> None:
            measure.check_work(admin, {variant.key: rows}, jwt_secret)
            measure.reset(admin)

        aged = session_age.measure(
            cluster,
            measure.APP_ROLE,
            [VARIANTS_BY_KEY[key] for key in AGED],
            sizes.age_transactions,
            sizes.age_rounds,
            sizes.age_inserts,
            check_and_reset,
        )
    _progress("profiling")
    workloads = (
        profile.Workload("bulk", statements=1, rows_each=sizes.bulk_rows),
        profile.Workload("single-row", statements=sizes.profiled_statements, rows_each=1),
    )
    with profile.instrumented_session(cluster, measure.APP_ROLE) as instrumented:
        profiles = {
            workload: [profile.profile(instrumented, variant, workload) for variant in VARIANTS]
            for workload in workloads
        }
    delivered = _deliver(cluster, sizes, jwt_secret)
    return Results(single, interleaved_ms, bulk, profiles, pieces_us, aged, ordering_cost, delivered)


def deliver_only(cluster: LocalSupabase, sizes: Sizes) -> Delivered:
    """Install every variant and run only the delivery measurements (`--delivery-only`)."""
    jwt_secret = secrets.token_urlsafe(48)
    with psycopg.connect(cluster.dsn(measure.APP_ROLE), autocommit=True) as app:
        install_all(app, jwt_secret)
    return _deliver(cluster, sizes, jwt_secret)


@dataclass(frozen=True)
class Limited:
    """`--limits-only`: per-row order's insert cost, and the delivery side of the limits and of order."""

    ordering_cost: ordering.InsertCost
    delivered: Delivered


def limits_only(cluster: LocalSupabase, sizes: Sizes) -> Limited:
    """Install every variant, time per-row order's insert path, then recovery and drains (no latency)."""
    jwt_secret = secrets.token_urlsafe(48)
    with (
        psycopg.connect(cluster.admin_dsn, autocommit=True) as admin,
        psycopg.connect(cluster.dsn(measure.APP_ROLE), autocommit=True) as app,
    ):
        install_all(app, jwt_secret)
        _progress("per-row order: the insert path beside (e)'s")
        cost = ordering.measure_insert_cost(
            cluster, app, admin, jwt_secret, sizes.rounds, sizes.transactions, sizes.bulk_rows
        )
    # pg_net alone with (d)'s signed requests only: the fair anchor (bench/README.md); (b)'s runs in full runs.
    return Limited(cost, _deliver(cluster, sizes, jwt_secret, with_latency=False, anchor_keys=(DIRECT,)))


def _deliver(
    cluster: LocalSupabase,
    sizes: Sizes,
    jwt_secret: str,
    *,
    with_latency: bool = True,
    anchor_keys: tuple[str, ...] = (BASELINE, DIRECT),
) -> Delivered:
    """Latency, then recovery with and without limits, then per-row order's drains, with the pg_net worker,
    the receiver and the reconciler's job running."""
    delivering = [VARIANTS_BY_KEY[key] for key in AGED]
    static = VARIANTS_BY_KEY[BASELINE]
    receiver = delivery.TimedReceiver(jwt_secret, unsigned_tables=[static.table]).start()
    url = receiver.url + delivery.PATH
    with (
        psycopg.connect(cluster.admin_dsn, autocommit=True) as admin,
        psycopg.connect(cluster.dsn(measure.APP_ROLE), autocommit=True) as conn,
    ):
        delivery.point_at(conn, [*delivering, ORDERED_VARIANT], url)
        with delivery.running_pipeline(cluster) as pipeline:
            try:
                latencies: list[latency.Latencies] = []
                if with_latency:
                    _progress(f"latency: a steady stream of {sizes.latency_samples} inserts per variant")
                    latencies = latency.measure_steady(conn, receiver, delivering, sizes.latency_samples)
                    _progress(f"latency: {sizes.isolated_samples} isolated inserts per variant")
                    latencies += latency.measure_isolated(
                        conn, receiver, pipeline.worker, delivering, sizes.isolated_samples
                    )
                cron_gaps = list(pipeline.cron.gaps)
                pipeline.worker.drain()
                measure.reset(admin)
                receiver.set_work(delivery.BACKLOG_WORK)
                # pg_net alone with the same batch size: the static webhook's requests (refused, unsigned,
                # so the receiver does less per request), and direct mode's signed ones (verified as ours).
                anchors = []
                for variant in (VARIANTS_BY_KEY[key] for key in anchor_keys):
                    _progress(f"recovery anchor: {sizes.recovery_events} requests of {variant.label} at once")
                    anchors.append(
                        recovery.measure_anchor(conn, variant, sizes.recovery_events, receiver, pipeline.worker)
                    )
                    pipeline.worker.drain()
                    measure.reset(admin)
            finally:
                receiver.stop()
            receiver.check_accepted()
            measure.reset(admin)
            outbox = VARIANTS_BY_KEY[AT_LEAST_ONCE]
            recoveries = []
            for label, settings in recovery.LIMITS:
                if sizes.probe_seconds is not None:
                    settings = dataclasses.replace(settings, probe_seconds=sizes.probe_seconds)
                limits = (label, settings)
                _progress(f"recovery, {label}: {sizes.recovery_events} events, orchestrator down, then replayed")
                recoveries.append(
                    recovery.measure(
                        conn, outbox, sizes.recovery_events, jwt_secret, receiver.port, pipeline.worker, limits
                    )
                )
                measure.reset(admin)
            drains = ordering.measure_drains(conn, admin, jwt_secret, receiver.port, sizes.ordering_shapes, _progress)
            install_reconciler(conn, DeliverySettings(), url)
    return Delivered(latencies, cron_gaps, anchors, recoveries, drains)


def print_delivery(delivered: Delivered, verdicts: bool = True) -> None:
    if delivered.latencies:
        print("First-attempt latency")
        print("---------------------")
        print(latency.render(delivered.latencies, BASELINE, AT_LEAST_ONCE, verdicts))
        print(latency.render_gaps(delivered.cron_gaps))
        print()
    unlimited = delivered.recoveries[0]
    print("Recovery throughput")
    print("-------------------")
    print(recovery.render(unlimited, delivered.anchors, verdicts))


def print_limits(
    delivered: Delivered,
    ordering_cost: ordering.InsertCost | None,
    rounds: int,
    insert_path: dict[str, dict[str, float]] | None,
    verdicts: bool = True,
) -> None:
    """The limits and per-row order section: both drains side by side, order's costs, and the insert path
    (from this run's cost table when there is one)."""
    print()
    print("Limits and per-row order")
    print("------------------------")
    for limited in delivered.recoveries[1:]:
        print(recovery.render(limited, (), verdicts))
        print()
    print(f"the same backlog of {delivered.recoveries[0].events} events, side by side (this run):")
    print(recovery.render_side_by_side(delivered.recoveries, verdicts))
    print()
    print(ordering.render(ordering_cost, delivered.drains, rounds))
    print()
    if insert_path is None:
        print(
            "insert path: this run has no cost table (--limits-only, --delivery-only); (e)'s single-row and bulk "
            "ratios to (b) are those of the last full run (bench/README.md)"
        )
    else:
        print(report.insert_path_lines(insert_path, verdicts))


def print_report(sizes: Sizes, results: Results, verdicts: bool = True) -> None:
    print(
        f"single-row: pgbench -M prepared, 1 client, one INSERT per transaction, {sizes.transactions} transactions "
        f"x {sizes.rounds} rounds per variant, one variant at a time; median of pgbench's latency average"
    )
    print(
        f"interleaved: the same, but one pgbench run per round in which each of {sizes.transactions * len(VARIANTS)} "
        "transactions goes to a random variant; median of pgbench's per-script latency average"
    )
    print(f"bulk: one INSERT of {sizes.bulk_rows} rows (autocommit) x {sizes.rounds} rounds per variant; median")
    print(NOTE)
    print()
    samples = {"single-row": results.single_ms, "interleaved": results.interleaved_ms, "bulk": results.bulk_us}
    medians = {mode: report.medians(values) for mode, values in samples.items()}
    print(report.table(medians))
    print()
    if verdicts:
        print(report.goal_lines(medians))
        print()
    print(report.round_spread(samples))
    print()
    print("Where the time goes")
    print("-------------------")
    print("A single-row insert, piece by piece:")
    print(pieces.render(results.pieces_us, sizes.piece_iterations, sizes.rounds))
    print()
    print("Per function: EXPLAIN ANALYZE + pg_stat_xact_user_functions (track_functions = all), rolled back;")
    print("instrumented and in one transaction, so not comparable with the figures above.")
    for workload, profiles in results.profiles.items():
        print()
        print(workload.describe())
        print(profile.render(profiles))
    print()
    print("Session age")
    print("-----------")
    # The goal line is about the variant named last; none named, none printed.
    subject = AT_LEAST_ONCE if verdicts else ""
    print(session_age.render(results.aged, sizes.age_transactions, sizes.age_rounds, sizes.age_inserts, subject))
    print()
    print_delivery(results.delivered, verdicts)
    print_limits(results.delivered, results.ordering_cost, sizes.rounds, medians, verdicts)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    sizes = _sizes(args)
    started = time.monotonic()
    _progress(f"starting the local Supabase stand-in; {os.cpu_count()} CPUs")
    try:
        with LocalSupabase.start() as cluster:
            if args.limits_only:
                limited = limits_only(cluster, sizes)
            elif args.delivery_only:
                delivered = deliver_only(cluster, sizes)
            else:
                results = run(cluster, sizes)
        verdicts = not args.smoke
        if args.limits_only:
            print_delivery(limited.delivered, verdicts)
            print_limits(limited.delivered, limited.ordering_cost, sizes.rounds, None, verdicts)
        elif args.delivery_only:
            print_delivery(delivered, verdicts)
            print_limits(delivered, None, sizes.rounds, None, verdicts)
        else:
            print_report(sizes, results, verdicts)
        if not verdicts:
            print()
            print(report.NO_VERDICTS)
    except measure.BenchError as error:
        print(f"bench: {error}", file=sys.stderr)
        return 1
    _progress(f"done in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
