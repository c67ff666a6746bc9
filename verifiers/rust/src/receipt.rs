//! Signed delivery receipts: the `webhook-receipt` response header.

use std::sync::{Arc, Mutex};

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use http::{HeaderName, HeaderValue};
use sha2::{Digest, Sha256};

/// The response header that acknowledges an accepted event: `webhook-receipt`.
pub const WEBHOOK_RECEIPT: &str = "webhook-receipt";

/// The `webhook-receipt` value for an event: `v1,<kid>,<mac> v1,<mac>`, where `<mac>` is
/// base64url-nopad(HMAC-SHA256(secret, "<webhook_id>.<iat>.<body_sha256>")) and `<kid>` is
/// [`key_id`](crate::key_id)`(secret)`; `secret` is the HS256 key that verified the
/// token ([`VerifiedWebhook::kid`](crate::VerifiedWebhook::kid) names it), `webhook_id` the event id (`jti` /
/// `webhook-id`), `<iat>` the verified token's `iat` claim in decimal (as in JSON: no sign, no
/// leading zeros) and `<body_sha256>` the base64url-nopad SHA-256 of the exact body bytes
/// received (the form of the `body_sha256` claim).
///
/// The kid lets the database's reconciler check the receipt with the key that signed the
/// attempt, of the two a key rotation holds around its promote; the kid-less second item is the
/// same MAC for reconcilers older than key ids (they compare each space-separated item with
/// `v1,<mac>`).
///
/// Only a holder of the signing key can compute it, and it names both the event and the body the
/// receiver got, so the database's reconciler can tell a delivery the orchestrator really accepted
/// from a 2xx answered by anything else on the way (a proxy, a captive portal, a wrong host).
/// `iat` ties it to one attempt: each attempt mints a new token with its own `iat`, so a receipt
/// copied from an earlier attempt's response does not mark a later one delivered.
/// The verifier adds it to every accepted request's 2xx response, duplicates included; this
/// function is for checking one, or for answering outside axum.
pub fn receipt(secret: impl AsRef<[u8]>, webhook_id: &str, iat: u64, body: &[u8]) -> String {
    let mac = Hmac::<Sha256>::new_from_slice(secret.as_ref()).expect("HMAC takes any key length");
    sign(
        mac,
        &crate::key_id(secret),
        webhook_id,
        iat,
        &Sha256::digest(body).into(),
    )
}

/// The receipt with an already keyed HMAC (the verifier keeps one), its key's id and the body's digest.
pub(crate) fn sign(
    mut mac: Hmac<Sha256>,
    kid: &str,
    webhook_id: &str,
    iat: u64,
    body_digest: &[u8; 32],
) -> String {
    mac.update(webhook_id.as_bytes());
    mac.update(b".");
    mac.update(iat.to_string().as_bytes());
    mac.update(b".");
    mac.update(URL_SAFE_NO_PAD.encode(body_digest).as_bytes());
    let mac = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("v1,{kid},{mac} v1,{mac}")
}

/// `(webhook-receipt, value)`, ready for a response's headers.
pub(crate) fn header(receipt: &str) -> (HeaderName, HeaderValue) {
    (
        HeaderName::from_static(WEBHOOK_RECEIPT),
        // "v1,", base64url, commas and a space: always a valid header value
        HeaderValue::from_str(receipt).expect("a receipt is visible ASCII"),
    )
}

/// Put in the request's extensions by [`webhook_receipts`]; the extractor fills it with the
/// receipt of the event it accepted (or found to be a duplicate).
#[derive(Clone, Default)]
pub(crate) struct ReceiptSlot(Arc<Mutex<Option<String>>>);

impl ReceiptSlot {
    pub(crate) fn set(&self, receipt: String) {
        *self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(receipt);
    }

    fn take(&self) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
    }
}

/// axum middleware: adds `webhook-receipt` (see [`receipt`]) to the response when the
/// [`VerifiedWebhook`](crate::VerifiedWebhook) extractor accepted the request and the handler
/// answered 2xx, so the handler does nothing for it.
///
/// ```no_run
/// use axum::{Router, middleware, routing::post};
/// use secure_webhook_verifier::{VerifiedWebhook, Verifier, forget_on_failure, webhook_receipts};
///
/// async fn ingest(webhook: VerifiedWebhook) -> &'static str {
///     "ok" // the response gets `webhook-receipt: v1,...`
/// }
///
/// # let verifier = Verifier::builder("secret").build().unwrap();
/// let app: Router = Router::new()
///     .route("/ingest/resumes/batch", post(ingest))
///     .layer(middleware::from_fn(forget_on_failure))
///     .layer(middleware::from_fn(webhook_receipts))
///     .with_state(verifier);
/// ```
///
/// A duplicate the extractor answers itself ([`VerifyError::Replayed`](crate::VerifyError),
/// 200) carries the receipt with or without this layer; a duplicate the handler answers itself
/// (taking `Result<VerifiedWebhook, VerifyError>`) gets it from this layer when the answer is
/// 2xx. Refused requests, and non-2xx answers, get none: a receipt says the event was accepted.
pub async fn webhook_receipts(mut request: Request, next: Next) -> Response {
    let slot = ReceiptSlot::default();
    request.extensions_mut().insert(slot.clone());
    let mut response = next.run(request).await;
    if let Some(receipt) = slot.take() {
        if response.status().is_success() {
            let (name, value) = header(&receipt);
            response.headers_mut().insert(name, value);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_format_is_hmac_of_id_dot_iat_dot_body_hash() {
        // computed step by step: the body hash, the message, its MAC
        let body = br#"{"id": 1}"#;
        let body_sha256 = URL_SAFE_NO_PAD.encode(Sha256::digest(body));
        let mut mac = Hmac::<Sha256>::new_from_slice(b"key").unwrap();
        mac.update(format!("event-1.1767225600.{body_sha256}").as_bytes());
        let mac = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        // the key's id names it; the same MAC follows without it, for reconcilers older than key ids
        let expected = format!("v1,R6wPs6M70uxu7dmW,{mac} v1,{mac}");
        assert_eq!(receipt("key", "event-1", 1_767_225_600, body), expected);
        assert_eq!(expected.len(), 3 + 16 + 1 + 43 + 1 + 3 + 43);
        assert_ne!(receipt("key", "event-2", 1_767_225_600, body), expected);
        assert_ne!(receipt("key", "event-1", 1_767_225_600, b"{}"), expected);
        assert_ne!(receipt("other", "event-1", 1_767_225_600, body), expected);
    }

    #[test]
    fn another_iat_gives_another_receipt_for_the_same_id_and_body() {
        // a receipt copied from an earlier attempt's response does not fit the next attempt
        let body = br#"{"id": 1}"#;
        let first = receipt("key", "event-1", 1_767_225_600, body);
        assert_ne!(receipt("key", "event-1", 1_767_225_601, body), first);
        assert_ne!(receipt("key", "event-1", 1_767_225_540, body), first);
        // decimal iat: no ambiguity with a dotted id
        assert_ne!(
            receipt("key", "event-1", 12, body),
            receipt("key", "event-1.1", 2, body)
        );
    }
}
