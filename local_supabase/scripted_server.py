"""A real HTTP server on 127.0.0.1 whose answers a test decides: status, headers, delay, hold.

``WebhookReceiver`` plays the orchestrator (it verifies tokens); this one plays an endpoint
misbehaving on purpose, so pg_net's worker can be exercised against 5xx with ``Retry-After``,
slow answers (timeouts) and answers held back while the database crashes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

HOST = "127.0.0.1"


@dataclass(frozen=True)
class Reply:
    """What the server answers: ``delay`` seconds of silence first (longer than a request's
    timeout makes pg_net record a timeout)."""

    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    delay: float = 0.0


@dataclass(frozen=True)
class Received:
    """One request as it arrived."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class _Server(ThreadingHTTPServer):
    request_queue_size = 256
    daemon_threads = True


class ScriptedServer:
    """Threaded HTTP server answering every request with ``reply`` (changeable at any time).

    ``hold()`` makes requests wait (after being recorded) until ``release()``; use it to keep
    a request in flight while something else happens. Usable as a context manager.
    """

    def __init__(self, reply: Reply | None = None) -> None:
        self.reply = reply or Reply()
        self._received: list[Received] = []
        self._arrived = threading.Condition()
        self._released = threading.Event()
        self._released.set()
        self._server = _Server((HOST, 0), self._handler_class())
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:41234`` (no trailing slash)."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def received(self) -> list[Received]:
        """Snapshot of the requests so far, in arrival order."""
        with self._arrived:
            return list(self._received)

    def hold(self) -> None:
        """Hold every request's answer from now on until ``release()``."""
        self._released.clear()

    def release(self) -> None:
        """Let held (and later) requests be answered."""
        self._released.set()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        """Block until at least ``count`` requests arrived; raise TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while len(self._received) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"expected {count} requests within {timeout} s, got {len(self._received)}")
                self._arrived.wait(remaining)
            return list(self._received)

    def start(self) -> ScriptedServer:
        """Serve in a background thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._server.serve_forever, name="scripted-server", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Release held requests, stop serving and free the port."""
        self.release()
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> ScriptedServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with server._arrived:
                    server._received.append(Received(self.command, self.path, dict(self.headers.items()), body))
                    server._arrived.notify_all()
                reply = server.reply
                server._released.wait()
                if reply.delay:
                    time.sleep(reply.delay)
                try:
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(reply.body)))
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(reply.body)
                except OSError:  # the client gave up (timed out) meanwhile
                    pass

            do_GET = do_POST = do_DELETE = _serve

            def log_message(self, format: str, *args: Any) -> None:
                """Keep test output clean."""

        return Handler
