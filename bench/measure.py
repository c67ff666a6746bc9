"""Timing one variant once, single-row (pgbench) or bulk (one INSERT), and undoing it.

Every measured run is followed by a check that the variant really did its work
(one queued request per row, one hooks row per firing for (b), a JWT that
PyJWT accepts), so a broken or silently skipped trigger cannot look fast, and
by a TRUNCATE so every run starts from the same empty tables and queue.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

import jwt
import psycopg
from psycopg import sql

from bench.variants import VARIANTS, Variant
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


def single_row_ms(cluster: LocalSupabase, variant: Variant, transactions: int) -> float:
    """pgbench's latency average (ms) for one INSERT per transaction, 1 client, prepared statements.

    -M prepared as PostgREST and most drivers run statements. pgbench's average
    is wall time / transactions, so it is exact; its per-transaction log (-l) is
    not used because PostgreSQL 15's pgbench reads the clock lazily and logs 0 us
    for some sub-0.1 ms transactions. Medians are taken across rounds instead.
    """
    with tempfile.TemporaryDirectory(prefix="bench-pgbench-") as workdir:
        script = Path(workdir) / "insert.sql"
        script.write_text(insert_one(variant).as_string(None) + ";\n", encoding="utf-8")
        command = [
            str(PGBENCH), "--no-vacuum", "--protocol=prepared", "--client=1", "--jobs=1",
            f"--transactions={transactions}", f"--file={script}",
            f"--host={cluster.host}", f"--port={cluster.port}", f"--username={APP_ROLE}", cluster.dbname,
        ]  # fmt: skip
        env = {**os.environ, "PGPASSWORD": cluster.password_for(APP_ROLE)}
        try:
            output = subprocess.run(command, check=True, capture_output=True, text=True, env=env, cwd=workdir).stdout
        except subprocess.CalledProcessError as error:
            raise BenchError(f"pgbench failed for {variant.label}:\n{error.stdout}{error.stderr}") from None
    latency = re.search(r"^latency average = ([0-9.]+) ms$", output, re.MULTILINE)
    if latency is None:
        raise BenchError(f"no latency average in pgbench's output for {variant.label}:\n{output}")
    return float(latency.group(1))


def bulk_us_per_row(conn: psycopg.Connection, variant: Variant, rows: int) -> float:
    """Wall time of one autocommit INSERT of `rows` rows (AFTER triggers and commit included), per row."""
    statement = insert_many(variant, rows)
    started = time.perf_counter()
    conn.execute(statement)
    return (time.perf_counter() - started) * 1e6 / rows


def _count(admin: psycopg.Connection, relation: sql.Composable) -> int:
    return admin.execute(sql.SQL("SELECT count(*) FROM {}").format(relation)).fetchone()[0]


def check_work(admin: psycopg.Connection, variant: Variant, rows: int, jwt_secret: str) -> None:
    """Fail unless the run inserted `rows` rows and the variant queued/logged/signed for each."""
    expected = (
        (variant.table_id, rows),
        (sql.SQL("net.http_request_queue"), rows if variant.queues_request else 0),
        (sql.SQL("supabase_functions.hooks"), rows if variant.logs_hook else 0),
    )
    for relation, count in expected:
        actual = _count(admin, relation)
        if actual != count:
            raise BenchError(f"{variant.label}: {relation.as_string(admin)} has {actual} rows, expected {count}")
    if variant.signs:
        authorization = admin.execute(
            "SELECT headers ->> 'Authorization' FROM net.http_request_queue ORDER BY id DESC LIMIT 1"
        ).fetchone()[0]
        token = (authorization or "").removeprefix("Bearer ")
        claims = jwt.decode(token, jwt_secret, algorithms=["HS256"])
        if any(claims.get(key) != value for key, value in DEFAULT_CLAIMS.items()):
            raise BenchError(f"{variant.label}: token claims {claims} lack {DEFAULT_CLAIMS}")


def reset(admin: psycopg.Connection) -> None:
    """Empty every variant table, pg_net's queue and Supabase's hooks log (as the superuser)."""
    relations = [variant.table_id for variant in VARIANTS]
    relations += [sql.SQL("net.http_request_queue"), sql.SQL("supabase_functions.hooks")]
    admin.execute(sql.SQL("TRUNCATE {}").format(sql.SQL(", ").join(relations)))
