"""The part every local HTTP stand-in shares: serve on 127.0.0.1 in a thread, record what arrives, wait for it.

`WebhookReceiver` (the orchestrator, verifying tokens) and `ScriptedServer` (an
endpoint misbehaving on purpose) differ only in how they answer.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Generic, Self, TypeVar

from local_supabase.ports import HOST, release_port

Record = TypeVar("Record")


class _Server(ThreadingHTTPServer):
    # pg_net (and our worker) send many requests at once; the default backlog of 5
    # refuses connections under a burst, which would look like lost webhooks.
    request_queue_size = 256
    daemon_threads = True


class RecordingServer(Generic[Record]):
    """A threaded HTTP server that records one `Record` per request; subclasses build the handler."""

    thread_name = "http-server"

    def __init__(self, port: int = 0) -> None:
        self._records: list[Record] = []
        self._arrived = threading.Condition()
        release_port(port)  # a port held for this server (ports.hold_port) is bound the moment it is given up
        self._server = _Server((HOST, port), self._handler_class())
        self._thread: threading.Thread | None = None

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        raise NotImplementedError

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:41234`` (no trailing slash)."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def records(self) -> list[Record]:
        """Snapshot of what arrived so far, in arrival order."""
        with self._arrived:
            return list(self._records)

    def _record(self, record: Record) -> None:
        with self._arrived:
            self._records.append(record)
            self._arrived.notify_all()

    def start(self) -> Self:
        """Serve in a background thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._server.serve_forever, name=self.thread_name, daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def wait_for(self, count: int, timeout: float = 60.0) -> list[Record]:
        """Block until at least ``count`` requests arrived; return them all.

        The timeout only bounds how long a failure takes: a delivery through a pg_cron round and pg_net's next
        one on a loaded machine can take well over the 10 s this once was, and callers rarely pass their own.

        Raises TimeoutError (with what did arrive) when they do not come in time.
        """
        deadline = time.monotonic() + timeout
        with self._arrived:
            while len(self._records) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"expected {count} requests within {timeout} s, got {len(self._records)}: {self._records!r}"
                    )
                self._arrived.wait(remaining)
            return list(self._records)
