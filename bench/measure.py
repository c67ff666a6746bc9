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
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import jwt
import psycopg
from psycopg import sql

from bench.variants import TRIGGER_NAME, VARIANTS, VARIANTS_BY_KEY, Variant
from components.outbox import ATTEMPTS, EVENTS, SCHEMA
from components.settings import DEFAULT_CLAIMS
from local_supabase.cluster import LocalSupabase

PGBENCH = Path(os.environ.get("PGBENCH", "/usr/lib/postgresql/15/bin/pgbench"))
APP_ROLE = "postgres"


class BenchError(RuntimeError):
    """A variant did not do what it must, or a tool failed: the figures would be meaningless."""


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


def single_row_ms(cluster: LocalSupabase, variant: Variant, transactions: int) -> float:
    """pgbench's latency average (ms) for `variant` alone: one INSERT per transaction.

    pgbench's average is wall time / transactions, so it is exact; its
    per-transaction log (-l) is not used because PostgreSQL 15's pgbench reads
    the clock lazily and logs 0 us for some sub-0.1 ms transactions. Medians
    are taken across rounds instead.
    """
    output = _pgbench(cluster, [variant], transactions)
    latency = re.search(r"^latency average = ([0-9.]+) ms$", output, re.MULTILINE)
    if latency is None:
        raise BenchError(f"no latency average in pgbench's output for {variant.label}:\n{output}")
    return float(latency.group(1))


@dataclass(frozen=True)
class ScriptResult:
    transactions: int
    latency_ms: float


def interleaved_single_row_ms(
    cluster: LocalSupabase, variants: Sequence[Variant], transactions: int
) -> dict[str, ScriptResult]:
    """One pgbench run in which every transaction goes to a randomly chosen variant.

    Consecutive transactions hit different tables and trigger functions, so no
    variant runs with caches warmed by its own previous insert, and drift hits
    every variant within the same second: the paired comparison that a
    variant-after-variant run cannot give. Per variant: its transactions and
    pgbench's per-script latency average.
    """
    output = _pgbench(cluster, variants, transactions * len(variants))
    # "SQL script 2: /tmp/.../b.sql" starts each script's block; split() keeps the paths.
    _, *blocks = re.split(r"^SQL script \d+: (\S+)$", output, flags=re.MULTILINE)
    results = {}
    for path, block in zip(blocks[::2], blocks[1::2], strict=True):
        count = re.search(r"^ - (\d+) transactions ", block, re.MULTILINE)
        latency = re.search(r"^ - latency average = ([0-9.]+) ms$", block, re.MULTILINE)
        if count and latency:
            results[Path(path).stem] = ScriptResult(int(count.group(1)), float(latency.group(1)))
    if sorted(results) != sorted(variant.key for variant in variants):
        raise BenchError(f"no per-script latency for every variant in pgbench's output:\n{output}")
    # Per-script latencies are sums of per-transaction clock readings; they must add up to the
    # wall-time average, or time leaked between transactions (and so between variants).
    overall = float(re.search(r"^latency average = ([0-9.]+) ms$", output, re.MULTILINE).group(1))
    summed = sum(r.transactions * r.latency_ms for r in results.values()) / sum(
        r.transactions for r in results.values()
    )
    if abs(summed - overall) > 0.03 * overall:
        raise BenchError(f"per-script latencies average {summed:.3f} ms, pgbench's wall-time average {overall:.3f} ms")
    return results


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
            authorization = admin.execute(
                sql.SQL("SELECT headers ->> 'Authorization' FROM {} WHERE {} ORDER BY id DESC LIMIT 1").format(
                    queue, in_queue
                )
            ).fetchone()[0]
            token = (authorization or "").removeprefix("Bearer ")
            claims = jwt.decode(token, jwt_secret, algorithms=["HS256"])
            if any(claims.get(name) != value for name, value in DEFAULT_CLAIMS.items()):
                raise BenchError(f"{variant.label}: token claims {claims} lack {DEFAULT_CLAIMS}")


def reset(admin: psycopg.Connection) -> None:
    """Empty every variant table, pg_net's queue, Supabase's hooks log and our outbox (as the superuser)."""
    relations = [variant.table_id for variant in VARIANTS]
    relations += [sql.SQL("net.http_request_queue"), sql.SQL("supabase_functions.hooks"), _OUTBOX]
    relations += [sql.SQL("{}.{}").format(sql.Identifier(SCHEMA), sql.Identifier(ATTEMPTS))]
    admin.execute(sql.SQL("TRUNCATE {}").format(sql.SQL(", ").join(relations)))
