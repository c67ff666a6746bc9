"""Per-row order (`delivery.ordering: per-row`, issue 17 part 2) on real PostgreSQL.

The stand-in pg_net worker sends real HTTP over loopback to a receiver that verifies every token; the
reconciler's rounds are run the way the pg_cron loop runs them. Each case counts what went in and what
came out, and checks each row's versions in the order the receiver accepted them.
"""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest
from outbox_support import TEST_DELIVERY, Pipeline, install_pipeline, reconcile, statuses
from providers import configured, trigger_props
from waiting import eventually

from local_supabase.cluster import LocalSupabase
from local_supabase.orchestrator import PlannedResponse, WebhookReceiver
from local_supabase.pg_net_worker import PgNetWorker
from secure_webhooks import ConfigError, parse_settings
from secure_webhooks.component import SecureWebhooksArgs, function_spec, installation_inputs, ordered_webhooks
from secure_webhooks.configuration.config_errors import STACK_CONFIG
from secure_webhooks.delivery.ordering import read_waiting
from secure_webhooks.delivery.outbox_provider import OutboxProvider
from secure_webhooks.delivery.reconciler import ReconcilerSpec, Route, render_reconcile
from secure_webhooks.installation.preflight import preflight_failures
from secure_webhooks.installation.trigger_provider import WebhookTriggerProvider
from secure_webhooks.signing.trigger_function import FunctionSpec, render_body, render_outbox_body
from webhook_deliveries.__main__ import main as deliveries_main

SECRET = "order-test-signing-secret-" + "0123456789abcdef" * 2
TABLE = "versioned_rows"
#: Retries a second apart and attempts enough that a third of requests failing never makes one dead.
ORDERED = dataclasses.replace(
    TEST_DELIVERY, ordering="per-row", retry_initial_seconds=1, retry_multiplier=1, retry_max_seconds=1, max_attempts=40
)


class FlakyReceiver(WebhookReceiver):
    """Answers a random share of requests (a seeded sequence) with a 500 instead of verifying them."""

    def __init__(self, secret: str, failing: float, seed: int) -> None:
        self._random = random.Random(seed)
        self._failing = failing
        super().__init__(secret)

    def _next_planned(self) -> PlannedResponse | None:
        planned = super()._next_planned()
        with self._arrived:
            if planned is None and self._random.random() < self._failing:
                return PlannedResponse(500)
        return planned


@pytest.fixture(scope="module")
def cluster(cluster) -> LocalSupabase:
    """The module's cluster with a versioned table keyed by id, and one without a primary key."""
    with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE public.{TABLE} (id integer PRIMARY KEY, version integer NOT NULL)")
        conn.execute("CREATE TABLE public.keyless (id integer, version integer)")
    return cluster


def ordered_pipeline(cluster: LocalSupabase, url: str, **delivery) -> Pipeline:
    """The pipeline with per-row order and one webhook `versions` on INSERT and UPDATE, routed as `up` does."""
    settings = dataclasses.replace(ORDERED, **delivery)
    pipeline = install_pipeline(cluster, delivery=settings, ordering="per-row")
    provider = configured(WebhookTriggerProvider, cluster)
    for name, event in (("versions", "INSERT"), ("versions-update", "UPDATE")):
        pipeline.installed.append((provider, provider.create(trigger_props(TABLE, name, url, pipeline.spec, event))))
    pipeline.route(*(Route("public", TABLE, name, url) for name in ("versions", "versions-update")))
    return pipeline


@pytest.fixture
def pipelines(cluster) -> Iterator[list[Pipeline]]:
    pipelines: list[Pipeline] = []
    yield pipelines
    for pipeline in pipelines:
        pipeline.remove()
    with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as conn:
        conn.execute(f"TRUNCATE public.{TABLE}")


