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
            header, row = out.splitlines()
            assert header.split()[:6] == ["webhook", "pending", "failed", "dead", "delivered", "oldest"]
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
