"""Shared test vectors for both verifiers, made from real requests the database sent.

The stand-in's pg_net delivers each request to a recording endpoint; the
vectors hold them byte for byte (headers, raw body), valid and tampered, with
the clock to verify them at. The Python verifier must agree with every case
here; scripts/test.sh then runs the Rust crate's tests on the same file
(`WEBHOOK_VECTORS`), so the two verifiers check the same things.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import jwt
import psycopg
import pytest
from binding_support import PATH, authorization, direct_webhook, ensure_webhook_secret, insert_resumes
from outbox_support import deliver_once

from local_supabase.scripted_server import Received, ScriptedServer
from webhook_verifier import VerificationError, Verifier

DEFAULT_PATH = Path(__file__).resolve().parent.parent / ".local" / "webhook-vectors.json"
WRONG_KEY = "not-the-orchestrators-key-" + "9" * 20


def case(name: str, request: Received, url: str, **fields: Any) -> dict[str, Any]:
    claims = jwt.decode(authorization(request).split()[1], options={"verify_signature": False})
    return {
        "name": name,
        "url": url,
        "path": request.path,
        "headers": dict(request.headers),
        "body_base64": base64.b64encode(request.body).decode(),
        "now": claims["iat"],
        "audience": None,
        "expect": "accept",
        "reason": None,
        "replay_of": None,
        **fields,
    }


def with_token(request: Received, token: str) -> Received:
    headers = {k: (f"Bearer {token}" if k.lower() == "authorization" else v) for k, v in request.headers.items()}
    return Received(request.method, request.path, headers, request.body)


#: Every vector carries Standard Webhooks headers too, so both verifiers check those as well.
SIGNED = {"webhook_secret_name": "app_webhook_secret"}


def capture_direct(cluster, conn, **spec: Any) -> tuple[Received, str]:
    with ScriptedServer() as endpoint, direct_webhook(cluster, endpoint.url + PATH, **SIGNED, **spec):
        insert_resumes(conn, f"vector-{spec.get('signer', 'pgcrypto')}.pdf")
        (request,) = endpoint.wait_for(1)
        return request, endpoint.url + PATH


def capture_at_least_once(cluster) -> tuple[Received, str]:
    with ScriptedServer() as endpoint:
        deliver_once(cluster, endpoint.url + PATH, 1, "vector-outbox", **SIGNED)
        (request,) = endpoint.received
        return request, endpoint.url + PATH


def make_vectors(cluster, conn: psycopg.Connection, secret: str) -> dict[str, Any]:
    webhook_secret = ensure_webhook_secret(cluster)
    plain, url = capture_direct(cluster, conn, signer="pgcrypto")
    pgjwt, pgjwt_url = capture_direct(cluster, conn, signer="pgjwt")
    with_aud, aud_url = capture_direct(cluster, conn, audience=True)
    outbox, outbox_url = capture_at_least_once(cluster)
    conn.execute("SELECT vault.update_secret(id, %s) FROM vault.secrets WHERE name = 'app_jwt_secret'", (WRONG_KEY,))
    try:
        wrong_key, wrong_url = capture_direct(cluster, conn)
    finally:
        conn.execute("SELECT vault.update_secret(id, %s) FROM vault.secrets WHERE name = 'app_jwt_secret'", (secret,))

    token = authorization(plain).split()[1]
    claims_part = token.split(".")[1]
    none_header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    claims = jwt.decode(token, secret, algorithms=["HS256"])
    hs512 = jwt.encode(claims, secret, algorithm="HS512", headers={"typ": "JWT"})
    tampered_body = Received(plain.method, plain.path, plain.headers, plain.body.replace(b"vector", b"forged"))
    forged_signature = "v1," + base64.b64encode(b"\0" * 32).decode()
    tampered_signature = Received(
        plain.method,
        plain.path,
        {k: (forged_signature if k.lower() == "webhook-signature" else v) for k, v in plain.headers.items()},
        plain.body,
    )
    cases = [
        case("valid-pgcrypto", plain, url),
        case("valid-pgjwt", pgjwt, pgjwt_url),
        case("valid-aud", with_aud, aud_url, audience=aud_url),
        case("valid-at-least-once", outbox, outbox_url),
        case("body-changed", tampered_body, url, expect="reject", reason="body_hash"),
        case(
            "endpoint-changed",
            with_aud,
            aud_url.replace(PATH, "/ingest/resumes/batch"),
            audience=aud_url.replace(PATH, "/ingest/resumes/batch"),
            expect="reject",
            reason="audience",
        ),
        case("aud-unexpected", with_aud, aud_url, expect="reject", reason="audience"),
        case("expired", plain, url, now=claims["exp"] + 1, expect="reject", reason="expired"),
        case("wrong-key", wrong_key, wrong_url, expect="reject", reason="signature"),
        case("replayed-jti", plain, url, expect="reject", reason="replay", replay_of="valid-pgcrypto"),
        case("alg-none", with_token(plain, f"{none_header}.{claims_part}."), url, expect="reject", reason="algorithm"),
        case("alg-hs512", with_token(plain, hs512), url, expect="reject", reason="algorithm"),
        case("webhook-signature-forged", tampered_signature, url, expect="reject", reason="webhook_signature"),
        case(
            "webhook-timestamp-stale", plain, url, now=claims["iat"] + 301, expect="reject", reason="webhook_timestamp"
        ),
    ]
    return {"secret": secret, "webhook_secret": webhook_secret, "cases": cases}


def python_outcome(vectors: dict[str, Any], case: dict[str, Any]) -> tuple[str, str | None]:
    """("accept" | "reject", reason) for one case, after its replay_of chain, with a verifier of its own."""
    verifier = Verifier(
        vectors["secret"],
        audience=case["audience"],
        webhook_secret=vectors["webhook_secret"],
        clock=lambda: case["now"],
    )
    by_name = {c["name"]: c for c in vectors["cases"]}
    earlier = by_name.get(case["replay_of"]) if case["replay_of"] else None
    if earlier is not None:
        verifier.verify(earlier["headers"], base64.b64decode(earlier["body_base64"]))
    try:
        verified = verifier.verify(case["headers"], base64.b64decode(case["body_base64"]))
    except VerificationError as error:
        return "reject", error.reason
    return ("reject", "replay") if verified.duplicate else ("accept", None)


@pytest.fixture(scope="module")
def vectors(supabase_ready, pg_net_worker, receiver_secret) -> dict[str, Any]:
    with psycopg.connect(supabase_ready.dsn("postgres"), autocommit=True) as conn:
        made = make_vectors(supabase_ready, conn, receiver_secret)
    path = Path(os.environ.get("WEBHOOK_VECTORS", DEFAULT_PATH))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(made, indent=2) + "\n", encoding="utf-8")
    return made


def test_the_python_verifier_agrees_with_every_vector(vectors):
    outcomes = {c["name"]: python_outcome(vectors, c) for c in vectors["cases"]}
    expected = {c["name"]: (c["expect"], c["reason"]) for c in vectors["cases"]}
    assert outcomes == expected


def test_the_vectors_cover_valid_and_every_tampering(vectors):
    names = {c["name"] for c in vectors["cases"]}
    assert {"valid-pgcrypto", "valid-pgjwt", "valid-at-least-once", "body-changed", "endpoint-changed"} <= names
    assert {"expired", "wrong-key", "replayed-jti", "alg-none", "aud-unexpected"} <= names
    # Both signers produce tokens PyJWT accepts as well.
    for name in ("valid-pgcrypto", "valid-pgjwt"):
        (token,) = [c["headers"] for c in vectors["cases"] if c["name"] == name]
        bearer = next(v for k, v in token.items() if k.lower() == "authorization").split()[1]
        assert jwt.decode(bearer, vectors["secret"], algorithms=["HS256"], options={"verify_exp": False})["jti"]
