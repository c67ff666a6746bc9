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

Signed delivery receipts: the 2xx answer to every accepted request,
duplicates included, carries

    webhook-receipt: v1,<kid>,<mac> v1,<mac>
    mac = base64url-nopad(HMAC-SHA256(key, "<webhook-id>.<iat>.<body_sha256>"))

where `key` is the UTF-8 bytes of the HS256 key that verified the token and `<kid>` its
`key_id` (`Verified.kid`), so the database checks the receipt with the key that signed the
attempt, also across a key promote; the second, kid-less item is the same MAC for
databases whose reconciler predates key ids (it compares each item of the list),
`<webhook-id>` the event id (the token's `jti`), `<iat>` the verified token's
`iat` claim in decimal (as in JSON: no sign, no leading zeros) and
`<body_sha256>` the base64url-nopad SHA-256 of the exact body bytes received
(the `body_sha256` claim's form). Only a holder of the key can compute it, and
it names the event and the body, so the database's reconciler can tell an
orchestrator that really took the event from anything else that answered 2xx.
`iat` binds it to one attempt: each attempt (a retry or a replay) mints a new
token with its own `iat`, so a receipt copied from an earlier attempt's
response (pg_net's response table is readable by every role) does not mark a
later attempt delivered that was never sent. `Verified.receipt` holds
it and `Verified.receipt_header()` gives (name, value) to send; `receipt()`
computes it for any event. This package has no HTTP server integration of its
own: a server sends `Verified.receipt_header()` with its 2xx answer.

Key sets and rotation (docs/key-rotation.md): every token names its key in a
`kid` header, `key_id(key)`: the first 16 characters of
base64url(HMAC-SHA256(key, "secure-webhooks key id v1")), which the verifier
computes from the keys it holds, so a key set is just a list of keys.
`KeySet` holds several HS256 and Standard Webhooks keys; `KeyFile` reads one
from a JSON file and reads it again whenever the file changes, so the
orchestrator learns a staged key without a restart. A token is checked with
the key its `kid` names; a `kid` that names no key held is refused as
`unknown_key_id`. A token without `kid` (minted before key ids existed, valid
for at most its TTL after the upgrade) is checked against every key held and
accepted if one fits. A Standard Webhooks request passes when any `v1`
signature in its `webhook-signature` list fits any key held. The receipt is
computed with the key that verified the token (`Verified.kid` names it).

The Rust crate in verifiers/rust checks the same things, in the same order,
and refuses with the same codes (`VerificationError.code` is the crate's
`VerifyError::code()`): both run the crate's sample vectors and the vectors the
test suite records from real requests (tests/test_verifier_vectors.py). That is
why this module reads the token itself before PyJWT does: PyJWT parses
JSON that the crate's serde_json refuses (NaN, 10**400, which then raised
uncaught errors here, duplicate keys, lone surrogates, deep nesting) and
accepts `aud` lists and any `typ`; each such difference let one verifier accept
what the other refused. The MAC is HMAC-SHA256 over the token's first two
parts, compared in constant time; only HS256 is accepted; PyJWT then checks
the signature too, and a token it refuses is refused.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import hmac
import json
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt

#: PyJWT checks the signature only; everything else is this module's (and the Rust crate's) rule.
_PYJWT_SIGNATURE_ONLY = {
    "verify_signature": True,
    **{f"verify_{name}": False for name in ("exp", "nbf", "iat", "aud", "iss", "sub", "jti")},
}

#: The response header that acknowledges an accepted event (see `receipt`).
RECEIPT_HEADER = "webhook-receipt"
#: The claims that bind a token to its request.
BINDING_CLAIMS = ("jti", "body_sha256")
#: Standard Webhooks: reference libraries refuse timestamps more than 5 minutes off.
WEBHOOK_TOLERANCE_SECONDS = 300
#: The longest `jti` accepted, in UTF-8 bytes (the database sends a 36-character UUID).
MAX_JTI_LENGTH = 256
#: The default body limit: 1 MiB, as the Rust crate's.
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
#: The Rust crate's default expected claims (the project's default `secure-webhooks:claims`).
#: `Verifier` expects none unless told; the shared vectors are checked with these.
DEFAULT_EXPECTED_CLAIMS: Mapping[str, Any] = {"role": "service_role", "iss": "supabase", "sub": "orchestrator"}

#: Each code (the Rust crate's `VerifyError::code()`) and the coarser `reason` this module gave before.
_REASONS = {
    "missing_authorization": "missing_token",
    "invalid_authorization_scheme": "missing_token",
    "malformed_token": "malformed",
    "unsupported_algorithm": "algorithm",
    "unsupported_token_type": "algorithm",
    "unsupported_header_parameter": "algorithm",
    "invalid_signature": "signature",
    "unknown_key_id": "unknown_key",
    "expired": "expired",
    "issued_in_future": "not_yet_valid",
    "audience_mismatch": "audience",
    "unexpected_audience": "audience",
    "missing_claim": "claims",
    "invalid_claim": "claims",
    "claim_mismatch": "claims",
    "webhook_id_mismatch": "claims",
    "missing_webhook_id": "claims",
    "unsupported_content_type": "content_type",
    "payload_too_large": "body_too_large",
    "malformed_header": "webhook_timestamp",
    "body_hash_mismatch": "body_hash",
    "missing_webhook_header": "webhook_signature",
    "stale_timestamp": "webhook_timestamp",
    "invalid_webhook_signature": "webhook_signature",
}


class VerificationError(ValueError):
    """The request is refused; str() says why, without any secret.

    `code` is the Rust crate's error code for the same refusal (e.g. "body_hash_mismatch"), so both
    verifiers can be compared on every vector; `reason` is the coarser code this module has always
    given (e.g. "body_hash").
    """

    def __init__(self, reason: str, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.code = code or reason


def _refuse(code: str, message: str) -> VerificationError:
    return VerificationError(_REASONS[code], message, code=code)


#: What the key id is an HMAC of; secure_webhooks.signing.trigger_function mints the same ids.
KEY_ID_LABEL = b"secure-webhooks key id v1"
KEY_ID_CHARS = 16


def key_id(key: str | bytes) -> str:
    """The `kid` the database writes for tokens signed with `key` (a str is taken as its UTF-8 bytes)."""
    raw = key.encode() if isinstance(key, str) else key
    return _b64url(hmac.new(raw, KEY_ID_LABEL, hashlib.sha256).digest())[:KEY_ID_CHARS]


def _webhook_key(secret: str) -> bytes:
    """The key of a Standard Webhooks secret, `whsec_<base64>`."""
    if not secret.startswith("whsec_"):
        raise ValueError("a Standard Webhooks secret is not whsec_<base64>")
    try:
        key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except ValueError:
        raise ValueError("a Standard Webhooks secret is not whsec_<base64>") from None
    if not key:
        raise ValueError("a Standard Webhooks secret is not whsec_<base64>")
    return key


@dataclass(frozen=True)
class KeySet:
    """The keys a verifier accepts: HS256 keys by their `kid`, and Standard Webhooks keys.

    Build it with `KeySet.of`; with no Standard Webhooks key, requests need no such signature.
    """

    jwt_keys: Mapping[str, bytes]
    webhook_keys: tuple[bytes, ...] = ()

    @classmethod
    def of(cls, jwt_secrets: Iterable[str | bytes], webhook_secrets: Iterable[str] = ()) -> KeySet:
        """HS256 keys (str: its UTF-8 bytes) and `whsec_` secrets; ValueError for an empty or malformed one."""
        keys = [secret.encode() if isinstance(secret, str) else bytes(secret) for secret in jwt_secrets]
        if not keys or not all(keys):
            raise ValueError("a key set needs at least one HS256 secret, and none empty")
        return cls({key_id(key): key for key in keys}, tuple(_webhook_key(s) for s in webhook_secrets))

    @classmethod
    def from_json(cls, document: Any) -> KeySet:
        """`{"jwt_secrets": [...], "webhook_secrets": [...]}` (webhook_secrets optional), the key file's form."""
        if not isinstance(document, dict) or set(document) - {"jwt_secrets", "webhook_secrets"}:
            raise ValueError("a key file holds an object with jwt_secrets and optionally webhook_secrets")
        jwt_secrets, webhook_secrets = document.get("jwt_secrets"), document.get("webhook_secrets", [])
        for name, value in (("jwt_secrets", jwt_secrets), ("webhook_secrets", webhook_secrets)):
            if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
                raise ValueError(f"{name} in a key file must be a list of strings")
        return cls.of(jwt_secrets, webhook_secrets)

    def current(self) -> KeySet:
        """Itself: a `KeySet` is a key source that never changes (`KeyFile` is one that does)."""
        return self


class KeyFile:
    """A `KeySet` in a JSON file (`KeySet.from_json`), read again whenever the file changes.

    Each request stats the file (a few microseconds) and reads it again when its modification time,
    size or inode changed, so a key staged for rotation is accepted without a restart. Replace the
    file atomically (write a new file, then rename it over the old one): a file read while half
    written that does not parse is ignored, the last good set stays in use and the next request
    tries again. The first read must succeed.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp, self._keys = self._load()

    def _stamp_now(self) -> tuple[int, int, int]:
        status = self.path.stat()
        return (status.st_mtime_ns, status.st_size, status.st_ino)

    def _load(self) -> tuple[tuple[int, int, int], KeySet]:
        stamp = self._stamp_now()
        try:
            document = json.loads(self.path.read_text(encoding="utf-8"))
        except (UnicodeError, json.JSONDecodeError):
            raise ValueError(f"key file {self.path} is not JSON") from None
        return stamp, KeySet.from_json(document)

    def current(self) -> KeySet:
        """The file's keys as of now: the last good set when the file is unreadable or malformed."""
        with self._lock:
            try:
                if self._stamp_now() != self._stamp:
                    self._stamp, self._keys = self._load()
            except (OSError, ValueError):
                pass  # mid-replacement, or broken: keep verifying with the last good set
            return self._keys


@dataclass(frozen=True)
class Verified:
    claims: dict[str, Any]
    #: The event id (`jti`), or None for a token minted without binding.
    event_id: str | None
    #: This event id was accepted before within its token's lifetime: acknowledge, do not process.
    duplicate: bool = False
    #: The `webhook-receipt` value for this event, token `iat` and body (None without an event id): send it
    #: with the 2xx.
    receipt: str | None = None
    #: The id (`key_id`) of the key that verified the token, and signed the receipt.
    kid: str | None = None

    def receipt_header(self) -> tuple[str, str] | None:
        """(`webhook-receipt`, value) for the 2xx answer, duplicates included; None without an event id."""
        return None if self.receipt is None else (RECEIPT_HEADER, self.receipt)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def body_sha256(body: bytes) -> str:
    """The `body_sha256` claim for these exact bytes."""
    return _b64url(hashlib.sha256(body).digest())


def receipt(secret: str | bytes, webhook_id: str, iat: int, body: bytes) -> str:
    """The `webhook-receipt` value: `v1,<kid>,<mac> v1,<mac>`, where `mac` is
    base64url-nopad(HMAC-SHA256(secret, "<webhook_id>.<iat>.<body_sha256>")) and `kid` is `key_id(secret)`.

    `secret` is the HS256 token secret (a str is taken as its UTF-8 bytes), `webhook_id` the event id,
    `iat` the verified token's `iat` claim (written in decimal; it ties the receipt to one attempt),
    `body` the exact bytes received. The kid lets the reconciler pick, of the keys that may have signed
    the attempt (around a promote, two), the one to check with; the kid-less item keeps reconcilers
    older than key ids, which compare each space-separated item with `v1,<mac>`, accepting it. The
    Rust crate's `receipt()` computes the same and the reconciler checks it; the shared vectors hold
    both verifiers to it.
    """
    if isinstance(iat, bool) or not isinstance(iat, int) or iat < 0:
        raise ValueError(f"iat must be a non-negative integer, got {iat!r}")
    key = secret if isinstance(secret, bytes) else secret.encode()
    mac = _b64url(hmac.new(key, f"{webhook_id}.{iat}.{body_sha256(body)}".encode(), hashlib.sha256).digest())
    return f"v1,{key_id(key)},{mac} v1,{mac}"


_B64URL_TEXT = re.compile(r"[A-Za-z0-9_-]*")


def _b64url_decode(text: str) -> bytes | None:
    """Strict base64url without padding, as the Rust `base64` crate decodes it: None for padding,
    other characters, or stray bits in the last character (lenient decoders ignore them, so that
    several texts would decode to one signature)."""
    if not _B64URL_TEXT.fullmatch(text) or len(text) % 4 == 1:
        return None
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    return data if _b64url(data) == text else None


# serde_json's limits, so that both verifiers parse exactly the same JSON.
_JSON_MAX_DEPTH = 127  # serde_json refuses the 128th nested array or object
_U64_MAX, _I64_MIN, _I64_MAX = 2**64 - 1, -(2**63), 2**63 - 1


def _json_int(text: str) -> int | float:
    """serde_json's integers: u64 and i64 stay integers, larger ones become floats, and past the
    float range (including any 310-digit number) the document is refused; "-0" is the float -0.0."""
    if len(text.lstrip("-")) > 309:
        raise ValueError("number out of range")  # before int(): Python refuses over 4,300 digits itself
    if text == "-0":
        return -0.0
    value = int(text)
    if _I64_MIN <= value <= _U64_MAX:
        return value
    return float(value)  # OverflowError past the float range, as serde_json's "number out of range"


def _json_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("number out of range")
    return value


def _json_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _json_unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Duplicate keys are refused: parsers differ on which one wins (`{"alg":"none","alg":"HS256"}`)."""
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError("duplicate key")
        result[key] = value
    return result


def _json_check(value: Any, depth: int = 0) -> None:
    if isinstance(value, str):
        value.encode()  # a lone surrogate escape ("\ud800") raises UnicodeEncodeError, as serde_json refuses it
    elif isinstance(value, (dict, list)):
        if depth >= _JSON_MAX_DEPTH:
            raise ValueError("nested too deeply")
        for key in value if isinstance(value, dict) else ():
            key.encode()
        for item in value.values() if isinstance(value, dict) else value:
            _json_check(item, depth + 1)


def _json_object(data: bytes | None) -> dict[str, Any] | None:
    """`data` as a JSON object, parsed exactly as serde_json parses it, or None."""
    if data is None:
        return None
    try:
        value = json.loads(
            data.decode(),
            parse_int=_json_int,
            parse_float=_json_float,
            parse_constant=_json_constant,
            object_pairs_hook=_json_unique_keys,
        )
        _json_check(value)
    except (ValueError, OverflowError, RecursionError):  # UnicodeError and JSONDecodeError are ValueErrors
        return None
    return value if isinstance(value, dict) else None


def _same_json(a: Any, b: Any) -> bool:
    """JSON equality as serde_json's: true is not 1, and 1 is not 1.0."""
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        return type(a) is type(b) and a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same_json(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_json(a[k], b[k]) for k in a)
    for kind in (int, float, str):
        if isinstance(a, kind) and isinstance(b, kind):
            return a == b
    return False


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


def _visible_ascii(text: str) -> bool:
    """What the Rust `http` crate's `HeaderValue::to_str` accepts: tab and printable ASCII."""
    return all(char == "\t" or " " <= char <= "~" for char in text)


def _u64_claim(claims: Mapping[str, Any], name: str) -> int:
    if name not in claims:
        raise _refuse("missing_claim", f"the token has no {name} claim")
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _U64_MAX:
        raise _refuse("invalid_claim", f"{name} must be a non-negative integer number of seconds")
    return value


def _str_claim(claims: Mapping[str, Any], name: str) -> str:
    if name not in claims:
        raise _refuse("missing_claim", f"the token has no {name} claim")
    if not isinstance(claims[name], str):
        raise _refuse("invalid_claim", f"{name} must be a string")
    return claims[name]


@dataclass
class Verifier:
    """Checks, in the Rust crate's order: the bearer token (HS256 only, header `alg`, `typ` and `kid`
    and nothing else; the key `kid` names, or without `kid` any key held), `exp` after `iat`,
    `exp`/`iat` against the clock (with `leeway`), `aud`, `jti`, `body_sha256`, expected claims,
    `webhook-id` equal to `jti`, the content type, the body size and hash, Standard Webhooks'
    signature when a `whsec_` key is held, then duplicates."""

    #: The HS256 key; or give `keys` instead (several keys, or a `KeyFile`).
    secret: str | bytes | None = None
    leeway: int = 0
    #: The exact URL tokens must name in `aud`; None: tokens must not carry `aud`.
    audience: str | None = None
    expected_claims: Mapping[str, Any] = field(default_factory=dict)
    #: Refuse tokens without `jti` and `body_sha256` (every token the database mints has them).
    require_binding: bool = True
    webhook_secret: str | None = None
    #: Unix time; read once per request and rounded down to whole seconds, as the Rust crate's clock.
    clock: Callable[[], float] = time.time
    seen: SeenEvents = field(default_factory=SeenEvents)
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    #: Require `Content-Type: application/json` (parameters such as charset allowed).
    require_json_content_type: bool = True
    #: The keys accepted, instead of `secret` and `webhook_secret`: a `KeySet`, or a `KeyFile` that follows
    #: its file.
    keys: KeySet | KeyFile | None = None

    def __post_init__(self) -> None:
        if self.keys is None:
            if self.secret is None:
                raise ValueError("give the HS256 secret, or a key set (keys=)")
            webhook_secrets = [] if self.webhook_secret is None else [self.webhook_secret]
            self.keys = KeySet.of([self.secret], webhook_secrets)
        elif self.secret is not None or self.webhook_secret is not None:
            raise ValueError("give either keys= or secret (and webhook_secret), not both")

    def verify(self, headers: Mapping[str, str], body: bytes) -> Verified:
        """The verified claims, or VerificationError; `body` is the raw request body, never re-serialised."""
        now = math.floor(self.clock())
        keys = self.keys.current()
        claims, kid = self._claims(keys, headers, now)
        event_id = claims.get("jti")
        if len(body) > self.max_body_bytes:
            raise _refuse("payload_too_large", f"the body is larger than {self.max_body_bytes} bytes")
        if "body_sha256" in claims and not hmac.compare_digest(claims["body_sha256"], body_sha256(body)):
            raise _refuse("body_hash_mismatch", "the body is not the one the token was minted for")
        if keys.webhook_keys:
            self._check_webhook_signature(keys.webhook_keys, headers, event_id, body, now)
        if event_id is None:
            return Verified(claims, None, kid=kid)
        first = self.seen.first_time(event_id, claims["exp"] + self.leeway, now)
        # the receipt of this attempt: bound to this token's iat, a duplicate's too
        signed = receipt(keys.jwt_keys[kid], event_id, claims["iat"], body)
        return Verified(claims, event_id, duplicate=not first, receipt=signed, kid=kid)

    def _claims(self, keys: KeySet, headers: Mapping[str, str], now: int) -> tuple[dict[str, Any], str]:
        """Every check that needs only the headers, in the Rust crate's order; the claims and the key's id."""
        claims, kid = self._decode(keys, self._bearer_token(headers))
        exp, iat = _u64_claim(claims, "exp"), _u64_claim(claims, "iat")
        # Before the clock: a token whose exp is not after its iat is refused the same way at any time.
        if exp <= iat:
            raise _refuse("invalid_claim", "exp is not after iat")
        if now >= exp + self.leeway:  # valid while now < exp (RFC 7519), as the Rust crate
            raise _refuse("expired", "the token has expired")
        if iat > now + self.leeway:
            raise _refuse("issued_in_future", "the token was issued in the future")
        self._check_audience(claims)
        if self.require_binding or "jti" in claims:
            jti = _str_claim(claims, "jti")
            if not 1 <= len(jti.encode()) <= MAX_JTI_LENGTH:
                raise _refuse("invalid_claim", f"jti must be 1 to {MAX_JTI_LENGTH} bytes long")
        if self.require_binding or "body_sha256" in claims:
            digest = _b64url_decode(_str_claim(claims, "body_sha256"))
            if digest is None or len(digest) != 32:
                raise _refuse("invalid_claim", "body_sha256 is not a base64url (unpadded) SHA-256 digest")
        for name in sorted(self.expected_claims):  # the crate's BTreeMap order
            expected = self.expected_claims[name]
            if name not in claims:
                raise _refuse("missing_claim", f"the token has no {name!r} claim")
            if not _same_json(claims[name], expected):
                raise _refuse("claim_mismatch", f"claim {name!r} is {claims[name]!r}, expected {expected!r}")
        if "jti" in claims:
            webhook_id = _header(headers, "webhook-id")
            if webhook_id is None:
                raise _refuse("missing_webhook_id", "missing webhook-id header")
            if webhook_id != claims["jti"]:
                raise _refuse("webhook_id_mismatch", "webhook-id does not match the token's jti")
        if self.require_json_content_type:
            content_type = _header(headers, "Content-Type") or ""
            if content_type.split(";")[0].strip(" \t").lower() != "application/json":
                raise _refuse(
                    "unsupported_content_type", f"content type {content_type!r} refused: only application/json"
                )
        return claims, kid

    @staticmethod
    def _bearer_token(headers: Mapping[str, str]) -> str:
        value = _header(headers, "Authorization")
        if value is None:
            raise _refuse("missing_authorization", "missing bearer token (no Authorization header)")
        scheme, space, token = value.strip(" \t").partition(" ")
        token = token.strip(" \t")
        if not _visible_ascii(value) or not space or scheme.lower() != "bearer" or not token:
            raise _refuse("invalid_authorization_scheme", "Authorization is not a Bearer token")
        return token

    @staticmethod
    def _decode(keys: KeySet, token: str) -> tuple[dict[str, Any], str]:
        """The JOSE header (HS256, `typ` JWT and `kid` if any, nothing else), the MAC with the key `kid`
        names (any key held, without `kid`), then the claims; and the id of the key that fits."""
        parts = token.split(".")
        if len(parts) != 3:
            raise _refuse("malformed_token", "invalid token: not three dot-separated parts")
        header = _json_object(_b64url_decode(parts[0]))
        if header is None:
            raise _refuse("malformed_token", "invalid token: the header is not a base64url JSON object")
        if "alg" not in header:
            raise _refuse("malformed_token", "invalid token: the header has no alg")
        if header["alg"] != "HS256":
            raise _refuse("unsupported_algorithm", f"algorithm {header['alg']!r} is refused; only HS256")
        if "typ" in header and header["typ"] != "JWT":
            raise _refuse("unsupported_token_type", f"token typ {header['typ']!r} is refused; only JWT")
        extra = sorted(set(header) - {"alg", "kid", "typ"})
        if extra:
            raise _refuse("unsupported_header_parameter", f"token header parameter {extra[0]!r} is refused")
        if "kid" in header and not isinstance(header["kid"], str):
            raise _refuse("malformed_token", "invalid token: the header's kid is not a string")
        if "kid" in header and header["kid"] not in keys.jwt_keys:
            raise _refuse("unknown_key_id", f"the token's key id {header['kid']!r} names no key this verifier holds")
        signature = _b64url_decode(parts[2])
        if signature is None:
            raise _refuse("malformed_token", "invalid token: the signature is not base64url")
        # With kid, only the key it names; without (tokens minted before key ids), every key held.
        candidates = [header["kid"]] if "kid" in header else list(keys.jwt_keys)
        signing_input = f"{parts[0]}.{parts[1]}".encode()
        kid = next(
            (
                kid
                for kid in candidates
                if hmac.compare_digest(signature, hmac.new(keys.jwt_keys[kid], signing_input, hashlib.sha256).digest())
            ),
            None,
        )
        if kid is None:
            raise _refuse("invalid_signature", "invalid token signature")
        # A second opinion from PyJWT, the library the plan names, on the signature and the token's form:
        # a token this strict reading accepts and PyJWT refuses is refused. Time, audience and claim
        # types are checked below, the same way the Rust crate checks them.
        try:
            jwt.decode(token, keys.jwt_keys[kid], algorithms=["HS256"], options=_PYJWT_SIGNATURE_ONLY)
        except jwt.PyJWTError as error:
            raise _refuse("malformed_token", f"invalid token: PyJWT refuses it ({type(error).__name__})") from None
        claims = _json_object(_b64url_decode(parts[1]))
        if claims is None:
            raise _refuse("malformed_token", "invalid token: the claims are not a base64url JSON object")
        return claims, kid

    def _check_audience(self, claims: Mapping[str, Any]) -> None:
        if "aud" in claims and not isinstance(claims["aud"], str):
            raise _refuse("invalid_claim", "aud must be a string")  # a list too: the database names one URL
        aud = claims.get("aud")
        if self.audience is None:
            if aud is not None:
                raise _refuse("unexpected_audience", "the token has an audience but this verifier has none")
        elif aud is None:
            raise _refuse("missing_claim", "the token has no aud claim")
        elif aud != self.audience:
            raise _refuse("audience_mismatch", f"the token's audience {aud!r} is not {self.audience!r}")

    @staticmethod
    def _check_webhook_signature(
        webhook_keys: tuple[bytes, ...], headers: Mapping[str, str], event_id: str | None, body: bytes, now: int
    ) -> None:
        """Standard Webhooks: a timestamp within the tolerance, then any `v1` signature in the list that
        fits any key held (while a key is rotated out, the database sends one signature per key)."""
        timestamp = _header(headers, "webhook-timestamp")
        if timestamp is None:
            raise _refuse("missing_webhook_header", "missing webhook-timestamp header")
        # ASCII digits only (no sign, no spaces), at most i64: as the Rust crate, and never a huge int().
        digits = timestamp.lstrip("0")
        if not re.fullmatch(r"[0-9]+", timestamp) or len(digits) > 19 or int(digits or "0") > _I64_MAX:
            raise _refuse("malformed_header", "malformed webhook-timestamp header: not an integer number of seconds")
        if abs(now - int(digits or "0")) > WEBHOOK_TOLERANCE_SECONDS:
            raise _refuse("stale_timestamp", "webhook-timestamp is too far from now")
        signatures = _header(headers, "webhook-signature")
        if signatures is None:
            raise _refuse("missing_webhook_header", "missing webhook-signature header")
        webhook_id = event_id if event_id is not None else _header(headers, "webhook-id") or ""
        signed = f"{webhook_id}.{timestamp}.".encode() + body
        offered = [
            value.encode() for version, _, value in (s.partition(",") for s in signatures.split()) if version == "v1"
        ]
        for key in webhook_keys:
            expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest())
            if any(hmac.compare_digest(value, expected) for value in offered):
                return
        raise _refuse("invalid_webhook_signature", "no webhook-signature matches")
