"""Real pg_cron runs the reconciler: no test driver, just the scheduler's own minute tick."""

from __future__ import annotations

import datetime

import psycopg
from outbox_support import insert_rows, install_pipeline, statuses, supabase_with_secret, tally
from providers import OWNER, configured
from waiting import eventually

from local_supabase.orchestrator import WebhookReceiver
from local_supabase.pg_net_worker import PgNetWorker
from secure_webhooks.delivery.reconciler import JOB_NAME
from secure_webhooks.delivery.schedule_provider import ScheduleProvider

SECRET = "cron-test-signing-secret-" + "0123456789abcdef" * 2
LATE_SENT = (
    "SELECT min(a.sent_at) FROM secure_webhooks.attempts a JOIN secure_webhooks.events e ON e.id = a.event_id "
    "WHERE e.payload -> 'record' ->> 'name' = 'late-0'"
)


def started_runs(conn: psycopg.Connection) -> list[datetime.datetime]:
    """When each run of the reconciler's job started (a run still starting has no start time yet)."""
    query = (
        "SELECT d.start_time FROM cron.job_run_details d JOIN cron.job j USING (jobid) "
        "WHERE j.jobname = %s AND d.start_time IS NOT NULL ORDER BY 1"
    )
    return [start for (start,) in conn.execute(query, (JOB_NAME,))]


#: A run is mid-loop, well before its stop (59 s after its start): a row inserted now is the running loop's to
#: send. Inserted in the second between one run's stop and the next tick, the next run would send it.
MID_LOOP = (
    "SELECT EXISTS (SELECT FROM cron.job_run_details d JOIN cron.job j USING (jobid) "
    "WHERE j.jobname = %s AND d.status = 'running' "
    "AND pg_catalog.clock_timestamp() - d.start_time BETWEEN interval '1 second' AND interval '30 seconds')"
)


def test_pg_cron_runs_the_reconciler_which_delivers():
    with (
        supabase_with_secret(SECRET) as cluster,
        WebhookReceiver(SECRET) as receiver,
        PgNetWorker(cluster.admin_dsn),
    ):
        pipeline = install_pipeline(cluster)
        pipeline.add_trigger("resumes", receiver.url + "/ingest/interns/individual")
        schedule = configured(ScheduleProvider, cluster)
        job = schedule.create(schedule.check({}, {"owner": OWNER, "schedule": "auto", "job_name": JOB_NAME}).inputs)
        with pipeline.connect() as conn:
            inserted = insert_rows(conn, "resumes", 5)
            # pg_cron 1.4 starts the job at the next full minute; its loop then runs for 59 s. The bound allows a
            # busy machine to miss the first tick.
            receiver.wait_for(5, timeout=150)
            counts = tally(inserted, receiver.deliveries)
            print(f"real pg_cron tick: {counts}")
            assert counts.lost == 0 and counts.duplicated == 0
            runs = conn.execute(
                "SELECT d.status, d.username FROM cron.job_run_details d JOIN cron.job j USING (jobid) "
                "WHERE j.jobname = %s",
                (JOB_NAME,),
            ).fetchall()
            assert runs and all(username == "postgres" for _, username in runs), runs
            assert {status for status, _ in runs} <= {"starting", "running", "succeeded"}, runs
            # The loop picks up new rows within its idle sleep, not at the next tick: the late row's first attempt
            # is sent before another run starts (on the database's clock, however long this machine takes).
            eventually(lambda: conn.execute(MID_LOOP, (JOB_NAME,)).fetchone()[0], "a run mid-loop", 150)
            runs_before = len(started_runs(conn))
            more = insert_rows(conn, "resumes", 1, prefix="late")
            receiver.wait_for(6, timeout=120)
            eventually(lambda: statuses(conn) == {"delivered": 6}, "6 delivered", 60)  # the loop records it too
            (late_sent,) = conn.execute(LATE_SENT).fetchone()
            assert late_sent is not None
            assert len([start for start in started_runs(conn) if start <= late_sent]) == runs_before, (
                late_sent,
                started_runs(conn),
            )
        assert tally(inserted + more, receiver.deliveries).lost == 0
        schedule.delete(job.id, job.outs)
        pipeline.remove()
