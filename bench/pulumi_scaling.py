"""`python -m bench.pulumi_scaling [--smoke]`: wall time of `pulumi preview` and `up` by webhook count.

Runs the real engine on this project against a local Supabase stand-in with
2, 20 and 100 configured webhooks (one table each) and prints, per size, the
seconds a fresh `preview` and the `up` take, how many database sessions the
`up` opened, and the time each added webhook costs between sizes. The goal is
a small, flat increment: our providers share one connection per provider
process, so an `up` opens a handful of sessions whatever the webhook count.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from devtools.pulumi_cli import REPO, Workspace, copy_project, toolchain_bin
from local_supabase.cluster import LocalSupabase

FULL_SIZES = (2, 20, 100)
SMOKE_SIZES = (2, 5)
SESSIONS = "SELECT sessions FROM pg_catalog.pg_stat_database WHERE datname = current_database()"


@dataclass(frozen=True)
class Timing:
    webhooks: int
    preview_s: float
    up_s: float
    sessions: int


def _tables(conn: psycopg.Connection, count: int) -> list[str]:
    names = [f"scale_{i:03d}" for i in range(count)]
    for name in names:
        conn.execute(
            sql.SQL("CREATE TABLE IF NOT EXISTS public.{} (id bigserial PRIMARY KEY)").format(sql.Identifier(name))
        )
    return names


def _sessions(cluster: LocalSupabase) -> int:
    """Sessions ever opened in the database (counted when they end; the query's own one is still open)."""
    time.sleep(0.6)  # session counts reach pg_stat_database shortly after a backend exits
    with psycopg.connect(cluster.admin_dsn, autocommit=True) as conn:
        return conn.execute(SESSIONS).fetchone()[0]


def measure(cluster: LocalSupabase, workspace: Workspace, count: int) -> Timing:
    with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as conn:
        tables = _tables(conn, count)
    stack = workspace.stack(f"scale{count}").init()
    stack.set_config(
        {
            "secure-webhooks:orchestratorUrl": "http://127.0.0.1:9",
            "secure-webhooks:manageExtensions": "false",
            "secure-webhooks:webhooks": [
                {"name": f"hook_{table}", "table": table, "path": f"/ingest/{table}"} for table in tables
            ],
            "postgresql:host": cluster.host,
            "postgresql:port": str(cluster.port),
            "postgresql:database": cluster.dbname,
            "postgresql:username": "postgres",
            "postgresql:sslmode": "disable",
        }
    )
    stack.set_secret("postgresql:password", cluster.password_for("postgres"))
    started = time.perf_counter()
    stack.preview()
    preview_s = time.perf_counter() - started
    before = _sessions(cluster)
    started = time.perf_counter()
    stack.up()
    up_s = time.perf_counter() - started
    opened = _sessions(cluster) - before - 1
    stack.destroy()
    stack.remove()
    return Timing(count, preview_s, up_s, opened)


def report(timings: list[Timing]) -> str:
    lines = [f"{'webhooks':>8} | {'preview s':>9} | {'up s':>6} | {'DB sessions opened by up':>24}"]
    lines += [f"{t.webhooks:>8} | {t.preview_s:>9.2f} | {t.up_s:>6.2f} | {t.sessions:>24}" for t in timings]
    lines.append("per added webhook:")
    for low, high in itertools.pairwise(timings):
        added = high.webhooks - low.webhooks
        preview_ms = (high.preview_s - low.preview_s) / added * 1000
        up_ms = (high.up_s - low.up_s) / added * 1000
        lines.append(f"  {low.webhooks:>3} -> {high.webhooks:<3}: preview {preview_ms:6.1f} ms, up {up_ms:6.1f} ms")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pulumi_scaling", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help=f"sizes {SMOKE_SIZES} instead of {FULL_SIZES}")
    args = parser.parse_args(argv)
    sizes = SMOKE_SIZES if args.smoke else FULL_SIZES
    with (
        tempfile.TemporaryDirectory(prefix="pulumi-scaling-") as tmp,
        LocalSupabase.start(preinstall_pg_net=True) as cluster,
    ):
        with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as conn:
            conn.execute("SELECT vault.create_secret(%s, 'app_jwt_secret')", ("s" * 48,))
        project = copy_project(REPO, Path(tmp) / "project")
        workspace = Workspace(project, Path(tmp) / "pulumi", passphrase="scaling", bin_dir=toolchain_bin())
        timings = []
        for count in sizes:
            print(f"pulumi preview and up with {count} webhooks", file=sys.stderr, flush=True)
            timings.append(measure(cluster, workspace, count))
    print(report(timings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
