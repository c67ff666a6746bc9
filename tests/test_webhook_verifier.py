"""The Python verifier's own rules, without a database (the shared vectors cover real requests)."""

from __future__ import annotations

import time

import jwt
import pytest

from webhook_verifier import SeenEvents, VerificationError, Verifier, body_sha256

SECRET = "unit-test-signing-secret-" + "x" * 16
BODY = b'{"record": {"id": 1}, "type": "INSERT"}'
CONTENT_TYPE = {"Content-Type": "application/json"}


def headers(**claims) -> dict[str, str]:
    now = int(time.time())
    token = jwt.encode({"iat": now, "exp": now + 60, "jti": "e-1", "body_sha256": body_sha256(BODY), **claims}, SECRET)
    return {"Authorization": f"Bearer {token}", "webhook-id": claims.get("jti", "e-1")}


def test_seen_events_expire_and_repeat_within_their_lifetime():
    seen = SeenEvents()
    assert seen.first_time("a", expires_at=10, now=0)
    assert not seen.first_time("a", expires_at=10, now=5)
    assert seen.first_time("b", expires_at=20, now=5)
    assert seen.first_time("a", expires_at=30, now=10)  # expired at 10 (exclusive), so new again
    assert not seen.first_time("b", expires_at=20, now=11)


def test_seen_events_keep_an_id_until_its_latest_expiry():
    seen = SeenEvents()
    assert seen.first_time("a", expires_at=300, now=0)
    assert not seen.first_time("a", expires_at=600, now=10)  # a retry with a later exp
    assert not seen.first_time("a", expires_at=50, now=301)  # remembered past the first exp
    assert not seen.first_time("a", expires_at=400, now=599)  # an earlier exp does not shorten it
    assert seen.first_time("a", expires_at=900, now=600)  # gone at the latest exp


def test_a_retry_stays_a_duplicate_until_its_own_exp():
    """Issue 15 #6: the first token expires at t+300, its retry (same jti) at t+600."""
    t = 1_767_225_600
    clock = [t]
    verifier = Verifier(SECRET, clock=lambda: clock[0])

    def signed(iat: int, exp: int) -> dict[str, str]:
        claims = {"iat": iat, "exp": exp, "jti": "e-1", "body_sha256": body_sha256(BODY)}
        return {**CONTENT_TYPE, "Authorization": f"Bearer {jwt.encode(claims, SECRET)}", "webhook-id": "e-1"}

    first, retry = signed(t, t + 300), signed(t + 10, t + 600)
    assert verifier.verify(first, BODY).duplicate is False
    clock[0] = t + 10
    assert verifier.verify(retry, BODY).duplicate is True
    clock[0] = t + 301
    assert verifier.verify(retry, BODY).duplicate is True  # before the fix: accepted as new
    clock[0] = t + 599
    assert verifier.verify(retry, BODY).duplicate is True
    clock[0] = t + 600
    assert verifier.verify(signed(t + 600, t + 900), BODY).duplicate is False


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
