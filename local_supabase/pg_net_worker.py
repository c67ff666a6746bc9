"""Python stand-in for pg_net's background worker.

Like the real worker it connects as the bootstrap superuser and, in each round, first deletes
responses older than ``pg_net.ttl`` and then takes up to ``batch_size`` requests with
``DELETE ... RETURNING`` (so it only ever sees committed rows: a webhook fires after its
transaction commits, never for a rolled-back one), sends them concurrently, records each
outcome in ``net._http_response`` (status, headers, body, or ``timed_out``/``error_msg``) and
never retries.

Like the real worker it outlives the database going away: pg_net's background worker is
restarted by the postmaster after a crash, and this thread reconnects with a short backoff. A
request whose DELETE committed but whose response could not be written (the database went
away while it was in flight) is lost, as it is when the server running pg_net crashes; callers
that need at-least-once delivery must detect the missing response themselves.
"""

from __future__ import annotations

import ctypes
import functools
import http.client
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

# What the real worker sends (curl with "User-Agent: pg_net/<version>").
USER_AGENT = "pg_net/0.20.4"
# pg_net.ttl's default; like upstream, the setting is an interval text.
DEFAULT_TTL = "6 hours"

# Upstream expires before it consumes, in the same round, at most batch_size rows a round.
_EXPIRE_RESPONSES = """
    WITH expired AS (
        SELECT ctid FROM net._http_response
        WHERE created < now() - coalesce(nullif(current_setting('pg_net.ttl', true), ''), %(default_ttl)s)::interval
        ORDER BY created
        LIMIT %(limit)s
    )
    DELETE FROM net._http_response AS response
    USING expired
    WHERE response.ctid = expired.ctid
"""
_TAKE_BATCH = """
    WITH batch AS (
        SELECT id FROM net.http_request_queue ORDER BY id LIMIT %(limit)s
    )
    DELETE FROM net.http_request_queue AS queue
    USING batch
    WHERE queue.id = batch.id
    RETURNING queue.id, queue.method, queue.url, queue.headers, queue.body,
              queue.timeout_milliseconds
"""
_RECORD_RESPONSE = """
    INSERT INTO net._http_response
        (id, status_code, content_type, headers, content, timed_out, error_msg)
    VALUES (%s, %s, %s, %s, %s, %s, %s)
"""

# libcurl error codes (curl/curl.h) for the failures urllib can tell apart.
_CURLE_UNSUPPORTED_PROTOCOL = 1
_CURLE_COULDNT_RESOLVE_HOST = 6
_CURLE_COULDNT_CONNECT = 7
_CURLE_WEIRD_SERVER_REPLY = 8
_CURLE_SSL_CONNECT_ERROR = 35
_CURLE_GOT_NOTHING = 52
_CURLE_SEND_ERROR = 55
_CURLE_RECV_ERROR = 56
_CURLE_PEER_FAILED_VERIFICATION = 60


@functools.cache
def _curl_strerror(code: int) -> str | None:
    """libcurl's own text for ``code`` (what pg_net stores), or None without libcurl.

    The stand-in's pg_net library links Debian's libcurl.so.4 anyway, so this is the same
    curl_easy_strerror upstream calls, not a copy of its strings.
    """
    try:
        strerror = ctypes.CDLL("libcurl.so.4").curl_easy_strerror
    except OSError:
        return None
    strerror.restype = ctypes.c_char_p
    strerror.argtypes = [ctypes.c_int]
    text = strerror(code)
    return text.decode() if text else None


@dataclass(frozen=True)
class _Request:
    id: int
    method: str
    url: str
    headers: dict[str, str] | None
    body: bytes | None
    timeout_milliseconds: int


@dataclass(frozen=True)
class _Outcome:
    request_id: int
    status_code: int | None = None
    content_type: str | None = None
    headers: dict[str, str] | None = None
    content: str | None = None
    timed_out: bool = False
    error_msg: str | None = None

    def row(self) -> tuple[Any, ...]:
        return (
            self.request_id,
            self.status_code,
            self.content_type,
            None if self.headers is None else Jsonb(self.headers),
            self.content,
            self.timed_out,
            self.error_msg,
        )


