"""Alerts (issue 17 part 3): dead events summarised per interval, endpoint paused/resumed once per
transition, on a pg_notify channel and POSTed to an alert URL kept in Vault.

Real PostgreSQL, the stand-in pg_net worker sending real HTTP over loopback, a scripted server
standing in for a Slack incoming webhook. Rounds are run as the pg_cron loop runs them.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from alert_support import SLACK_PATH, alert_rows, keep_alert_url, retry_until_failed, run_rounds
from outbox_support import (
    TEST_DELIVERY,
    Pipeline,
    all_delivered,
    down_url,
    insert_rows,
    install_pipeline,
    reconcile,
    settle,
    statuses,
    tally,
)
from waiting import eventually

from local_supabase.orchestrator import WebhookReceiver
from local_supabase.scripted_server import Received, Reply, ScriptedServer
from secure_webhooks.delivery.alerts import ALERT_URL_SECRET, CHANNEL, MAX_ATTEMPTS, SEND_BATCH
from secure_webhooks.delivery.endpoints import endpoint_of
from webhook_deliveries.health import Limits, ReconcilerHealth, read_alerts, verdict

SECRET = "alerts-test-signing-secret-" + "0123456789abcdef" * 2
INTERVAL = 4
ALERTING = dataclasses.replace(
    TEST_DELIVERY, max_attempts=1, alert_interval_seconds=INTERVAL, alert_url_secret=ALERT_URL_SECRET
)


@pytest.fixture
def slack() -> Iterator[ScriptedServer]:
    with ScriptedServer(Reply(200, body=b"ok")) as server:
        yield server


@pytest.fixture
def alerting(cluster, slack) -> Iterator[Pipeline]:
    """The pipeline with alerts posted to `slack`, and the endpoints table empty."""
    provider, created = keep_alert_url(cluster, slack.url + SLACK_PATH)
    pipeline = install_pipeline(cluster, ALERTING)
    yield pipeline
    pipeline.remove()
    provider.delete(created.id, created.outs)


def alerts_of(server: ScriptedServer) -> list[dict[str, Any]]:
    return [json.loads(request.body) for request in server.received]


def dead_alert_window_over(conn: psycopg.Connection) -> bool:
    (over,) = conn.execute(
        "SELECT last_dead_alert_at <= now() - make_interval(secs => %s) FROM secure_webhooks.alert_state",
        (INTERVAL,),
    ).fetchone()
    return bool(over)


def test_dead_events_are_summarised_once_per_interval(alerting, worker, slack):
    down, _ = down_url()  # every attempt fails to connect, and one attempt is all they get
    alerting.add_trigger("resumes", down + "/ingest/resumes", name="resumes_hook")
    alerting.add_trigger("zip_archives", down + "/ingest/zips", name="zips_hook")
    with alerting.connect() as conn:
        insert_rows(conn, "resumes", 5)
        insert_rows(conn, "zip_archives", 2)
        run_rounds(conn, worker, lambda: len(slack.received) >= 1, "the first dead-events alert")
        (first,) = alerts_of(slack)
        assert first["type"] == "events.dead" and first["dead"] == 7, first
        per_webhook = {w["webhook"]: w["dead"] for w in first["webhooks"]}
        assert per_webhook == {"resumes_hook": 5, "zips_hook": 2}
        oldest = conn.execute(
            "SELECT id::text FROM secure_webhooks.events WHERE webhook = 'resumes_hook' ORDER BY created_at LIMIT 1"
        ).fetchone()[0]
        assert first["webhooks"][0]["oldest_event_id"] == oldest
        assert "7 webhook events went dead (resumes_hook 5, zips_hook 2)" in first["text"]
        assert "record" not in json.dumps(first) and "storage_path" not in json.dumps(first)  # never row data

        # More die within the interval: nothing until it has passed, then one summary of them.
        insert_rows(conn, "resumes", 3, prefix="later")
        run_rounds(conn, worker, lambda: statuses(conn).get("dead") == 10, "the next three dead")
        # Checked only while the interval since the first alert runs (the machine may be slow). Not by the window
        # of alert_state: the round in which the three died may itself have passed the interval, made the second
        # alert and opened a new window, which would look like a second alert within the first one's.
        (made, within) = conn.execute(
            "SELECT count(*), pg_catalog.now() < min(created_at) + make_interval(secs => %s)"
            " FROM secure_webhooks.alerts",
            (INTERVAL,),
        ).fetchone()
        if within:
            assert made == 1 and len(slack.received) == 1, (made, alerts_of(slack))
        run_rounds(conn, worker, lambda: len(slack.received) >= 2, "the second dead-events alert")
        second = alerts_of(slack)[1]
        assert second["dead"] == 3 and [(w["webhook"], w["dead"]) for w in second["webhooks"]] == [("resumes_hook", 3)]
        gap = conn.execute(
            "SELECT extract(epoch FROM max(created_at) - min(created_at)) FROM secure_webhooks.alerts"
        ).fetchone()[0]
        assert gap >= INTERVAL, gap

        # Nothing died since: a whole interval of rounds makes no alert.
        run_rounds(conn, worker, lambda: dead_alert_window_over(conn), "a quiet interval")
        run_rounds(conn, worker, lambda: True, "one more round")
        assert len(slack.received) == 2

        # A replayed event that dies again is a new death, reported again (the window is over: at once).
        conn.execute("SELECT secure_webhooks.replay_event(%s::uuid)", (oldest,))
        run_rounds(conn, worker, lambda: len(slack.received) >= 3, "the replayed event's death")
        third = alerts_of(slack)[2]
        assert third["dead"] == 1 and third["webhooks"][0]["oldest_event_id"] == oldest
        expected = [("events.dead", "sent", 1)] * 3
        run_rounds(conn, worker, lambda: alert_rows(conn) == expected, "every alert's outcome")
        print(f"dead alerts: {[(a['dead'], a['text']) for a in alerts_of(slack)]}")


def set_endpoint(conn: psycopg.Connection, endpoint: str, state: str, failures: int = 0) -> None:
    conn.execute(
        """
        INSERT INTO secure_webhooks.endpoints (endpoint, state, paused_since, next_probe_at, consecutive_failures)
        VALUES (%(e)s, %(s)s, CASE WHEN %(s)s = 'paused' THEN clock_timestamp() END,
                CASE WHEN %(s)s = 'paused' THEN clock_timestamp() + interval '1 minute' END, %(f)s)
        ON CONFLICT (endpoint) DO UPDATE
           SET state = excluded.state,
               paused_since = CASE WHEN excluded.state = 'open' THEN NULL
                                   WHEN endpoints.state = 'paused' THEN endpoints.paused_since
                                   ELSE excluded.paused_since END,
               next_probe_at = excluded.next_probe_at, consecutive_failures = excluded.consecutive_failures
        """,
        {"e": endpoint, "s": state, "f": failures},
    )


def kinds(received: list[Received]) -> list[tuple[str, str]]:
    return [(body["type"], body["endpoint"]) for body in (json.loads(r.body) for r in received)]


def test_endpoint_transitions_alert_once_each_and_on_the_channel(alerting, worker, slack):
    orchestrator, other = "https://orchestrator.example.com", "https://other.example.com"
    with alerting.connect() as conn, alerting.connect() as listener:
        listener.execute(f"LISTEN {CHANNEL}")
        set_endpoint(conn, other, "open")  # open from the start: nothing to say
        set_endpoint(conn, orchestrator, "paused", failures=5)
        run_rounds(conn, worker, lambda: len(slack.received) >= 1, "the paused alert")
        for _ in range(5):  # the same state over many rounds: no new alert
            run_rounds(conn, worker, lambda: True, "a round")
        assert kinds(slack.received) == [("endpoint.paused", orchestrator)]
        paused = json.loads(slack.received[0].body)
        assert paused["consecutive_failures"] == 5 and paused["next_probe_at"] and paused["paused_since"]
        assert paused["text"].startswith(f"secure-webhooks: endpoint {orchestrator} is paused after 5 consecutive")

        set_endpoint(conn, orchestrator, "paused", failures=9)  # still paused, the breaker counting on
        set_endpoint(conn, other, "open")
        for _ in range(3):
            run_rounds(conn, worker, lambda: True, "a round")
        assert len(slack.received) == 1

        set_endpoint(conn, orchestrator, "open")
        run_rounds(conn, worker, lambda: len(slack.received) >= 2, "the resumed alert")
        set_endpoint(conn, orchestrator, "paused", failures=5)  # a re-pause is a new transition
        run_rounds(conn, worker, lambda: len(slack.received) >= 3, "the second paused alert")
        for _ in range(5):
            run_rounds(conn, worker, lambda: True, "a round")
        assert kinds(slack.received) == [
            ("endpoint.paused", orchestrator),
            ("endpoint.resumed", orchestrator),
            ("endpoint.paused", orchestrator),
        ]
        resumed = json.loads(slack.received[1].body)
        assert resumed["paused_since"] == paused["paused_since"], resumed

        # The channel had each alert once, with the body that was posted.
        notified: list[dict[str, Any]] = []

        def all_notified() -> bool:
            notified.extend(json.loads(n.payload) for n in listener.notifies(timeout=0.5, stop_after=3))
            return len(notified) >= 3

        eventually(all_notified, "three notifications", timeout=30)
        posted = alerts_of(slack)
        assert sorted(n["alert_id"] for n in notified) == sorted(p["alert_id"] for p in posted)
        assert len({n["alert_id"] for n in notified}) == len(notified) == 3
        assert all(len(json.dumps(n)) < 8000 for n in notified)
        assert {n["alert_id"]: n for n in notified} == {p["alert_id"]: p for p in posted}
        assert [row[:2] for row in alert_rows(conn)] == [
            ("endpoint.paused", "sent"),
            ("endpoint.resumed", "sent"),
            ("endpoint.paused", "sent"),
        ]


def test_without_an_alert_url_alerts_reach_the_channel_only(cluster, worker, slack):
    pipeline = install_pipeline(cluster, dataclasses.replace(ALERTING, alert_url_secret=None))
    try:
        with pipeline.connect() as conn, pipeline.connect() as listener:
            listener.execute(f"LISTEN {CHANNEL}")
            set_endpoint(conn, "https://orchestrator.example.com", "paused", failures=3)
            run_rounds(conn, worker, lambda: bool(alert_rows(conn)), "the paused alert")
            notified: list[str] = []

            def one_notified() -> bool:
                notified.extend(n.payload for n in listener.notifies(timeout=0.5, stop_after=1))
                return bool(notified)

            eventually(one_notified, "the notification", timeout=30)
            assert json.loads(notified[0])["type"] == "endpoint.paused"
            assert alert_rows(conn) == [("endpoint.paused", "unsent", 0)]
            assert slack.received == []
    finally:
        pipeline.remove()


def test_a_failing_alert_url_never_holds_events_back_and_is_retried(cluster, worker):
    """The alert URL answers 500: events flow as before (counted in and out), the alert is retried with
    backoff, MAX_ATTEMPTS times in all, then `failed`, which `status --check` reports."""
    with ScriptedServer(Reply(500)) as broken, WebhookReceiver(SECRET) as orchestrator:
        provider, created = keep_alert_url(cluster, broken.url + SLACK_PATH)
        pipeline = install_pipeline(cluster, ALERTING)
        try:
            pipeline.add_trigger("resumes", orchestrator.url + "/ingest/resumes")
            with pipeline.connect() as conn:
                set_endpoint(conn, "https://orchestrator.example.com", "paused", failures=5)
                inserted = insert_rows(conn, "resumes", 20)
                settle(conn, worker, all_delivered(conn), timeout=60)
                counts = tally(inserted, orchestrator.deliveries)
                print(f"events with a failing alert URL: {counts}")
                assert counts.lost == 0 and counts.unexpected == 0 and counts.delivered == 20
                run_rounds(conn, worker, lambda: alert_rows(conn)[0][1:] == ("pending", 1), "the first failure")
                # The backoff counted from the attempt, not from this look at it (a busy machine may take a while
                # to get here): at least 10 s after it was sent, and no more than 10 s from now.
                (after_sent, wait, error) = conn.execute(
                    "SELECT extract(epoch FROM next_attempt_at - sent_at), extract(epoch FROM next_attempt_at - now()),"
                    " last_error FROM secure_webhooks.alerts"
                ).fetchone()
                assert after_sent >= 10 and wait <= 10 and error == "HTTP 500", (after_sent, wait, error)
                retry_until_failed(conn, worker)  # what is tested is the count, not the backoff's waits
                assert alert_rows(conn) == [("endpoint.paused", "failed", MAX_ATTEMPTS)]
                assert len(broken.received) == MAX_ATTEMPTS
                assert all(r.path == SLACK_PATH for r in broken.received)
                alerts = read_alerts(conn)
                assert alerts.failed == 1 and alerts.pending == 0 and "HTTP 500" in alerts.summary
                assert SLACK_PATH not in alerts.summary
                healthy, line = verdict(
                    [], ReconcilerHealth(readable=False), Limits(timedelta(1), timedelta(1)), [], alerts
                )
                assert not healthy and line == (
                    "CRITICAL: 1 alert(s) could not be posted (HTTP 500): check secure-webhooks:delivery.alertUrl"
                )
        finally:
            pipeline.remove()
            provider.delete(created.id, created.outs)


def test_the_alert_url_stays_in_vault(cluster, worker, slack):
    """Not in function sources, the alerts table, pg_net's responses or the provider's outputs but as
    the secret input; an unreachable URL's error names no part of it."""
    url = slack.url + SLACK_PATH
    provider, created = keep_alert_url(cluster, url)
    pipeline = install_pipeline(cluster, ALERTING)
    try:
        with pipeline.connect() as conn:
            set_endpoint(conn, "https://orchestrator.example.com", "paused")
            run_rounds(conn, worker, lambda: len(slack.received) >= 1, "the alert")
            sources = conn.execute(
                "SELECT string_agg(prosrc, ' ') FROM pg_proc WHERE pronamespace = 'secure_webhooks'::regnamespace"
            ).fetchone()[0]
            assert ALERT_URL_SECRET in sources and SLACK_PATH not in sources
            kept = conn.execute("SELECT json_agg(a)::text FROM secure_webhooks.alerts a").fetchone()[0]
            assert SLACK_PATH not in kept and "T0TEST" not in kept
            assert {k for k, v in created.outs.items() if isinstance(v, str) and SLACK_PATH in v} == {"secret"}

            # The stored URL stops working (a closed port): the error says so without the URL.
            slack.stop()
            conn.execute("UPDATE secure_webhooks.endpoints SET state = 'open', paused_since = NULL")
            run_rounds(conn, worker, lambda: alert_rows(conn)[-1][1:] == ("pending", 1), "the resumed alert's failure")
            (error,) = conn.execute("SELECT last_error FROM secure_webhooks.alerts ORDER BY id DESC LIMIT 1").fetchone()
            assert error and SLACK_PATH not in error and "T0TEST" not in error, error
    finally:
        pipeline.remove()
        provider.delete(created.id, created.outs)


