"""What the stand-in's pg_net worker records, checked against upstream pg_net 0.20.4's behaviour.

Real HTTP on 127.0.0.1 (local_supabase.scripted_server), the session's cluster and worker.
"""

from __future__ import annotations

import re
import time

import psycopg
from waiting import eventually

from local_supabase.pg_net_worker import PgNetWorker
from local_supabase.scripted_server import Reply, ScriptedServer

# Upstream's format (src/errors.c, detailed_timeout_strerror); the stand-in's timings are its own.
TIMEOUT_MESSAGE = re.compile(
    r"Timeout of 200 ms reached\. Total time: \d+\.\d{6} ms \(DNS time: \d+\.\d{6} ms, "
    r"TCP/SSL handshake time: \d+\.\d{6} ms, HTTP Request/Response time: \d+\.\d{6} ms\)"
)


def _post(conn: psycopg.Connection, url: str, timeout_ms: int = 5000) -> int:
    row = conn.execute("SELECT net.http_post(%s, timeout_milliseconds := %s)", (url, timeout_ms)).fetchone()
    assert row is not None
    return row[0]


def _response(conn: psycopg.Connection, request_id: int) -> tuple[object, ...]:
    row = conn.execute(
        "SELECT status_code, timed_out, error_msg, headers, content_type, content "
        "FROM net._http_response WHERE id = %s",
        (request_id,),
    ).fetchone()
    assert row is not None, f"no response for request {request_id}"
    return row


def test_response_headers_are_recorded_so_retry_after_is_readable(
    postgres_conn: psycopg.Connection, pg_net_worker: PgNetWorker, pg_net: None, endpoint: ScriptedServer
) -> None:
    endpoint.reply = Reply(503, {"Retry-After": "120", "Content-Type": "text/plain"}, b"busy")
    request_id = _post(postgres_conn, endpoint.url + "/busy")
    pg_net_worker.drain()
    status, timed_out, error, headers, content_type, content = _response(postgres_conn, request_id)
    assert (status, timed_out, error, content_type, content) == (503, False, None, "text/plain", "busy")
    assert headers["Retry-After"] == "120"
    row = postgres_conn.execute("SELECT headers->>'Retry-After' FROM net._http_response WHERE id = %s", (request_id,))
    assert row.fetchone() == ("120",)


def test_timeouts_are_recorded_like_pg_net(
    postgres_conn: psycopg.Connection, pg_net_worker: PgNetWorker, pg_net: None, endpoint: ScriptedServer
) -> None:
    endpoint.reply = Reply(200, delay=1.0)
    request_id = _post(postgres_conn, endpoint.url + "/slow", timeout_ms=200)
    pg_net_worker.drain()
    status, timed_out, error, headers, _, content = _response(postgres_conn, request_id)
    assert (status, timed_out, headers, content) == (None, True, None, None)
    assert isinstance(error, str) and TIMEOUT_MESSAGE.fullmatch(error), error


def test_connection_errors_are_recorded_with_curls_text(
    postgres_conn: psycopg.Connection, pg_net_worker: PgNetWorker, pg_net: None
) -> None:
    request_id = _post(postgres_conn, "http://127.0.0.1:9/closed")
    pg_net_worker.drain()
    assert _response(postgres_conn, request_id)[:4] == (None, False, "Couldn't connect to server", None)


def test_responses_older_than_pg_net_ttl_are_expired(
    admin_conn: psycopg.Connection,
    postgres_conn: psycopg.Connection,
    pg_net_worker: PgNetWorker,
    pg_net: None,
    endpoint: ScriptedServer,
) -> None:
    def ages_left() -> list[int]:
        return [row[0] for row in admin_conn.execute("SELECT id FROM net._http_response WHERE id < 0 ORDER BY id")]

    # PostgreSQL 15's ALTER SYSTEM only takes parameters this session knows; pg_net (not
    # preloaded here) is unknown until a SET creates its placeholder.
    admin_conn.execute("SET pg_net.ttl = '6 hours'")
    # Asleep, the worker runs its next round for the request below. Still busy from an earlier test's requests, it
    # could expire in a round begun before the insert and take the request in that same round.
    eventually(lambda: pg_net_worker.idle, "the session's worker asleep", 30)
    # Negative ids cannot collide with the queue's; -7 is 7 hours old, and so on.
    admin_conn.execute(
        "INSERT INTO net._http_response (id, status_code, created) "
        "SELECT -h, 200, now() - make_interval(hours => h) FROM unnest(ARRAY[2, 5, 7]) AS h"
    )
    try:
        # The round that takes this request started after the insert, and expires before it takes.
        _post(postgres_conn, endpoint.url + "/tick")
        pg_net_worker.drain()
        assert ages_left() == [-5, -2]  # default pg_net.ttl: 6 hours

        admin_conn.execute("ALTER SYSTEM SET pg_net.ttl = '1 hour'")
        admin_conn.execute("SELECT pg_reload_conf()")
        # As upstream, the worker expires only while awake (a reload does not start a round):
        # the next request wakes it, and its session applies the reload between statements.
        deadline = time.monotonic() + 60
        while ages_left() != [] and time.monotonic() < deadline:
            _post(postgres_conn, endpoint.url + "/tick")
            pg_net_worker.drain()
        assert ages_left() == []
    finally:
        admin_conn.execute("ALTER SYSTEM RESET pg_net.ttl")
        admin_conn.execute("SELECT pg_reload_conf()")
        admin_conn.execute("DELETE FROM net._http_response WHERE id < 0")
