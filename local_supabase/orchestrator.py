"""Local HTTP receiver standing in for the Rust orchestrator.

It accepts a POST on any path, demands ``Authorization: Bearer <HS256 JWT>`` and verifies it
the way the orchestrator must: signature, required ``exp`` and ``iat``, optional expected claims
and an optional exact lifetime (``exp - iat``). Every request is recorded, accepted or not, so
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

import jwt

from local_supabase.recording_server import RecordingServer


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

    def header(self, name: str) -> str | None:
        """Case-insensitive header lookup (HTTP header names are case-insensitive)."""
        wanted = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == wanted), None)


class WebhookReceiver(RecordingServer[Delivery]):
    """Threaded HTTP server on 127.0.0.1 that verifies and records webhook deliveries."""

    thread_name = "webhook-receiver"

    def __init__(
        self,
        secret: str,
        *,
        expected_claims: Mapping[str, Any] | None = None,
        expected_ttl: int | None = None,
        port: int = 0,
    ) -> None:
        self._secret = secret
        self._expected_claims = dict(expected_claims or {})
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

    def verify(self, authorization: str | None) -> dict[str, Any]:
        """Return the token's claims, or raise ValueError saying why it is rejected."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise ValueError("missing bearer token")
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=["HS256"],
                audience=self._expected_claims.get("aud"),
                options={"require": ["exp", "iat"]},
            )
        except jwt.PyJWTError as error:
            raise ValueError(f"invalid token: {error}") from error
        for name, expected in self._expected_claims.items():
            if claims.get(name) != expected:
                raise ValueError(f"claim {name!r} is {claims.get(name)!r}, expected {expected!r}")
        if self._expected_ttl is not None and claims["exp"] - claims["iat"] != self._expected_ttl:
            raise ValueError(f"token lifetime is {claims['exp'] - claims['iat']} s, expected {self._expected_ttl} s")
        return claims

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw_body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                claims: dict[str, Any] | None = None
                rejection: str | None = None
                reply_headers: Mapping[str, str] = {}
                try:
                    body = json.loads(raw_body)
                except ValueError:
                    body = None
                try:
                    claims = receiver.verify(self.headers.get("Authorization"))
                    status = 200
                except ValueError as error:
                    rejection = str(error)
                    status = 401
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
                    )
                )
                reply = json.dumps({"ok": True} if status == 200 else {"error": rejection})
                encoded = reply.encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(encoded)))
                    for name, value in reply_headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(encoded)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the caller gave up waiting (a reply slower than its timeout); it was recorded

            def log_message(self, format: str, *args: Any) -> None:
                """Keep test output clean; deliveries are recorded instead."""

        return Handler