# Environment proxies must not capture loopback test traffic.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _send(request: _Request) -> _Outcome:
    headers = {name: str(value) for name, value in (request.headers or {}).items()}
    headers["User-Agent"] = USER_AGENT
    http_request = urllib.request.Request(request.url, data=request.body, headers=headers, method=request.method)
    started = time.monotonic()
    try:
        with _OPENER.open(http_request, timeout=request.timeout_milliseconds / 1000) as response:
            return _response_outcome(request.id, response.status, response.headers, response.read())
    except urllib.error.HTTPError as error:  # 4xx/5xx are responses, not failures
        return _response_outcome(request.id, error.code, error.headers, error.read())
    except TimeoutError:  # raised bare while waiting for or reading the response
        return _timeout_outcome(request, time.monotonic() - started, in_handshake=False)
    except urllib.error.URLError as error:  # raised while connecting or sending
        if isinstance(error.reason, TimeoutError):
            return _timeout_outcome(request, time.monotonic() - started, in_handshake=True)
        return _error_outcome(request.id, error.reason)
    except (OSError, ValueError, http.client.HTTPException) as error:
        return _error_outcome(request.id, error)


def _response_outcome(request_id: int, status: int, headers: Any, body: bytes) -> _Outcome:
    # Upstream stores every header of the final response as one jsonb object (a repeated
    # name keeps its last value), so e.g. Retry-After is readable by SQL.
    return _Outcome(
        request_id,
        status_code=status,
        content_type=headers.get("Content-Type"),
        headers=dict(headers.items()),
        content=body.decode("utf-8", errors="replace") or None,
    )


def _timeout_outcome(request: _Request, elapsed: float, *, in_handshake: bool) -> _Outcome:
    """``timed_out`` with upstream's message format.

    urllib does not report curl's phase timings, so the elapsed time is attributed wholly to
    the phase that timed out (no DNS time is measured: resolving counts as handshake).
    """
    total_ms = elapsed * 1000
    handshake_ms, http_ms = (total_ms, 0.0) if in_handshake else (0.0, total_ms)
    return _Outcome(
        request.id,
        timed_out=True,
        error_msg=(
            f"Timeout of {request.timeout_milliseconds} ms reached. Total time: {total_ms:f} ms "
            f"(DNS time: {0.0:f} ms, TCP/SSL handshake time: {handshake_ms:f} ms, "
            f"HTTP Request/Response time: {http_ms:f} ms)"
        ),
    )


def _curl_code(error: BaseException | str) -> int | None:
    """The libcurl error code pg_net would have got for this failure, when it is clear."""
    if isinstance(error, socket.gaierror):
        return _CURLE_COULDNT_RESOLVE_HOST
    if isinstance(error, ConnectionRefusedError):
        return _CURLE_COULDNT_CONNECT
    if isinstance(error, http.client.RemoteDisconnected):
        return _CURLE_GOT_NOTHING
    if isinstance(error, http.client.BadStatusLine):
        return _CURLE_WEIRD_SERVER_REPLY
    if isinstance(error, ssl.SSLCertVerificationError):
        return _CURLE_PEER_FAILED_VERIFICATION
    if isinstance(error, ssl.SSLError):
        return _CURLE_SSL_CONNECT_ERROR
    if isinstance(error, BrokenPipeError):
        return _CURLE_SEND_ERROR
    if isinstance(error, ConnectionResetError):
        return _CURLE_RECV_ERROR
    if isinstance(error, OSError) and error.errno in (101, 113):  # ENETUNREACH, EHOSTUNREACH
        return _CURLE_COULDNT_CONNECT
    if isinstance(error, ValueError | str) and "unknown url type" in str(error):
        return _CURLE_UNSUPPORTED_PROTOCOL
    return None


def _error_outcome(request_id: int, error: BaseException | str) -> _Outcome:
    code = _curl_code(error)
    text = _curl_strerror(code) if code is not None else None
    return _Outcome(request_id, error_msg=text or str(error))


