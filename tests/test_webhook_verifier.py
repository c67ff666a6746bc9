"""The Python verifier's own rules, without a database (the shared vectors cover real requests)."""

from __future__ import annotations

import time

import jwt
import pytest

from webhook_verifier import SeenEvents, VerificationError, Verifier, body_sha256

SECRET = "unit-test-signing-secret-" + "x" * 16
BODY = b'{"record": {"id": 1}, "type": "INSERT"}'


def headers(**claims) -> dict[str, str]:
    now = int(time.time())
    token = jwt.encode({"iat": now, "exp": now + 60, "jti": "e-1", "body_sha256": body_sha256(BODY), **claims}, SECRET)
    return {"Authorization": f"Bearer {token}", "webhook-id": claims.get("jti", "e-1")}


def test_seen_events_expire_and_repeat_within_their_lifetime():
    seen = SeenEvents()
    assert seen.first_time("a", expires_at=10, now=0)
    assert not seen.first_time("a", expires_at=10, now=5)
    assert seen.first_time("b", expires_at=20, now=5)
    assert seen.first_time("a", expires_at=30, now=11)  # expired, so new again
    assert not seen.first_time("b", expires_at=20, now=11)


def test_leeway_and_iat_in_the_future():
    future = int(time.time()) + 30
    with pytest.raises(VerificationError) as refused:
        Verifier(SECRET).verify(headers(iat=future), BODY)
    assert refused.value.reason == "not_yet_valid"
    assert Verifier(SECRET, leeway=60).verify(headers(iat=future), BODY).event_id == "e-1"


def test_a_webhook_id_that_differs_from_jti_is_refused():
    forged = {**headers(), "webhook-id": "someone-else"}
    with pytest.raises(VerificationError) as refused:
        Verifier(SECRET).verify(forged, BODY)
    assert refused.value.reason == "claims"


def test_unbound_tokens_need_require_binding_off():
    now = int(time.time())
    token = jwt.encode({"iat": now, "exp": now + 60}, SECRET)
    with pytest.raises(VerificationError) as refused:
        Verifier(SECRET).verify({"Authorization": f"Bearer {token}"}, BODY)
    assert refused.value.reason == "claims"
    assert Verifier(SECRET, require_binding=False).verify({"Authorization": f"Bearer {token}"}, BODY).event_id is None
