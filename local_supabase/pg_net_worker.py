"""Python stand-in for pg_net's background worker.

Like the real worker it connects as the bootstrap superuser, takes up to ``batch_size`` requests
per round with ``DELETE ... RETURNING`` (so it only ever sees committed rows: a webhook fires
after its transaction commits, never for a rolled-back one), sends them concurrently, records
each outcome in ``net._http_response`` and never retries.
"""

from __future__ import annotations

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
    try:
        with _OPENER.open(http_request, timeout=request.timeout_milliseconds / 1000) as response:
            return _response_outcome(request.id, response.status, response.headers, response.read())
    except urllib.error.HTTPError as error:  # 4xx/5xx are responses, not failures
        return _response_outcome(request.id, error.code, error.headers, error.read())
    except TimeoutError:
        return _timeout_outcome(request)
    except urllib.error.URLError as error:
        if isinstance(error.reason, TimeoutError):
            return _timeout_outcome(request)
        return _Outcome(request.id, error_msg=str(error.reason))
    except (OSError, ValueError) as error:
        return _Outcome(request.id, error_msg=str(error))


def _response_outcome(request_id: int, status: int, headers: Any, body: bytes) -> _Outcome:
    return _Outcome(
        request_id,
        status_code=status,
        content_type=headers.get("Content-Type"),
        headers=dict(headers.items()),
        content=body.decode("utf-8", errors="replace") or None,
    )


def _timeout_outcome(request: _Request) -> _Outcome:
    return _Outcome(
        request.id,
        timed_out=True,
        error_msg=f"Timeout of {request.timeout_milliseconds} ms reached",
    )


class PgNetWorker:
    """Deliver ``net.http_request_queue`` from a background thread until stopped.

    Tolerates pg_net not being installed yet (it just waits), as the product installs pg_net
    itself. Usable as a context manager.
    """

    def __init__(
        self,
        conninfo: str,
        *,
        batch_size: int = 200,
        poll_interval: float = 0.02,
        concurrency: int = 16,
    ) -> None:
        self._conninfo = conninfo
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._concurrency = concurrency
        self._stopping = threading.Event()
        self._busy = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

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

    def drain(self, timeout: float = 10.0) -> None:
        """Wait until every committed request has been sent and its response recorded.

        Raises TimeoutError if that takes longer than ``timeout`` seconds, and re-raises the
        worker thread's error if it died.
        """
        deadline = time.monotonic() + timeout
        with psycopg.connect(self._conninfo, autocommit=True) as conn:
            while True:
                self._raise_worker_error()
                # Read the queue before the busy flag: a batch taken off the queue is still
                # "busy" until its responses are written.
                queued = conn.execute("SELECT count(*) FROM net.http_request_queue").fetchone()
                if queued is not None and queued[0] == 0 and not self._busy.is_set():
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"pg_net queue not drained within {timeout} s")
                time.sleep(self._poll_interval)

    def _raise_worker_error(self) -> None:
        if self._error is not None:
            raise RuntimeError("pg_net worker thread died") from self._error
        if self._thread is None:
            raise RuntimeError("pg_net worker is not running")

    def _run(self) -> None:
        try:
            with (
                psycopg.connect(self._conninfo, application_name=USER_AGENT) as conn,
                ThreadPoolExecutor(self._concurrency, thread_name_prefix="pg_net-http") as pool,
            ):
                while not self._stopping.is_set():
                    if self._deliver_batch(conn, pool) < self._batch_size:
                        self._stopping.wait(self._poll_interval)
        except BaseException as error:  # surfaced to callers by drain()
            self._error = error
            raise

    def _deliver_batch(self, conn: psycopg.Connection, pool: ThreadPoolExecutor) -> int:
        self._busy.set()
        try:
            try:
                with conn.transaction():
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
