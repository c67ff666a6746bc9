"""The operator command on a real outbox: status (and its monitoring check), list, replay and purge, and clear
one-line errors. Every state a test judges is made by real deliveries, with ages set back in SQL, never waited for."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import psycopg
import pytest
from outbox_support import (
    Pipeline,
    all_delivered,
    insert_rows,
    install_pipeline,
    settle,
    statuses,
)

from local_supabase.orchestrator import PlannedResponse, WebhookReceiver
from local_supabase.pg_net_worker import PgNetWorker
from secure_webhooks.configuration.delivery_settings import DeliverySettings
from secure_webhooks.configuration.settings import rotation_partner
from secure_webhooks.delivery.endpoints import endpoint_of
from secure_webhooks.delivery.reconciler import JOB_NAME, ReconcilerSpec, render_reconcile
from secure_webhooks.signing.trigger_function import FunctionSpec, key_id, sql_literal
from webhook_deliveries.__main__ import main
from webhook_deliveries.keys import vault_reads

SECRET = "operator-test-signing-secret-" + "0123456789abcdef" * 2


def run(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()  # what the test printed so far
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_status_list_replay_and_purge(cluster, receiver, worker, capsys):
    dsn = cluster.dsn("postgres")
    pipeline = install_pipeline(cluster)
    pipeline.add_trigger("resumes", receiver.url + "/ingest/interns/individual", name="resumes_hook")
    receiver.plan(PlannedResponse(410), PlannedResponse(500))
    with pipeline.connect() as conn:
        insert_rows(conn, "resumes", 4)
        settle(conn, worker, lambda: set(statuses(conn)) == {"dead", "delivered"} and statuses(conn)["dead"] == 1)
        code, out, _ = run(capsys, "--dsn", dsn, "status")
        assert code == 0
        header, row, endpoints, endpoint, job, alerts, key = out.splitlines()
        assert endpoints.split()[:2] == ["endpoint", "state"]
        assert endpoint.split()[:2] == [endpoint_of(receiver.url), "open"]
        assert header.split()[:6] == ["webhook", "pending", "failed", "dead", "delivered", "oldest"]
        # which key signs, by its id only (computed in the database)
        assert key == f"jwt key: signs with kid {key_id(SECRET)} (Vault secret app_jwt_secret)"
        assert job.startswith("reconciler: NO pg_cron job secure_webhooks_reconciler: nothing sends these events")
        assert row.split()[:5] == ["resumes_hook", "0", "0", "1", "3"]
        assert row.rstrip().endswith("HTTP 410")
        # The dead event's alert went to the pg_notify channel only: this stack has no alert URL.
        assert alerts == "alerts: 0 posted, 0 pending, 0 failed in the last 1d, 1 on the channel only (no alert URL)"

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
            capsys, "--dsn", cluster.dsn("postgres"), "purge", "--status", "dead", "--older-than", "36500d", "--yes"
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
            (line,) = [line for line in out.splitlines() if line.startswith("reconciler:")]
            assert line.startswith("reconciler: job secure_webhooks_reconciler, last run FAILED at ")
            assert "not delivering while pg_net's tables have triggers" in line
            conn.execute("UPDATE cron.job SET active = false WHERE jobid = %s", (job,))
            assert "is PAUSED (active = false)" in run(capsys, "--dsn", dsn, "status")[1]
            conn.execute("SELECT cron.unschedule(%s)", (job,))
    finally:
        pipeline.remove()


#: One of the two default webhook names: longer than the 32 characters `list` used to show.
LONG_NAME = "orchestrator-ingest-interns-individual"
LIST_FIELDS = {
    "event_id",
    "webhook",
    "table",
    "status",
    "attempts",
    "last_status_code",
    "last_error",
    "created_at",
    "next_attempt_at",
    "delivered_at",
}


@dataclass
class Outbox:
    """An outbox holding one delivered, one failed (a retry scheduled) and one pending event, all a day old."""

    dsn: str
    conn: psycopg.Connection
    pipeline: Pipeline
    receiver: WebhookReceiver
    worker: PgNetWorker

    def operator(self, capsys, *argv: str) -> tuple[int, str, str]:
        return run(capsys, "--dsn", self.dsn, *argv)

    def schedule_job(self, last_run: str | None = "succeeded", message: str = "1 row") -> int:
        """The reconciler's pg_cron job (never due during a test) with a finished run, as status reads it."""
        (job,) = self.conn.execute("SELECT cron.schedule(%s, '0 0 1 1 *', 'SELECT 1')", (JOB_NAME,)).fetchone()
        if last_run is not None:
            self.conn.execute(
                "INSERT INTO cron.job_run_details (jobid, runid, job_pid, database, username, command, status,"
                " return_message, start_time, end_time)"
                " VALUES (%s, (SELECT coalesce(max(runid), 0) + 1 FROM cron.job_run_details), 1, 'postgres',"
                " 'postgres', 'SELECT 1', %s, %s, now(), now())",
                (job, last_run, message),
            )
        return job

    def counts(self) -> dict[str, int]:
        return statuses(self.conn)


