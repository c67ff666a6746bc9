"""The main job, end to end on this machine: `pulumi up` secures the seed's webhooks.

A throw-away PostgreSQL with the Supabase stand-in starts with the seed's two
legacy static-header webhooks, which the orchestrator (a local receiver that
verifies tokens like the Rust one) rejects. `pulumi up` of this project swaps
in the signed webhooks, inserts are delivered and verified, and
`pulumi destroy` gives the legacy webhooks back exactly. In between, the
orchestrator goes down: the inserts still commit, `python -m webhook_deliveries
status` shows them failed with the error and the endpoint paused (its events wait
without using attempts), and once it is back a probe resumes it and the
reconciler delivers them on its own.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time

import psycopg

from devtools.pulumi_cli import REPO, Stack, Workspace, toolchain_bin
from local_supabase.bootstrap import create_demo_tables, install_legacy_webhooks
from local_supabase.cluster import LocalSupabase
from local_supabase.cron_runner import CronJobRunner
from local_supabase.orchestrator import WebhookReceiver
from local_supabase.pg_net_worker import PgNetWorker
from secure_webhooks.delivery.reconciler import JOB_NAME

STACK = "local"
STATE_DIR = REPO / ".pulumi-local"
LEGACY_TRIGGERS = """
SELECT tgname, pg_get_triggerdef(oid) FROM pg_trigger
 WHERE tgrelid IN ('public.resumes'::regclass, 'public.zip_archives'::regclass) AND NOT tgisinternal
 ORDER BY tgname"""


def step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def insert_both(cluster: LocalSupabase, tag: str) -> None:
    """One insert per table, as the app's `authenticated` role with a bare search_path."""
    with psycopg.connect(cluster.dsn("postgres")) as conn:
        conn.execute("SET ROLE authenticated")
        conn.execute("SET search_path = ''")
        conn.execute("INSERT INTO public.resumes (name, storage_path) VALUES (%s, %s)", (f"{tag}.pdf", "resumes/"))
        conn.execute("INSERT INTO public.zip_archives (name, storage_path) VALUES (%s, %s)", (f"{tag}.zip", "zips/"))


def show(deliveries: list) -> None:
    for d in deliveries:
        if d.status == 200:
            claims = d.claims
            verdict = (
                f"200 accepted: role {claims['role']}, {claims['exp'] - claims['iat']} s, jti {claims['jti'][:8]}…"
            )
        else:
            verdict = f"{d.status} {d.rejection}"
        record = (d.body or {}).get("record", {})
        print(f"  POST {d.path:<28} row {record.get('name')!r:<14} -> {verdict}")


def deliveries_status(workspace: Workspace, stack: Stack) -> None:
    """The operator's view, exactly as a user runs it in the project directory."""
    result = subprocess.run(
        [sys.executable, "-m", "webhook_deliveries", "--stack", stack.name, "status"],
        cwd=REPO,
        env={**os.environ, **workspace.env()},
        capture_output=True,
        text=True,
        check=True,
    )
    print("\n".join(f"  {line}" for line in result.stdout.splitlines()))


