"""Issue 15 #9: destroy with only dead events names a way out that works, and following it lets destroy finish.

The pg_cron job used to go with dead events still in the outbox (it only refused for pending and
failed ones); the outbox then refused with "replay them and wait", but with the job gone a replayed
event stays pending forever. Now the job refuses while any event is undelivered, so replaying works,
and the outbox's refusal, reached with the job already gone, says that only a purge (or `up` first)
gets past it.
"""

from __future__ import annotations

import pytest
from outbox_support import all_delivered, insert_rows, install_pipeline, settle, statuses, tally
from providers import OWNER, configured

from local_supabase.cluster import LocalSupabase
from local_supabase.orchestrator import PlannedResponse, WebhookReceiver
from local_supabase.pg_net_worker import PgNetWorker
from secure_webhooks.delivery.outbox_provider import OutboxProvider
from secure_webhooks.delivery.reconciler import JOB_NAME
from secure_webhooks.delivery.schedule_provider import ScheduleProvider
from webhook_deliveries.__main__ import main

SECRET = "destroy-advice-signing-secret-" + "0123456789abcdef" * 2


def operator(capsys, cluster: LocalSupabase, *argv: str) -> str:
    capsys.readouterr()  # what the test printed so far
    assert main(["--dsn", cluster.dsn("postgres"), *argv]) == 0
    return capsys.readouterr().out


def dead_events(cluster: LocalSupabase, receiver: WebhookReceiver, worker: PgNetWorker, rows: int):
    """The pipeline with one trigger whose first `rows` requests are answered 410 Gone: `rows` dead events."""
    pipeline = install_pipeline(cluster)
    pipeline.add_trigger("resumes", receiver.url + "/ingest/interns/individual")
    receiver.plan(*(PlannedResponse(410) for _ in range(rows)))
    conn = pipeline.connect()
    inserted = insert_rows(conn, "resumes", rows)
    settle(conn, worker, lambda: statuses(conn) == {"dead": rows})
    return pipeline, conn, inserted


def destroy(pipeline) -> None:
    """Delete the pipeline in destroy's order, without purging anything first (as `pulumi destroy` does)."""
    for provider, created in reversed(pipeline.installed):
        provider.delete(created.id, created.outs)
    pipeline.installed.clear()


def test_dead_events_keep_the_job_and_replaying_them_lets_destroy_finish(cluster, receiver, worker, capsys):
    pipeline, conn, inserted = dead_events(cluster, receiver, worker, 2)
    schedules = configured(ScheduleProvider, cluster)
    job = schedules.create(schedules.check({}, {"owner": OWNER, "schedule": "auto", "job_name": JOB_NAME}).inputs)

    with pytest.raises(RuntimeError) as refused:  # destroy deletes the job first
        schedules.delete(job.id, job.outs)
    advice = str(refused.value)
    print(f"\n{advice}")
    assert f"refusing to unschedule pg_cron job {JOB_NAME}: 2 dead webhook events are undelivered" in advice
    assert "python -m webhook_deliveries replay" in advice and "purge --status dead" in advice
    assert conn.execute("SELECT count(*) FROM cron.job WHERE jobname = %s", (JOB_NAME,)).fetchone() == (1,)

    # Follow the advice: replay, and the job (here: its rounds, run back to back) sends them again.
    assert operator(capsys, cluster, "replay").startswith("replayed 2 event(s)")
    settle(conn, worker, all_delivered(conn))
    counts = tally(inserted, receiver.deliveries)
    print(f"dead events replayed before destroy: {counts}")
    assert counts.lost == 0 and counts.delivered == 2

    schedules.delete(job.id, job.outs)
    destroy(pipeline)  # no purge: every event was delivered
    assert conn.execute("SELECT to_regnamespace('secure_webhooks')").fetchone() == (None,)
    conn.close()


def test_without_the_job_the_outbox_refusal_says_only_a_purge_or_up_helps(cluster, receiver, worker, capsys):
    pipeline, conn, _ = dead_events(cluster, receiver, worker, 1)
    outbox, created = next(item for item in pipeline.installed if isinstance(item[0], OutboxProvider))
    # No job (unscheduled out of band, or removed by older code that let it go with dead events).
    assert conn.execute("SELECT count(*) FROM cron.job WHERE jobname = %s", (JOB_NAME,)).fetchone() == (0,)
    with pytest.raises(RuntimeError) as refused:
        outbox.delete(created.id, created.outs)
    advice = str(refused.value)
    print(f"\n{advice}")
    assert "refusing to drop schema secure_webhooks: it holds undelivered webhook events (1 dead)" in advice
    assert f"pg_cron job {JOB_NAME} is gone" in advice and "pending forever" in advice
    assert "`python -m webhook_deliveries purge --status dead --yes`" in advice and "`pulumi up`" in advice

    assert operator(capsys, cluster, "purge", "--status", "dead", "--yes").strip() == "purged 1 event(s)"
    destroy(pipeline)
    assert conn.execute("SELECT to_regnamespace('secure_webhooks')").fetchone() == (None,)
    conn.close()


def test_with_the_job_running_the_outbox_refusal_still_offers_replay(cluster, receiver, worker):
    pipeline, conn, _ = dead_events(cluster, receiver, worker, 1)
    schedules = configured(ScheduleProvider, cluster)
    job = schedules.create(schedules.check({}, {"owner": OWNER, "schedule": "auto", "job_name": JOB_NAME}).inputs)
    outbox, created = next(item for item in pipeline.installed if isinstance(item[0], OutboxProvider))
    with pytest.raises(RuntimeError, match=r"Replay them \(`python -m webhook_deliveries replay`\)"):
        outbox.delete(created.id, created.outs)
    conn.execute("SELECT secure_webhooks.purge(ARRAY['dead'])")
    schedules.delete(job.id, job.outs)
    conn.close()
    pipeline.remove()
