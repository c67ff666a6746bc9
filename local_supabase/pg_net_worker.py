"""Python stand-in for pg_net's background worker, with upstream's timing.

Like the real worker (pg_net 0.20.x, ``src/worker.c``) it connects as the bootstrap superuser
and sleeps until a transaction that queued a request commits. The commit wakes it only if it is
the first since the worker last reset the shared wake flag (the stand-in's C ``net.wake()``
flips the flag and sends this thread a datagram, see ``extensions/pg_net.c``). Awake, it runs
rounds: each round first deletes up to a batch of responses older than ``pg_net.ttl``, then
takes up to ``pg_net.batch_size`` (read every round, default 200) requests with
``DELETE ... RETURNING`` (so it only ever sees committed rows: a webhook fires after its
transaction commits, never for a rolled-back one), sends them concurrently, records each outcome
in ``net._http_response`` (status, headers, body, or ``timed_out``/``error_msg``) and never
retries. After every round it waits up to one second (``ROUND_WAIT``), cut short only by a wake,
and it goes back to sleep after a round that found nothing to send or expire. So a steady stream
of requests arrives in rounds about a second apart and a backlog drains at ``batch_size`` per
round, while a request after idle leaves within milliseconds.

Like the real worker it outlives the database going away: pg_net's background worker is
restarted by the postmaster after a crash, and this thread reconnects with a short backoff (and,
as a restarted worker does, runs a round at once). A request whose DELETE committed but whose
response could not be written (the database went away while it was in flight) is lost, as it is
when the server running pg_net crashes; callers that need at-least-once delivery must detect the
missing response themselves.
"""

from __future__ import annotations

import ctypes
import fcntl
import functools
import http.client
import logging
import mmap
import os
import select
import socket
import ssl
import struct
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

_log = logging.getLogger(__name__)

# What the real worker sends (curl with "User-Agent: pg_net/<version>").
USER_AGENT = "pg_net/0.20.4"
# pg_net.ttl's default; like upstream, the setting is an interval text.
DEFAULT_TTL = "6 hours"
# pg_net.batch_size: upstream's default and bounds (an int GUC from 0 to PG_INT16_MAX).
DEFAULT_BATCH_SIZE = 200
MAX_BATCH_SIZE = 32767
# Upstream's WORKER_WAIT_ONE_SECOND: how long the worker waits after each round while it has work.
ROUND_WAIT = 1.0
# Not upstream: how often an idle worker checks for requests whose wake never came. Upstream
# sleeps with no timeout; here a commit's wake is lost if the backend runs a pg_net.so without
# the wake (another checkout's stand-in, installed at the same path), and the worker then says so.
LOST_WAKE_CHECK = 10.0

# The wake flag file the stand-in's net.wake() maps (extensions/pg_net.c has the layout): in the
# data directory, uint32 should_wake, then (pid, port) slots of the workers it wakes.
WAKE_FILE_NAME = "pg_net_stand_in.wake"
WAKE_FILE_SIZE = 4096
WAKE_SLOTS = 16
_WORD = struct.Struct("=I")
_SLOT = struct.Struct("=II")

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


