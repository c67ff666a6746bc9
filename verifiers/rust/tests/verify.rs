//! Every check of `Verifier::verify`, with tokens minted by jsonwebtoken's encode.

mod common;

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use common::*;
use http::HeaderMap;
use jsonwebtoken::Algorithm;
use secure_webhook_verifier::{
    ConfigError, ManualClock, VerifiedWebhook, Verifier, VerifierBuilder, VerifyError, receipt,
};
use serde_json::{Value, json};

fn builder() -> VerifierBuilder {
    Verifier::builder(SECRET).clock(move || NOW)
}

async fn verify_with(
    verifier: &Verifier,
    headers: &HeaderMap,
    body: &str,
) -> Result<VerifiedWebhook, VerifyError> {
    verifier
        .verify(headers, PATH, Bytes::copy_from_slice(body.as_bytes()))
        .await
}

/// Verify `claims` signed with the test key, sent with `body`, on a fresh default verifier.
async fn verify_claims(claims: &Value, body: &str) -> Result<VerifiedWebhook, VerifyError> {
    let headers = headers(&sign(claims), EVENT_ID);
    verify_with(&builder().build().unwrap(), &headers, body).await
}

fn with(mut claims: Value, name: &str, value: Value) -> Value {
    claims[name] = value;
    claims
}

fn without(mut claims: Value, name: &str) -> Value {
    claims.as_object_mut().unwrap().remove(name);
    claims
}

#[tokio::test]
async fn valid_request_is_accepted() {
    let webhook = verify_claims(&claims(BODY), BODY).await.unwrap();
    assert_eq!(webhook.event_id, EVENT_ID);
    assert_eq!(webhook.body, BODY.as_bytes());
    assert_eq!(webhook.claims.jti, EVENT_ID);
    assert_eq!(webhook.claims.iat, NOW);
    assert_eq!(webhook.claims.exp, NOW + 3600);
    assert_eq!(webhook.claims.aud, None);
    assert_eq!(webhook.claims.get_str("role"), Some("service_role"));
    let payload: Value = serde_json::from_slice(&webhook.body).unwrap();
    assert_eq!(payload["record"]["name"], "Ada");
}

#[tokio::test]
async fn changed_body_is_refused() {
    let changed = BODY.replace("Ada", "Eve");
    assert_eq!(
        verify_claims(&claims(BODY), &changed).await.unwrap_err(),
        VerifyError::BodyHashMismatch
    );
    // re-serialising the same JSON changes the bytes, and is refused too
    let reserialised =
        serde_json::to_string(&serde_json::from_str::<Value>(BODY).unwrap()).unwrap();
    assert_ne!(reserialised, BODY);
    assert_eq!(
        verify_claims(&claims(BODY), &reserialised)
            .await
            .unwrap_err(),
        VerifyError::BodyHashMismatch
    );
}

#[tokio::test]
async fn missing_body_hash_is_refused() {
    assert_eq!(
        verify_claims(&without(claims(BODY), "body_sha256"), BODY)
            .await
            .unwrap_err(),
        VerifyError::MissingClaim("body_sha256".into())
    );
}

#[tokio::test]
async fn malformed_body_hash_is_refused() {
    // hex, as the trigger's old helper printed it, is not the format
    let hex: String = URL_SAFE_NO_PAD
        .decode(common::body_sha256(BODY.as_bytes()))
        .unwrap()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    for bad in [
        json!(hex),
        json!(42),
        json!(format!("{}=", common::body_sha256(BODY.as_bytes()))),
    ] {
        let error = verify_claims(&with(claims(BODY), "body_sha256", bad), BODY)
            .await
            .unwrap_err();
        assert!(
            matches!(&error, VerifyError::InvalidClaim { name, .. } if name == "body_sha256"),
            "{error:?}"
        );
    }
}

