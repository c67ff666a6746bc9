"""Shared test vectors for both verifiers: the crate's sample, and real requests the database sent.

The stand-in's pg_net delivers each request to a recording endpoint; the
vectors hold them byte for byte (headers, raw body), valid and tampered, with
the clock to verify them at. The Python verifier must agree with every case
here, refusing with the case's `reason`, the Rust crate's error code;
scripts/test.sh then runs the Rust crate's tests on the same file
(`WEBHOOK_VECTORS`), so the two verifiers decide every case identically.
verifiers/rust/tests/vectors.sample.json (made by make_sample_vectors.py, no
database needed) holds the edge cases where they used to differ; both run it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
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
from webhook_verifier import DEFAULT_EXPECTED_CLAIMS, KeySet, VerificationError, Verifier, key_id, receipt

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PATH = ROOT / ".local" / "webhook-vectors.json"
SAMPLE_PATH = ROOT / "verifiers" / "rust" / "tests" / "vectors.sample.json"
WRONG_KEY = "not-the-orchestrators-key-" + "9" * 20
#: The Standard Webhooks key promoted in place of binding_support's (a rotation's second signature).
NEXT_WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"vectors-next-standard-webhooks-key").decode()


def spec_receipt(secret: str, webhook_id: str, iat: int, body: bytes) -> str:
    """webhook-receipt from its definition (not webhook_verifier's), for the cases both verifiers acknowledge:
    `v1,<kid>,<mac> v1,<mac>`, <mac> = b64url-nopad(HMAC-SHA256(secret, "<webhook-id>.<iat>.<body_sha256>"))."""
    body_hash = base64.urlsafe_b64encode(hashlib.sha256(body).digest()).rstrip(b"=").decode()
    mac = hmac.new(secret.encode(), f"{webhook_id}.{iat}.{body_hash}".encode(), hashlib.sha256).digest()
    text = base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
    kid = base64.urlsafe_b64encode(
        hmac.new(secret.encode(), b"secure-webhooks key id v1", hashlib.sha256).digest()
    ).decode()[:16]
    return f"v1,{kid},{text} v1,{text}"


def token_iat(headers: dict[str, str]) -> int:
    """The `iat` of the token the database minted for this request (each attempt mints its own)."""
    token = next(v for k, v in headers.items() if k.lower() == "authorization").split()[1]
    iat = jwt.decode(token, options={"verify_signature": False})["iat"]
    assert type(iat) is int, f"the database wrote iat {iat!r}, not an integer"
    return iat


def signing_secret(secret: str, case: dict[str, Any]) -> str:
    """The key that signed the case's token: of the case's key set (a rotation), the one its kid names,
    or without kid the one whose signature fits; else the file's `secret`."""
    if "keys" not in case:
        return secret
    token = next(v for k, v in case["headers"].items() if k.lower() == "authorization").split()[1]
    kid = jwt.get_unverified_header(token).get("kid")
    for candidate in case["keys"]["jwt_secrets"]:
        if kid == key_id(candidate) or (kid is None and valid_signature(token, candidate)):
            return candidate
    raise AssertionError(f"{case['name']}: no key of its set signed it")


def valid_signature(token: str, secret: str) -> bool:
    signing_input, _, signature = token.rpartition(".")
    mac = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode() == signature


def with_receipts(secret: str, cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for c in cases:
        c["receipt"] = None
        if c["expect"] == "accept" or c["reason"] == "replayed":
            webhook_id = next(v for k, v in c["headers"].items() if k.lower() == "webhook-id")
            body = base64.b64decode(c["body_base64"])
            c["receipt"] = spec_receipt(signing_secret(secret, c), webhook_id, token_iat(c["headers"]), body)
    return cases


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


def capture_promoted(cluster, conn) -> tuple[Received, str]:
    """A request signed after a Standard Webhooks key was promoted: signatures with the new key and the old."""
    conn.execute(
        "SELECT vault.create_secret(%s, 'app_webhook_secret_next') WHERE NOT EXISTS "
        "(SELECT FROM vault.secrets WHERE name = 'app_webhook_secret_next')",
        (NEXT_WEBHOOK_SECRET,),
    )
    promoted = {"webhook_secret_name": "app_webhook_secret_next", "previous_webhook_secret_name": "app_webhook_secret"}
    with ScriptedServer() as endpoint, direct_webhook(cluster, endpoint.url + PATH, **promoted):
        insert_resumes(conn, "vector-promoted.pdf")
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
    promoted, promoted_url = capture_promoted(cluster, conn)
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
        case("body-changed", tampered_body, url, expect="reject", reason="body_hash_mismatch"),
        case(
            "endpoint-changed",
            with_aud,
            aud_url.replace(PATH, "/ingest/resumes/batch"),
            audience=aud_url.replace(PATH, "/ingest/resumes/batch"),
            expect="reject",
            reason="audience_mismatch",
        ),
        case("aud-unexpected", with_aud, aud_url, expect="reject", reason="unexpected_audience"),
        case("expired", plain, url, now=claims["exp"] + 1, expect="reject", reason="expired"),
        # the token names its key, which the orchestrator does not hold
        case("wrong-key", wrong_key, wrong_url, expect="reject", reason="unknown_key_id"),
        # a rotation: the key set holds the current and the staged key (WRONG_KEY stands for the staged one)
        case("rotation-current-key-both-held", plain, url, keys=keys([WRONG_KEY, secret], [webhook_secret])),
        case("rotation-staged-key-both-held", wrong_key, wrong_url, keys=keys([secret, WRONG_KEY], [webhook_secret])),
        case(
            "rotation-retired-key",
            plain,
            url,
            keys=keys([WRONG_KEY], [webhook_secret]),
            expect="reject",
            reason="unknown_key_id",
        ),
        # promoted Standard Webhooks key: the request lists its signature and the old key's
        case("rotation-two-signatures-old-key-held", promoted, promoted_url),
        case(
            "rotation-two-signatures-new-key-held", promoted, promoted_url, keys=keys([secret], [NEXT_WEBHOOK_SECRET])
        ),
        case("replayed-jti", plain, url, expect="reject", reason="replayed", replay_of="valid-pgcrypto"),
        case(
            "alg-none",
            with_token(plain, f"{none_header}.{claims_part}."),
            url,
            expect="reject",
            reason="unsupported_algorithm",
        ),
        case("alg-hs512", with_token(plain, hs512), url, expect="reject", reason="unsupported_algorithm"),
        case("webhook-signature-forged", tampered_signature, url, expect="reject", reason="invalid_webhook_signature"),
        case("webhook-timestamp-stale", plain, url, now=claims["iat"] + 301, expect="reject", reason="stale_timestamp"),
    ]
    return {"secret": secret, "webhook_secret": webhook_secret, "cases": with_receipts(secret, cases)}


def keys(jwt_secrets: list[str], webhook_secrets: list[str]) -> dict[str, list[str]]:
    """A case's own key set, in the form vectors.rs reads (instead of the file's secret and webhook_secret)."""
    return {"jwt_secrets": jwt_secrets, "webhook_secrets": webhook_secrets}


def python_outcomes(vectors: dict[str, Any]) -> dict[str, tuple[str, str | None]]:
    """Each case's ("accept" | "reject", reason) by the Python verifier, configured as vectors.rs configures
    the Rust one: a verifier per case, the crate's default expected claims, the case's `now`; its replay_of
    chain verified first on the same verifier, each at its own `now`, and held to its own expectation."""
    by_name = {c["name"]: c for c in vectors["cases"]}
    outcomes = {}
    for case in vectors["cases"]:
        now = [case["now"]]
        if "keys" in case:  # a rotation: the case's key set
            keys = {"keys": KeySet.of(case["keys"]["jwt_secrets"], case["keys"]["webhook_secrets"])}
        else:
            keys = {"secret": vectors["secret"], "webhook_secret": vectors["webhook_secret"]}
        verifier = Verifier(
            audience=case["audience"],
            expected_claims=DEFAULT_EXPECTED_CLAIMS,
            clock=lambda now=now: now[0],
            **keys,
        )
        chain, earlier = [], case["replay_of"]
        while earlier is not None:
            chain.append(by_name[earlier])
            earlier = by_name[earlier]["replay_of"]
        for earlier in reversed(chain):
            now[0] = earlier["now"]
            expected = (earlier["expect"], earlier["reason"], earlier.get("receipt"))
            assert outcome(verifier, earlier) == expected, f"{case['name']}: its replay_of case {earlier['name']}"
        now[0] = case["now"]
        outcomes[case["name"]] = outcome(verifier, case)
    return outcomes


def outcome(verifier: Verifier, case: dict[str, Any]) -> tuple[str, str | None, str | None]:
    """(expect, reason, the webhook-receipt the answer carries) by the Python verifier."""
    try:
        verified = verifier.verify(case["headers"], base64.b64decode(case["body_base64"]))
    except VerificationError as error:
        return "reject", error.code, None
    return ("reject", "replayed", verified.receipt) if verified.duplicate else ("accept", None, verified.receipt)


def expectations(vectors: dict[str, Any]) -> dict[str, tuple[str, str | None, str | None]]:
    return {c["name"]: (c["expect"], c["reason"], c.get("receipt")) for c in vectors["cases"]}


def test_the_python_verifier_agrees_with_every_sample_vector():
    """The same file the crate's tests/vectors.rs runs, with the same reasons (the crate's error codes)."""
    sample = json.loads(SAMPLE_PATH.read_text(encoding="utf-8"))
    assert len(sample["cases"]) >= 50
    assert python_outcomes(sample) == expectations(sample)


def test_the_python_receipt_is_the_sample_receipts():
    """(secret, webhook id, iat, body) -> webhook-receipt, as the crate's receipt() is held to them too."""
    sample = json.loads(SAMPLE_PATH.read_text(encoding="utf-8"))
    assert len(sample["receipts"]) >= 5
    for example in sample["receipts"]:
        body = base64.b64decode(example["body_base64"])
        computed = receipt(example["secret"], example["webhook_id"], example["iat"], body)
        assert computed == example["receipt"], example["name"]
    acknowledged = {c["name"] for c in sample["cases"] if c["expect"] == "accept" or c["reason"] == "replayed"}
    assert acknowledged == {c["name"] for c in sample["cases"] if c["receipt"] is not None}
    # each bound to the iat of its own token: a retry (fresh token, same id and body) gets another one
    assert with_receipts(sample["secret"], [dict(c) for c in sample["cases"]]) == sample["cases"]
    receipts = {c["name"]: c["receipt"] for c in sample["cases"]}
    assert receipts["replayed"] == receipts["valid"] != receipts["retry_of_accepted_event"]


def test_receipts_name_the_key_that_verified_the_token_in_the_sample_rotation():
    """Across a rotation each receipt names, by kid, the key its token was checked with: the staged key's
    after a promote, so the reconciler checks it with that key (and a kid-less copy follows it)."""
    sample = json.loads(SAMPLE_PATH.read_text(encoding="utf-8"))
    cases = {c["name"]: c for c in sample["cases"]}
    current, staged = cases["rotation_current_key_with_both_held"], cases["rotation_next_key_with_both_held"]
    current_kid, staged_kid = (jwt.get_unverified_header(bearer(c)).get("kid") for c in (current, staged))
    assert current_kid != staged_kid
    for c, kid in ((current, current_kid), (staged, staged_kid), (cases["valid"], key_id(sample["secret"]))):
        named, plain = c["receipt"].split(" ")
        assert named.startswith(f"v1,{kid},") and plain == "v1," + named.rsplit(",", 1)[1]
    # a token without kid still gets a receipt naming the key that fitted it
    untagged = cases["rotation_token_without_kid_tries_every_key"]
    assert untagged["receipt"].startswith(f"v1,{staged_kid},")
    (staged_example,) = [r for r in sample["receipts"] if r["name"] == "staged_key_names_its_kid"]
    assert staged_example["receipt"].startswith(f"v1,{key_id(staged_example['secret'])},")


def bearer(c: dict[str, Any]) -> str:
    return next(v for k, v in c["headers"].items() if k.lower() == "authorization").split()[1]


def test_the_sample_vectors_cover_where_the_verifiers_used_to_differ():
    sample = json.loads(SAMPLE_PATH.read_text(encoding="utf-8"))
    reasons = {c["name"]: c["reason"] for c in sample["cases"]}
    expired = next(c for c in sample["cases"] if c["name"] == "expired")
    token = next(v for k, v in expired["headers"].items() if k.lower() == "authorization").split()[1]
    assert jwt.decode(token, options={"verify_signature": False})["exp"] == expired["now"]  # exp == now
    assert reasons["expired"] == "expired"
    assert {reasons[n] for n in ("exp_equal_to_iat", "exp_before_iat", "aud_list", "aud_null")} == {"invalid_claim"}
    assert reasons["missing_webhook_id"] == "missing_webhook_id"
    assert {reasons[n] for n in ("typ_jws", "typ_lowercase", "typ_null")} == {"unsupported_token_type"}
    assert {reasons[n] for n in ("exp_10_pow_400", "exp_5000_digits", "signature_stray_bits")} == {"malformed_token"}
    assert reasons["webhook_timestamp_5000_digits"] == "malformed_header"
    assert reasons["retry_remembered_until_its_own_exp"] == "replayed"


@pytest.fixture(scope="module")
def vectors(supabase_ready, pg_net_worker, receiver_secret) -> dict[str, Any]:
    with psycopg.connect(supabase_ready.dsn("postgres"), autocommit=True) as conn:
        made = make_vectors(supabase_ready, conn, receiver_secret)
    path = Path(os.environ.get("WEBHOOK_VECTORS", DEFAULT_PATH))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(made, indent=2) + "\n", encoding="utf-8")
    return made