class _WakeFlag:
    """The worker's side of the wake signal: the shared flag in the data directory, and a latch.

    The latch is a UDP socket on loopback: the stand-in's ``net.wake()`` sends it a datagram at
    the commit that flips the flag from 0 to 1 (upstream's ``SetLatch``). Reading the socket
    empty is ``ResetLatch``. Registering the socket's port in the file is what makes commits
    reach this thread; several workers (one per test, say) may be registered at once.
    """

    def __init__(self) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.bind(("127.0.0.1", 0))
        self._socket.setblocking(False)
        self.port: int = self._socket.getsockname()[1]
        self._file: mmap.mmap | None = None
        self._fd: int | None = None
        self._slot: int | None = None

    def attach(self, data_directory: str) -> None:
        """Map the cluster's flag file (created as the server does, if missing) and register."""
        self.detach()
        path = os.path.join(data_directory, WAKE_FILE_NAME)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            directory = os.stat(data_directory)
            if os.geteuid() == 0 and os.fstat(fd).st_uid != directory.st_uid:
                os.fchown(fd, directory.st_uid, directory.st_gid)  # the server maps it too
            if os.fstat(fd).st_size < WAKE_FILE_SIZE:
                os.ftruncate(fd, WAKE_FILE_SIZE)
            mapped = mmap.mmap(fd, WAKE_FILE_SIZE)
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._file = fd, mapped
        fcntl.flock(fd, fcntl.LOCK_EX)  # among workers; the server only reads the slots
        try:
            free = None
            for slot in range(WAKE_SLOTS):
                pid, port = _SLOT.unpack_from(mapped, _WORD.size + slot * _SLOT.size)
                if port and not _alive(pid):  # left behind by a process that died
                    _SLOT.pack_into(mapped, _WORD.size + slot * _SLOT.size, 0, 0)
                    pid, port = 0, 0
                if port == 0 and free is None:
                    free = slot
            if free is None:
                raise RuntimeError(f"more than {WAKE_SLOTS} pg_net stand-in workers on one cluster")
            _SLOT.pack_into(mapped, _WORD.size + free * _SLOT.size, os.getpid(), self.port)
            self._slot = free
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def detach(self) -> None:
        """Unregister and unmap (the socket stays, for a later ``attach``)."""
        if self._file is not None and self._fd is not None:
            if self._slot is not None:
                offset = _WORD.size + self._slot * _SLOT.size
                fcntl.flock(self._fd, fcntl.LOCK_EX)
                try:
                    if _SLOT.unpack_from(self._file, offset) == (os.getpid(), self.port):
                        _SLOT.pack_into(self._file, offset, 0, 0)
                finally:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)
            self._file.close()
            os.close(self._fd)
        self._file = self._fd = self._slot = None

    def close(self) -> None:
        self.detach()
        self._socket.close()

    def take(self) -> bool:
        """Upstream's reset: if the flag is 1, make it 0 and say so.

        Backends only ever swap 0 to 1, so a plain read then write is that compare-and-swap.
        """
        if self._file is None or _WORD.unpack_from(self._file, 0)[0] != 1:
            return False
        _WORD.pack_into(self._file, 0, 0)
        return True

    def set_latch(self) -> None:
        """Wake the thread waiting in ``wait`` (as a signal handler's ``SetLatch`` does)."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.sendto(b"s", ("127.0.0.1", self.port))

    def wait(self, timeout: float | None, also: int | None = None) -> tuple[bool, bool]:
        """``WaitLatch`` then ``ResetLatch``: whether the latch was set, whether ``also`` (a
        descriptor) got readable (neither: the timeout passed)."""
        watched = [self._socket] if also is None else [self._socket, also]
        readable, _, _ = select.select(watched, [], [], timeout)
        while True:
            try:
                self._socket.recv(64)
            except (BlockingIOError, InterruptedError):
                break
        return self._socket in readable, also is not None and also in readable


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class PgNetWorker:
    """Deliver ``net.http_request_queue`` from a background thread until stopped.

    Tolerates pg_net not being installed yet (it just waits), as the product installs pg_net
    itself. Once connected it survives the database restarting or crashing: on a connection
    error it reconnects after ``reconnect_delay`` seconds, doubling up to ``max_reconnect_delay``.
    Failing to connect the first time is an error (a wrong conninfo must not hang callers).
    ``poll_interval`` is how often ``drain()`` and ``wait_until_connected()`` look; the worker
    itself never polls. Usable as a context manager.

    The server must be on this machine: the worker maps a file in its data directory.
    """

    def __init__(
        self,
        conninfo: str,
        *,
        poll_interval: float = 0.02,
        concurrency: int = DEFAULT_BATCH_SIZE,
        reconnect_delay: float = 0.05,
        max_reconnect_delay: float = 1.0,
    ) -> None:
        self._conninfo = conninfo
        self._poll_interval = poll_interval
        self._concurrency = concurrency
        self._reconnect_delay = reconnect_delay
        self._max_reconnect_delay = max_reconnect_delay
        self._stopping = threading.Event()
        self._busy = threading.Event()
        self._idle = threading.Event()
        self._connected = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._reconnects = 0
        self._wake: _WakeFlag | None = None
        self._batch_size = DEFAULT_BATCH_SIZE
        self.rounds = 0

    @property
    def idle(self) -> bool:
        """Whether the worker sleeps until a commit wakes it (upstream: waiting with no timeout)."""
        return self._idle.is_set()

    @property
    def reconnects(self) -> int:
        """How often the worker lost its database connection and connected again."""
        return self._reconnects

    def start(self) -> PgNetWorker:
        """Start the delivery thread (idempotent)."""
        if self._thread is None:
            self._stopping.clear()
            self._wake = _WakeFlag()
            self._thread = threading.Thread(target=self._run, name="pg_net-worker", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the thread to finish its current batch and wait for it."""
        if self._thread is not None:
            self._stopping.set()
            if self._wake is not None:
                self._wake.set_latch()
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

    def drain(self, timeout: float = 30.0) -> None:
        """Wait until every committed request has been sent and its response recorded.

        Only waits: the worker keeps its own pace (rounds up to a second apart while busy), so a
        backlog of n requests takes about n / batch_size seconds. Works across database restarts
        (it reconnects, and waits for the worker to). Raises TimeoutError if that takes longer
        than ``timeout`` seconds, and re-raises the worker thread's error if it died.
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
        wake = self._wake
        assert wake is not None
        delay = self._reconnect_delay
        ever_connected = False
        try:
            with ThreadPoolExecutor(self._concurrency, thread_name_prefix="pg_net-http") as pool:
                while not self._stopping.is_set():
                    try:
                        with psycopg.connect(self._conninfo, application_name=USER_AGENT) as conn:
                            with conn.transaction():
                                data_directory = conn.execute("SHOW data_directory").fetchone()
                            assert data_directory is not None
                            wake.attach(data_directory[0])
                            ever_connected = True
                            delay = self._reconnect_delay
                            self._connected.set()
                            self._serve(conn, pool, wake)
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
            wake.close()

    def _serve(self, conn: psycopg.Connection, pool: ThreadPoolExecutor, wake: _WakeFlag) -> None:
        """Upstream's loop (src/worker.c, pg_net_worker) until stopped or the connection fails."""
        # A (re)started upstream worker finds should_wake = 1 (set at server start and when a
        # worker exits), so it runs a busy period at once.
        restarted = True
        while not self._stopping.is_set():
            if not wake.take() and not restarted:  # the flag was 0
                # Idle: sleep until a commit sets the latch. Watch the connection too: upstream's
                # worker dies with its server and is restarted by the postmaster.
                self._idle.set()
                try:
                    latch_set, connection_readable = wake.wait(LOST_WAKE_CHECK, also=conn.fileno())
                    if connection_readable:
                        with conn.transaction():
                            conn.execute("SELECT 1")  # raises OperationalError if the server went away
                    elif not latch_set and self._wake_was_lost(conn):
                        restarted = True
                finally:
                    self._idle.clear()
                continue
            restarted = False
            while True:  # busy: a round, then up to a second's wait, until a round finds nothing
                consumed, expired = self._deliver_round(conn, pool)
                wake.wait(ROUND_WAIT)
                if self._stopping.is_set() or (consumed == 0 and expired == 0):
                    break

    def _wake_was_lost(self, conn: psycopg.Connection) -> bool:
        try:
            with conn.transaction():
                row = conn.execute("SELECT EXISTS (SELECT FROM net.http_request_queue)").fetchone()
        except psycopg.errors.UndefinedTable:
            return False
        if row is None or not row[0]:
            return False
        _log.warning(
            "pg_net stand-in worker: requests queued while it slept and no commit woke it; the "
            "server's pg_net.so lacks the stand-in's wake (installed by another checkout?)"
        )
        return True

    def _read_batch_size(self, conn: psycopg.Connection) -> int:
        """``pg_net.batch_size`` as the worker's session sees it (a reload applies between rounds).

        Upstream's GUC keeps its last valid value when a reload brings an invalid one.
        """
        row = conn.execute("SELECT current_setting('pg_net.batch_size', true)").fetchone()
        text = (row[0] if row else None) or ""
        if text == "":
            self._batch_size = DEFAULT_BATCH_SIZE
        else:
            try:
                value = int(text)
            except ValueError:
                return self._batch_size
            if 0 <= value <= MAX_BATCH_SIZE:
                self._batch_size = value
        return self._batch_size

    def _deliver_round(self, conn: psycopg.Connection, pool: ThreadPoolExecutor) -> tuple[int, int]:
        """Expire old responses, take and send one batch; return (requests taken, responses expired)."""
        self._busy.set()
        try:
            try:
                with conn.transaction():
                    batch_size = self._read_batch_size(conn)
                    limits = {"default_ttl": DEFAULT_TTL, "limit": batch_size}
                    expired = conn.execute(_EXPIRE_RESPONSES, limits).rowcount
                    rows = conn.execute(_TAKE_BATCH, {"limit": batch_size}).fetchall()
            except psycopg.errors.UndefinedTable:  # pg_net not installed (yet): back to sleep
                return 0, 0
            self.rounds += 1
            requests = [_Request(*row) for row in rows]
            outcomes = list(pool.map(_send, requests))
            if outcomes:
                with conn.transaction(), conn.cursor() as cursor:
                    cursor.executemany(_RECORD_RESPONSE, [outcome.row() for outcome in outcomes])
            return len(requests), max(expired, 0)
        finally:
            self._busy.clear()