@pytest.fixture
def outbox(cluster) -> Iterator[Outbox]:
    with WebhookReceiver(SECRET) as receiver, PgNetWorker(cluster.admin_dsn) as worker:
        pipeline = install_pipeline(cluster)
        conn = pipeline.connect()
        try:
            pipeline.add_trigger("resumes", receiver.url + "/ingest/interns/individual", name=LONG_NAME)
            receiver.plan(PlannedResponse(500))
            insert_rows(conn, "resumes", 2, prefix="sent")
            # The failure is recorded by a round, and done() is asked before the next one: the retry, due 1 s
            # later, is never sent here.
            settle(conn, worker, lambda: statuses(conn) == {"delivered": 1, "failed": 1})
            insert_rows(conn, "resumes", 1, prefix="waiting")  # no round runs after it: it stays pending
            conn.execute("UPDATE secure_webhooks.events SET created_at = created_at - interval '1 day'")
            assert statuses(conn) == {"delivered": 1, "failed": 1, "pending": 1}
            yield Outbox(cluster.dsn("postgres"), conn, pipeline, receiver, worker)
        finally:
            conn.execute("SELECT cron.unschedule(jobid) FROM cron.job WHERE jobname = %s", (JOB_NAME,))
            conn.close()
            pipeline.remove()


def test_list_shows_full_webhook_names_and_the_next_attempt(outbox, capsys):
    due = dict(outbox.conn.execute("SELECT status, next_attempt_at FROM secure_webhooks.deliveries").fetchall())
    code, out, _ = outbox.operator(capsys, "list", "--webhook", LONG_NAME)
    header, *rows = out.splitlines()
    print(f"\n{out}")
    assert code == 0 and header.split()[:2] == ["event", "id"] and "next attempt" in header
    assert len(rows) == 3 and all(f"  {LONG_NAME} " in row for row in rows)
    (failed,) = [row for row in rows if " failed " in row]
    assert f"{due['failed']:%Y-%m-%d %H:%M:%S}" in failed and " 500 " in failed and "HTTP 500" in failed
    (pending,) = [row for row in rows if " pending " in row]
    assert f"{due['pending']:%Y-%m-%d %H:%M:%S}" in pending  # due since it was written: the next round sends it
    (delivered,) = [row for row in rows if " delivered " in row]
    assert delivered.split()[-1] == "-"  # no next attempt, no error

    code, out, _ = outbox.operator(capsys, "status")
    assert code == 0 and out.splitlines()[1].split()[:6] == [LONG_NAME, "1", "1", "0", "1", "1d00h"]