def wait_until(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the demo's deliveries did not settle")
        time.sleep(0.2)


def main() -> int:
    jwt_secret = secrets.token_urlsafe(48)
    with (
        LocalSupabase.start(preinstall_pg_net=True) as cluster,
        WebhookReceiver(jwt_secret, expected_claims={"role": "service_role"}, expected_ttl=3600) as orchestrator,
        PgNetWorker(cluster.admin_dsn) as worker,
        # Debian's pg_cron 1.4 would first run the reconciler at the next full minute; this runs
        # the job's own command at once, as pg_cron >= 1.5 does with its '1 seconds' schedule.
        CronJobRunner(cluster.dsn("postgres"), JOB_NAME),
    ):
        step(f"Local Supabase stand-in on 127.0.0.1:{cluster.port}, orchestrator on {orchestrator.url}")
        with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as conn:
            create_demo_tables(conn)
            install_legacy_webhooks(conn, orchestrator.url)
            legacy = conn.execute(LEGACY_TRIGGERS).fetchall()
        for name, definition in legacy:
            print(f"  legacy {name}: {definition.partition('EXECUTE FUNCTION ')[2]}")

        step("Before: the static-header webhooks are rejected by the orchestrator")
        insert_both(cluster, "before")
        show(orchestrator.wait_for(2))

        shutil.rmtree(STATE_DIR, ignore_errors=True)
        workspace = Workspace(REPO, STATE_DIR, passphrase="local-demo", bin_dir=toolchain_bin())
        stack = workspace.stack(STACK)
        stack.config_file.unlink(missing_ok=True)
        stack.init()
        stack.set_config(
            {
                "secure-webhooks:orchestratorUrl": orchestrator.url,
                "secure-webhooks:manageExtensions": "false",
                "postgresql:host": cluster.host,
                "postgresql:port": str(cluster.port),
                "postgresql:database": cluster.dbname,
                "postgresql:username": "postgres",
                "postgresql:sslmode": "disable",
                "postgresql:superuser": "false",
                # For the demo: retry after 1 s; pause the endpoint after 2 failures, probe it every 2 s.
                "secure-webhooks:delivery": {"retryInitialSeconds": 1, "pauseAfterFailures": 2, "probeSeconds": 2},
            }
        )
        stack.set_secret("postgresql:password", cluster.password_for("postgres"))
        stack.set_secret("secure-webhooks:jwtSecret", jwt_secret)

        step("pulumi preview (stack 'local')")
        for op, resource in stack.preview_steps():
            kind, _, name = resource.rpartition("::")
            print(f"  {op:<7} {kind.rpartition(':')[2]:<18} {name}")
        step("pulumi up")
        output = stack.up().stdout
        notes = sorted({line.strip() for line in output.splitlines() if line.strip().startswith("info:")})
        print("\n".join(f"  {line}" for line in notes))
        print(f"  {' '.join(output[output.index('Resources:') :].split())}")

        step("After: one insert into each table, delivered with a signed, verified JWT")
        insert_both(cluster, "after")
        show(orchestrator.wait_for(4)[2:])

        step("Outage: the orchestrator stops; two inserts commit anyway; its endpoint pauses")
        port = int(orchestrator.url.rsplit(":", 1)[1])
        orchestrator.stop()
        insert_both(cluster, "outage")
        with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as conn:
            failed = "SELECT count(*) FROM secure_webhooks.deliveries WHERE status = 'failed'"
            paused = "SELECT count(*) FROM secure_webhooks.endpoints WHERE state = 'paused'"
            wait_until(lambda: conn.execute(failed).fetchone()[0] == 2 and conn.execute(paused).fetchone()[0] == 1)
            deliveries_status(workspace, stack)
            with WebhookReceiver(jwt_secret, expected_claims={"role": "service_role"}, port=port) as back:
                step("The orchestrator is back: a probe resumes the endpoint; the waiting events are delivered")
                show(back.wait_for(2, timeout=30))
                waiting = "SELECT count(*) FROM secure_webhooks.deliveries WHERE status <> 'delivered'"
                wait_until(lambda: conn.execute(waiting).fetchone()[0] == 0)
                deliveries_status(workspace, stack)
                recovered = back.deliveries
        worker.drain()

        step("pulumi destroy: the legacy webhooks come back exactly")
        stack.destroy()
        with psycopg.connect(cluster.dsn("postgres")) as conn:
            restored = conn.execute(LEGACY_TRIGGERS).fetchall()
        print(f"  restored identical definitions: {restored == legacy}")
        stack.remove()
        stack.config_file.unlink(missing_ok=True)
        deliveries = orchestrator.deliveries
    ok = (
        restored == legacy
        and [d.status for d in deliveries] == [401, 401, 200, 200]
        and [d.status for d in recovered] == [200, 200]
    )
    print("\nDemo", "succeeded." if ok else "FAILED.")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
