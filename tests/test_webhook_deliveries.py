"""The operator command on a real outbox: status, list, replay and purge, and clear one-line errors."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from outbox_support import all_delivered, insert_rows, install_pipeline, settle, statuses, supabase_with_secret

from local_supabase.cluster import LocalSupabase
from local_supabase.orchestrator import PlannedResponse, WebhookReceiver
from local_supabase.pg_net_worker import PgNetWorker
from webhook_deliveries.__main__ import main

SECRET = "operator-test-signing-secret-" + "0123456789abcdef" * 2


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalSupabase]:
    with supabase_with_secret(SECRET) as cluster:
        yield cluster


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_status_list_replay_and_purge(cluster, capsys):
    dsn = cluster.dsn("postgres")
    with WebhookReceiver(SECRET) as receiver, PgNetWorker(cluster.admin_dsn) as worker:
        pipeline = install_pipeline(cluster)
        pipeline.add_trigger("resumes", receiver.url + "/ingest/interns/individual", name="resumes_hook")
        receiver.plan(PlannedResponse(410), PlannedResponse(500))
        with pipeline.connect() as conn:
            insert_rows(conn, "resumes", 4)
            settle(conn, worker, lambda: set(statuses(conn)) == {"dead", "delivered"} and statuses(conn)["dead"] == 1)
            code, out, _ = run(capsys, "--dsn", dsn, "status")
            assert code == 0
            header, row, job = out.splitlines()
            assert header.split()[:6] == ["webhook", "pending", "failed", "dead", "delivered", "oldest"]
            assert job.startswith("reconciler: NO pg_cron job secure_webhooks_reconciler: nothing sends these events")
            assert row.split()[:5] == ["resumes_hook", "0", "0", "1", "3"]
            assert row.rstrip().endswith("HTTP 410")

            code, out, _ = run(capsys, "--dsn", dsn, "list", "--status", "dead")
            assert code == 0 and len(out.splitlines()) == 2 and " dead " in out

            code, out, _ = run(capsys, "--dsn", dsn, "replay")
            assert (code, out.strip()) == (0, "replayed 1 event(s); the reconciler sends them at its next round")
            settle(conn, worker, all_delivered(conn))

            code, out, _ = run(capsys, "--dsn", dsn, "purge", "--status", "delivered", "--older-than", "1d")
            assert (code, out.strip()) == (0, "purged 0 event(s)")
            code, out, _ = run(capsys, "--dsn", dsn, "purge", "--status", "delivered")
            assert (code, out.strip()) == (0, "purged 4 event(s)")
            code, out, _ = run(capsys, "--dsn", dsn, "status")
            assert out.splitlines()[1] == "(no events)"
        pipeline.remove()


def test_errors_are_one_line_without_secrets(cluster, capsys):
    code, _, err = run(capsys, "--dsn", f"host=127.0.0.1 port={cluster.port} dbname=postgres", "status")
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: cannot connect with --dsn")
    code, _, err = run(capsys, "--dsn", cluster.dsn("postgres"), "status")  # no outbox installed
    assert code == 2 and "secure_webhooks.deliveries does not exist" in err
    assert cluster.password_for("postgres") not in err
    with pytest.raises(SystemExit):
        main(["purge", "--status", "everything"])


#: A password no libpq message should ever show, not even in part (issue 15 #9).
PASSWORD = "Hunter2-s3cr3t-Passw0rd"
MALFORMED_DSNS = (
    f"postgresql://operator:{PASSWORD}@[::1/postgres",  # unterminated IPv6 host: libpq quotes the whole URI
    f"postgresql://operator:{PASSWORD}@db.example.com/postgres?sslmode=verify-full&bogus=1",
    f"postgresql://operator:{PASSWORD.replace('-', '%zz')}@db.example.com/postgres",  # undecodable user info
    f"postgresql://operator:{PASSWORD}@db.example.com:port/postgres",
    f"postgresql://operator@db.example.com/postgres?password={PASSWORD}&bogus=1",
    f"host=db.example.com password='{PASSWORD}",  # unterminated quote
    f"host=db.example.com password={PASSWORD} bogus=1",
)


@pytest.mark.parametrize("dsn", MALFORMED_DSNS)
def test_a_malformed_dsn_is_one_line_without_its_password(capsys, dsn):
    code, out, err = run(capsys, "--dsn", dsn, "status")
    print(f"\n{dsn!r} -> {err.strip()}")
    assert code == 2 and out == "" and err.count("\n") == 1 and err.startswith("error: cannot connect with --dsn:")
    fragments = {PASSWORD[i : i + 6] for i in range(len(PASSWORD) - 5)} | {"%zz"}
    assert not [fragment for fragment in fragments if fragment in err], err


@pytest.mark.parametrize(
    ("argv", "key"), [(("list", "--since"), "--since"), (("purge", "--status", "dead", "--older-than"), "--older-than")]
)
@pytest.mark.parametrize("value", ["99999999999d", "9" * 40 + "s", "36501d"])
def test_an_out_of_range_duration_is_a_usage_error_not_a_traceback(capsys, argv, key, value):
    with pytest.raises(SystemExit) as exit_:
        main(["--dsn", "host=127.0.0.1", *argv, value])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    assert err.splitlines()[-1].endswith(f"argument {key}: {value!r} is too long: at most 36500d")


def test_the_longest_duration_works_against_the_database(cluster, capsys):
    pipeline = install_pipeline(cluster)
    try:
        code, out, err = run(capsys, "--dsn", cluster.dsn("postgres"), "list", "--since", "36500d")
        assert (code, err) == (0, "") and out.startswith("event id")
        code, out, err = run(
            capsys, "--dsn", cluster.dsn("postgres"), "purge", "--status", "dead", "--older-than", "36500d"
        )
        assert (code, out.strip(), err) == (0, "purged 0 event(s)", "")
    finally:
        pipeline.remove()


def test_status_shows_the_reconcilers_last_failed_run(cluster, capsys):
    """A round that fails (here: a trigger planted on pg_net's tables) fails for every webhook: status says so."""
    dsn = cluster.dsn("postgres")
    pipeline = install_pipeline(cluster)
    try:
        with pipeline.connect() as conn:
            (job,) = conn.execute(
                "SELECT cron.schedule('secure_webhooks_reconciler', '0 0 1 1 *', 'SELECT 1')"
            ).fetchone()
            conn.execute(
                "INSERT INTO cron.job_run_details (jobid, runid, job_pid, database, username, command, status,"
                " return_message, start_time, end_time)"
                " VALUES (%s, (SELECT coalesce(max(runid), 0) + 1 FROM cron.job_run_details), 1, 'postgres',"
                " 'postgres', 'SELECT 1', 'failed', %s, now(), now())",
                (job, "ERROR:  secure_webhooks: not delivering while pg_net's tables have triggers (spy on ...)"),
            )
            code, out, _ = run(capsys, "--dsn", dsn, "status")
            assert code == 0
            line = out.splitlines()[-1]
            assert line.startswith("reconciler: job secure_webhooks_reconciler, last run FAILED at ")
            assert "not delivering while pg_net's tables have triggers" in line
            conn.execute("UPDATE cron.job SET active = false WHERE jobid = %s", (job,))
            assert "is PAUSED (active = false)" in run(capsys, "--dsn", dsn, "status")[1]
            conn.execute("SELECT cron.unschedule(%s)", (job,))
    finally:
        pipeline.remove()
