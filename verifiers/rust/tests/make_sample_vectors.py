"""Write tests/vectors.sample.json: the requests the database sends, and tampered ones.

Run from verifiers/rust: ../../venv/bin/python tests/make_sample_vectors.py
Deterministic (fixed clock, ids and keys), so the output only changes when this script does.
The `reason` of each rejected case is the verifier's error code (VerifyError::code). Each case accepted
or acknowledged as a duplicate has the `receipt` its answer must carry (bound to its own token's `iat`, so a
retry's differs from the first attempt's), and `receipts` lists more (secret, webhook id, iat, body) ->
webhook-receipt examples; both are computed here from the format's definition.
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
# Rotation: the key staged beside SECRET (and WEBHOOK_KEY), then signing in their place.
NEXT_SECRET = "sample-vectors-next-jwt-secret-of-32-bytes-too"
NEXT_WEBHOOK_KEY = b"sample-vectors-next-standard-webhooks-key"
NEXT_WEBHOOK_SECRET = "whsec_" + base64.b64encode(NEXT_WEBHOOK_KEY).decode()
KEY_ID_LABEL = b"secure-webhooks key id v1"
BASE = "https://orchestrator.example.com"
RESUMES = "/ingest/resumes/batch"
ZIPS = "/ingest/zip_archives/batch"
NOW = 1767225600  # 2026-01-01T00:00:00Z
TTL = 3600
CLAIMS = {"role": "service_role", "iss": "supabase", "sub": "orchestrator"}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def key_id(secret: str) -> str:
    """The kid the database writes: b64url-nopad(HMAC-SHA256(key, "secure-webhooks key id v1"))[:16]."""
    return b64url(hmac.new(secret.encode(), KEY_ID_LABEL, hashlib.sha256).digest())[:16]


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


def standard_signature(key: bytes, msg_id: str, timestamp: int | str, body: bytes) -> str:
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
    without=(),
    timestamp_text=None,
    keys=None,
    signing_secret=SECRET,
    webhook_keys=(WEBHOOK_KEY,),
):
    """One request; `keys` (jwt_secrets, webhook_secrets) replaces the file's secret and webhook_secret
    for this case, `signing_secret` is the key that signed the token (for its receipt), and
    `webhook_keys` the keys whose signatures `webhook-signature` lists."""
    timestamp_text = str(timestamp) if timestamp_text is None else timestamp_text
    signed = body if signed_body is None else signed_body
    headers = {
        "Content-Type": "application/json",
        "Authorization": f"Bearer {token}",
        "webhook-id": webhook_id or jti,
        "webhook-timestamp": timestamp_text,
        "webhook-signature": " ".join(
            standard_signature(key, webhook_id or jti, timestamp_text, signed) for key in webhook_keys
        ),
    }
    headers = {name: value for name, value in headers.items() if name not in without}
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
        **({} if keys is None else {"keys": {"jwt_secrets": keys[0], "webhook_secrets": keys[1]}}),
        "_signing_secret": signing_secret,
    }


def spec_receipt(secret: str, webhook_id: str, iat: int, body: bytes) -> str:
    """webhook-receipt, from its definition: `v1,<kid>,<mac> v1,<mac>`, <kid> the secret's key id and
    <mac> b64url-nopad(HMAC-SHA256(secret, "<id>.<iat>.<body_sha256>"))."""
    message = f"{webhook_id}.{iat}.{b64url(hashlib.sha256(body).digest())}".encode()
    mac = b64url(hmac.new(secret.encode(), message, hashlib.sha256).digest())
    return f"v1,{key_id(secret)},{mac} v1,{mac}"


def token_iat(headers: dict) -> int:
    """The iat claim of the request's bearer token (its JSON payload, read without PyJWT's checks)."""
    payload = headers["Authorization"].split()[1].split(".")[1]
    iat = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["iat"]
    assert type(iat) is int, iat
    return iat


def sign(claims: dict, algorithm: str = "HS256", key: str = SECRET, headers: dict | None = None) -> str:
    return jwt.encode(claims, key, algorithm=algorithm, headers=headers)


def raw_token(header: str, payload: str, key: str = SECRET) -> str:
    """An HS256 token over this exact JSON text (for what PyJWT would not print: duplicate keys, 10**400)."""
    signing_input = b64url(header.encode()) + "." + b64url(payload.encode())
    mac = hmac.new(key.encode(), signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64url(mac)


def payload_text(claims: dict, **raw: str) -> str:
    """`claims` as JSON text, with `raw` claims spliced in as literal JSON text."""
    text = json.dumps(claims, ensure_ascii=False)
    return text[:-1] + "".join(f", {json.dumps(name)}: {value}" for name, value in raw.items()) + "}"


def add_rotation_cases(add) -> None:
    """A rotation as the orchestrator sees it: tokens name their key (kid); the key set holds the
    current and the staged key; Standard Webhooks requests list one signature per key."""
    both = ([SECRET, NEXT_SECRET], [WEBHOOK_SECRET, NEXT_WEBHOOK_SECRET])
    body, jti = payload("resumes", 20, "Grace"), event_id(20)
    current = sign(claims_for(body, jti), headers={"kid": key_id(SECRET)})
    promoted = sign(claims_for(body, jti), key=NEXT_SECRET, headers={"kid": key_id(NEXT_SECRET)})
    add(case("rotation_current_key_with_both_held", body=body, token=current, jti=jti, keys=both))
    add(
        case(
            "rotation_next_key_with_both_held",
            body=body,
            token=promoted,
            jti=jti,
            keys=both,
            signing_secret=NEXT_SECRET,
            webhook_keys=(NEXT_WEBHOOK_KEY, WEBHOOK_KEY),
        )
    )
    add(case("rotation_current_key_alone", body=body, token=current, jti=jti))
    add(
        case(
            "rotation_next_key_not_yet_held",
            body=body,
            token=promoted,
            jti=jti,
            expect="reject",
            reason="unknown_key_id",
        )
    )
    add(
        case(
            "rotation_retired_key",
            body=body,
            token=current,
            jti=jti,
            keys=([NEXT_SECRET], [NEXT_WEBHOOK_SECRET]),
            webhook_keys=(NEXT_WEBHOOK_KEY,),
            expect="reject",
            reason="unknown_key_id",
        )
    )
    add(
        case(
            "rotation_token_without_kid_tries_every_key",
            body=body,
            token=sign(claims_for(body, jti), key=NEXT_SECRET),
            jti=jti,
            keys=both,
            signing_secret=NEXT_SECRET,
        )
    )
    add(
        case(
            "rotation_kid_names_another_held_key",
            body=body,
            token=sign(claims_for(body, jti), headers={"kid": key_id(NEXT_SECRET)}),
            jti=jti,
            keys=both,
            expect="reject",
            reason="invalid_signature",
        )
    )
    add(
        case(
            "rotation_two_signatures_new_key_held",
            body=body,
            token=promoted,
            jti=jti,
            keys=([NEXT_SECRET], [NEXT_WEBHOOK_SECRET]),
            signing_secret=NEXT_SECRET,
            webhook_keys=(NEXT_WEBHOOK_KEY, WEBHOOK_KEY),
        )
    )
    add(
        case(
            "rotation_two_signatures_old_key_held",
            body=body,
            token=current,
            jti=jti,
            webhook_keys=(NEXT_WEBHOOK_KEY, WEBHOOK_KEY),
        )
    )
    add(
        case(
            "rotation_signature_of_a_key_not_held",
            body=body,
            token=current,
            jti=jti,
            webhook_keys=(NEXT_WEBHOOK_KEY,),
            expect="reject",
            reason="invalid_webhook_signature",
        )
    )


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

    # Where the two verifiers decided differently before issue 15 #6; the stricter rule won.
    b6 = payload("resumes", 6, "Edsger")
    for n, (name, changes, reason) in enumerate(
        [
            # exp must be after iat, whatever the clock (Python accepted exp == iat == now)
            ("exp_equal_to_iat", {"exp": NOW}, "invalid_claim"),
            ("exp_before_iat", {"exp": NOW - 1}, "invalid_claim"),
            # aud names one URL: a list is refused (PyJWT accepted a list that contained it)
            ("aud_list", {"aud": [BASE + RESUMES]}, "invalid_claim"),
            # expected claims compare as JSON values: an object is no string
            ("sub_object", {"sub": {"name": "orchestrator"}}, "claim_mismatch"),
            ("exp_2_pow_64", {"exp": 2**64}, "invalid_claim"),
            ("exp_float", {"exp": NOW + TTL + 0.5}, "invalid_claim"),
        ]
    ):
        jti = event_id(600 + n)
        audience = BASE + RESUMES if name == "aud_list" else None
        add(
            case(
                name,
                body=b6,
                token=sign(claims_for(b6, jti, **changes)),
                jti=jti,
                audience=audience,
                expect="reject",
                reason=reason,
            )
        )
    j6 = event_id(6)
    add(
        case(
            "missing_webhook_id",
            body=b6,
            token=sign(claims_for(b6, j6)),
            jti=j6,
            without=("webhook-id",),
            expect="reject",
            reason="missing_webhook_id",
        )
    )
    add(
        case(
            "aud_null",
            body=b6,
            token=raw_token('{"alg":"HS256","typ":"JWT"}', payload_text(claims_for(b6, j6), aud="null")),
            jti=j6,
            expect="reject",
            reason="invalid_claim",
        )
    )
    for name, header in [
        ("typ_jws", {"typ": "JWS"}),
        ("typ_lowercase", {"typ": "jwt"}),
        ("typ_at_jwt", {"typ": "at+jwt"}),
    ]:
        add(
            case(
                name,
                body=b6,
                token=sign(claims_for(b6, j6), headers=header),
                jti=j6,
                expect="reject",
                reason="unsupported_token_type",
            )
        )
    add(
        case(
            "typ_null",
            body=b6,
            token=raw_token('{"alg":"HS256","typ":null}', json.dumps(claims_for(b6, j6))),
            jti=j6,
            expect="reject",
            reason="unsupported_token_type",
        )
    )
    add(
        case(
            "header_kid",
            body=b6,
            token=sign(claims_for(b6, j6), headers={"kid": "key-1"}),
            jti=j6,
            expect="reject",
            reason="unknown_key_id",
        )
    )
    add(
        case(
            "header_kid_not_a_string",
            body=b6,
            token=raw_token('{"alg":"HS256","kid":5,"typ":"JWT"}', json.dumps(claims_for(b6, j6))),
            jti=j6,
            expect="reject",
            reason="malformed_token",
        )
    )
    add_rotation_cases(add)
    add(
        case(
            "valid_without_typ",
            body=b6,
            token=raw_token('{"alg":"HS256"}', json.dumps(claims_for(b6, j6))),
            jti=j6,
        )
    )
    plain_claims = json.dumps(claims_for(b6, j6))
    malformed = {
        # which alg wins depends on the parser: refused
        "header_duplicate_alg": raw_token('{"alg":"none","alg":"HS256","typ":"JWT"}', plain_claims),
        "claims_duplicate_exp": raw_token(
            '{"alg":"HS256","typ":"JWT"}', payload_text(claims_for(b6, j6), exp=str(NOW + 1))
        ),
        # numbers past the float range: an uncaught OverflowError (HTTP 500) in Python before
        "exp_10_pow_400": raw_token(
            '{"alg":"HS256","typ":"JWT"}', payload_text(claims_for(b6, j6, exp=None), exp="1" + "0" * 400)
        ),
        "exp_5000_digits": raw_token(
            '{"alg":"HS256","typ":"JWT"}', payload_text(claims_for(b6, j6, exp=None), exp="9" * 5000)
        ),
        "exp_1e400": raw_token('{"alg":"HS256","typ":"JWT"}', payload_text(claims_for(b6, j6, exp=None), exp="1e400")),
        "exp_nan": raw_token('{"alg":"HS256","typ":"JWT"}', payload_text(claims_for(b6, j6, exp=None), exp="NaN")),
        "claim_lone_surrogate": raw_token(
            '{"alg":"HS256","typ":"JWT"}', payload_text(claims_for(b6, j6), note='"\\ud800"')
        ),
        "claims_nested_127_deep": raw_token(
            '{"alg":"HS256","typ":"JWT"}', payload_text(claims_for(b6, j6), nested="[" * 127 + "]" * 127)
        ),
    }
    good = sign(claims_for(b6, j6))
    head, _, mac = good.rpartition(".")
    last = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".index(mac[-1])
    # 32 bytes are 43 characters whose last carries 2 stray bits: lenient decoders ignore them
    malformed["signature_stray_bits"] = (
        head + "." + mac[:-1] + "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"[last | 1]
    )
    malformed["signature_padded"] = good + "="
    for name, token in malformed.items():
        add(case(name, body=b6, token=token, jti=j6, expect="reject", reason="malformed_token"))
    add(
        case(
            "claims_nested_126_deep",
            body=b6,
            token=raw_token(
                '{"alg":"HS256","typ":"JWT"}', payload_text(claims_for(b6, j6), nested="[" * 126 + "]" * 126)
            ),
            jti=j6,
        )
    )
    for name, text in [("webhook_timestamp_5000_digits", "1" * 5000), ("webhook_timestamp_plus_sign", f"+{NOW}")]:
        add(
            case(
                name,
                body=b6,
                token=good,
                jti=j6,
                timestamp_text=text,
                expect="reject",
                reason="malformed_header",
            )
        )

    # Issue 15 #6: a retry (same jti, later exp) keeps the event id remembered until its own exp,
    # past the first token's: at NOW + TTL + 1 the retry token is still a duplicate.
    add(
        case(
            "retry_remembered_until_its_own_exp",
            body=body,
            token=retry,
            jti=event_id(1),
            now=NOW + TTL + 1,
            expect="reject",
            reason="replayed",
            replay_of="retry_of_accepted_event",
            timestamp=NOW + TTL + 1,
        )
    )

    # The receipt every accepted request's answer carries, duplicates included: bound to the iat of
    # the token that request carries (a retry's fresh token gives another receipt), signed with the
    # key that verified the token.
    for c in cases:
        acknowledged = c["expect"] == "accept" or c["reason"] == "replayed"
        body_bytes = base64.b64decode(c["body_base64"])
        signing_secret = c.pop("_signing_secret")
        # the event id: the webhook-id header, which an accepted request's jti equals
        c["receipt"] = (
            spec_receipt(signing_secret, c["headers"]["webhook-id"], token_iat(c["headers"]), body_bytes)
            if acknowledged
            else None
        )
    receipts = [
        ("uuid_and_jsonb_body", SECRET, event_id(1), NOW, body),
        ("another_iat", SECRET, event_id(1), NOW + 5, body),
        ("iat_zero", SECRET, event_id(1), 0, body),
        ("iat_u64_max", SECRET, event_id(1), 2**64 - 1, body),
        ("empty_body", SECRET, event_id(2), NOW, b""),
        ("non_ascii_body", SECRET, "evt_01HZY3", NOW, '{"name": "Zoë 🚀"}'.encode()),
        ("another_secret", "another-secret-of-at-least-32-bytes!!", event_id(1), NOW, body),
        ("non_ascii_secret_is_utf8", "clé-secrète-de-plus-de-32-octets-ok", event_id(1), NOW, body),
        ("dots_in_the_id", SECRET, "a.b.c", NOW, b"{}"),
        # a rotation: the same event and attempt, answered by a receiver holding the staged key, names that key
        ("staged_key_names_its_kid", NEXT_SECRET, event_id(1), NOW, body),
    ]
    vectors = {
        "secret": SECRET,
        "webhook_secret": WEBHOOK_SECRET,
        "cases": cases,
        "receipts": [
            {
                "name": name,
                "secret": secret,
                "webhook_id": webhook_id,
                "iat": iat,
                "body_base64": base64.b64encode(data).decode(),
                "receipt": spec_receipt(secret, webhook_id, iat, data),
            }
            for name, secret, webhook_id, iat, data in receipts
        ],
    }
    out = pathlib.Path(__file__).with_name("vectors.sample.json")
    out.write_text(json.dumps(vectors, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {len(cases)} cases to {out}")


if __name__ == "__main__":
    main()
