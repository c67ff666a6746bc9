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
from http.server import BaseHTTPRequestHandler
from typing import Any

from local_supabase.recording_server import RecordingServer


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


class ScriptedServer(RecordingServer[Received]):
    """Threaded HTTP server answering every request with ``reply`` (changeable at any time).

    ``hold()`` makes requests wait (after being recorded) until ``release()``; use it to keep
    a request in flight while something else happens. Usable as a context manager.
    """

    thread_name = "scripted-server"

    def __init__(self, reply: Reply | None = None) -> None:
        self.reply = reply or Reply()
        self._released = threading.Event()
        self._released.set()
        super().__init__()

    @property
    def received(self) -> list[Received]:
        """Snapshot of the requests so far, in arrival order."""
        return self.records()

    def hold(self) -> None:
        """Hold every request's answer from now on until ``release()``."""
        self._released.clear()

    def release(self) -> None:
        """Let held (and later) requests be answered."""
        self._released.set()

    def stop(self) -> None:
        """Release held requests, stop serving and free the port."""
        self.release()
        super().stop()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                server._record(Received(self.command, self.path, dict(self.headers.items()), body))
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
