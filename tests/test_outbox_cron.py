"""Real pg_cron runs the reconciler: no test driver, just the scheduler's own minute tick."""

from __future__ import annotations

import time

from outbox_support import insert_rows, install_pipeline, statuses, supabase_with_secret, tally
from providers import OWNER, configured

from local_supabase.orchestrator import WebhookReceiver
from local_supabase.pg_net_worker import PgNetWorker
from secure_webhooks.delivery.reconciler import JOB_NAME
from secure_webhooks.delivery.schedule_provider import ScheduleProvider

SECRET = "cron-test-signing-secret-" + "0123456789abcdef" * 2


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
            # pg_cron 1.4 starts the job at the next full minute; its loop then runs for 59 s.
            receiver.wait_for(5, timeout=75)
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
            # The loop picks up new rows within its idle sleep, not at the next tick.
            more = insert_rows(conn, "resumes", 1, prefix="late")
            receiver.wait_for(6, timeout=5)
            deadline = time.monotonic() + 60
            while statuses(conn) != {"delivered": 6}:  # the loop records the last outcome too
                assert time.monotonic() < deadline, statuses(conn)
                time.sleep(0.1)
        assert tally(inserted + more, receiver.deliveries).lost == 0
        schedule.delete(job.id, job.outs)
        pipeline.remove()
