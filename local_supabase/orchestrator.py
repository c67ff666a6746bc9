"""Local HTTP receiver standing in for the Rust orchestrator.

It accepts a POST on any path and verifies it with ``webhook_verifier``, the way the
orchestrator must: HS256 signature, ``exp`` and ``iat``, the binding claims (``jti``, the body
hash), ``aud`` when configured, optional expected claims, plus an optional exact lifetime
(``exp - iat``). A repeated event id is acknowledged with 200 and recorded as a duplicate.
Every request is recorded, accepted or not, so
tests can assert on what the database actually sent. ``plan()`` scripts misbehaviour (a 500, a
429 with Retry-After, a 410, a reply slower than the caller's timeout) for the next requests.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from local_supabase.recording_server import RecordingServer
from webhook_verifier import KeyFile, KeySet, VerificationError, Verified, Verifier


@dataclass(frozen=True)
class PlannedResponse:
    """What to answer one request with instead of verifying it; `delay` seconds before answering."""

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass(frozen=True)
class Delivery:
    """One request as received. ``claims`` is set when accepted, ``rejection`` when not."""

    path: str
    headers: dict[str, str]
    raw_body: bytes
    body: Any
    status: int
    claims: dict[str, Any] | None
    rejection: str | None
    #: Accepted, but its event id had been accepted before (a retry or a replay): not processed again.
    duplicate: bool = False

    def header(self, name: str) -> str | None:
        """Case-insensitive header lookup (HTTP header names are case-insensitive)."""
        wanted = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == wanted), None)


class WebhookReceiver(RecordingServer[Delivery]):
    """Threaded HTTP server on 127.0.0.1 that verifies and records webhook deliveries."""

    thread_name = "webhook-receiver"

    def __init__(
        self,
        secret: str | None = None,
        *,
        expected_claims: Mapping[str, Any] | None = None,
        expected_ttl: int | None = None,
        port: int = 0,
        require_binding: bool = True,
        audience: str | None = None,
        keys: KeySet | KeyFile | None = None,
    ) -> None:
        """`secret` is the HS256 key; or `keys`, a key set (a `KeyFile` follows its file: a key rotation)."""
        self.verifier = Verifier(
            secret,
            audience=audience,
            expected_claims=dict(expected_claims or {}),
            require_binding=require_binding,
            keys=keys,
        )
        self._expected_ttl = expected_ttl
        self._plan: deque[PlannedResponse] = deque()
        super().__init__(port)

    @property
    def deliveries(self) -> list[Delivery]:
        """Snapshot of all deliveries so far, in arrival order."""
        return self.records()

    def plan(self, *responses: PlannedResponse) -> None:
        """Answer the next requests with these, in order; afterwards verify as usual."""
        with self._arrived:
            self._plan.extend(responses)

    def _next_planned(self) -> PlannedResponse | None:
        with self._arrived:
            return self._plan.popleft() if self._plan else None

    def verify(self, headers: Mapping[str, str], body: bytes) -> Verified:
        """What the orchestrator accepts (webhook_verifier), plus this receiver's exact lifetime check.

        Raises VerificationError saying why a request is refused.
        """
        verified = self.verifier.verify(headers, body)
        lifetime = verified.claims["exp"] - verified.claims["iat"]
        if self._expected_ttl is not None and lifetime != self._expected_ttl:
            raise VerificationError("claims", f"token lifetime is {lifetime} s, expected {self._expected_ttl} s")
        return verified

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw_body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                claims: dict[str, Any] | None = None
                rejection: str | None = None
                duplicate = False
                reply_headers: Mapping[str, str] = {}
                receipt_header = None
                try:
                    body = json.loads(raw_body)
                except ValueError:
                    body = None
                try:
                    verified = receiver.verify(dict(self.headers.items()), raw_body)
                    claims, duplicate, status = verified.claims, verified.duplicate, 200
                    receipt_header = verified.receipt_header()
                except VerificationError as error:
                    rejection = str(error)
                    # As the Rust crate answers: 413 for a body over the limit (the reconciler says why in status).
                    status = 413 if error.code == "payload_too_large" else 401
                if status == 200 and body is None:
                    rejection, status = "body is not JSON", 400
                planned = receiver._next_planned()
                if planned is not None:
                    time.sleep(planned.delay)
                    status, reply_headers = planned.status, planned.headers
                    rejection = rejection or (f"planned {status}" if status >= 300 else None)
                receiver._record(
                    Delivery(
                        path=self.path,
                        headers=dict(self.headers.items()),
                        raw_body=raw_body,
                        body=body,
                        status=status,
                        claims=claims,
                        rejection=rejection,
                        duplicate=duplicate,
                    )
                )
                reply = json.dumps({"ok": True, "duplicate": duplicate} if status == 200 else {"error": rejection})
                encoded = reply.encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(encoded)))
                    if receipt_header is not None and 200 <= status < 300:
                        self.send_header(*receipt_header)  # what both verifiers answer (README, "Delivery receipts")
                    for name, value in reply_headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(encoded)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the caller gave up waiting (a reply slower than its timeout); it was recorded

            def log_message(self, format: str, *args: Any) -> None:
                """Keep test output clean; deliveries are recorded instead."""

        return Handler