def accepted_versions(receiver: WebhookReceiver) -> dict[int, list[int]]:
    """Each row's versions in the order the receiver first answered their events with a 200 (a later
    200 for the same event id is a repeat, not news; a 500 the receiver planned is no delivery)."""
    versions: dict[int, list[int]] = {}
    seen: set[str] = set()
    for delivery in receiver.deliveries:
        event_id = delivery.header("webhook-id")
        if delivery.status == 200 and event_id not in seen:
            seen.add(event_id)
            record = delivery.body["record"] or delivery.body["old_record"]
            versions.setdefault(record["id"], []).append(record["version"])
    return versions


def round_trip(conn: psycopg.Connection, worker: PgNetWorker) -> None:
    reconcile(conn)
    worker.drain()


IN_FLIGHT = """
SELECT count(DISTINCT row_key), COALESCE(max(n), 0)
  FROM (SELECT row_key, count(*) OVER (PARTITION BY row_key) AS n
          FROM secure_webhooks.events WHERE state = 'sending') AS s
"""


def test_each_rows_updates_arrive_in_commit_order_while_a_third_of_requests_fail(cluster, worker, pipelines):
    """The issue's test: 10 rows, 200 updates, a receiver failing a random third of requests."""
    rows, updates = 10, 200
    with FlakyReceiver(SECRET, failing=1 / 3, seed=17) as receiver:
        pipelines.append(ordered_pipeline(cluster, receiver.url + "/ingest"))
        chooser = random.Random(1700)
        done_writing = threading.Event()

        def write() -> None:
            with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as writer:
                for row in range(rows):
                    writer.execute(f"INSERT INTO public.{TABLE} VALUES (%s, 0)", (row,))
                for _ in range(updates):
                    writer.execute(
                        f"UPDATE public.{TABLE} SET version = version + 1 WHERE id = %s", (chooser.randrange(rows),)
                    )
            done_writing.set()

        writer = threading.Thread(target=write)
        peak_rows, peak_per_row = 0, 0
        with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as conn:
            writer.start()
            # A stall fails, not a total: the deadline restarts whenever the events' statuses change, so this
            # machine's pace through 210 events and their retries does not count.
            seen, deadline = None, time.monotonic() + 60
            while not (done_writing.is_set() and set(statuses(conn)) <= {"delivered"}):
                assert done_writing.is_set() or writer.is_alive(), "the writer died"
                if (now_seen := statuses(conn)) != seen:
                    seen, deadline = now_seen, time.monotonic() + 60
                assert time.monotonic() < deadline, f"no progress for 60 s: {seen}"
                reconcile(conn)
                in_flight_rows, per_row = conn.execute(IN_FLIGHT).fetchone()
                peak_rows, peak_per_row = max(peak_rows, in_flight_rows), max(peak_per_row, per_row)
                worker.drain()
                time.sleep(0.05)  # pacing of the loop, as IDLE_SLEEP_SECONDS paces the cron loop; nothing waits on it
            writer.join()
            finals = dict(conn.execute(f"SELECT id, version FROM public.{TABLE}").fetchall())
            (events,) = conn.execute("SELECT count(*) FROM secure_webhooks.events").fetchone()
        failed = sum(1 for d in receiver.deliveries if d.status == 500)
    versions = accepted_versions(receiver)
    delivered = sum(len(v) for v in versions.values())
    print(
        f"per-row order: inserted {rows + updates} events, delivered {delivered}, requests {len(receiver.deliveries)}"
        f" ({failed} answered 500), peak rows in flight {peak_rows}, peak events of one row in flight {peak_per_row}"
    )
    assert events == rows + updates and delivered == rows + updates  # nothing lost, nothing twice
    for row in range(rows):
        assert versions[row] == list(range(finals[row] + 1)), (row, versions[row])  # complete, in commit order
    assert failed > 0
    assert peak_rows > 1 and peak_per_row == 1