def test_the_python_verifier_agrees_with_every_vector(vectors):
    assert python_outcomes(vectors) == expectations(vectors)


def test_the_vectors_cover_valid_and_every_tampering(vectors):
    names = {c["name"] for c in vectors["cases"]}
    assert {"valid-pgcrypto", "valid-pgjwt", "valid-at-least-once", "body-changed", "endpoint-changed"} <= names
    (promoted,) = [c["headers"] for c in vectors["cases"] if c["name"] == "rotation-two-signatures-old-key-held"]
    signatures = next(v for k, v in promoted.items() if k.lower() == "webhook-signature").split(" ")
    assert len(signatures) == 2 and all(s.startswith("v1,") for s in signatures)
    # every token the database mints names its key
    for case in vectors["cases"]:
        if case["name"].startswith(("valid-", "rotation-")):
            token = next(v for k, v in case["headers"].items() if k.lower() == "authorization").split()[1]
            assert jwt.get_unverified_header(token)["kid"] in {key_id(vectors["secret"]), key_id(WRONG_KEY)}
    assert {"expired", "wrong-key", "replayed-jti", "alg-none", "aud-unexpected"} <= names
    # Both signers produce tokens PyJWT accepts as well.
    for name in ("valid-pgcrypto", "valid-pgjwt"):
        (token,) = [c["headers"] for c in vectors["cases"] if c["name"] == name]
        bearer = next(v for k, v in token.items() if k.lower() == "authorization").split()[1]
        assert jwt.decode(bearer, vectors["secret"], algorithms=["HS256"], options={"verify_exp": False})["jti"]
