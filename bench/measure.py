"""Timing one variant once, single-row (pgbench) or bulk (one INSERT), and undoing it.

Every measured run is followed by a check that the variant really did its work
(one queued request per row, one hooks row per firing for (b), a JWT that
PyJWT accepts, one pending outbox event per row for at-least-once), so a
broken or silently skipped trigger cannot look fast, and by a TRUNCATE so
every run starts from the same empty tables, queue and outbox.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import jwt
import psycopg
from psycopg import sql

from bench.variants import INSTALLED, TRIGGER_NAME, VARIANTS_BY_KEY, Variant
from local_supabase.cluster import LocalSupabase
from secure_webhooks.configuration.settings import DEFAULT_CLAIMS
from secure_webhooks.delivery.endpoints import ENDPOINTS
from secure_webhooks.delivery.outbox import ATTEMPTS, EVENTS, SCHEMA
from webhook_verifier import VerificationError, Verifier

PGBENCH = Path(os.environ.get("PGBENCH", "/usr/lib/postgresql/15/bin/pgbench"))
APP_ROLE = "postgres"


class BenchError(RuntimeError):
    """A variant did not do what it must, or a tool failed: the figures would be meaningless."""


def wait_until(done: Callable[[], bool], failure: Callable[[], str], timeout: float, interval: float = 0.05) -> None:
    """Poll `done()` every `interval` s; after `timeout` s a BenchError saying `failure()`.

    The timeout only bounds how long a broken run takes to fail: a wait never ends on a guessed time.
    """
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise BenchError(failure())
        time.sleep(interval)


def insert_one(variant: Variant) -> sql.Composed:
    return sql.SQL("INSERT INTO {} (name, storage_path) VALUES ('resume.pdf', 'resumes/resume.pdf')").format(
        variant.table_id
    )


def insert_many(variant: Variant, rows: int) -> sql.Composed:
    """One INSERT statement of `rows` rows, like a batch import of an unpacked zip."""
    return sql.SQL(
        "INSERT INTO {} (name, storage_path) SELECT 'r' || i || '.pdf', 'zip/r' || i || '.pdf' "
        "FROM pg_catalog.generate_series(1, {}) AS i"
    ).format(variant.table_id, sql.Literal(rows))


#: Transactions per pgbench run, each run being one new session. pg_net's `net.wake()` leaves one
#: transaction callback per webhook transaction in its session, and every later transaction runs
#: them all (bench/session_age.py measures it: about 11 ns per callback here), so a session of n
#: webhook transactions pays n/2 callbacks per transaction on average. Runs of 500 keep that under
#: 3 us per transaction; the one run of 21,000 interleaved transactions this replaced added ~0.1 ms
#: to every variant, (a) included, and so pulled every ratio towards 1.
SESSION_TRANSACTIONS = 500
#: Wall time the per-script latencies may leave unaccounted in one interleaved round: a share of it
#: (time leaking between transactions would grow with the transactions) plus a fixed allowance for a
#: scheduler stall on a loaded machine and pgbench's own start per run. The share is what the check
#: guards in a full round (some 8 s of wall time); the allowance keeps a smoke round of ~140
#: transactions (40 ms) from failing on one stall.
UNATTRIBUTED_SHARE = 0.03
UNATTRIBUTED_ALLOWANCE_MS = 20.0
UNATTRIBUTED_PER_RUN_MS = 1.0


def session_sizes(transactions: int, per_session: int = SESSION_TRANSACTIONS) -> list[int]:
    """`transactions` split into as few near-equal runs of at most `per_session` as possible."""
    runs = max(1, -(-transactions // per_session))
    base, extra = divmod(transactions, runs)
    return [base + (run < extra) for run in range(runs)]


def _pgbench(cluster: LocalSupabase, variants: Sequence[Variant], transactions: int) -> str:
    """pgbench's report for `transactions` single-row INSERT transactions, 1 client, prepared statements.

    -M prepared as PostgREST and most drivers run statements. With several
    variants, each has its own script at weight 1, so pgbench picks one at
    random for every transaction.
    """
    with tempfile.TemporaryDirectory(prefix="bench-pgbench-") as workdir:
        scripts = []
        for variant in variants:
            script = Path(workdir) / f"{variant.key}.sql"
            script.write_text(insert_one(variant).as_string(None) + ";\n", encoding="utf-8")
            scripts.append(f"--file={script}@1" if len(variants) > 1 else f"--file={script}")
        command = [
            str(PGBENCH), "--no-vacuum", "--protocol=prepared", "--client=1", "--jobs=1",
            f"--transactions={transactions}", *scripts,
            f"--host={cluster.host}", f"--port={cluster.port}", f"--username={APP_ROLE}", cluster.dbname,
        ]  # fmt: skip
        env = {**os.environ, "PGPASSWORD": cluster.password_for(APP_ROLE)}
        try:
            return subprocess.run(command, check=True, capture_output=True, text=True, env=env, cwd=workdir).stdout
        except subprocess.CalledProcessError as error:
            labels = ", ".join(variant.label for variant in variants)
            raise BenchError(f"pgbench failed for {labels}:\n{error.stdout}{error.stderr}") from None


def _latency_average(output: str, what: str) -> float:
    latency = re.search(r"^latency average = ([0-9.]+) ms$", output, re.MULTILINE)
    if latency is None:
        raise BenchError(f"no latency average in pgbench's output for {what}:\n{output}")
    return float(latency.group(1))


def single_row_ms(cluster: LocalSupabase, variant: Variant, transactions: int) -> float:
    """pgbench's latency average (ms) for `variant` alone: one INSERT per transaction.

    pgbench's average is wall time / transactions, so it is exact; its
    per-transaction log (-l) is not used because PostgreSQL 15's pgbench reads
    the clock lazily and logs 0 us for some sub-0.1 ms transactions. Medians
    are taken across rounds instead. The transactions run in young sessions of
    at most SESSION_TRANSACTIONS; the figure is their total wall time / transactions.
    """
    sizes = session_sizes(transactions)
    wall_ms = sum(size * _latency_average(_pgbench(cluster, [variant], size), variant.label) for size in sizes)
    return wall_ms / transactions


@dataclass(frozen=True)
class ScriptResult:
    transactions: int
    latency_ms: float


def _per_script(output: str, variants: Sequence[Variant]) -> dict[str, ScriptResult]:
    # "SQL script 2: /tmp/.../b.sql" starts each script's block; split() keeps the paths.
    _, *blocks = re.split(r"^SQL script \d+: (\S+)$", output, flags=re.MULTILINE)
    results = {}
    for path, block in zip(blocks[::2], blocks[1::2], strict=True):
        count = re.search(r"^ - (\d+) transactions ", block, re.MULTILINE)
        latency = re.search(r"^ - latency average = ([0-9.]+) ms$", block, re.MULTILINE)
        if count and (latency or count.group(1) == "0"):
            results[Path(path).stem] = ScriptResult(int(count.group(1)), float(latency.group(1)) if latency else 0.0)
    if sorted(results) != sorted(variant.key for variant in variants):
        raise BenchError(f"no per-script latency for every variant in pgbench's output:\n{output}")
    return results


def check_attributed(wall_ms: float, attributed_ms: float, runs: int, *, strict: bool = True) -> None:
    """Fail unless the per-script latencies account for the wall time (see UNATTRIBUTED_SHARE).

    Per-script latencies are sums of per-transaction clock readings; they must
    add up to pgbench's wall time, or time leaked between transactions (and so
    between variants). Neither may exceed the other by more than the tolerance.
    Not `strict` (a smoke run), the mismatch is printed instead.
    """
    tolerance = UNATTRIBUTED_SHARE * wall_ms + UNATTRIBUTED_ALLOWANCE_MS + UNATTRIBUTED_PER_RUN_MS * runs
    if abs(wall_ms - attributed_ms) > tolerance:
        mismatch = (
            f"per-script latencies add up to {attributed_ms:.1f} ms, pgbench's wall time is {wall_ms:.1f} ms "
            f"over {runs} run(s) (tolerance {tolerance:.1f} ms)"
        )
        if strict:
            raise BenchError(mismatch)
        print(f"note: {mismatch}; a full run would stop here", file=sys.stderr)


def interleaved_single_row_ms(
    cluster: LocalSupabase, variants: Sequence[Variant], transactions: int, *, strict: bool = True
) -> dict[str, ScriptResult]:
    """Pgbench runs in which every transaction goes to a randomly chosen variant.

    Consecutive transactions hit different tables and trigger functions, so no
    variant runs with caches warmed by its own previous insert, and drift hits
    every variant within the same second: the paired comparison that a
    variant-after-variant run cannot give. `transactions` per variant on
    average, in young sessions of at most SESSION_TRANSACTIONS. Per variant: its
    transactions and its transaction-weighted per-script latency average.
    """
    counts: dict[str, int] = dict.fromkeys((variant.key for variant in variants), 0)
    spent_ms: dict[str, float] = dict.fromkeys(counts, 0.0)
    sizes = session_sizes(transactions * len(variants))
    wall_ms = 0.0
    for size in sizes:
        output = _pgbench(cluster, variants, size)
        wall_ms += size * _latency_average(output, "the interleaved run")
        for key, result in _per_script(output, variants).items():
            counts[key] += result.transactions
            spent_ms[key] += result.transactions * result.latency_ms
    check_attributed(wall_ms, sum(spent_ms.values()), len(sizes), strict=strict)
    return {key: ScriptResult(counts[key], spent_ms[key] / max(counts[key], 1)) for key in counts}


def bulk_us_per_row(conn: psycopg.Connection, variant: Variant, rows: int) -> float:
    """Wall time of one autocommit INSERT of `rows` rows (AFTER triggers and commit included), per row."""
    statement = insert_many(variant, rows)
    started = time.perf_counter()
    conn.execute(statement)
    return (time.perf_counter() - started) * 1e6 / rows


_EVERY_ROW = sql.SQL("true")
_OUTBOX = sql.SQL("{}.{}").format(sql.Identifier(SCHEMA), sql.Identifier(EVENTS))


def _count(admin: psycopg.Connection, relation: sql.Composable, where: sql.Composable = _EVERY_ROW) -> int:
    return admin.execute(sql.SQL("SELECT count(*) FROM {} WHERE {}").format(relation, where)).fetchone()[0]


def check_work(admin: psycopg.Connection, rows: Mapping[str, int], jwt_secret: str) -> None:
    """Fail unless each variant (by key) inserted its rows and queued, logged, signed or stored each one.

    Queued requests and outbox events are told apart by the table named in
    their payload, so one check covers a run that interleaved several variants.
    """
    queue, hooks, outbox = sql.SQL("net.http_request_queue"), sql.SQL("supabase_functions.hooks"), _OUTBOX
    for key, count in rows.items():
        variant = VARIANTS_BY_KEY[key]
        table = sql.Literal(variant.table)
        in_queue = sql.SQL("convert_from(body, 'UTF8')::jsonb ->> 'table' = {}").format(table)
        # A pending event of this webhook (the trigger's name), waiting for the reconciler.
        in_outbox = sql.SQL("payload ->> 'table' = {} AND webhook = {} AND state = 'pending'").format(
            table, sql.Literal(TRIGGER_NAME)
        )
        expected = (
            (variant.table_id, _EVERY_ROW, count),
            (queue, in_queue, count if variant.queues_request else 0),
            (
                hooks,
                sql.SQL("hook_table_id = {}::regclass").format(sql.Literal(variant.table_id.as_string(admin))),
                count if variant.logs_hook else 0,
            ),
            (outbox, in_outbox, count if variant.writes_outbox else 0),
        )
        for relation, where, wanted in expected:
            actual = _count(admin, relation, where)
            if actual != wanted:
                raise BenchError(
                    f"{variant.label}: {relation.as_string(admin)} has {actual} rows for it, expected {wanted}"
                )
        if variant.signs and count:
            _check_token(admin, variant, queue, in_queue, jwt_secret)


def _check_token(
    admin: psycopg.Connection, variant: Variant, queue: sql.Composable, in_queue: sql.Composable, jwt_secret: str
) -> None:
    """The variant's last queued request carries a JWT PyJWT accepts, bound to its body iff `variant.binds`."""
    headers, body = admin.execute(
        sql.SQL("SELECT headers, body FROM {} WHERE {} ORDER BY id DESC LIMIT 1").format(queue, in_queue)
    ).fetchone()
    token = (headers.get("Authorization") or "").removeprefix("Bearer ")
    claims = jwt.decode(token, jwt_secret, algorithms=["HS256"])
    if any(claims.get(name) != value for name, value in DEFAULT_CLAIMS.items()):
        raise BenchError(f"{variant.label}: token claims {claims} lack {DEFAULT_CLAIMS}")
    if not variant.binds:
        if "body_sha256" in claims:
            raise BenchError(f"{variant.label}: token is bound to its body, expected one token per statement")
        return
    try:
        # What the orchestrator checks: jti present, body_sha256 of the exact bytes pg_net sends.
        Verifier(jwt_secret, require_binding=True).verify(headers, bytes(body))
    except VerificationError as error:
        raise BenchError(f"{variant.label}: bound token refused: {error}") from None


def reset(admin: psycopg.Connection) -> None:
    """Empty every variant table, pg_net's queue, Supabase's hooks log and our outbox, its endpoints' state
    (a paused endpoint would hold the next measurement's events) included (as the superuser)."""
    relations = [variant.table_id for variant in INSTALLED]
    relations += [sql.SQL("net.http_request_queue"), sql.SQL("supabase_functions.hooks"), _OUTBOX]
    relations += [
        sql.SQL("{}.{}").format(sql.Identifier(SCHEMA), sql.Identifier(name)) for name in (ATTEMPTS, ENDPOINTS)
    ]
    admin.execute(sql.SQL("TRUNCATE {}").format(sql.SQL(", ").join(relations)))