def test_commit_order_wins_over_start_order(cluster, worker, pipelines):
    """T1 starts first but waits for T2's row lock, so T2 commits first: the receiver sees T2's change first."""
    with WebhookReceiver(SECRET) as receiver:
        pipelines.append(ordered_pipeline(cluster, receiver.url + "/ingest"))
        with (
            psycopg.connect(cluster.dsn("postgres"), autocommit=True) as conn,
            psycopg.connect(cluster.dsn("postgres")) as first,
            psycopg.connect(cluster.dsn("postgres")) as second,
        ):
            conn.execute(f"INSERT INTO public.{TABLE} VALUES (1, 0)")
            first.execute("SELECT pg_catalog.now()")  # T1 begins: its events' created_at is this moment
            second.execute(f"UPDATE public.{TABLE} SET version = 1 WHERE id = 1")  # T2 takes the row lock
            blocked = threading.Thread(
                target=lambda: (first.execute(f"UPDATE public.{TABLE} SET version = 2 WHERE id = 1"), first.commit())
            )
            blocked.start()
            eventually(
                lambda: (
                    conn.execute(
                        "SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE wait_event_type = 'Lock'"
                    ).fetchone()[0]
                    == 1
                ),
                "T1 waits for T2's row lock",
                timeout=60,
            )
            second.commit()
            blocked.join()
            by_start = [
                row[0]
                for row in conn.execute(
                    "SELECT (payload -> 'record' ->> 'version')::int FROM secure_webhooks.events "
                    "WHERE payload ->> 'type' = 'UPDATE' ORDER BY created_at"
                )
            ]
            assert by_start == [2, 1]  # start order is not commit order
            eventually(
                lambda: (round_trip(conn, worker), set(statuses(conn)) == {"delivered"})[1], "all delivered", 120
            )
    assert accepted_versions(receiver) == {1: [0, 1, 2]}


def blocked_by_a_dead_event(cluster: LocalSupabase, worker: PgNetWorker, receiver: WebhookReceiver, pipelines, on_dead):
    """Row 1 inserted (version 0) and updated twice; the insert's request gets a 410, so it is dead at once."""
    pipelines.append(ordered_pipeline(cluster, receiver.url + "/ingest", ordering_on_dead=on_dead))
    receiver.plan(PlannedResponse(410))
    conn = psycopg.connect(cluster.dsn("postgres"), autocommit=True)
    conn.execute(f"INSERT INTO public.{TABLE} VALUES (1, 0)")
    conn.execute(f"UPDATE public.{TABLE} SET version = 1 WHERE id = 1")
    conn.execute(f"UPDATE public.{TABLE} SET version = 2 WHERE id = 1")
    round_trip(conn, worker)
    assert len(receiver.deliveries) == 1  # one row: one event at a time
    eventually(lambda: (round_trip(conn, worker), statuses(conn).get("dead") == 1)[1], "the insert's event dead", 60)
    return conn


def event_state(conn: psycopg.Connection, version: int) -> tuple[str, int]:
    return conn.execute(
        "SELECT state, attempts FROM secure_webhooks.events WHERE (payload -> 'record' ->> 'version')::int = %s",
        (version,),
    ).fetchone()


def test_a_dead_event_blocks_its_rows_later_events_until_it_is_replayed(cluster, worker, pipelines, capsys):
    with (
        WebhookReceiver(SECRET) as receiver,
        blocked_by_a_dead_event(cluster, worker, receiver, pipelines, "block") as conn,
    ):
        round_trip(conn, worker)  # the updates are due: only the dead event holds them
        assert event_state(conn, 1) == ("pending", 0) and event_state(conn, 2) == ("pending", 0)
        assert len(receiver.deliveries) == 1
        assert read_waiting(conn) == {"versions-update": (2, 2)}
        capsys.readouterr()
        assert deliveries_main(["--dsn", cluster.dsn("postgres"), "status"]) == 0
        assert (
            "order: 2 events of versions-update wait behind an earlier event of their row, "
            "2 behind a dead one (replay or purge it)"
        ) in capsys.readouterr().out
        (event_id,) = conn.execute("SELECT event_id FROM secure_webhooks.deliveries WHERE status = 'dead'").fetchone()
        assert conn.execute("SELECT secure_webhooks.replay_event(%s)", (event_id,)).fetchone()[0]
        eventually(lambda: (round_trip(conn, worker), set(statuses(conn)) == {"delivered"})[1], "delivered", 60)
        assert read_waiting(conn) == {}
    assert accepted_versions(receiver) == {1: [0, 1, 2]}
    assert [d.status for d in receiver.deliveries] == [410, 200, 200, 200]


