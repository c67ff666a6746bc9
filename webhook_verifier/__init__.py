"""Verify a webhook request the database signed, the way the orchestrator must.

Each token is bound to the one request it was minted for: `body_sha256` is
the SHA-256 (base64url, no padding) of the exact body bytes, `jti` is the
event id (the `webhook-id` header, the same on every retry of one event), and
`aud`, when the deployment turned it on, is the exact URL posted to. So a
token read from pg_net's world-readable queue is worth nothing elsewhere: any
other body fails the hash, any other endpoint the audience, and the same body
again is a duplicate of an event the orchestrator already has.

A duplicate is not an attack to refuse but a retry to acknowledge: the
database retries until it sees a 2xx, with a fresh token and the same `jti`,
so `verify` reports it (`Verified.duplicate`) and the orchestrator should
answer 2xx without processing the event again.

The Rust crate in verifiers/rust checks the same things; both run the shared
vectors the test suite makes from real requests (tests/test_verifier_vectors.py).
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import hmac
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt

#: The claims that bind a token to its request.
BINDING_CLAIMS = ("jti", "body_sha256")
#: Standard Webhooks: reference libraries refuse timestamps more than 5 minutes off.
WEBHOOK_TOLERANCE_SECONDS = 300


class VerificationError(ValueError):
    """The request is refused; `reason` is a stable code (e.g. "body_hash"), str() says why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Verified:
    claims: dict[str, Any]
    #: The event id (`jti`), or None for a token minted without binding.
    event_id: str | None
    #: This event id was accepted before within its token's lifetime: acknowledge, do not process.
    duplicate: bool = False


def body_sha256(body: bytes) -> str:
    """The `body_sha256` claim for these exact bytes."""
    return base64.urlsafe_b64encode(hashlib.sha256(body).digest()).rstrip(b"=").decode()


