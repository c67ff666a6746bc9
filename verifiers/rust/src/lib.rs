//! Verifies the webhooks that secure-webhooks' database triggers POST to the orchestrator.
//!
//! Each request carries `Authorization: Bearer <HS256 JWT>` minted inside the database,
//! `webhook-id: <event id>` and the exact JSON body; optionally `aud` in the token and Standard
//! Webhooks' `webhook-timestamp` / `webhook-signature` headers. [`Verifier`] checks, in order:
//!
//! 1. the token: canonical base64url parts, a JOSE header of `alg: HS256` (`none`, HS384, HS512,
//!    RS256… refused), at most `typ: JWT` and `kid`, the MAC via jsonwebtoken with the key `kid`
//!    names ([`VerifyError::UnknownKeyId`] when none held has that [`key_id`]; a token without
//!    `kid` is tried with every key held), JSON objects without duplicate keys;
//! 2. `exp` after `iat`, then both against the (injectable) clock with a leeway (default 0);
//!    valid while `now < exp + leeway`;
//! 3. `aud`: a string equal to the configured audience; refused when none is configured;
//! 4. the required claims: `jti`, `body_sha256`, and the expected ones (default `role:
//!    service_role`, `iss: supabase`, `sub: orchestrator`); `webhook-id` equal to `jti`;
//!    `Content-Type: application/json`;
//! 5. the body: at most the size limit (default 1 MiB), and `body_sha256` equal to the
//!    base64url SHA-256 of its exact bytes;
//! 6. when a `whsec_` secret is configured, the Standard Webhooks timestamp (±5 min) and
//!    signature (constant-time);
//! 7. `jti` not accepted before within the lifetime of the latest token seen for it
//!    ([`ReplayStore`]). A repeat is
//!    [`VerifyError::Replayed`]: a duplicate delivery, which axum answers with **200 OK** (the
//!    database delivers at least once, so it must see a 2xx to stop retrying), without running
//!    the handler. Add the [`forget_on_failure`] middleware so that a handler that fails (non-2xx)
//!    gets the retry instead of it being acknowledged as a duplicate.
//!
//! Keys rotate without a restart: [`Verifier::builder_with_keys`] takes a [`KeySet`] of several
//! keys, and [`Verifier::builder_with_key_file`] a JSON file it reads again whenever the file
//! changes (docs/key-rotation.md in the repository has the steps).
//!
//! Every accepted request's 2xx answer, duplicates included, carries a signed delivery receipt,
//! `webhook-receipt: v1,<kid>,<mac> v1,<mac>` with `<mac>` =
//! `base64url-nopad(HMAC-SHA256(secret, "<webhook-id>.<iat>.<body_sha256>"))` and `<kid>` the
//! [`key_id`] of the key that verified the token ([`receipt`]), `<iat>` being the verified token's: the [`webhook_receipts`] middleware adds it
//! to the handler's response, and the crate's own duplicate answer has it. The database's
//! reconciler checks it, per attempt.
//!
//! ```no_run
//! use axum::{Router, middleware, routing::post};
//! use secure_webhook_verifier::{VerifiedWebhook, Verifier, forget_on_failure, webhook_receipts};
//!
//! async fn ingest(webhook: VerifiedWebhook) -> &'static str {
//!     let _row: serde_json::Value = serde_json::from_slice(&webhook.body).unwrap();
//!     "ok"
//! }
//!
//! let verifier = Verifier::builder(std::env::var("APP_JWT_SECRET").unwrap())
//!     .audience_base_url("https://orchestrator.example.com")
//!     .build()
//!     .unwrap();
//! let app: Router = Router::new()
//!     .route("/ingest/resumes/batch", post(ingest))
//!     .layer(middleware::from_fn(forget_on_failure))
//!     .layer(middleware::from_fn(webhook_receipts))
//!     .with_state(verifier);
//! ```
#![deny(missing_docs)]

mod clock;
mod error;
mod extract;
mod forget;
mod json;
mod keys;
mod receipt;
mod replay;
mod verifier;

pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{ConfigError, VerifyError};
pub use forget::forget_on_failure;
pub use keys::{KeySet, key_id};
pub use receipt::{WEBHOOK_RECEIPT, receipt, webhook_receipts};
pub use replay::{
    DEFAULT_MAX_ENTRIES, MemoryReplayStore, ReplayStore, ReplayStoreError, StoreFuture, WhenFull,
};
pub use verifier::{
    DEFAULT_EXPECTED_CLAIMS, DEFAULT_MAX_BODY_BYTES, DEFAULT_WEBHOOK_TOLERANCE_SECONDS,
    MAX_JTI_LENGTH, VerifiedWebhook, Verifier, VerifierBuilder, WEBHOOK_ID, WEBHOOK_SIGNATURE,
    WEBHOOK_TIMESTAMP, WebhookClaims,
};