def test_skip_lets_a_rows_later_events_pass_a_dead_one(cluster, worker, pipelines):
    with (
        WebhookReceiver(SECRET) as receiver,
        blocked_by_a_dead_event(cluster, worker, receiver, pipelines, "skip") as conn,
    ):
        eventually(lambda: (round_trip(conn, worker), statuses(conn) == {"dead": 1, "delivered": 2})[1], "skip", 60)
        assert accepted_versions(receiver) == {1: [1, 2]}
        assert read_waiting(conn) == {}
        # A replay re-sends the old state after the newer ones: order is about first delivery.
        conn.execute("SELECT secure_webhooks.replay(statuses => ARRAY['dead'])")
        eventually(lambda: (round_trip(conn, worker), set(statuses(conn)) == {"delivered"})[1], "replayed", 60)
    assert accepted_versions(receiver) == {1: [1, 2, 0]}


def test_preview_refuses_per_row_order_on_a_table_without_a_primary_key(cluster):
    raw = {
        "orchestratorUrl": "https://orchestrator.example.com",
        "webhooks": [
            {"name": "keyed", "path": "/a", "table": TABLE},
            {"name": "no-key", "path": "/b", "table": "keyless"},
        ],
        "delivery": {"ordering": "per-row"},
    }
    settings = parse_settings(raw, key_names=STACK_CONFIG)
    # The Installation's inputs as the component renders them: its check is what preview runs.
    props = installation_inputs(
        SecureWebhooksArgs(settings=settings, owner="secure-webhooks/test"), function_spec(settings)
    )
    with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as conn, conn.cursor() as cur:
        reasons = [f.reason for f in preflight_failures(cur, props) if f.property == "ordered_webhooks"]
        assert reasons == [
            "secure-webhooks:webhooks[1] (name 'no-key'): table public.keyless has no primary key, and "
            "secure-webhooks:delivery.ordering is 'per-row' (a row's events are ordered by its primary key); "
            "add a primary key to the table, or set delivery.ordering to 'none'"
        ]
        # Without per-row order nothing is checked, and the props carry nothing new.
        unordered = parse_settings({**raw, "delivery": {}}, key_names=STACK_CONFIG)
        assert ordered_webhooks(unordered) == []


@pytest.mark.parametrize(
    ("delivery", "key", "says"),
    [
        ({"ordering": "fifo"}, "secure-webhooks:delivery.ordering", "must be one of ['none', 'per-row']"),
        ({"ordering": "per-row", "mode": "direct"}, "secure-webhooks:delivery.ordering", "needs mode 'at-least-once'"),
        ({"orderingOnDead": "drop"}, "secure-webhooks:delivery.orderingOnDead", "must be one of ['block', 'skip']"),
    ],
)
def test_bad_ordering_config_names_its_key(delivery, key, says):
    with pytest.raises(ConfigError) as info:
        parse_settings(
            {"orchestratorUrl": "https://orchestrator.example.com", "delivery": delivery}, key_names=STACK_CONFIG
        )
    assert info.value.key == key and says in info.value.problem


