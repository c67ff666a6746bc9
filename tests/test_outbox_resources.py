"""The outbox, reconciler and pg_cron job as resources: drift, repair, ownership, destroy, mode switches."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from outbox_support import (
    TEST_DELIVERY,
    all_delivered,
    insert_rows,
    install_pipeline,
    settle,
    statuses,
    tally,
)
from providers import OWNER, configured, function_props
from psycopg import sql
from supabase_lints import lint
from waiting import eventually

from local_supabase.orchestrator import WebhookReceiver
from local_supabase.pg_net_worker import PgNetWorker
from secure_webhooks.delivery.outbox import script_sha256
from secure_webhooks.delivery.outbox_provider import OutboxProvider
from secure_webhooks.delivery.reconciler import JOB_NAME
from secure_webhooks.delivery.schedule_provider import ScheduleProvider
from secure_webhooks.postgres.catalog import drifted
from secure_webhooks.signing.function_provider import SecureFunctionProvider

SECRET = "resource-test-signing-secret-" + "0123456789abcdef" * 2


def provider_of(pipeline, provider_class):
    return next((p, created) for p, created in pipeline.installed if isinstance(p, provider_class))


def refreshed(provider, created):
    read = provider.read(created.id, created.outs)
    return read.outs, provider.diff(created.id, read.outs, created.outs)


def schedule_props(schedule: str = "auto") -> dict:
    return {"owner": OWNER, "schedule": schedule, "job_name": JOB_NAME}


def test_an_edited_reconciler_body_is_drift_and_up_repairs_it(pipeline, conn):
    from secure_webhooks.delivery.reconciler_provider import ReconcilerProvider

    provider, created = provider_of(pipeline, ReconcilerProvider)
    outs, diff = refreshed(provider, created)
    assert not diff.changes
    # Out of band: a "harmless" edit that stops all retries.
    definition = conn.execute(
        "SELECT pg_get_functiondef('secure_webhooks.reconcile(integer)'::regprocedure)"
    ).fetchone()
    conn.execute(definition[0].replace("handled := handled + n;", "handled := 0;", 1))
    outs, diff = refreshed(provider, created)
    assert diff.changes
    assert drifted(outs["fingerprint"], outs["installed"]) == ["function secure_webhooks.reconcile(batch_size integer)"]
    repaired = provider.update(created.id, outs, created.outs)
    assert not provider.diff(created.id, provider.read(created.id, repaired.outs).outs, created.outs).changes


@pytest.mark.parametrize("grantee", ["authenticated", "reporting_team"])
def test_a_loosened_outbox_grant_is_drift_and_up_revokes_it(pipeline, conn, grantee):
    """An API role, or a role of the user's own (whom the outbox never grants anything): row data is
    in the events, so `up --refresh` revokes the grant rather than keeping it or failing."""
    provider, created = provider_of(pipeline, OutboxProvider)
    role = sql.Identifier(grantee)
    if grantee == "reporting_team":
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(role))
    try:
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA secure_webhooks TO {}").format(role))
        conn.execute(sql.SQL("GRANT SELECT ON secure_webhooks.events TO {}").format(role))
        outs, diff = refreshed(provider, created)
        assert diff.changes
        assert drifted(outs["fingerprint"], outs["installed"]) == [
            "relation secure_webhooks.events",
            "schema secure_webhooks",
        ]
        provider.update(created.id, outs, created.outs)
        assert not refreshed(provider, created)[1].changes
        with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
            conn.execute(sql.SQL("SET LOCAL ROLE {}").format(role))
            conn.execute("SELECT * FROM secure_webhooks.events")
    finally:
        if grantee == "reporting_team":
            conn.execute(sql.SQL("REVOKE ALL ON SCHEMA secure_webhooks FROM {}").format(role))
            conn.execute(sql.SQL("REVOKE ALL ON ALL TABLES IN SCHEMA secure_webhooks FROM {}").format(role))
            conn.execute(sql.SQL("DROP ROLE {}").format(role))


def test_an_unrepairable_outbox_change_is_reported_not_papered_over(pipeline, conn):
    provider, created = provider_of(pipeline, OutboxProvider)
    conn.execute("ALTER TABLE secure_webhooks.events DROP COLUMN dead_at CASCADE")
    outs, diff = refreshed(provider, created)
    assert diff.changes
    with pytest.raises(RuntimeError, match=r"schema secure_webhooks changed out of band .*dead_at"):
        provider.update(created.id, outs, created.outs)
    conn.execute("ALTER TABLE secure_webhooks.events ADD COLUMN dead_at timestamptz")
    # The columns the script adds to existing outboxes (endpoints.ddl) come after dead_at again: it re-adds them.
    conn.execute("ALTER TABLE secure_webhooks.events DROP COLUMN endpoint, DROP COLUMN slot_until, DROP COLUMN probe")
    provider.update(created.id, provider.read(created.id, created.outs).outs, created.outs)  # dropped view is back


def test_api_roles_reach_nothing_in_the_outbox(pipeline, conn):
    insert_rows(conn, "resumes", 0)
    for role in ("anon", "authenticated"):
        for statement in (
            "SELECT * FROM secure_webhooks.deliveries",
            "SELECT secure_webhooks.replay()",
            "SELECT secure_webhooks.reconcile()",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
                conn.execute(f"SET LOCAL ROLE {role}")
                conn.execute(statement)
    with conn.transaction():
        conn.execute("SET LOCAL ROLE service_role")
        conn.execute("SELECT * FROM secure_webhooks.deliveries")
        conn.execute("SELECT secure_webhooks.replay(statuses => ARRAY['dead'])")


def test_the_cron_job_is_created_and_its_drift_detected_and_repaired(pipeline, conn, cluster):
    provider = configured(ScheduleProvider, cluster)
    checked = provider.check({}, schedule_props())
    assert not checked.failures
    assert checked.inputs["resolved_schedule"] == "* * * * *"  # Debian's pg_cron 1.4
    created = provider.create(checked.inputs)
    try:
        (schedule, active, username) = conn.execute(
            "SELECT schedule, active, username FROM cron.job WHERE jobname = %s", (JOB_NAME,)
        ).fetchone()
        assert (schedule, active, username) == ("* * * * *", True, "postgres")
        outs, diff = refreshed(provider, created)
        assert not diff.changes
        for out_of_band in (
            "SELECT cron.schedule(%s, '*/5 * * * *', 'SELECT 1')",
            "UPDATE cron.job SET active = false WHERE jobname = %s",
            "UPDATE cron.job SET command = 'SELECT 1' WHERE jobname = %s",
        ):
            conn.execute(out_of_band, (JOB_NAME,))
            outs, diff = refreshed(provider, created)
            assert diff.changes, out_of_band
            provider.update(created.id, outs, created.outs)
            assert not refreshed(provider, created)[1].changes
        conn.execute("SELECT cron.unschedule(%s)", (JOB_NAME,))
        assert provider.read(created.id, created.outs).id is None  # gone: refresh drops it, up re-creates it
        created = provider.create(checked.inputs)
    finally:
        provider.delete(created.id, created.outs)
    assert conn.execute("SELECT count(*) FROM cron.job WHERE jobname = %s", (JOB_NAME,)).fetchone() == (0,)


def test_a_seconds_schedule_is_refused_at_preview_on_pg_cron_1_4(pipeline, cluster):
    failures = configured(ScheduleProvider, cluster).check({}, schedule_props("1 seconds")).failures
    assert [f.property for f in failures] == ["schedule"]
    assert "needs pg_cron >= 1.5" in failures[0].reason and "secure-webhooks:delivery.schedule" in failures[0].reason


def test_destroy_refuses_while_events_wait_and_succeeds_once_they_are_delivered(pipeline, conn, cluster):
    with WebhookReceiver(SECRET) as receiver:
        pipeline.add_trigger("resumes", receiver.url + "/ingest/interns/individual")
        inserted = insert_rows(conn, "resumes", 3)
        schedule = configured(ScheduleProvider, cluster)
        job = schedule.create(schedule.check({}, schedule_props()).inputs)
        with pytest.raises(RuntimeError, match=r"refusing to unschedule pg_cron job .*: 3 pending webhook events"):
            schedule.delete(job.id, job.outs)
        outbox, created = provider_of(pipeline, OutboxProvider)
        with pytest.raises(RuntimeError, match=r"refusing to drop schema secure_webhooks: .*\(3 pending\)"):
            outbox.delete(created.id, created.outs)
        assert statuses(conn) == {"pending": 3}  # nothing was dropped
        with PgNetWorker(cluster.admin_dsn) as worker:
            settle(conn, worker, all_delivered(conn))
        assert tally(inserted, receiver.deliveries).lost == 0
        schedule.delete(job.id, job.outs)


def test_switching_modes_under_concurrent_inserts_loses_nothing(cluster, receiver, worker):
    """direct -> at-least-once -> direct, in place, while a client inserts one row per transaction."""
    pipeline = install_pipeline(cluster)
    functions, function = provider_of(pipeline, SecureFunctionProvider)
    direct_spec = pipeline.spec.__class__(**{**pipeline.spec.__dict__, "mode": "direct"})
    direct = function_props(direct_spec)
    current = functions.update(function.id, function.outs, direct).outs
    pipeline.spec = direct_spec
    pipeline.add_trigger("resumes", receiver.url + "/ingest/interns/individual")
    stop, inserted = threading.Event(), []

    def insert_until_stopped() -> None:
        """A client's pace, at most 200 a second: unpaced, a fast machine queues thousands during the switches."""
        with pipeline.connect() as conn:
            while not stop.wait(0.005):
                inserted.extend(insert_rows(conn, "resumes", 1, prefix="switch"))

    def after_more_rows() -> None:
        """Each mode sees commits of its own: wait for 40 more, however fast this machine inserts."""
        target = len(inserted) + 40
        eventually(lambda: len(inserted) >= target or not writer.is_alive(), "40 more inserts", timeout=60)

    writer = threading.Thread(target=insert_until_stopped)
    writer.start()
    try:
        for mode in ("at-least-once", "direct", "at-least-once", "direct"):
            after_more_rows()
            props = function_props(pipeline.spec.__class__(**{**pipeline.spec.__dict__, "mode": mode}))
            current = functions.update(function.id, current, props).outs
        after_more_rows()
    finally:
        stop.set()
        writer.join()
    with pipeline.connect() as conn:
        settle(conn, worker, all_delivered(conn))
    counts = tally(inserted, receiver.deliveries)
    print(f"mode switches: {counts}")
    assert counts.lost == 0 and counts.duplicated == 0 and counts.inserted >= 5 * 40
    pipeline.remove()


