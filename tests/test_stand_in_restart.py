"""The stand-in under crash and restart: what the at-least-once delivery feature must survive.

These tests stop and crash the server, so they use a cluster of their own, not the session's.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from local_supabase.cluster import LocalSupabase
from local_supabase.pg_net_worker import PgNetWorker
from local_supabase.scripted_server import ScriptedServer


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalSupabase]:
    with LocalSupabase.start(preinstall_pg_net=True) as own_cluster:
        yield own_cluster


@pytest.fixture
def worker(cluster: LocalSupabase) -> Iterator[PgNetWorker]:
    with PgNetWorker(cluster.admin_dsn, reconnect_delay=0.02, max_reconnect_delay=0.2) as own_worker:
        own_worker.wait_until_connected()
        yield own_worker


def _one(conn: psycopg.Connection, query: str, params: tuple[object, ...] = ()) -> object:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def _post(cluster: LocalSupabase, url: str) -> int:
    with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as conn:
        request_id = _one(conn, "SELECT net.http_post(%s, '{\"n\": 1}')", (url,))
    assert isinstance(request_id, int)
    return request_id


def _response(cluster: LocalSupabase, request_id: int) -> tuple[object, ...] | None:
    with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as conn:
        return conn.execute(
            "SELECT status_code, timed_out, error_msg FROM net._http_response WHERE id = %s", (request_id,)
        ).fetchone()


def test_crash_empties_unlogged_tables_and_clean_restart_keeps_them(cluster: LocalSupabase) -> None:
    port, data_dir = cluster.port, cluster.data_dir
    with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as conn:
        conn.execute("CREATE UNLOGGED TABLE public.scratch_unlogged (n int)")
        conn.execute("CREATE TABLE public.scratch_logged (n int)")
        conn.execute("INSERT INTO public.scratch_unlogged VALUES (1), (2)")
        conn.execute("INSERT INTO public.scratch_logged VALUES (1), (2)")
        # A queued pg_net request lives in an unlogged table too (no worker runs in this test).
        conn.execute("SELECT net.http_post('http://127.0.0.1:9/never')")

    cluster.restart()  # clean: fast shutdown (checkpoint), then start
    assert cluster.is_running and (cluster.port, cluster.data_dir) == (port, data_dir)
    with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as conn:
        assert _one(conn, "SELECT count(*) FROM public.scratch_unlogged") == 2
        assert _one(conn, "SELECT count(*) FROM public.scratch_logged") == 2
        assert _one(conn, "SELECT count(*) FROM net.http_request_queue") == 1

    cluster.crash()
    assert not cluster.is_running
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(cluster.dsn("postgres"), connect_timeout=2)
    cluster.restart()
    assert cluster.port == port
    with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as conn:
        assert _one(conn, "SELECT count(*) FROM public.scratch_unlogged") == 0
        assert _one(conn, "SELECT count(*) FROM public.scratch_logged") == 2
        assert _one(conn, "SELECT count(*) FROM net.http_request_queue") == 0
        # On PostgreSQL 15 the id sequence of an unlogged table is unlogged too: request ids restart.
        assert _one(conn, "SELECT net.http_post('http://127.0.0.1:9/never')") == 1
        conn.execute("DELETE FROM net.http_request_queue")
        conn.execute("DROP TABLE public.scratch_unlogged, public.scratch_logged")
    assert "database system was interrupted" in cluster.log_file.read_text()


def test_shutdown_keeps_the_cluster_for_restart(cluster: LocalSupabase) -> None:
    cluster.shutdown()
    assert not cluster.is_running and cluster.data_dir.is_dir()
    cluster.restart()
    with psycopg.connect(cluster.admin_dsn) as conn:
        assert _one(conn, "SELECT current_setting('shared_preload_libraries')") == "supabase_vault,pg_cron"


def test_worker_reconnects_after_restart_and_crash(
    cluster: LocalSupabase, worker: PgNetWorker, endpoint: ScriptedServer
) -> None:
    before = _post(cluster, endpoint.url + "/before")
    worker.drain()
    assert _response(cluster, before) == (200, False, None)

    cluster.restart()
    after_restart = _post(cluster, endpoint.url + "/after-restart")
    worker.drain()  # waits for the worker to reconnect and send it
    assert _response(cluster, after_restart) == (200, False, None)

    cluster.crash()
    cluster.restart()
    after_crash = _post(cluster, endpoint.url + "/after-crash")
    worker.drain()
    assert _response(cluster, after_crash) == (200, False, None)
    assert worker.reconnects >= 2
    assert [request.path for request in endpoint.received] == ["/before", "/after-restart", "/after-crash"]


def test_request_in_flight_during_a_crash_is_sent_but_its_response_lost(
    cluster: LocalSupabase, worker: PgNetWorker, endpoint: ScriptedServer
) -> None:
    """What a dispatcher must expect from pg_net: the queue row is gone, no response row ever comes."""
    endpoint.hold()
    _post(cluster, endpoint.url + "/in-flight")
    endpoint.wait_for(1)  # the worker has deleted the row and sent the request
    cluster.crash()
    cluster.restart()
    endpoint.release()  # the answer arrives when the database cannot take it any more
    later = _post(cluster, endpoint.url + "/later")
    worker.drain()
    with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as conn:
        # Only the later request has a response (ids restart after a crash, so compare rows).
        responses = conn.execute("SELECT id, status_code FROM net._http_response").fetchall()
        assert responses == [(later, 200)]
        assert _one(conn, "SELECT count(*) FROM net.http_request_queue") == 0
    assert [request.path for request in endpoint.received] == ["/in-flight", "/later"]


def test_a_crash_mid_batch_loses_the_whole_batchs_responses(cluster: LocalSupabase, endpoint: ScriptedServer) -> None:
    """Upstream takes a round's batch with DELETE ... RETURNING before sending it, and the queue
    is unlogged: after a crash with the batch in flight every request of it was sent and none
    has a response or is queued again, so a dispatcher that retries re-sends the whole batch
    (20 of 20 measured on real pg_net). All 20 at once here, as curl multi sends a batch."""
    with PgNetWorker(cluster.admin_dsn, concurrency=32, reconnect_delay=0.02, max_reconnect_delay=0.2) as worker:
        worker.wait_until_connected()
        endpoint.hold()
        with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as conn:
            conn.execute("SELECT net.http_post(%s || '/batch/' || n) FROM generate_series(1, 20) AS n", (endpoint.url,))
        endpoint.wait_for(20)  # one round took all 20 and has them in flight
        cluster.crash()
        cluster.restart()
        endpoint.release()
        later = _post(cluster, endpoint.url + "/later")
        worker.drain()
        with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as conn:
            assert conn.execute("SELECT id, status_code FROM net._http_response").fetchall() == [(later, 200)]
            assert _one(conn, "SELECT count(*) FROM net.http_request_queue") == 0
    paths = [request.path for request in endpoint.received]
    assert sorted(paths[:20]) == sorted(f"/batch/{n}" for n in range(1, 21)) and paths[20:] == ["/later"]


def test_restart_refuses_a_deleted_cluster() -> None:
    with LocalSupabase.start(preinstall_pgjwt=False, preinstall_pg_cron=False) as short_lived:
        pass
    with pytest.raises(RuntimeError, match="stopped and deleted"):
        short_lived.restart()