def test_an_outbox_from_before_ordering_is_upgraded_in_place(cluster, pipelines):
    """The columns, sequence and index are added to an outbox that lacks them, its waiting events kept."""
    pipeline = install_pipeline(cluster)
    pipelines.append(pipeline)
    pipeline.add_trigger(TABLE, "http://127.0.0.1:9/ingest", "versions")
    with pipeline.connect() as conn:
        conn.execute("DROP INDEX secure_webhooks.events_row_order")
        conn.execute("DROP SEQUENCE secure_webhooks.event_seq")
        conn.execute("ALTER TABLE secure_webhooks.events DROP COLUMN seq, DROP COLUMN row_key")
        conn.execute(f"INSERT INTO public.{TABLE} VALUES (1, 0)")
        provider, created = next(item for item in pipeline.installed if isinstance(item[0], OutboxProvider))
        provider.update(created.id, {**created.outs, "script_sha256": "the release before"}, created.outs)
        assert statuses(conn) == {"pending": 1}
        assert conn.execute("SELECT seq, row_key FROM secure_webhooks.events").fetchone() == (
            None,
            None,
        )  # recorded before: not ordered
        assert conn.execute("SELECT to_regclass('secure_webhooks.events_row_order') IS NOT NULL").fetchone()[0]
        assert conn.execute("SELECT to_regclass('secure_webhooks.event_seq') IS NOT NULL").fetchone()[0]


def test_ordering_none_leaves_the_trigger_and_the_round_as_they_were():
    none = FunctionSpec(mode="at-least-once")
    assert render_body(none) == render_outbox_body() and "event_seq" not in render_body(none)
    assert "event_seq" in render_body(dataclasses.replace(none, ordering="per-row"))
    routes = (Route("public", TABLE, "versions", "http://x"),)
    unordered = render_reconcile(ReconcilerSpec(function=none, delivery=TEST_DELIVERY, routes=routes))
    assert "row_key" not in unordered
    ordered = dataclasses.replace(TEST_DELIVERY, ordering="per-row")
    assert "row_key" in render_reconcile(ReconcilerSpec(function=none, delivery=ordered, routes=routes))


def test_every_event_of_a_row_carries_its_key_in_commit_order(cluster, pipelines):
    """INSERT, UPDATE and DELETE of one row share its key (DELETE from the old row), on a plain table and on a
    partitioned one (whose triggers fire per row on the partition and name the configured table)."""
    with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS public.regional (id integer, region text, version integer, "
            "PRIMARY KEY (region, id)) PARTITION BY LIST (region)"
        )
        conn.execute("CREATE TABLE IF NOT EXISTS public.regional_eu PARTITION OF public.regional FOR VALUES IN ('eu')")
    pipeline = ordered_pipeline(cluster, "http://127.0.0.1:9/ingest")
    pipelines.append(pipeline)
    provider = configured(WebhookTriggerProvider, cluster)
    for table in (TABLE, "regional"):
        props = trigger_props(table, f"{table}-delete", "http://127.0.0.1:9/ingest", pipeline.spec, "DELETE")
        pipeline.installed.append((provider, provider.create(props)))
    for name, event in (("regional", "INSERT"), ("regional-update", "UPDATE")):
        props = trigger_props("regional", name, "http://127.0.0.1:9/ingest", pipeline.spec, event)
        pipeline.installed.append((provider, provider.create(props)))
    with pipeline.connect() as conn:
        for table, values in ((TABLE, "(7, 0)"), ("regional", "(7, 'eu', 0)")):
            conn.execute(f"INSERT INTO public.{table} VALUES {values}")
            conn.execute(f"UPDATE public.{table} SET version = 1 WHERE id = 7")
            conn.execute(f"DELETE FROM public.{table} WHERE id = 7")
        keys = conn.execute(
            "SELECT payload ->> 'table', array_agg(payload ->> 'type' ORDER BY seq), array_agg(DISTINCT row_key)"
            " FROM secure_webhooks.events GROUP BY 1 ORDER BY 1"
        ).fetchall()
    assert keys == [
        ("regional", ["INSERT", "UPDATE", "DELETE"], ['["public", "regional", {"id": 7, "region": "eu"}]']),
        (TABLE, ["INSERT", "UPDATE", "DELETE"], [f'["public", "{TABLE}", {{"id": 7}}]']),
    ]