def test_list_json_has_the_documented_fields(outbox, capsys):
    code, out, err = outbox.operator(capsys, "list", "--json")
    assert (code, err) == (0, "")
    events = {event["status"]: event for event in json.loads(out)["events"]}
    assert set(events) == {"delivered", "failed", "pending"}
    assert all(set(event) == LIST_FIELDS for event in events.values())
    failed = events["failed"]
    assert (failed["webhook"], failed["table"], failed["attempts"]) == (LONG_NAME, "public.resumes", 1)
    assert (failed["last_status_code"], failed["last_error"]) == (500, "HTTP 500")
    due = outbox.conn.execute(
        "SELECT next_attempt_at FROM secure_webhooks.deliveries WHERE event_id = %s", (failed["event_id"],)
    ).fetchone()[0]
    assert datetime.fromisoformat(failed["next_attempt_at"]) == due and failed["next_attempt_at"].endswith("+00:00")
    assert events["delivered"]["next_attempt_at"] is None and events["delivered"]["delivered_at"] is not None
    assert events["pending"]["attempts"] == 0 and events["pending"]["last_status_code"] is None

    code, out, _ = outbox.operator(capsys, "list", "--json", "--status", "dead")
    assert (code, json.loads(out)) == (0, {"events": []})


def test_status_json_has_the_documented_fields(outbox, capsys):
    outbox.schedule_job()
    code, out, err = outbox.operator(capsys, "status", "--json")
    assert (code, err) == (0, "")
    document = json.loads(out)
    assert set(document) == {"webhooks", "reconciler", "endpoints", "alerts", "signing_keys"}
    assert document["alerts"] == {
        "pending": 0,
        "failed": 0,
        "sent": 0,
        "unsent": 0,
        "last_error": None,
        "summary": "0 posted, 0 pending, 0 failed in the last 1d",
    }
    assert document["signing_keys"] == {
        "source": "secure_webhooks.reconcile() as installed",
        "jwt": {"vault_secret": "app_jwt_secret", "kid": key_id(SECRET), "staged": None, "also_signing": None},
        "webhook": None,
        "retiring": [],
        "problem": None,
    }
    (webhook,) = document["webhooks"]
    assert webhook == {
        "webhook": LONG_NAME,
        "table": "public.resumes",
        "pending": 1,
        "failed": 1,
        "dead": 0,
        "delivered": 1,
        "oldest_pending_at": webhook["oldest_pending_at"],
        "oldest_pending_seconds": webhook["oldest_pending_seconds"],
        "oldest_failed_at": webhook["oldest_failed_at"],
        "oldest_failed_seconds": webhook["oldest_failed_seconds"],
        "last_error": "HTTP 500",
    }
    assert webhook["oldest_pending_seconds"] >= 86_400 and webhook["oldest_failed_seconds"] >= 86_400
    assert datetime.fromisoformat(webhook["oldest_pending_at"]) > datetime.fromisoformat(webhook["oldest_failed_at"])
    reconciler = document["reconciler"]
    assert {key: reconciler[key] for key in ("job", "readable", "exists", "active", "last_run", "healthy")} == {
        "job": JOB_NAME,
        "readable": True,
        "exists": True,
        "active": True,
        "last_run": "succeeded",
        "healthy": True,
    }
    assert reconciler["summary"].startswith(f"job {JOB_NAME}, last run succeeded at ")

    code, out, _ = outbox.operator(
        capsys, "status", "--json", "--check", "--failing-longer-than", "2d", "--pending-older-than", "0s"
    )
    check = json.loads(out)["check"]
    assert code == 1 and check["ok"] is False and check["summary"].startswith("CRITICAL: oldest pending event")


def check(outbox: Outbox, capsys, *options: str) -> tuple[int, str]:
    """`status --check`: one line on stdout, nothing on stderr."""
    code, out, err = outbox.operator(capsys, "status", "--check", *options)
    print(f"\n{code}: {out}", end="")
    assert err == "" and out.count("\n") == 1
    return code, out.strip()


#: Limits the day-old events are within.
GENEROUS = ("--failing-longer-than", "2d", "--pending-older-than", "2d")


def test_check_is_ok_within_the_limits(outbox, capsys):
    outbox.schedule_job()
    code, line = check(outbox, capsys, *GENEROUS)
    assert code == 0
    assert line.startswith("OK: no dead events, 1 failed, 1 pending (oldest 1d00h); reconciler: job ")
    assert f"job {JOB_NAME}, last run succeeded at " in line