def test_the_outbox_refuses_a_schema_it_does_not_own(cluster):
    with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as conn:
        conn.execute("CREATE SCHEMA secure_webhooks")
        try:
            provider = configured(OutboxProvider, cluster)
            (failure,) = provider.check({}, {"owner": OWNER, "script_sha256": script_sha256()}).failures
            assert "not managed by a secure-webhooks stack" in failure.reason
        finally:
            conn.execute("DROP SCHEMA secure_webhooks")


def test_retry_delays_follow_the_configured_backoff():
    assert TEST_DELIVERY.retry_delays() == [1, 2, 4, 5, 5]


def test_the_at_least_once_objects_pass_supabases_lint_rules(pipeline, conn):
    """function_search_path_mutable, *_security_definer_function_executable, extension_in_public."""
    findings = lint(conn, exposed_schemas=["public", "graphql_public", "secure_webhooks"])
    assert [f for f in findings if "secure_webhooks" in f.object or "notify_orchestrator" in f.object] == []
    # Even counted as exposed, the private schema grants anon/authenticated nothing to execute.
    assert conn.execute(
        "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE n.nspname = 'secure_webhooks' AND has_function_privilege('authenticated', p.oid, 'EXECUTE')"
    ).fetchone() == (0,)


#: The provider's session after the round's tables: trying to lock them all (postgres/table_locks.py), or, as
#: before that, waiting for one of them.
DDL_TRYING = """
SELECT EXISTS (SELECT FROM pg_catalog.pg_stat_activity
                WHERE application_name = 'secure-webhooks (pulumi)'
                  AND (query LIKE 'LOCK TABLE "secure_webhooks".%' OR wait_event_type = 'Lock'))"""