class PgNetWorker:
    """Deliver ``net.http_request_queue`` from a background thread until stopped.

    Tolerates pg_net not being installed yet (it just waits), as the product installs pg_net
    itself. Once connected it survives the database restarting or crashing: on a connection
    error it reconnects after ``reconnect_delay`` seconds, doubling up to ``max_reconnect_delay``.
    Failing to connect the first time is an error (a wrong conninfo must not hang callers).
    Usable as a context manager.
    """

    def __init__(
        self,
        conninfo: str,
        *,
        batch_size: int = 200,
        poll_interval: float = 0.02,
        concurrency: int = 16,
        reconnect_delay: float = 0.05,
        max_reconnect_delay: float = 1.0,
    ) -> None:
        self._conninfo = conninfo
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._concurrency = concurrency
        self._reconnect_delay = reconnect_delay
        self._max_reconnect_delay = max_reconnect_delay
        self._stopping = threading.Event()
        self._busy = threading.Event()
        self._connected = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._reconnects = 0

    @property
    def reconnects(self) -> int:
        """How often the worker lost its database connection and connected again."""
        return self._reconnects

    def start(self) -> PgNetWorker:
        """Start the delivery thread (idempotent)."""
        if self._thread is None:
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, name="pg_net-worker", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the thread to finish its current batch and wait for it."""
        if self._thread is not None:
            self._stopping.set()
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> PgNetWorker:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def wait_until_connected(self, timeout: float = 10.0) -> None:
        """Block until the worker holds a database connection (like ``net.wait_until_running()``).

        Useful after a restart: requests queued before the worker reconnects are only sent
        once it has. Raises TimeoutError, or the worker thread's error if it died.
        """
        deadline = time.monotonic() + timeout
        while not self._connected.wait(min(self._poll_interval, max(deadline - time.monotonic(), 0))):
            self._raise_worker_error()
            if time.monotonic() > deadline:
                raise TimeoutError(f"pg_net worker not connected within {timeout} s")

    def drain(self, timeout: float = 10.0) -> None:
        """Wait until every committed request has been sent and its response recorded.

        Works across database restarts (it reconnects, and waits for the worker to). Raises
        TimeoutError if that takes longer than ``timeout`` seconds, and re-raises the worker
        thread's error if it died.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self._conninfo, autocommit=True) as conn:
                    while True:
                        self._raise_worker_error()
                        # Read the queue before the busy flag: a batch taken off the queue is
                        # still "busy" until its responses are written.
                        queued = conn.execute("SELECT count(*) FROM net.http_request_queue").fetchone()
                        if queued is not None and queued[0] == 0 and not self._busy.is_set():
                            return
                        if time.monotonic() > deadline:
                            raise TimeoutError(f"pg_net queue not drained within {timeout} s")
                        time.sleep(self._poll_interval)
            except psycopg.OperationalError:  # the database went away meanwhile; try again
                self._raise_worker_error()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"pg_net queue not drained within {timeout} s (database unreachable)") from None
                time.sleep(self._poll_interval)

    def _raise_worker_error(self) -> None:
        if self._error is not None:
            raise RuntimeError("pg_net worker thread died") from self._error
        if self._thread is None:
            raise RuntimeError("pg_net worker is not running")

    def _run(self) -> None:
        delay = self._reconnect_delay
        ever_connected = False
        try:
            with ThreadPoolExecutor(self._concurrency, thread_name_prefix="pg_net-http") as pool:
                while not self._stopping.is_set():
                    try:
                        with psycopg.connect(self._conninfo, application_name=USER_AGENT) as conn:
                            ever_connected = True
                            delay = self._reconnect_delay
                            self._connected.set()
                            while not self._stopping.is_set():
                                if self._deliver_round(conn, pool) < self._batch_size:
                                    self._stopping.wait(self._poll_interval)
                    except psycopg.OperationalError:
                        if not ever_connected:
                            raise
                        self._connected.clear()
                        self._reconnects += 1
                        self._stopping.wait(delay)
                        delay = min(delay * 2, self._max_reconnect_delay)
        except BaseException as error:  # surfaced to callers by drain()
            self._error = error
            raise
        finally:
            self._connected.clear()

    def _deliver_round(self, conn: psycopg.Connection, pool: ThreadPoolExecutor) -> int:
        """Expire old responses, take and send one batch; return how many requests it had."""
        self._busy.set()
        try:
            try:
                with conn.transaction():
                    conn.execute(_EXPIRE_RESPONSES, {"default_ttl": DEFAULT_TTL, "limit": self._batch_size})
                    rows = conn.execute(_TAKE_BATCH, {"limit": self._batch_size}).fetchall()
            except psycopg.errors.UndefinedTable:  # pg_net not installed (yet)
                return 0
            requests = [_Request(*row) for row in rows]
            outcomes = list(pool.map(_send, requests))
            if outcomes:
                with conn.transaction(), conn.cursor() as cursor:
                    cursor.executemany(_RECORD_RESPONSE, [outcome.row() for outcome in outcomes])
            return len(requests)
        finally:
            self._busy.clear()