def test_a_missing_alert_secret_fails_the_alert_not_the_round(cluster, worker):
    with WebhookReceiver(SECRET) as orchestrator:
        pipeline = install_pipeline(cluster, ALERTING)  # no Vault secret for the URL
        try:
            pipeline.add_trigger("resumes", orchestrator.url + "/ingest/resumes")
            with pipeline.connect() as conn:
                set_endpoint(conn, "https://orchestrator.example.com", "paused")
                inserted = insert_rows(conn, "resumes", 5)
                settle(conn, worker, all_delivered(conn), timeout=60)
                assert tally(inserted, orchestrator.deliveries).delivered == 5
                (error,) = conn.execute("SELECT last_error FROM secure_webhooks.alerts").fetchone()
                assert error == f"the alert URL is not in Vault (secret {ALERT_URL_SECRET}); run pulumi up"
        finally:
            pipeline.remove()


def test_an_alert_error_is_a_warning_of_the_round(cluster, worker):
    """Alerts that cannot run at all (here: their table locked away) leave the round delivering."""
    with WebhookReceiver(SECRET) as orchestrator:
        pipeline = install_pipeline(cluster, ALERTING)
        try:
            pipeline.add_trigger("resumes", orchestrator.url + "/ingest/resumes")
            with pipeline.connect() as conn, pipeline.connect() as blocker:
                blocker.execute("BEGIN")
                blocker.execute("LOCK TABLE secure_webhooks.alert_state IN ACCESS EXCLUSIVE MODE")
                warnings: list[str] = []
                conn.add_notice_handler(lambda notice: warnings.append(notice.message_primary or ""))
                inserted = insert_rows(conn, "resumes", 5)
                started = time.monotonic()
                settle(conn, worker, all_delivered(conn), timeout=60)
                blocker.execute("ROLLBACK")
                print(f"delivered with alerts locked out in {time.monotonic() - started:.1f} s")
                assert tally(inserted, orchestrator.deliveries).delivered == 5
                skipped = "secure_webhooks: alerts skipped this round (SQLSTATE 55P03)"
                assert any(w.startswith(skipped) for w in warnings), warnings
                # Alerts wait 1 s for a lock; the round's own 5 s applies again after them.
                with conn.transaction():
                    reconcile(conn)
                    assert conn.execute("SHOW lock_timeout").fetchone()[0] == "5s"
        finally:
            pipeline.remove()