def test_check_fails_on_dead_events(outbox, capsys):
    outbox.schedule_job()
    outbox.receiver.plan(PlannedResponse(410))
    insert_rows(outbox.conn, "resumes", 1, prefix="gone")
    settle(outbox.conn, outbox.worker, lambda: outbox.counts().get("dead") == 1)
    code, line = check(outbox, capsys, *GENEROUS)
    assert (code, line) == (1, f"CRITICAL: 1 dead event(s) ({LONG_NAME} 1): replay or purge them")


def test_check_fails_on_events_failing_too_long(outbox, capsys):
    outbox.schedule_job()
    code, line = check(outbox, capsys, "--failing-longer-than", "12h", "--pending-older-than", "2d")
    assert (code, line) == (1, f"CRITICAL: events failing for 1d00h, past the 12h limit ({LONG_NAME})")
    # With no allowance at all, any failed event counts: no waiting for an age.
    outbox.conn.execute("UPDATE secure_webhooks.events SET created_at = now() WHERE attempts > 0")
    assert check(outbox, capsys, "--failing-longer-than", "0s", "--pending-older-than", "2d")[0] == 1
    assert check(outbox, capsys, *GENEROUS)[0] == 0


def test_check_fails_on_an_old_pending_event(outbox, capsys):
    outbox.schedule_job()
    code, line = check(outbox, capsys, "--failing-longer-than", "2d", "--pending-older-than", "12h")
    assert (code, line) == (1, f"CRITICAL: oldest pending event is 1d00h old, past the 12h limit ({LONG_NAME})")


def test_check_fails_on_an_unhealthy_reconciler(outbox, capsys):
    code, line = check(outbox, capsys, *GENEROUS)
    assert (code, line) == (
        1,
        f"CRITICAL: reconciler: NO pg_cron job {JOB_NAME}: nothing sends these events (pulumi up schedules it)",
    )
    job = outbox.schedule_job(last_run="failed", message="ERROR:  secure_webhooks: could not lock the outbox")
    code, line = check(outbox, capsys, *GENEROUS)
    assert code == 1 and line.startswith(f"CRITICAL: reconciler: job {JOB_NAME}, last run FAILED at ")
    assert line.endswith(": ERROR:  secure_webhooks: could not lock the outbox")
    outbox.conn.execute("SELECT cron.unschedule(%s)", (job,))
    job = outbox.schedule_job(last_run=None)
    assert check(outbox, capsys, *GENEROUS)[0] == 0  # just scheduled: no run finished yet
    outbox.conn.execute("UPDATE cron.job SET active = false WHERE jobid = %s", (job,))
    code, line = check(outbox, capsys, *GENEROUS)
    assert (code, line) == (1, f"CRITICAL: reconciler: job {JOB_NAME} is PAUSED (active = false), no finished run yet")


def test_check_names_every_problem_on_one_line(outbox, capsys):
    code, line = check(outbox, capsys, "--failing-longer-than", "0s", "--pending-older-than", "0s")
    assert code == 1
    assert line.split("; ") == [
        f"CRITICAL: events failing for 1d00h, past the 0s limit ({LONG_NAME})",
        f"oldest pending event is 1d00h old, past the 0s limit ({LONG_NAME})",
        f"reconciler: NO pg_cron job {JOB_NAME}: nothing sends these events (pulumi up schedules it)",
    ]


class Terminal(io.StringIO):
    """An operator at a terminal: `isatty()` is true, and `readline()` gives what they type."""

    def isatty(self) -> bool:
        return True


