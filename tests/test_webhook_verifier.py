"""The Python verifier's own rules, without a database (the shared vectors cover real requests and the
edge cases both verifiers must decide alike: tests/test_verifier_vectors.py)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from pathlib import Path

import jwt
import pytest

from webhook_verifier import (
    _REASONS,
    RECEIPT_HEADER,
    KeyFile,
    KeySet,
    SeenEvents,
    VerificationError,
    Verifier,
    body_sha256,
    key_id,
    receipt,
)

SECRET = "unit-test-signing-secret-" + "x" * 16
BODY = b'{"record": {"id": 1}, "type": "INSERT"}'
CONTENT_TYPE = {"Content-Type": "application/json"}
NOW = 1_767_225_600
ERROR_RS = Path(__file__).resolve().parent.parent / "verifiers" / "rust" / "src" / "error.rs"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**changes) -> dict:
    base = {"iat": NOW, "exp": NOW + 60, "jti": "e-1", "body_sha256": body_sha256(BODY)}
    return {k: v for k, v in {**base, **changes}.items() if v is not None}


def request(token: str, webhook_id: str | None = "e-1") -> dict[str, str]:
    headers = {**CONTENT_TYPE, "Authorization": f"Bearer {token}"}
    return headers if webhook_id is None else {**headers, "webhook-id": webhook_id}


def headers(**changes) -> dict[str, str]:
    return request(jwt.encode(claims(**changes), SECRET), changes.get("jti", "e-1"))


def raw_token(header: str, payload: str, key: str = SECRET) -> str:
    """An HS256 token over this exact JSON text, for what PyJWT would not print."""
    signing_input = b64url(header.encode()) + "." + b64url(payload.encode())
    return signing_input + "." + b64url(hmac.new(key.encode(), signing_input.encode(), hashlib.sha256).digest())


def verifier(**options) -> Verifier:
    return Verifier(SECRET, clock=lambda: NOW, **options)


def refusal(headers: dict[str, str], body: bytes = BODY, **options) -> VerificationError:
    with pytest.raises(VerificationError) as refused:
        verifier(**options).verify(headers, body)
    assert SECRET[:8] not in str(refused.value)
    return refused.value


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
    t = NOW
    clock = [t]
    checker = Verifier(SECRET, clock=lambda: clock[0])
    first, retry = headers(iat=t, exp=t + 300), headers(iat=t + 10, exp=t + 600)
    assert checker.verify(first, BODY).duplicate is False
    clock[0] = t + 10
    assert checker.verify(retry, BODY).duplicate is True
    clock[0] = t + 301
    assert checker.verify(retry, BODY).duplicate is True  # before the fix: accepted as new
    clock[0] = t + 599
    assert checker.verify(retry, BODY).duplicate is True
    clock[0] = t + 600
    with pytest.raises(VerificationError) as refused:
        checker.verify(retry, BODY)
    assert refused.value.code == "expired"
    assert checker.verify(headers(iat=t + 600, exp=t + 900), BODY).duplicate is False


def test_the_codes_are_the_rust_crates():
    """`VerificationError.code` names the same refusal as `VerifyError::code()`, so vectors compare them."""
    rust = set(re.findall(r'=> "([a-z_]+)",', ERROR_RS.read_text(encoding="utf-8")))
    # the crate's own: reading the body stream, duplicates (Verified.duplicate here), its store failing
    assert set(_REASONS) == rust - {"body_read", "replayed", "replay_store"}


def test_exp_equal_to_now_is_expired_and_the_leeway_covers_it():
    assert refusal(headers(iat=NOW - 60, exp=NOW)).code == "expired"
    assert verifier(leeway=1).verify(headers(iat=NOW - 60, exp=NOW), BODY).event_id == "e-1"
    assert verifier().verify(headers(iat=NOW - 60, exp=NOW + 1), BODY).event_id == "e-1"


def test_exp_not_after_iat_is_refused_whatever_the_clock():
    for exp in (NOW, NOW - 1):
        assert refusal(headers(iat=NOW, exp=exp)).code == "invalid_claim"
        assert refusal(headers(iat=NOW, exp=exp), leeway=30).code == "invalid_claim"


def test_leeway_and_iat_in_the_future():
    refused = refusal(headers(iat=NOW + 30, exp=NOW + 90))
    assert (refused.code, refused.reason) == ("issued_in_future", "not_yet_valid")
    assert verifier(leeway=60).verify(headers(iat=NOW + 30, exp=NOW + 90), BODY).event_id == "e-1"


def test_webhook_id_is_required_and_equal_to_jti():
    assert refusal({**headers(), "webhook-id": "someone-else"}).code == "webhook_id_mismatch"
    refused = refusal(request(jwt.encode(claims(), SECRET), webhook_id=None))
    assert (refused.code, refused.reason) == ("missing_webhook_id", "claims")


def test_aud_is_one_string():
    url = "https://orchestrator.example.com/ingest/resumes/batch"
    assert verifier(audience=url).verify(headers(aud=url), BODY).claims["aud"] == url
    for aud in ([url], [], {"url": url}):
        assert refusal(headers(aud=aud), audience=url).code == "invalid_claim"
        assert refusal(headers(aud=aud)).code == "invalid_claim"
    null_aud = raw_token('{"alg":"HS256"}', json.dumps(claims(aud=None) | {"aud": None}))
    assert refusal(request(null_aud)).code == "invalid_claim"
    assert refusal(headers(aud=url + "/")).code == "unexpected_audience"
    assert refusal(headers(aud=url + "/"), audience=url).code == "audience_mismatch"
    assert refusal(headers(), audience=url).code == "missing_claim"


@pytest.mark.filterwarnings("ignore:The HMAC key is")  # HS512 signed with the HS256 key on purpose
def test_only_hs256_with_typ_jwt_and_nothing_else_in_the_header():
    for typ in ("JWS", "jwt", "at+jwt"):
        assert refusal(request(jwt.encode(claims(), SECRET, headers={"typ": typ}))).code == "unsupported_token_type"
    assert refusal(request(raw_token('{"alg":"HS256","typ":null}', json.dumps(claims())))).code == (
        "unsupported_token_type"
    )
    assert verifier().verify(request(raw_token('{"alg":"HS256"}', json.dumps(claims()))), BODY).event_id == "e-1"
    kid = jwt.encode(claims(), SECRET, headers={"kid": "key-1"})
    assert refusal(request(kid)).code == "unknown_key_id"
    assert refusal(request(jwt.encode(claims(), SECRET, headers={"jku": "https://x"}))).code == (
        "unsupported_header_parameter"
    )
    assert refusal(request(jwt.encode(claims(), SECRET, algorithm="HS512"))).code == "unsupported_algorithm"
    assert refusal(request(raw_token('{"typ":"JWT"}', json.dumps(claims())))).code == "malformed_token"
    both = raw_token('{"alg":"none","alg":"HS256"}', json.dumps(claims()))
    assert refusal(request(both)).code == "malformed_token"


@pytest.mark.parametrize(
    "exp",
    ["1" + "0" * 400, "9" * 5000, "1e400", "-1e400", "NaN", "Infinity"],
    ids=["10**400", "5000 digits", "1e400", "-1e400", "NaN", "Infinity"],
)
def test_numbers_past_the_float_range_are_clean_refusals(exp):
    """They raised OverflowError or ValueError (a 500 in a server) before; serde_json refuses them."""
    payload = json.dumps(claims(exp=None))[:-1] + f', "exp": {exp}}}'
    assert refusal(request(raw_token('{"alg":"HS256"}', payload))).code == "malformed_token"


@pytest.mark.parametrize("exp", [2**64, -1, NOW + 60.5, True, "1767225660"], ids=repr)
def test_exp_must_be_a_u64(exp):
    assert refusal(headers(exp=exp)).code == "invalid_claim"
    negative_zero = json.dumps(claims(exp=None))[:-1] + ', "exp": -0}'  # a float to serde_json
    assert refusal(request(raw_token('{"alg":"HS256"}', negative_zero))).code == "invalid_claim"


def test_json_the_rust_parser_refuses_is_refused():
    def with_claim(text: str) -> dict[str, str]:
        return request(raw_token('{"alg":"HS256"}', json.dumps(claims())[:-1] + f', "x": {text}}}'))

    assert refusal(with_claim('"\\ud800"')).code == "malformed_token"  # a lone surrogate
    assert refusal(with_claim("[" * 127 + "]" * 127)).code == "malformed_token"  # serde_json's depth limit
    assert refusal(with_claim("[" * 100_000 + "]" * 100_000)).code == "malformed_token"  # not a RecursionError
    assert verifier().verify(with_claim("[" * 126 + "]" * 126), BODY).event_id == "e-1"
    assert refusal(with_claim('{"a": 1, "a": 2}')).code == "malformed_token"
    duplicate_exp = json.dumps(claims())[:-1] + f', "exp": {NOW + 1}}}'
    assert refusal(request(raw_token('{"alg":"HS256"}', duplicate_exp))).code == "malformed_token"


def test_base64url_must_be_canonical():
    """Lenient decoders ignore stray bits in the last character: a second spelling of each signature."""
    token = jwt.encode(claims(), SECRET)
    head, _, mac = token.rpartition(".")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    stray = head + "." + mac[:-1] + alphabet[alphabet.index(mac[-1]) | 1]
    assert stray != token and base64.urlsafe_b64decode(stray.rpartition(".")[2] + "=") == base64.urlsafe_b64decode(
        mac + "="
    )
    assert refusal(request(stray)).code == "malformed_token"
    assert refusal(request(token + "=")).code == "malformed_token"
    assert refusal(request(token.replace(".", "!.", 1))).code == "malformed_token"
    assert refusal(request(head + "." + b64url(b"\0" * 32))).code == "invalid_signature"


def test_expected_claims_compare_as_json_values():
    assert verifier(expected_claims={"n": 1}).verify(headers(n=1), BODY).event_id == "e-1"
    for value in (True, 1.0, "1", [1]):
        assert refusal(headers(n=value), expected_claims={"n": 1}).code == "claim_mismatch"
    assert refusal(headers(), expected_claims={"n": 1}).code == "missing_claim"


MALFORMED_TIMESTAMPS = ["1" * 5000, f"+{NOW}", f" {NOW}", "\u0661\u0667\u0666\u0667", "9223372036854775808"]


@pytest.mark.parametrize(
    ("timestamp", "code"),
    [
        *((text, "malformed_header") for text in MALFORMED_TIMESTAMPS),
        (f"{NOW - 301}", "stale_timestamp"),
        (f"000{NOW}", None),
    ],
    ids=["5000 digits", "sign", "space", "arabic digits", "past i64", "stale", "leading zeros"],
)
def test_webhook_timestamp_is_ascii_digits(timestamp, code):
    key = b"unit-test-standard-webhooks-key!"
    mac = hmac.new(key, f"e-1.{timestamp}.".encode() + BODY, hashlib.sha256).digest()
    signed = {**headers(), "webhook-timestamp": timestamp, "webhook-signature": "v1," + base64.b64encode(mac).decode()}
    options = {"webhook_secret": "whsec_" + base64.b64encode(key).decode()}
    if code is None:
        assert verifier(**options).verify(signed, BODY).event_id == "e-1"
    else:
        assert refusal(signed, **options).code == code


def test_bearer_scheme_and_content_type():
    token = jwt.encode(claims(), SECRET)
    assert refusal({k: v for k, v in headers().items() if k != "Authorization"}).code == "missing_authorization"
    for value in ("Basic dXNlcjpwYXNz", "Bearer", f"Bearer\t{token}", f"Bearer {token}\u00e9"):
        assert refusal({**headers(), "Authorization": value}).code == "invalid_authorization_scheme"
    assert verifier().verify({**headers(), "Authorization": f"  bearer   {token} "}, BODY).event_id == "e-1"
    assert refusal({**headers(), "Content-Type": "text/plain"}).code == "unsupported_content_type"
    assert verifier().verify({**headers(), "Content-Type": "Application/JSON; charset=utf-8"}, BODY).event_id
    no_type = {k: v for k, v in headers().items() if k != "Content-Type"}
    assert verifier(require_json_content_type=False).verify(no_type, BODY).event_id == "e-1"


def test_body_limit_and_hash():
    assert refusal(headers(), max_body_bytes=len(BODY) - 1).code == "payload_too_large"
    refused = refusal(headers(), b"{}")
    assert (refused.code, refused.reason) == ("body_hash_mismatch", "body_hash")


def test_unbound_tokens_need_require_binding_off():
    token = jwt.encode({"iat": NOW, "exp": NOW + 60}, SECRET)
    assert refusal(request(token, webhook_id=None)).code == "missing_claim"
    assert verifier(require_binding=False).verify(request(token, webhook_id=None), BODY).event_id is None


def test_accepted_and_duplicate_requests_carry_the_receipt_for_their_id_iat_and_body():
    checker = verifier()
    accepted = checker.verify(headers(), BODY)
    message = f"e-1.{NOW}.{b64url(hashlib.sha256(BODY).digest())}".encode()
    mac = b64url(hmac.new(SECRET.encode(), message, hashlib.sha256).digest())
    # the key's id, then the same MAC without it for reconcilers older than key ids
    expected = f"v1,{key_id(SECRET)},{mac} v1,{mac}"
    assert accepted.receipt == expected == receipt(SECRET, "e-1", NOW, BODY)
    assert accepted.kid == key_id(SECRET) and len(expected) == 3 + 16 + 1 + 43 + 1 + 3 + 43
    assert receipt(SECRET.encode(), "e-1", NOW, BODY) == expected
    assert accepted.receipt_header() == (RECEIPT_HEADER, expected) == ("webhook-receipt", expected)
    # a retry mints a new token: its receipt is bound to that token's iat, not the first one's
    duplicate = checker.verify(headers(iat=NOW - 5), BODY)
    assert (duplicate.duplicate, duplicate.receipt) == (True, receipt(SECRET, "e-1", NOW - 5, BODY))
    assert checker.verify(headers(), BODY).receipt == expected
    assert receipt(SECRET, "e-2", NOW, BODY) != expected != receipt(SECRET, "e-1", NOW, b"{}")
    assert SECRET not in expected
    unbound = jwt.encode({"iat": NOW, "exp": NOW + 60}, SECRET)
    assert verifier(require_binding=False).verify(request(unbound, None), BODY).receipt_header() is None


def test_a_receipt_for_the_same_id_and_body_but_another_iat_differs():
    """A receipt copied from an earlier attempt's response does not fit the next attempt's token."""
    first = receipt(SECRET, "e-1", NOW, BODY)
    assert receipt(SECRET, "e-1", NOW + 1, BODY) != first
    assert receipt(SECRET, "e-1", NOW - 60, BODY) != first
    # iat is written in decimal, so the message is not ambiguous with a dotted id
    assert receipt(SECRET, "e-1", 12, BODY) != receipt(SECRET, "e-1.1", 2, BODY)
    with pytest.raises(ValueError):
        receipt(SECRET, "e-1", -1, BODY)


NEXT = "unit-test-next-signing-secret-" + "y" * 16


def signed_by(key: str, jti: str = "e-1", kid: str | None = "derive") -> dict[str, str]:
    """A request whose token `key` signed, naming it in kid (the database's way) unless told otherwise."""
    header = {} if kid is None else {"kid": key_id(key) if kid == "derive" else kid}
    return request(jwt.encode(claims(jti=jti), key, headers=header), jti)


def test_key_ids_are_the_databases():
    """The id the trigger's SQL writes (trigger_function.key_id_expression) and the Rust crate's key_id()."""
    from secure_webhooks.signing.trigger_function import key_id as minted

    assert key_id("key") == minted("key") == "R6wPs6M70uxu7dmW"  # the crate's tests/key_rotation.rs has it too
    assert key_id(SECRET.encode()) == key_id(SECRET) != key_id(NEXT)


def test_a_key_set_checks_each_token_with_the_key_its_kid_names():
    keys = KeySet.of([SECRET, NEXT])
    both = Verifier(keys=keys, clock=lambda: NOW)
    for n, key in enumerate((SECRET, NEXT)):
        verified = both.verify(signed_by(key, jti=f"e-{n}"), BODY)
        assert verified.kid == key_id(key)
        assert verified.receipt == receipt(key, f"e-{n}", NOW, BODY)  # signed with the key that verified it
        assert verified.receipt.startswith(f"v1,{key_id(key)},")  # and naming it
    # a kid naming one held key over a token another signed: only the named key is tried
    with pytest.raises(VerificationError) as refused:
        both.verify(signed_by(SECRET, jti="e-9", kid=key_id(NEXT)), BODY)
    assert refused.value.code == "invalid_signature"
    # without kid (minted before key ids): every key held is tried
    assert both.verify(signed_by(NEXT, jti="e-10", kid=None), BODY).kid == key_id(NEXT)


def test_an_unknown_kid_has_its_own_error():
    error = refusal(signed_by(NEXT))
    assert (error.code, error.reason) == ("unknown_key_id", "unknown_key")
    assert NEXT not in str(error)


def test_a_key_set_takes_either_keys_or_secrets():
    with pytest.raises(ValueError):
        Verifier()
    with pytest.raises(ValueError):
        Verifier(SECRET, keys=KeySet.of([NEXT]))
    with pytest.raises(ValueError):
        KeySet.of([])
    with pytest.raises(ValueError):
        KeySet.of([SECRET], ["not-whsec"])


def write_keys(path: Path, document: object) -> None:
    """Replace the key file atomically, as docs/key-rotation.md asks."""
    fresh = path.with_suffix(".new")
    fresh.write_text(json.dumps(document), encoding="utf-8")
    fresh.replace(path)


def test_a_key_file_is_read_again_when_it_changes(tmp_path):
    path = tmp_path / "keys.json"
    write_keys(path, {"jwt_secrets": [SECRET]})
    following = Verifier(keys=KeyFile(path), clock=lambda: NOW)
    assert following.verify(signed_by(SECRET, jti="a"), BODY).kid == key_id(SECRET)
    with pytest.raises(VerificationError) as refused:
        following.verify(signed_by(NEXT, jti="b"), BODY)
    assert refused.value.code == "unknown_key_id"

    write_keys(path, {"jwt_secrets": [SECRET, NEXT]})  # stage: no restart
    assert following.verify(signed_by(NEXT, jti="c"), BODY).kid == key_id(NEXT)

    path.write_text('{"jwt_secrets": [', encoding="utf-8")  # half written: the last good set stays
    assert following.verify(signed_by(NEXT, jti="d"), BODY).kid == key_id(NEXT)

    write_keys(path, {"jwt_secrets": [NEXT]})  # retire
    with pytest.raises(VerificationError) as refused:
        following.verify(signed_by(SECRET, jti="e"), BODY)
    assert refused.value.code == "unknown_key_id"


def test_a_bad_key_file_is_refused_without_showing_a_key(tmp_path):
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"jwt_secrets": SECRET}), encoding="utf-8")
    with pytest.raises(ValueError) as refused:
        KeyFile(path)
    assert SECRET not in str(refused.value)
    with pytest.raises(FileNotFoundError):
        KeyFile(tmp_path / "absent.json")


def test_any_listed_standard_webhooks_signature_that_fits_a_held_key_passes():
    old, new = b"o" * 32, b"n" * 32
    secret_of = {key: "whsec_" + base64.b64encode(key).decode() for key in (old, new)}

    def signature(key: bytes) -> str:
        return "v1," + base64.b64encode(hmac.new(key, f"e-1.{NOW}.".encode() + BODY, hashlib.sha256).digest()).decode()

    both_signatures = {
        **headers(),
        "webhook-timestamp": str(NOW),
        "webhook-signature": f"{signature(new)} {signature(old)}",
    }
    for held in (old, new):
        checker = Verifier(keys=KeySet.of([SECRET], [secret_of[held]]), clock=lambda: NOW)
        assert checker.verify(both_signatures, BODY).event_id == "e-1"
    only_new = {**both_signatures, "webhook-signature": signature(new)}
    with pytest.raises(VerificationError) as refused:
        Verifier(keys=KeySet.of([SECRET], [secret_of[old]]), clock=lambda: NOW).verify(only_new, BODY)
    assert refused.value.code == "invalid_webhook_signature"