def test_the_circuit_breakers_pause_and_resume_are_alerted_once_each(cluster, worker, slack):
    """The real breaker (delivery/endpoints.py): an orchestrator down pauses its endpoint, its return resumes it;
    one alert each, and every event inserted is delivered."""
    provider, created = keep_alert_url(cluster, slack.url + SLACK_PATH)
    breaker = dataclasses.replace(ALERTING, max_attempts=100, pause_after_failures=3, probe_seconds=1)
    pipeline = install_pipeline(cluster, breaker)
    try:
        url, port = down_url()
        pipeline.add_trigger("resumes", url + "/ingest/resumes")
        with pipeline.connect() as conn:
            inserted = insert_rows(conn, "resumes", 5)
            run_rounds(conn, worker, lambda: len(slack.received) >= 1, "the breaker's pause alert")
            with WebhookReceiver(SECRET, port=port) as back:
                settle(conn, worker, all_delivered(conn), timeout=120)
                run_rounds(conn, worker, lambda: len(slack.received) >= 2, "the resume alert")
                counts = tally(inserted, back.deliveries)
            for _ in range(5):
                run_rounds(conn, worker, lambda: True, "a round")
            print(f"breaker alerts: {kinds(slack.received)}; events: {counts}")
            assert kinds(slack.received) == [
                ("endpoint.paused", endpoint_of(url)),
                ("endpoint.resumed", endpoint_of(url)),
            ]
            assert counts.lost == 0 and counts.unexpected == 0
    finally:
        pipeline.remove()
        provider.delete(created.id, created.outs)


