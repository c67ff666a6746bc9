//! Token minting for the tests: what the database sends, built with jsonwebtoken's encode.
#![allow(dead_code)]

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::{Hmac, KeyInit, Mac};
use http::{HeaderMap, HeaderValue};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

pub const SECRET: &str = "test-only-jwt-secret-of-at-least-32-bytes";
/// The Standard Webhooks key is b"test-only-standard-webhooks-key!" (32 bytes).
pub const WEBHOOK_SECRET: &str = "whsec_dGVzdC1vbmx5LXN0YW5kYXJkLXdlYmhvb2tzLWtleSE=";
pub const NOW: u64 = 1_767_225_600; // 2026-01-01T00:00:00Z
pub const EVENT_ID: &str = "0b7e2f4c-6a1d-4c39-9a52-3f1e8d2b7c61";
pub const URL: &str = "https://orchestrator.example.com/ingest/resumes/batch";
pub const PATH: &str = "/ingest/resumes/batch";
/// The text form jsonb prints: a space after each `:` and `,`, keys sorted by length then bytes.
pub const BODY: &str = r#"{"type": "INSERT", "table": "resumes", "record": {"id": 1, "name": "Ada"}, "schema": "public", "old_record": null}"#;

pub fn body_sha256(body: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(body))
}

/// The claims the database mints for `body` at `NOW`, without `aud`.
pub fn claims(body: &str) -> Value {
    json!({
        "role": "service_role",
        "iss": "supabase",
        "sub": "orchestrator",
        "iat": NOW,
        "exp": NOW + 3600,
        "jti": EVENT_ID,
        "body_sha256": body_sha256(body.as_bytes()),
    })
}

pub fn sign_with(claims: &Value, algorithm: Algorithm, key: &[u8]) -> String {
    jsonwebtoken::encode(
        &Header::new(algorithm),
        claims,
        &EncodingKey::from_secret(key).unwrap(),
    )
    .unwrap()
}

pub fn sign(claims: &Value) -> String {
    sign_with(claims, Algorithm::HS256, SECRET.as_bytes())
}

/// A token with header `{"alg":"none","typ":"JWT"}` and an empty signature.
pub fn unsigned(claims: &Value) -> String {
    format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

pub fn headers(token: &str, webhook_id: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    headers.insert("webhook-id", HeaderValue::from_str(webhook_id).unwrap());
    headers
}

/// `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">` with the key of `whsec_…`.
pub fn standard_signature(whsec: &str, id: &str, timestamp: u64, body: &[u8]) -> String {
    let key = STANDARD
        .decode(whsec.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

pub fn add_standard_headers(headers: &mut HeaderMap, timestamp: u64, signature: &str) {
    headers.insert("webhook-timestamp", HeaderValue::from(timestamp));
    headers.insert(
        "webhook-signature",
        HeaderValue::from_str(signature).unwrap(),
    );
}