#[tokio::test]
async fn expired_token_is_refused() {
    let expired = with(
        with(claims(BODY), "iat", json!(NOW - 3600)),
        "exp",
        json!(NOW),
    );
    assert_eq!(
        verify_claims(&expired, BODY).await.unwrap_err(),
        VerifyError::Expired { exp: NOW, now: NOW }
    );
    // a leeway covers it
    let headers = headers(&sign(&expired), EVENT_ID);
    let lenient = builder().leeway(5).build().unwrap();
    verify_with(&lenient, &headers, BODY).await.unwrap();
}

#[tokio::test]
async fn token_issued_in_the_future_is_refused() {
    let future = with(
        with(claims(BODY), "iat", json!(NOW + 1)),
        "exp",
        json!(NOW + 3601),
    );
    assert_eq!(
        verify_claims(&future, BODY).await.unwrap_err(),
        VerifyError::IssuedInFuture {
            iat: NOW + 1,
            now: NOW
        }
    );
    let headers = headers(&sign(&future), EVENT_ID);
    let lenient = builder().leeway(1).build().unwrap();
    verify_with(&lenient, &headers, BODY).await.unwrap();
}

#[tokio::test]
async fn missing_or_malformed_times_are_refused() {
    assert_eq!(
        verify_claims(&without(claims(BODY), "exp"), BODY)
            .await
            .unwrap_err(),
        VerifyError::MissingClaim("exp".into())
    );
    assert_eq!(
        verify_claims(&without(claims(BODY), "iat"), BODY)
            .await
            .unwrap_err(),
        VerifyError::MissingClaim("iat".into())
    );
    let float_exp = with(claims(BODY), "exp", json!((NOW + 3600) as f64 + 0.5));
    assert!(matches!(
        verify_claims(&float_exp, BODY).await.unwrap_err(),
        VerifyError::InvalidClaim { name, .. } if name == "exp"
    ));
}

#[tokio::test]
async fn exp_not_after_iat_is_refused_whatever_the_clock() {
    for exp in [NOW, NOW - 1] {
        let claims = with(claims(BODY), "exp", json!(exp));
        for leeway in [0, 30] {
            let verifier = builder().leeway(leeway).build().unwrap();
            let error = verify_with(&verifier, &headers(&sign(&claims), EVENT_ID), BODY)
                .await
                .unwrap_err();
            assert!(
                matches!(&error, VerifyError::InvalidClaim { name, .. } if name == "exp"),
                "{error:?}"
            );
        }
    }
}

/// A token over this exact header and claims text, signed with the test key.
fn raw_token(header: &str, claims: &str) -> String {
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let mut mac =
        <hmac::Hmac<sha2::Sha256> as hmac::KeyInit>::new_from_slice(SECRET.as_bytes()).unwrap();
    hmac::Mac::update(&mut mac, signing_input.as_bytes());
    let mac = hmac::Mac::finalize(mac).into_bytes();
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(mac))
}