@dataclass
class SeenEvents:
    """Event ids accepted, each until the latest `exp` (+ leeway) of its tokens; one process only.

    Every retry of one event carries the same `jti` in a fresh token with a later `exp`, so an id
    is remembered until the latest of them expires, not only the first: otherwise a retry token
    (stolen from pg_net's queue, say) would be accepted as a new event once the first token had
    expired, while it is still valid itself. Expiry is exclusive (gone once `now >= expires_at`),
    as in the Rust crate's store. Expired ids leave through a heap ordered by expiry, so each
    request costs O(log n), not a scan; replicas need a shared store instead.
    """

    _expiry: dict[str, float] = field(default_factory=dict)
    _by_expiry: list[tuple[float, str]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def first_time(self, event_id: str, expires_at: float, now: float) -> bool:
        """Remember `event_id` until `max(recorded, expires_at)`; False when it was already there."""
        with self._lock:
            while self._by_expiry and self._by_expiry[0][0] <= now:
                _, stale = heapq.heappop(self._by_expiry)
                # The heap keeps superseded (earlier) expiries of extended ids: skip those.
                if self._expiry.get(stale, now + 1) <= now:
                    del self._expiry[stale]
            recorded = self._expiry.get(event_id)
            if recorded is None and expires_at <= now:
                return True  # already expired: nothing to remember
            if recorded is None or expires_at > recorded:
                self._expiry[event_id] = expires_at
                heapq.heappush(self._by_expiry, (expires_at, event_id))
            return recorded is None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    wanted = name.lower()
    return next((value for key, value in headers.items() if key.lower() == wanted), None)


@dataclass
class Verifier:
    """Checks, in order: HS256 signature, `exp`/`iat` (with `leeway`), `aud`, expected claims,
    the body hash, Standard Webhooks' signature when a `whsec_` secret is set, then duplicates."""

    secret: str
    leeway: int = 0
    #: The exact URL tokens must name in `aud`; None: tokens must not carry `aud`.
    audience: str | None = None
    expected_claims: Mapping[str, Any] = field(default_factory=dict)
    #: Refuse tokens without `jti` and `body_sha256` (every token the database mints has them).
    require_binding: bool = True
    webhook_secret: str | None = None
    clock: Callable[[], float] = time.time
    seen: SeenEvents = field(default_factory=SeenEvents)

    def verify(self, headers: Mapping[str, str], body: bytes) -> Verified:
        """The verified claims, or VerificationError; `body` is the raw request body, never re-serialised."""
        now = self.clock()
        claims = self._claims(headers, now)
        for name, expected in self.expected_claims.items():
            if claims.get(name) != expected:
                raise VerificationError("claims", f"claim {name!r} is {claims.get(name)!r}, expected {expected!r}")
        if "body_sha256" in claims and not hmac.compare_digest(str(claims["body_sha256"]), body_sha256(body)):
            raise VerificationError("body_hash", "the body is not the one the token was minted for")
        event_id = claims.get("jti")
        if event_id is not None and _header(headers, "webhook-id") not in (None, event_id):
            raise VerificationError("claims", "webhook-id does not match the token's jti")
        if self.webhook_secret is not None:
            self._check_webhook_signature(headers, body, now)
        if event_id is None:
            return Verified(claims, None)
        first = self.seen.first_time(str(event_id), float(claims["exp"]) + self.leeway, now)
        return Verified(claims, str(event_id), duplicate=not first)

    def _claims(self, headers: Mapping[str, str], now: float) -> dict[str, Any]:
        scheme, _, token = (_header(headers, "Authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise VerificationError("missing_token", "missing bearer token")
        try:
            algorithm = jwt.get_unverified_header(token).get("alg")
        except jwt.PyJWTError as error:
            raise VerificationError("malformed", f"invalid token: {error}") from None
        if algorithm != "HS256":
            raise VerificationError("algorithm", f"algorithm {algorithm!r} is refused; only HS256")
        required = ["exp", "iat", *(BINDING_CLAIMS if self.require_binding else ())]
        try:
            # Time is checked below against this verifier's clock, so shared vectors verify at their own "now".
            claims = jwt.decode(
                token,
                self.secret,
                algorithms=["HS256"],
                audience=self.audience,
                options={"require": required, "verify_exp": False, "verify_iat": False, "verify_nbf": False},
            )
        except jwt.InvalidAudienceError as error:
            raise VerificationError("audience", f"invalid token: {error}") from None
        except jwt.MissingRequiredClaimError as error:
            raise VerificationError("claims", f"invalid token: {error}") from None
        except jwt.InvalidSignatureError as error:
            raise VerificationError("signature", f"invalid token: {error}") from None
        except jwt.PyJWTError as error:
            raise VerificationError("malformed", f"invalid token: {error}") from None
        if not isinstance(claims["exp"], int) or not isinstance(claims["iat"], int):
            raise VerificationError("claims", "exp and iat must be integers")
        if claims["exp"] + self.leeway < now:
            raise VerificationError("expired", "the token has expired")
        if claims["iat"] - self.leeway > now:
            raise VerificationError("not_yet_valid", "the token was issued in the future")
        return claims

    def _check_webhook_signature(self, headers: Mapping[str, str], body: bytes, now: float) -> None:
        webhook_id, timestamp = _header(headers, "webhook-id"), _header(headers, "webhook-timestamp")
        signatures = (_header(headers, "webhook-signature") or "").split()
        if not webhook_id or not timestamp or not signatures:
            raise VerificationError("webhook_signature", "missing Standard Webhooks headers")
        if not timestamp.isdigit() or abs(now - int(timestamp)) > WEBHOOK_TOLERANCE_SECONDS:
            raise VerificationError("webhook_timestamp", "webhook-timestamp is too far from now")
        key = base64.b64decode(self.webhook_secret.removeprefix("whsec_"))
        expected = base64.b64encode(
            hmac.new(key, f"{webhook_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
        ).decode()
        if not any(
            version == "v1" and hmac.compare_digest(value, expected)
            for version, _, value in (signature.partition(",") for signature in signatures)
        ):
            raise VerificationError("webhook_signature", "no webhook-signature matches")