def test_purging_events_not_yet_delivered_needs_yes(outbox, capsys):
    before = outbox.counts()
    for chosen in ("pending", "failed", "dead", "delivered,failed,pending"):
        code, out, err = outbox.operator(capsys, "purge", "--status", chosen)
        assert (code, out) == (2, "") and err.count("\n") == 1, err
        assert err.startswith("error: refusing to purge events not yet delivered (") and err.endswith(
            "match now) without --yes; nothing was deleted\n"
        )
        assert outbox.counts() == before
    assert "(1 failed, 1 pending match now)" in err

    code, out, _ = outbox.operator(capsys, "purge", "--status", "pending", "--yes")
    assert (code, out, outbox.counts()) == (0, "purged 1 event(s)\n", {"delivered": 1, "failed": 1})
    code, out, _ = outbox.operator(capsys, "purge", "--status", "delivered")  # delivered ones need no --yes
    assert (code, out, outbox.counts()) == (0, "purged 1 event(s)\n", {"failed": 1})


@pytest.mark.parametrize(
    ("answer", "code", "said", "left"),
    [("n\n", 1, "nothing purged", 1), ("", 1, "nothing purged", 1), ("yes\n", 0, "purged 1 event(s)", 0)],
)
def test_on_a_terminal_purge_asks_first(outbox, capsys, monkeypatch, answer, code, said, left):
    monkeypatch.setattr(sys, "stdin", Terminal(answer))
    assert outbox.operator(capsys, "purge", "--status", "failed") == (
        code,
        f"{said}\n",
        "Delete 1 failed event(s) not yet delivered, for good? [y/N] ",
    )
    assert outbox.counts().get("failed", 0) == left and outbox.counts()["pending"] == 1


BIN = Path(sys.executable).parent


@pytest.mark.parametrize(
    ("command", "name"),
    [
        ([str(BIN / "webhook-deliveries")], "webhook-deliveries"),
        ([sys.executable, "-m", "webhook_deliveries"], "python -m webhook_deliveries"),
    ],
)
def test_usage_names_the_command_as_it_was_called(command, name):
    assert Path(command[0]).exists(), "the console script comes with `pip install -e .` (requirements.txt)"
    shown = subprocess.run([*command, "--help"], capture_output=True, text=True, check=False)
    assert (shown.returncode, shown.stderr) == (0, "") and shown.stdout.startswith(f"usage: {name} [-h]")
    shown = subprocess.run([*command, "status", "--help"], capture_output=True, text=True, check=False)
    assert shown.stdout.startswith(f"usage: {name} status [-h]") and "--failing-longer-than DURATION" in shown.stdout
    wrong = subprocess.run([*command, "purge"], capture_output=True, text=True, check=False)
    assert wrong.returncode == 2 and wrong.stderr.startswith(f"usage: {name} purge [-h]")
    assert wrong.stderr.splitlines()[-1] == f"{name} purge: error: the following arguments are required: --status"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("list", "--limit", "0"), "argument --limit: '0' is not a positive whole number"),
        (("list", "--limit", "many"), "argument --limit: 'many' is not a positive whole number"),
        (
            ("status", "--check", "--pending-older-than", "soon"),
            "argument --pending-older-than: 'soon' is not a duration like 90s, 30m, 6h or 7d",
        ),
    ],
)
def test_bad_options_are_usage_errors(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        main(["--dsn", "host=127.0.0.1", *argv])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err and err.splitlines()[-1].endswith(message)


@pytest.mark.parametrize("name", ["app_jwt_secret", "app_jwt_secret_next", "it's", "back\\slash"])
def test_status_reads_the_vault_secret_names_from_the_reconcilers_source(name):
    """status finds the names the installed reconciler reads in its source (as sql_literal writes them), the
    partner staged beside it apart: a literal only the receipt check could name would keep it in the Vault."""
    spec = ReconcilerSpec(
        function=FunctionSpec(
            secret_name=name, webhook_secret_name="w'h", previous_webhook_secret_name="p\\w", mode="at-least-once"
        ),
        delivery=DeliverySettings(receipts="required"),
    )
    source = render_reconcile(spec)
    assert vault_reads(source) == {"secret": name, "webhook_key": "w'h", "previous_webhook_key": "p\\w"}
    assert sql_literal(rotation_partner(name)) not in source