def test_a_round_still_running_does_not_deadlock_with_destroy(cluster):
    """Found by CI: a round that had written one outbox table and then wrote another deadlocked with destroy's
    DROP, which had taken the second and waited for the first, and PostgreSQL failed the destroy. Destroy now
    takes every table at once or waits holding none, so both finish."""
    pipeline = install_pipeline(cluster)
    try:
        outbox, created = pipeline.installed[0]
        for provider, resource in reversed(pipeline.installed[1:]):  # as destroy does: the reconciler and the
            provider.delete(resource.id, resource.outs)  # function go first
        del pipeline.installed[1:]
        with psycopg.connect(cluster.dsn("postgres")) as round_, ThreadPoolExecutor(max_workers=1) as pool:
            # A round's transaction: it has written the endpoints table ...
            round_.execute("LOCK TABLE secure_webhooks.endpoints IN ROW EXCLUSIVE MODE")
            ddl = pool.submit(outbox.delete, created.id, created.outs)
            with pipeline.connect() as conn:
                eventually(lambda: conn.execute(DDL_TRYING).fetchone()[0] or ddl.done(), "the DDL trying its locks", 60)
            # ... and now writes events, while destroy is after the same tables
            round_.execute("LOCK TABLE secure_webhooks.events IN ROW EXCLUSIVE MODE")
            round_.commit()
            ddl.result(timeout=120)  # raised "deadlock detected" before
        pipeline.installed.clear()
        with pipeline.connect() as conn:
            assert conn.execute("SELECT to_regnamespace('secure_webhooks')").fetchone()[0] is None
    finally:
        pipeline.remove()