#: (state, attempts, made days ago, done days ago or None, kept by the purge): the retention counts from when an
#: alert was done; pending and sending alerts stay however old, tried or not.
PURGE_CASES = (
    ("sent", 1, 8, 8, False),
    ("sent", 1, 8, 6, True),  # made before the week, posted within it
    ("sent", 1, 6, 6, True),
    ("failed", MAX_ATTEMPTS, 8, 7.5, False),
    ("failed", MAX_ATTEMPTS, 8, 1, True),  # what `status --check` reports for a day
    ("unsent", 0, 8, None, False),  # made on the channel only: done when made
    ("unsent", 0, 6, None, True),
    ("unsent", 1, 8, 8, False),  # pending when the alert URL was removed
    ("pending", 0, 30, None, True),  # never tried
    ("pending", 3, 30, None, True),  # retrying
    ("sending", 2, 30, None, True),
)


def purge(conn: psycopg.Connection) -> set[int]:
    """What each pg_cron run does first; the alerts left."""
    conn.execute("SELECT secure_webhooks.purge_expired()")
    return {alert_id for (alert_id,) in conn.execute("SELECT id FROM secure_webhooks.alerts").fetchall()}


def test_the_purge_keeps_alerts_a_week_after_they_are_done_and_never_an_untried_one(alerting, worker, slack):
    """Rows are backdated in SQL rather than waited for. Alerts made 8 days ago while no round ran, then posted
    on the rounds' return, stay a week from then; after that, each case of PURGE_CASES."""
    with alerting.connect() as conn:
        # More endpoints paused at once than a round posts: the round makes every alert and posts SEND_BATCH.
        for n in range(SEND_BATCH + 5):
            set_endpoint(conn, f"https://orchestrator-{n}.example.com", "paused")
        reconcile(conn)
        made = Counter((state, attempts) for _, state, attempts in alert_rows(conn))
        assert made == {("sending", 1): SEND_BATCH, ("pending", 0): 5}
        conn.execute("UPDATE secure_webhooks.alerts SET created_at = now() - interval '8 days'")
        ids = purge(conn)
        assert len(ids) == SEND_BATCH + 5  # 8 days old, none of them done: all kept, the untried 5 too

        run_rounds(conn, worker, lambda: {row[1] for row in alert_rows(conn)} == {"sent"}, "every alert posted")
        assert len({json.loads(r.body)["alert_id"] for r in slack.received}) == SEND_BATCH + 5
        assert purge(conn) == ids  # made 8 days ago, done now: kept

        cases = dict(zip(sorted(ids), PURGE_CASES, strict=False))
        for alert_id, (state, attempts, made_days, done_days, _) in cases.items():
            conn.execute(
                "UPDATE secure_webhooks.alerts SET state = %s, attempts = %s,"
                " created_at = now() - make_interval(secs => %s * 86400),"
                " finished_at = now() - make_interval(secs => %s * 86400) WHERE id = %s",
                (state, attempts, made_days, done_days, alert_id),
            )
        gone = {alert_id for alert_id, case in cases.items() if not case[-1]}
        assert purge(conn) == ids - gone
        print(f"purge: {len(gone)} of {len(cases)} cases gone, {len(ids) - len(cases)} alerts posted just now kept")


