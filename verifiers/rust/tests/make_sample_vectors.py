"""Write tests/vectors.sample.json: the requests the database sends, and tampered ones.

Run from verifiers/rust: ../../venv/bin/python tests/make_sample_vectors.py
Deterministic (fixed clock, ids and keys), so the output only changes when this script does.
The `reason` of each rejected case is the verifier's error code (VerifyError::code).
"""

import base64
import hashlib
import hmac
import json
import pathlib
import warnings

import jwt

SECRET = "sample-vectors-jwt-secret-of-at-least-32-bytes"
WEBHOOK_KEY = b"sample-vectors-standard-webhooks"
WEBHOOK_SECRET = "whsec_" + base64.b64encode(WEBHOOK_KEY).decode()
BASE = "https://orchestrator.example.com"
RESUMES = "/ingest/resumes/batch"
ZIPS = "/ingest/zip_archives/batch"
NOW = 1767225600  # 2026-01-01T00:00:00Z
TTL = 3600
CLAIMS = {"role": "service_role", "iss": "supabase", "sub": "orchestrator"}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jsonb_text(value: dict) -> str:
    """The text form PostgreSQL prints for jsonb: keys by length then bytes, ', ' and ': '."""
    if isinstance(value, dict):
        keys = sorted(value, key=lambda k: (len(k.encode()), k.encode()))
        return "{" + ", ".join(f"{json.dumps(k, ensure_ascii=False)}: {jsonb_text(value[k])}" for k in keys) + "}"
    return json.dumps(value, ensure_ascii=False)


def payload(table: str, row_id: int, name: str) -> bytes:
    record = {"id": row_id, "name": name, "created_at": "2025-12-31T23:59:58.123456+00:00"}
    event = {"old_record": None, "record": record, "type": "INSERT", "table": table, "schema": "public"}
    return jsonb_text(event).encode()


def event_id(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


def claims_for(body: bytes, jti: str, iat: int = NOW, aud: str | None = None, **changes) -> dict:
    claims = dict(CLAIMS, iat=iat, exp=iat + TTL, jti=jti, body_sha256=b64url(hashlib.sha256(body).digest()))
    if aud is not None:
        claims["aud"] = aud
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def standard_signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def case(
    name,
    *,
    body,
    token,
    jti,
    path=RESUMES,
    now=NOW,
    audience=None,
    expect="accept",
    reason=None,
    replay_of=None,
    timestamp=NOW,
    signed_body=None,
    webhook_id=None,
):
    headers = {
        "Content-Type": "application/json",
        "Authorization": f"Bearer {token}",
        "webhook-id": webhook_id or jti,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": standard_signature(
            WEBHOOK_KEY, webhook_id or jti, timestamp, body if signed_body is None else signed_body
        ),
    }
    return {
        "name": name,
        "url": BASE + path,
        "path": path,
        "headers": headers,
        "body_base64": base64.b64encode(body).decode(),
        "now": now,
        "audience": audience,
        "expect": expect,
        "reason": reason,
        "replay_of": replay_of,
    }


def sign(claims: dict, algorithm: str = "HS256", key: str = SECRET) -> str:
    return jwt.encode(claims, key, algorithm=algorithm)


