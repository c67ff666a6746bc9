"""The real Pulumi engine against a throw-away Supabase stand-in, one per test.

Each test gets its own cluster (so a failed test cannot leave triggers behind
for the next), a copy of the project (stack files land there, not in the
repo), a file backend, a verifying orchestrator, pg_net's delivery worker and
a runner that executes the reconciler's pg_cron job back to back (Debian's
pg_cron 1.4 would first run it at the next full minute; see local_supabase/cron_runner.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from devtools.pulumi_cli import REPO, Stack, Workspace, copy_project, toolchain_bin
from local_supabase.bootstrap import create_demo_tables
from local_supabase.cluster import LocalSupabase
from local_supabase.cron_runner import CronJobRunner
from local_supabase.orchestrator import WebhookReceiver
from local_supabase.pg_net_worker import PgNetWorker
from secure_webhooks.delivery.reconciler import JOB_NAME

JWT_SECRET = "engine-test-jwt-secret-" + "e" * 24
PASSPHRASE = "engine-tests"


@dataclass
class Engine:
    cluster: LocalSupabase
    workspace: Workspace
    orchestrator: WebhookReceiver
    worker: PgNetWorker
    reconciler: CronJobRunner

    def connect(self, role: str = "postgres") -> psycopg.Connection:
        return psycopg.connect(self.cluster.dsn(role), autocommit=True)

    def wait_for_status(self, conn: psycopg.Connection, status: str, count: int, timeout: float = 15.0) -> None:
        """Block until `count` events of the outbox have `status` (pending, failed, delivered, dead)."""
        deadline = time.monotonic() + timeout
        query = "SELECT count(*) FROM secure_webhooks.deliveries WHERE status = %s"
        while conn.execute(query, (status,)).fetchone()[0] != count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"not {count} {status} events after {timeout} s")
            time.sleep(0.1)

    def wait_until_failed_once(self, conn: psycopg.Connection, count: int, timeout: float = 15.0) -> None:
        """Block until `count` events have each failed an attempt (whatever state their retry is in now).

        Unlike a count of "failed" events, this holds still: an event retried every second is failed
        for about a second, then pending while the retry is in flight. Its last error stays until it
        is delivered.
        """
        deadline = time.monotonic() + timeout
        query = "SELECT count(*) FROM secure_webhooks.events WHERE last_error IS NOT NULL AND state <> 'delivered'"
        while (failed := conn.execute(query).fetchone()[0]) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{failed} events, not {count}, failed an attempt within {timeout} s")
            time.sleep(0.1)

    def wait_until_delivered(self, timeout: float = 30.0) -> None:
        """Block until the outbox holds no undelivered event: destroy refuses while one waits.

        `timeout` bounds a stall: it restarts whenever fewer events wait, so a backlog drains at this machine's
        pace, and delivery that stops fails with the count.
        """
        fewest, deadline = None, time.monotonic() + timeout
        with self.connect() as conn:
            while True:
                waiting = conn.execute(
                    "SELECT count(*) FROM secure_webhooks.deliveries WHERE status <> 'delivered'"
                ).fetchone()[0]
                if waiting == 0:
                    return
                if fewest is None or waiting < fewest:
                    fewest, deadline = waiting, time.monotonic() + timeout
                elif time.monotonic() > deadline:
                    raise TimeoutError(f"{waiting} events still undelivered, none for {timeout} s")
                time.sleep(0.1)

    def stack(self, name: str, url: str | None = None, **config: Any) -> Stack:
        """A new stack of this project pointed at the local cluster; `config` keys without a namespace are ours."""
        return self.database_stack(
            self.workspace,
            name,
            {
                "secure-webhooks:orchestratorUrl": url or self.orchestrator.url,
                "secure-webhooks:manageExtensions": "false",
                **{key if ":" in key else f"secure-webhooks:{key}": value for key, value in config.items()},
            },
        )

    def database_stack(self, workspace: Workspace, name: str, config: dict[str, Any]) -> Stack:
        """A new stack of any project in `workspace` with the `postgresql:*` config of the local cluster.

        The password goes in as a secret, as a user sets it; `config` holds the project's own keys.
        """
        stack = workspace.stack(name).init()
        stack.set_config(
            {
                "postgresql:host": self.cluster.host,
                "postgresql:port": str(self.cluster.port),
                "postgresql:database": self.cluster.dbname,
                "postgresql:username": "postgres",
                "postgresql:sslmode": "disable",
                "postgresql:superuser": "false",
                **config,
            }
        )
        stack.set_secret("postgresql:password", self.cluster.password_for("postgres"))
        return stack


@contextmanager
def engine(tmp_path: Path) -> Iterator[Engine]:
    with ExitStack() as stack:
        cluster = stack.enter_context(LocalSupabase.start(preinstall_pg_net=True))
        with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as conn:
            create_demo_tables(conn)
            conn.execute("SELECT vault.create_secret(%s, 'app_jwt_secret')", (JWT_SECRET,))
        orchestrator = stack.enter_context(WebhookReceiver(JWT_SECRET))
        worker = stack.enter_context(PgNetWorker(cluster.admin_dsn))
        reconciler = stack.enter_context(CronJobRunner(cluster.dsn("postgres"), JOB_NAME))
        project = copy_project(REPO, tmp_path / "project")
        workspace = Workspace(project, tmp_path / "pulumi", passphrase=PASSPHRASE, bin_dir=toolchain_bin())
        yield Engine(cluster, workspace, orchestrator, worker, reconciler)