def test_a_role_holding_the_old_advisory_keys_stalls_no_delivery_and_silences_no_alert(
    alerting, cluster, worker, slack
):
    """Rounds took turns sending, and making alerts, by advisory lock keys: any login role could hold them, and
    then every round sent nothing, or made no alert, for as long as it liked. The turns are now row locks only
    the outbox's owner may take; the squatter holds the old keys all along and can take neither row."""
    receiver_url, port = down_url()
    alerting.add_trigger("resumes", receiver_url + "/ingest/resumes", name="resumes_hook")
    with alerting.connect() as admin:
        admin.execute("DROP ROLE IF EXISTS squatter")
        admin.execute("CREATE ROLE squatter LOGIN PASSWORD 'squatter'")
    squatter = psycopg.connect(cluster.dsn("postgres"), user="squatter", password="squatter", autocommit=True)
    try:
        with alerting.connect() as admin:  # the key's oid is public in pg_class, even without the schema's USAGE
            (state_oid,) = admin.execute("SELECT 'secure_webhooks.alert_state'::regclass::oid::integer").fetchone()
        old_keys = "SELECT pg_try_advisory_lock(x'5EC017'::integer) AND pg_try_advisory_lock(%s, 0)"
        assert squatter.execute(old_keys, (state_oid,)).fetchone() == (True,)
        for row in ("secure_webhooks.pg_net_epoch", "secure_webhooks.alert_state"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                squatter.execute(f"SELECT FROM {row} FOR UPDATE SKIP LOCKED")
        with alerting.connect() as conn:
            insert_rows(conn, "resumes", 3)  # dead at their one attempt: the orchestrator is down
            run_rounds(conn, worker, lambda: len(slack.received) >= 1, "the dead-events alert")
            assert [alert["dead"] for alert in alerts_of(slack)] == [3]
            with WebhookReceiver(SECRET, port=port) as receiver:
                inserted = insert_rows(conn, "resumes", 5, prefix="delivered")
                run_rounds(conn, worker, lambda: len(receiver.deliveries) >= 5, "the deliveries")
                counts = tally(inserted, receiver.deliveries)
        print(f"\nsquatter on the old keys: {counts}; alerts posted {len(slack.received)}")
        assert (counts.delivered, counts.lost) == (5, 0)
    finally:
        squatter.close()
        with alerting.connect() as admin:
            admin.execute("DROP ROLE squatter")