def main() -> None:
    # the hs512 case signs with the HS256 key on purpose
    warnings.filterwarnings("ignore", message="The HMAC key is")
    cases = []
    add = cases.append

    body = payload("resumes", 1, "Zoë")
    jti = event_id(1)
    add(case("valid", body=body, token=sign(claims_for(body, jti)), jti=jti))
    add(
        case(
            "replayed",
            body=body,
            token=sign(claims_for(body, jti)),
            jti=jti,
            now=NOW + 1,
            expect="reject",
            reason="replayed",
            replay_of="valid",
            timestamp=NOW + 1,
        )
    )
    retry = sign(claims_for(body, jti, iat=NOW + 5))
    add(
        case(
            "retry_of_accepted_event",
            body=body,
            token=retry,
            jti=jti,
            now=NOW + 5,
            expect="reject",
            reason="replayed",
            replay_of="valid",
            timestamp=NOW + 5,
        )
    )
    add(
        case(
            "valid_at_end_of_lifetime",
            body=body,
            token=sign(claims_for(body, event_id(2))),
            jti=event_id(2),
            now=NOW + TTL - 1,
            timestamp=NOW + TTL - 1,
        )
    )

    aud = BASE + RESUMES
    b3, j3 = payload("resumes", 3, "Ada"), event_id(3)
    add(case("valid_with_audience", body=b3, token=sign(claims_for(b3, j3, aud=aud)), jti=j3, audience=aud))
    add(
        case(
            "wrong_endpoint",
            body=b3,
            token=sign(claims_for(b3, j3, aud=aud)),
            jti=j3,
            path=ZIPS,
            audience=BASE + ZIPS,
            expect="reject",
            reason="audience_mismatch",
        )
    )
    add(
        case(
            "audience_without_configured_audience",
            body=b3,
            token=sign(claims_for(b3, j3, aud=aud)),
            jti=j3,
            expect="reject",
            reason="unexpected_audience",
        )
    )
    add(
        case(
            "audience_configured_token_without_aud",
            body=b3,
            token=sign(claims_for(b3, j3)),
            jti=j3,
            audience=aud,
            expect="reject",
            reason="missing_claim",
        )
    )

    b4, j4 = payload("resumes", 4, "Grace"), event_id(4)
    tampered = b4.replace(b"Grace", b"Mallory")
    add(
        case(
            "body_changed",
            body=tampered,
            token=sign(claims_for(b4, j4)),
            jti=j4,
            signed_body=tampered,
            expect="reject",
            reason="body_hash_mismatch",
        )
    )
    reserialised = json.dumps(json.loads(b4), separators=(",", ":"), ensure_ascii=False).encode()
    add(
        case(
            "body_reserialised",
            body=reserialised,
            token=sign(claims_for(b4, j4)),
            jti=j4,
            signed_body=reserialised,
            expect="reject",
            reason="body_hash_mismatch",
        )
    )
    add(
        case(
            "missing_body_sha256",
            body=b4,
            token=sign(claims_for(b4, j4, body_sha256=None)),
            jti=j4,
            expect="reject",
            reason="missing_claim",
        )
    )
    add(
        case(
            "body_sha256_hex",
            body=b4,
            token=sign(claims_for(b4, j4, body_sha256=hashlib.sha256(b4).hexdigest())),
            jti=j4,
            expect="reject",
            reason="invalid_claim",
        )
    )
    add(
        case(
            "expired",
            body=b4,
            token=sign(claims_for(b4, j4)),
            jti=j4,
            now=NOW + TTL,
            timestamp=NOW + TTL,
            expect="reject",
            reason="expired",
        )
    )
    add(
        case(
            "issued_in_future",
            body=b4,
            token=sign(claims_for(b4, j4, iat=NOW + 60)),
            jti=j4,
            expect="reject",
            reason="issued_in_future",
        )
    )
    add(
        case(
            "wrong_key",
            body=b4,
            token=sign(claims_for(b4, j4), key="another-secret-of-at-least-32-bytes!!"),
            jti=j4,
            expect="reject",
            reason="invalid_signature",
        )
    )
    none_token = b64url(b'{"alg":"none","typ":"JWT"}') + "." + b64url(json.dumps(claims_for(b4, j4)).encode()) + "."
    add(case("alg_none", body=b4, token=none_token, jti=j4, expect="reject", reason="unsupported_algorithm"))
    add(
        case(
            "hs512",
            body=b4,
            token=sign(claims_for(b4, j4), algorithm="HS512"),
            jti=j4,
            expect="reject",
            reason="unsupported_algorithm",
        )
    )
    add(
        case(
            "role_authenticated",
            body=b4,
            token=sign(claims_for(b4, j4, role="authenticated")),
            jti=j4,
            expect="reject",
            reason="claim_mismatch",
        )
    )
    add(
        case(
            "webhook_id_differs",
            body=b4,
            token=sign(claims_for(b4, j4)),
            jti=j4,
            webhook_id=event_id(99),
            expect="reject",
            reason="webhook_id_mismatch",
        )
    )

    b5, j5 = payload("resumes", 5, "Linus"), event_id(5)
    add(
        case(
            "standard_webhooks_tampered",
            body=b5,
            token=sign(claims_for(b5, j5)),
            jti=j5,
            signed_body=b"{}",
            expect="reject",
            reason="invalid_webhook_signature",
        )
    )
    add(
        case(
            "standard_webhooks_stale",
            body=b5,
            token=sign(claims_for(b5, j5)),
            jti=j5,
            timestamp=NOW - 301,
            expect="reject",
            reason="stale_timestamp",
        )
    )
    add(
        case("standard_webhooks_within_tolerance", body=b5, token=sign(claims_for(b5, j5)), jti=j5, timestamp=NOW - 300)
    )

    vectors = {"secret": SECRET, "webhook_secret": WEBHOOK_SECRET, "cases": cases}
    out = pathlib.Path(__file__).with_name("vectors.sample.json")
    out.write_text(json.dumps(vectors, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {len(cases)} cases to {out}")


if __name__ == "__main__":
    main()
