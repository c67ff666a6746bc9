"""At-least-once through the real Pulumi engine: an outage seen and healed, drift, destroy, mode switches."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest
from engine_support import JWT_SECRET

from devtools.pulumi_cli import REPO
from local_supabase.orchestrator import WebhookReceiver
from local_supabase.pg_net_worker import ROUND_WAIT
from local_supabase.ports import hold_port

SECURE = "secure-webhooks:index:SecureWebhooks$pulumi-python:dynamic/secure-webhooks"
#: Retries every second, so the tests wait seconds, not the default minutes.
FAST_RETRIES = {"retryInitialSeconds": 1, "retryMultiplier": 1, "retryJitter": 0, "maxAttempts": 100}
#: How long an event keeps being retried at least: each of its attempts waits out the retry delay, then
#: pg_net's next round (up to ROUND_WAIT later). Waits for these events to fail or be delivered are bounded
#: by it: after that they are dead and nothing changes any more, however busy the machine.
RETRYING_SECONDS = FAST_RETRIES["maxAttempts"] * (FAST_RETRIES["retryInitialSeconds"] + ROUND_WAIT)


def operator(engine, stack, *args: str) -> str:
    """`python -m webhook_deliveries --stack <stack> ...` in the project, as an operator runs it."""
    env = {**os.environ, **engine.workspace.env(), "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "webhook_deliveries", "--stack", stack.name, *args],
        cwd=engine.workspace.project_dir,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def insert(engine, count: int) -> None:
    with engine.connect() as conn:
        for n in range(count):
            conn.execute("INSERT INTO public.resumes (name, storage_path) VALUES (%s, 'r/')", (f"outage-{n}.pdf",))


def stop_orchestrator(engine) -> int:
    port = int(engine.orchestrator.url.rsplit(":", 1)[1])
    engine.orchestrator.stop()
    return hold_port(port)  # until the orchestrator comes back there (local_supabase/ports.py)


@contextmanager
def failed_and_held(engine, count: int, timeout: float) -> Iterator[None]:
    """Wait until `count` events are failed (an attempt failed, the retry not sent yet) and hold them so.

    Retried every second, an event is failed for about a second, then pending while the retry is in
    flight: a look at it races the retries. Each event is locked as it is seen failed; the reconciler
    claims events FOR UPDATE SKIP LOCKED, so it leaves a locked one as it is until the block ends.
    """
    deadline = time.monotonic() + timeout
    held: set[int] = set()
    with psycopg.connect(engine.cluster.dsn("postgres")) as conn:  # one transaction: its locks last
        while len(held) < count:
            held.update(
                event
                for (event,) in conn.execute(
                    "SELECT id FROM secure_webhooks.events WHERE state = 'pending' AND attempts > 0"
                    " FOR UPDATE SKIP LOCKED"
                )
            )
            over = conn.execute("SELECT count(*) FROM secure_webhooks.events WHERE state IN ('dead', 'delivered')")
            assert over.fetchone()[0] == 0, "an event was delivered or died during the outage"
            if len(held) < count and time.monotonic() > deadline:
                raise TimeoutError(f"{len(held)} of {count} events seen failed within {timeout} s")
            time.sleep(0.05)
        try:
            yield
        finally:
            conn.rollback()


def test_an_outage_is_visible_in_status_and_healed_by_the_reconciler(engine):
    stack = engine.stack("dev", delivery=FAST_RETRIES)
    stack.up()
    port = stop_orchestrator(engine)
    insert(engine, 3)
    with failed_and_held(engine, 3, timeout=RETRYING_SECONDS):
        during = operator(engine, stack, "status")
    assert during.splitlines()[1].split()[:5] == ["orchestrator-ingest-interns-individual", "0", "3", "0", "0"]
    assert "Couldn't connect to server" in during
    with WebhookReceiver(JWT_SECRET, port=port) as back:
        back.wait_for(3, timeout=RETRYING_SECONDS)
        engine.wait_until_delivered(timeout=RETRYING_SECONDS)
        after = operator(engine, stack, "status").splitlines()[1].split()
    assert after[:5] == ["orchestrator-ingest-interns-individual", "0", "0", "0", "3"]
    assert all(d.status == 200 for d in back.deliveries)


def test_cron_job_and_reconciler_drift_is_seen_and_repaired(engine):
    stack = engine.stack("dev")
    stack.up()
    with engine.connect() as conn:
        conn.execute("UPDATE cron.job SET schedule = '0 3 * * *' WHERE jobname = 'secure_webhooks_reconciler'")
        body = conn.execute("SELECT pg_get_functiondef('secure_webhooks.reconcile(integer)'::regprocedure)")
        conn.execute(body.fetchone()[0].replace("RETURN handled;", "RETURN 0;"))
    drifted = stack.preview("--refresh", "--expect-no-changes", check=False)
    assert drifted.returncode != 0
    changes = {(op, name) for op, name in stack.preview_steps("--refresh") if op not in ("same", "refresh")}
    assert changes == {
        ("update", f"{SECURE}:ReconcilerSchedule::secure-webhooks-reconciler-schedule"),
        ("update", f"{SECURE}:Reconciler::secure-webhooks-reconciler"),
    }
    stack.up("--refresh")
    stack.preview("--refresh", "--expect-no-changes")
    with engine.connect() as conn:
        assert conn.execute("SELECT schedule FROM cron.job").fetchone() == ("* * * * *",)


def test_destroy_refuses_while_events_wait_then_succeeds(engine):
    stack = engine.stack("dev", delivery=FAST_RETRIES)
    stack.up()
    port = stop_orchestrator(engine)
    insert(engine, 2)
    refused = stack.destroy(check=False)
    output = refused.stdout + refused.stderr
    assert refused.returncode != 0
    assert "refusing to unschedule pg_cron job secure_webhooks_reconciler" in output
    # Pulumi's dynamic provider server prints any provider exception with its traceback (issue 10 #16).
    with engine.connect() as conn:  # nothing lost, the job still delivers, and nothing else changed
        assert conn.execute("SELECT count(*) FROM secure_webhooks.events").fetchone() == (2,)
        assert conn.execute("SELECT count(*) FROM cron.job").fetchone() == (1,)
        # Issue 15 #2: the schedule refuses first, so no trigger was dropped (or legacy webhook restored).
        ours = "SELECT count(*) FROM pg_trigger WHERE tgfoid = 'public.notify_orchestrator_secure'::regproc"
        assert conn.execute(ours).fetchone() == (2,)
    with WebhookReceiver(JWT_SECRET, port=port) as back:
        back.wait_for(2, timeout=RETRYING_SECONDS)
        engine.wait_until_delivered(timeout=RETRYING_SECONDS)
    stack.destroy()
    with engine.connect() as conn:
        assert conn.execute("SELECT to_regnamespace('secure_webhooks')").fetchone() == (None,)
        assert conn.execute("SELECT count(*) FROM cron.job").fetchone() == (0,)


@pytest.mark.parametrize(("first", "second"), [("direct", "at-least-once"), ("at-least-once", "direct")])
def test_switching_modes_is_an_in_place_update_of_the_function(engine, first, second):
    stack = engine.stack("dev", delivery={"mode": first})
    stack.up()
    stack.set_config({"secure-webhooks:delivery": {"mode": second}})
    steps = {(op, name) for op, name in stack.preview_steps() if op != "same"}
    assert ("update", f"{SECURE}:SecureFunction::secure-webhooks-function") in steps
    assert not any(op in ("replace", "create-replacement", "delete-replaced") for op, _ in steps)
    stack.up()
    insert(engine, 1)
    (delivery,) = engine.orchestrator.wait_for(1)
    assert delivery.status == 200
    with engine.connect() as conn:
        outbox = conn.execute("SELECT to_regclass('secure_webhooks.events')").fetchone()[0]
        if second == "at-least-once":
            engine.wait_until_delivered()
            assert conn.execute("SELECT event_id::text FROM secure_webhooks.deliveries").fetchone() == (
                delivery.header("webhook-id"),
            )
        else:
            assert outbox is None  # direct: the outbox, reconciler and job are gone