#[tokio::test]
async fn only_typ_jwt_and_no_other_header_parameter() {
    let verifier = builder().build().unwrap();
    let claims = claims(BODY).to_string();
    for (header, expected) in [
        (r#"{"alg":"HS256","typ":"JWS"}"#, "unsupported_token_type"),
        (r#"{"alg":"HS256","typ":"jwt"}"#, "unsupported_token_type"),
        (r#"{"alg":"HS256","typ":null}"#, "unsupported_token_type"),
        (r#"{"alg":"HS256","kid":"key-1"}"#, "unknown_key_id"),
        (
            r#"{"alg":"HS256","crit":["b64"],"b64":false}"#,
            "unsupported_header_parameter",
        ),
        (r#"{"alg":"none","alg":"HS256"}"#, "malformed_token"),
        (r#"{"typ":"JWT"}"#, "malformed_token"),
    ] {
        let token = raw_token(header, &claims);
        let error = verify_with(&verifier, &headers(&token, EVENT_ID), BODY)
            .await
            .unwrap_err();
        assert_eq!(error.code(), expected, "{header}: {error}");
        assert!(!error.to_string().contains(SECRET), "{error}");
    }
    let token = raw_token(r#"{"alg":"HS256"}"#, &claims);
    verify_with(&verifier, &headers(&token, EVENT_ID), BODY)
        .await
        .unwrap();
}

#[tokio::test]
async fn aud_must_be_one_string() {
    for aud in [json!([URL]), json!([]), Value::Null] {
        let claims = with(claims(BODY), "aud", aud.clone());
        for verifier in [
            builder().build().unwrap(),
            builder().audience(URL).build().unwrap(),
        ] {
            let error = verify_with(&verifier, &headers(&sign(&claims), EVENT_ID), BODY)
                .await
                .unwrap_err();
            assert!(
                matches!(&error, VerifyError::InvalidClaim { name, .. } if name == "aud"),
                "{aud}: {error:?}"
            );
        }
    }
}

#[tokio::test]
async fn only_canonical_base64url_and_json_within_range() {
    let verifier = builder().build().unwrap();
    let token = sign(&claims(BODY));
    let (head, mac) = token.rsplit_once('.').unwrap();
    let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let last = alphabet.find(mac.chars().last().unwrap()).unwrap();
    let stray = format!(
        "{head}.{}{}",
        &mac[..mac.len() - 1],
        &alphabet[(last | 1)..=(last | 1)]
    );
    let mut body_claims = claims(BODY);
    body_claims.as_object_mut().unwrap().remove("exp");
    let without_exp = body_claims.to_string();
    let huge_exp = format!(
        "{}, \"exp\": 1{}}}",
        &without_exp[..without_exp.len() - 1],
        "0".repeat(400)
    );
    for token in [
        stray,
        format!("{token}="),
        raw_token(r#"{"alg":"HS256"}"#, &huge_exp),
    ] {
        let error = verify_with(&verifier, &headers(&token, EVENT_ID), BODY)
            .await
            .unwrap_err();
        assert_eq!(error.code(), "malformed_token", "{error}");
    }
}

#[tokio::test]
async fn wrong_key_is_refused() {
    let token = sign_with(
        &claims(BODY),
        Algorithm::HS256,
        b"another-secret-of-at-least-32-bytes!!",
    );
    let verifier = builder().build().unwrap();
    assert_eq!(
        verify_with(&verifier, &headers(&token, EVENT_ID), BODY)
            .await
            .unwrap_err(),
        VerifyError::InvalidSignature
    );
}

#[tokio::test]
async fn alg_none_is_refused() {
    let verifier = builder().build().unwrap();
    let token = unsigned(&claims(BODY));
    assert_eq!(
        verify_with(&verifier, &headers(&token, EVENT_ID), BODY)
            .await
            .unwrap_err(),
        VerifyError::UnsupportedAlgorithm("none".into())
    );
    // also with the HS256 signature of the same claims appended
    let signature = sign(&claims(BODY)).rsplit('.').next().unwrap().to_owned();
    let token = format!("{token}{signature}");
    assert_eq!(
        verify_with(&verifier, &headers(&token, EVENT_ID), BODY)
            .await
            .unwrap_err(),
        VerifyError::UnsupportedAlgorithm("none".into())
    );
}

#[tokio::test]
async fn other_hmac_algorithms_are_refused() {
    let verifier = builder().build().unwrap();
    for (algorithm, name) in [(Algorithm::HS512, "HS512"), (Algorithm::HS384, "HS384")] {
        let token = sign_with(&claims(BODY), algorithm, SECRET.as_bytes());
        assert_eq!(
            verify_with(&verifier, &headers(&token, EVENT_ID), BODY)
                .await
                .unwrap_err(),
            VerifyError::UnsupportedAlgorithm(name.into())
        );
    }
}

#[tokio::test]
async fn rs256_header_is_refused() {
    // an HS256 MAC under a header claiming RS256 (the classic key-confusion attempt)
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims(BODY).to_string());
    let token = format!("{header}.{payload}.c2lnbmF0dXJl");
    let verifier = builder().build().unwrap();
    assert_eq!(
        verify_with(&verifier, &headers(&token, EVENT_ID), BODY)
            .await
            .unwrap_err(),
        VerifyError::UnsupportedAlgorithm("RS256".into())
    );
}

#[tokio::test]
async fn malformed_authorization_is_refused() {
    let verifier = builder().build().unwrap();
    let mut headers = headers(&sign(&claims(BODY)), EVENT_ID);
    headers.remove("authorization");
    assert_eq!(
        verify_with(&verifier, &headers, BODY).await.unwrap_err(),
        VerifyError::MissingAuthorization
    );
    headers.insert("authorization", "Basic dXNlcjpwYXNz".parse().unwrap());
    assert_eq!(
        verify_with(&verifier, &headers, BODY).await.unwrap_err(),
        VerifyError::InvalidAuthorizationScheme
    );
    headers.insert("authorization", "Bearer not-a-jwt".parse().unwrap());
    assert!(matches!(
        verify_with(&verifier, &headers, BODY).await.unwrap_err(),
        VerifyError::MalformedToken(_)
    ));
}

#[tokio::test]
async fn audience_must_match_the_configured_endpoint() {
    let token = sign(&with(claims(BODY), "aud", json!(URL)));
    let headers = headers(&token, EVENT_ID);
    let exact = builder().audience(URL).build().unwrap();
    let webhook = verify_with(&exact, &headers, BODY).await.unwrap();
    assert_eq!(webhook.claims.aud.as_deref(), Some(URL));

    // the same token posted to another endpoint's verifier
    let other = "https://orchestrator.example.com/ingest/zip_archives/batch";
    let wrong = builder().audience(other).build().unwrap();
    assert_eq!(
        verify_with(&wrong, &headers, BODY).await.unwrap_err(),
        VerifyError::AudienceMismatch {
            expected: other.into(),
            found: URL.into()
        }
    );

    // base URL + request path
    let base = builder()
        .audience_base_url("https://orchestrator.example.com/")
        .build()
        .unwrap();
    verify_with(&base, &headers, BODY).await.unwrap();
    let base = builder()
        .audience_base_url("https://orchestrator.example.com")
        .build()
        .unwrap();
    assert!(matches!(
        base.verify(&headers, "/ingest/zip_archives/batch", Bytes::from(BODY))
            .await
            .unwrap_err(),
        VerifyError::AudienceMismatch { .. }
    ));
}

#[tokio::test]
async fn audience_configured_requires_aud_unless_rolling_out() {
    let headers = headers(&sign(&claims(BODY)), EVENT_ID);
    let strict = builder().audience(URL).build().unwrap();
    assert_eq!(
        verify_with(&strict, &headers, BODY).await.unwrap_err(),
        VerifyError::MissingClaim("aud".into())
    );
    let rollout = builder()
        .audience(URL)
        .accept_missing_audience(true)
        .build()
        .unwrap();
    verify_with(&rollout, &headers, BODY).await.unwrap();
}

#[tokio::test]
async fn aud_without_configured_audience_is_refused() {
    assert_eq!(
        verify_claims(&with(claims(BODY), "aud", json!(URL)), BODY)
            .await
            .unwrap_err(),
        VerifyError::UnexpectedAudience(URL.into())
    );
}

#[tokio::test]
async fn expected_claims_are_enforced() {
    assert_eq!(
        verify_claims(&with(claims(BODY), "role", json!("authenticated")), BODY)
            .await
            .unwrap_err(),
        VerifyError::ClaimMismatch {
            name: "role".into(),
            expected: "\"service_role\"".into(),
            found: "\"authenticated\"".into(),
        }
    );
    assert_eq!(
        verify_claims(&without(claims(BODY), "iss"), BODY)
            .await
            .unwrap_err(),
        VerifyError::MissingClaim("iss".into())
    );
    // configured claims replace and extend the defaults
    let token = sign(&with(
        with(claims(BODY), "iss", json!("db-eu")),
        "tenant",
        json!(7),
    ));
    let headers = headers(&token, EVENT_ID);
    let custom = builder()
        .expect_claim("iss", "db-eu")
        .expect_claim("tenant", 7)
        .build()
        .unwrap();
    verify_with(&custom, &headers, BODY).await.unwrap();
    let stricter = builder()
        .expect_claim("iss", "db-eu")
        .expect_claim("tenant", 8)
        .build()
        .unwrap();
    assert!(matches!(
        verify_with(&stricter, &headers, BODY).await.unwrap_err(),
        VerifyError::ClaimMismatch { name, .. } if name == "tenant"
    ));
}

#[tokio::test]
async fn jti_and_webhook_id_are_required_and_equal() {
    assert_eq!(
        verify_claims(&without(claims(BODY), "jti"), BODY)
            .await
            .unwrap_err(),
        VerifyError::MissingClaim("jti".into())
    );
    let verifier = builder().build().unwrap();
    let token = sign(&claims(BODY));
    assert_eq!(
        verify_with(&verifier, &headers(&token, "another-id"), BODY)
            .await
            .unwrap_err(),
        VerifyError::WebhookIdMismatch
    );
    let mut no_id = headers(&token, EVENT_ID);
    no_id.remove("webhook-id");
    assert_eq!(
        verify_with(&verifier, &no_id, BODY).await.unwrap_err(),
        VerifyError::MissingWebhookId
    );
}

#[tokio::test]
async fn content_type_must_be_json() {
    let verifier = builder().build().unwrap();
    let mut headers = headers(&sign(&claims(BODY)), EVENT_ID);
    headers.insert("content-type", "text/plain".parse().unwrap());
    assert_eq!(
        verify_with(&verifier, &headers, BODY).await.unwrap_err(),
        VerifyError::UnsupportedContentType("text/plain".into())
    );
    headers.insert(
        "content-type",
        "application/json; charset=utf-8".parse().unwrap(),
    );
    verify_with(&verifier, &headers, BODY).await.unwrap();
}

#[tokio::test]
async fn replayed_jti_is_refused_until_the_token_expires() {
    let clock = Arc::new(ManualClock::new(NOW));
    let verifier = Verifier::builder(SECRET)
        .clock(clock.clone())
        .build()
        .unwrap();
    let first = headers(&sign(&claims(BODY)), EVENT_ID);
    let accepted = verify_with(&verifier, &first, BODY).await.unwrap();
    assert_eq!(
        verify_with(&verifier, &first, BODY).await.unwrap_err(),
        VerifyError::Replayed {
            event_id: EVENT_ID.into(),
            receipt: accepted.receipt.clone(),
        }
    );
    let accepted_receipt = accepted.receipt;
    // a retry of the same event (fresh token, same jti) is a replay too
    clock.set(NOW + 5);
    let retry = with(
        with(claims(BODY), "iat", json!(NOW + 5)),
        "exp",
        json!(NOW + 3605),
    );
    let retry = headers(&sign(&retry), EVENT_ID);
    // its answer carries the receipt of this attempt (its token's iat), not the first one's
    let retried = verify_with(&verifier, &retry, BODY).await.unwrap_err();
    assert_eq!(
        retried,
        VerifyError::Replayed {
            event_id: EVENT_ID.into(),
            receipt: receipt(SECRET, EVENT_ID, NOW + 5, BODY.as_bytes()),
        }
    );
    assert_ne!(retried.receipt(), Some(accepted_receipt.as_str()));
    // ... until forgotten (the handler failed), or once the first token's entry expired
    verifier.forget(EVENT_ID).await.unwrap();
    verify_with(&verifier, &retry, BODY).await.unwrap();
    clock.set(NOW + 3605);
    let late = with(
        with(claims(BODY), "iat", json!(NOW + 3605)),
        "exp",
        json!(NOW + 7205),
    );
    verify_with(&verifier, &headers(&sign(&late), EVENT_ID), BODY)
        .await
        .unwrap();
}

/// A token for `EVENT_ID` issued at `iat`, valid for `ttl` seconds.
fn token_at(iat: u64, ttl: u64) -> HeaderMap {
    let claims = with(
        with(claims(BODY), "iat", json!(iat)),
        "exp",
        json!(iat + ttl),
    );
    headers(&sign(&claims), EVENT_ID)
}

#[tokio::test]
async fn a_retry_keeps_its_event_id_remembered_until_its_own_exp() {
    // issue 15 #6: each retry mints a fresh token with the same jti and a later exp. Were the id
    // remembered only until the first token's exp, a stolen retry token would be accepted as a
    // new event in between.
    let clock = Arc::new(ManualClock::new(NOW));
    let verifier = Verifier::builder(SECRET)
        .clock(clock.clone())
        .build()
        .unwrap();
    let first = token_at(NOW, 300); // exp NOW + 300
    let retry = token_at(NOW + 10, 590); // exp NOW + 600
    verify_with(&verifier, &first, BODY).await.unwrap();
    clock.set(NOW + 10);
    assert!(
        verify_with(&verifier, &retry, BODY)
            .await
            .unwrap_err()
            .is_duplicate()
    );
    clock.set(NOW + 301);
    assert!(
        verify_with(&verifier, &retry, BODY)
            .await
            .unwrap_err()
            .is_duplicate(),
        "the retry is still a duplicate after the first token expired"
    );
    clock.set(NOW + 599);
    assert!(
        verify_with(&verifier, &retry, BODY)
            .await
            .unwrap_err()
            .is_duplicate()
    );
    // once the latest token expired, so has the record (and the token itself is refused)
    clock.set(NOW + 600);
    assert_eq!(
        verify_with(&verifier, &retry, BODY)
            .await
            .unwrap_err()
            .code(),
        "expired"
    );
    verify_with(&verifier, &token_at(NOW + 600, 300), BODY)
        .await
        .unwrap();
}

#[tokio::test]
async fn refused_requests_do_not_use_up_the_event_id() {
    let verifier = builder().build().unwrap();
    let headers = headers(&sign(&claims(BODY)), EVENT_ID);
    assert_eq!(
        verify_with(&verifier, &headers, "{}").await.unwrap_err(),
        VerifyError::BodyHashMismatch
    );
    verify_with(&verifier, &headers, BODY).await.unwrap();
}

#[tokio::test]
async fn body_over_the_limit_is_refused() {
    let verifier = builder().max_body_bytes(16).build().unwrap();
    let headers = headers(&sign(&claims(BODY)), EVENT_ID);
    assert_eq!(
        verify_with(&verifier, &headers, BODY).await.unwrap_err(),
        VerifyError::PayloadTooLarge { limit: 16 }
    );
}

fn standard_verifier() -> Verifier {
    builder()
        .standard_webhooks_secret(WEBHOOK_SECRET)
        .build()
        .unwrap()
}

#[tokio::test]
async fn standard_webhooks_valid() {
    let mut headers = headers(&sign(&claims(BODY)), EVENT_ID);
    let signature = standard_signature(WEBHOOK_SECRET, EVENT_ID, NOW, BODY.as_bytes());
    add_standard_headers(&mut headers, NOW, &signature);
    verify_with(&standard_verifier(), &headers, BODY)
        .await
        .unwrap();
}

#[tokio::test]
async fn standard_webhooks_accepts_any_listed_signature_and_rotated_secrets() {
    let old = "whsec_b2xkLXN0YW5kYXJkLXdlYmhvb2tzLWtleS1vZi0zMi1ieXRlcw==";
    let mut headers = headers(&sign(&claims(BODY)), EVENT_ID);
    let current = standard_signature(WEBHOOK_SECRET, EVENT_ID, NOW, BODY.as_bytes());
    let previous = standard_signature(old, EVENT_ID, NOW, BODY.as_bytes());
    add_standard_headers(
        &mut headers,
        NOW,
        &format!("v1a,AAAA v1,Ym9ndXM= {previous} {current}"),
    );
    verify_with(&standard_verifier(), &headers, BODY)
        .await
        .unwrap();
    // a verifier that knows only the old secret, during rotation
    let mut only_old = self::headers(&sign(&claims(BODY)), EVENT_ID);
    add_standard_headers(&mut only_old, NOW, &previous);
    let rotating = builder()
        .standard_webhooks_secret(WEBHOOK_SECRET)
        .standard_webhooks_secret(old)
        .build()
        .unwrap();
    verify_with(&rotating, &only_old, BODY).await.unwrap();
}

#[tokio::test]
async fn standard_webhooks_tampered() {
    let mut headers = headers(&sign(&claims(BODY)), EVENT_ID);
    let signature = standard_signature(WEBHOOK_SECRET, EVENT_ID, NOW, b"{}");
    add_standard_headers(&mut headers, NOW, &signature);
    assert_eq!(
        verify_with(&standard_verifier(), &headers, BODY)
            .await
            .unwrap_err(),
        VerifyError::InvalidWebhookSignature
    );
    // signed over another timestamp than the header's
    let signature = standard_signature(WEBHOOK_SECRET, EVENT_ID, NOW - 1, BODY.as_bytes());
    add_standard_headers(&mut headers, NOW, &signature);
    assert_eq!(
        verify_with(&standard_verifier(), &headers, BODY)
            .await
            .unwrap_err(),
        VerifyError::InvalidWebhookSignature
    );
}

#[tokio::test]
async fn standard_webhooks_stale() {
    let stale = NOW - 301;
    let mut headers = headers(&sign(&claims(BODY)), EVENT_ID);
    let signature = standard_signature(WEBHOOK_SECRET, EVENT_ID, stale, BODY.as_bytes());
    add_standard_headers(&mut headers, stale, &signature);
    assert_eq!(
        verify_with(&standard_verifier(), &headers, BODY)
            .await
            .unwrap_err(),
        VerifyError::StaleTimestamp {
            timestamp: stale as i64,
            now: NOW,
            tolerance: 300
        }
    );
    let future = NOW + 301;
    let signature = standard_signature(WEBHOOK_SECRET, EVENT_ID, future, BODY.as_bytes());
    add_standard_headers(&mut headers, future, &signature);
    assert!(matches!(
        verify_with(&standard_verifier(), &headers, BODY)
            .await
            .unwrap_err(),
        VerifyError::StaleTimestamp { .. }
    ));
    let tolerant = builder()
        .standard_webhooks_secret(WEBHOOK_SECRET)
        .webhook_tolerance(600)
        .build()
        .unwrap();
    verify_with(&tolerant, &headers, BODY).await.unwrap();
}

#[tokio::test]
async fn standard_webhooks_headers_are_required_when_configured() {
    let headers = headers(&sign(&claims(BODY)), EVENT_ID);
    assert_eq!(
        verify_with(&standard_verifier(), &headers, BODY)
            .await
            .unwrap_err(),
        VerifyError::MissingWebhookHeader("webhook-timestamp")
    );
    let mut malformed = headers.clone();
    malformed.insert("webhook-timestamp", "yesterday".parse().unwrap());
    assert!(matches!(
        verify_with(&standard_verifier(), &malformed, BODY)
            .await
            .unwrap_err(),
        VerifyError::MalformedHeader {
            name: "webhook-timestamp",
            ..
        }
    ));
}

#[test]
fn builder_refuses_bad_configuration() {
    assert_eq!(
        Verifier::builder("").build().unwrap_err(),
        ConfigError::EmptySecret
    );
    assert!(matches!(
        builder()
            .standard_webhooks_secret("not-whsec")
            .build()
            .unwrap_err(),
        ConfigError::InvalidWebhookSecret(_)
    ));
    assert!(matches!(
        builder()
            .standard_webhooks_secret("whsec_***")
            .build()
            .unwrap_err(),
        ConfigError::InvalidWebhookSecret(_)
    ));
    assert!(matches!(
        builder()
            .audience("/ingest/resumes/batch")
            .build()
            .unwrap_err(),
        ConfigError::InvalidAudience(_)
    ));
    assert_eq!(
        builder().expect_claim("exp", 1).build().unwrap_err(),
        ConfigError::ReservedClaim("exp".into())
    );
    assert_eq!(
        builder().max_body_bytes(0).build().unwrap_err(),
        ConfigError::InvalidBodyLimit
    );
}

#[test]
fn the_documented_builder_chain_compiles() {
    Verifier::builder(SECRET)
        .leeway(0)
        .audience("https://orchestrator.example.com/ingest/resumes/batch")
        .expect_claim("role", "service_role")
        .standard_webhooks_secret(WEBHOOK_SECRET)
        .build()
        .unwrap();
}

#[test]
fn errors_have_statuses_and_codes() {
    use http::StatusCode;
    assert_eq!(
        VerifyError::InvalidSignature.status(),
        StatusCode::UNAUTHORIZED
    );
    let replayed = VerifyError::Replayed {
        event_id: "x".into(),
        receipt: "v1,r".into(),
    };
    assert_eq!(replayed.status(), StatusCode::OK);
    assert_eq!(replayed.receipt(), Some("v1,r"));
    assert_eq!(VerifyError::InvalidSignature.receipt(), None);
    assert!(replayed.is_duplicate() && !VerifyError::InvalidSignature.is_duplicate());
    assert_eq!(replayed.code(), "replayed");
    assert_eq!(
        VerifyError::MissingWebhookId.status(),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        VerifyError::PayloadTooLarge { limit: 1 }.status(),
        StatusCode::PAYLOAD_TOO_LARGE
    );
    assert_eq!(
        VerifyError::ReplayStore("down".into()).status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(VerifyError::BodyHashMismatch.code(), "body_hash_mismatch");
    let error: Box<dyn std::error::Error> = Box::new(VerifyError::BodyHashMismatch);
    assert_eq!(error.to_string(), "body_sha256 does not match the body");
}

#[tokio::test]
async fn webhook_timestamp_is_ascii_digits() {
    let verifier = standard_verifier();
    for timestamp in [
        format!("+{NOW}"),
        "1".repeat(5000),
        format!("-{NOW}"),
        String::new(),
    ] {
        let mut headers = headers(&sign(&claims(BODY)), EVENT_ID);
        headers.insert("webhook-timestamp", timestamp.parse().unwrap());
        headers.insert(
            "webhook-signature",
            format!("v1,{}", "A".repeat(43) + "=").parse().unwrap(),
        );
        let error = verify_with(&verifier, &headers, BODY).await.unwrap_err();
        assert_eq!(error.code(), "malformed_header", "{timestamp:.20}: {error}");
    }
}

#[tokio::test]
async fn accepted_and_duplicate_requests_carry_the_receipt_for_their_id_iat_and_body() {
    let verifier = builder().build().unwrap();
    let headers = headers(&sign(&claims(BODY)), EVENT_ID);
    let accepted = verify_with(&verifier, &headers, BODY).await.unwrap();
    // the same bytes as computed from the format: HMAC-SHA256(secret, "<id>.<iat>.<body_sha256>")
    let mut mac =
        <hmac::Hmac<sha2::Sha256> as hmac::KeyInit>::new_from_slice(SECRET.as_bytes()).unwrap();
    hmac::Mac::update(
        &mut mac,
        format!("{EVENT_ID}.{NOW}.{}", common::body_sha256(BODY.as_bytes())).as_bytes(),
    );
    // named by the key's id, then the same MAC without it (for reconcilers older than key ids)
    let mac = URL_SAFE_NO_PAD.encode(hmac::Mac::finalize(mac).into_bytes());
    let expected = format!("v1,{},{mac} v1,{mac}", accepted.kid);
    assert_eq!(accepted.kid, secure_webhook_verifier::key_id(SECRET));
    assert_eq!(accepted.receipt, expected);
    assert_eq!(
        accepted.receipt,
        receipt(SECRET, EVENT_ID, NOW, BODY.as_bytes())
    );
    let (name, value) = accepted.receipt_header();
    assert_eq!(
        (name.as_str(), value.to_str().unwrap()),
        ("webhook-receipt", &*expected)
    );
    let duplicate = verify_with(&verifier, &headers, BODY).await.unwrap_err();
    assert_eq!(duplicate.receipt(), Some(expected.as_str()));
    // no secret in it, and no receipt for a refusal
    assert!(!expected.contains(SECRET) && !format!("{duplicate:?}").contains(SECRET));
    assert_eq!(
        verify_with(&verifier, &headers, "{}")
            .await
            .unwrap_err()
            .receipt(),
        None
    );
}
