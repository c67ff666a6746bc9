//! Why a request was refused, and what the orchestrator answers.

use std::fmt;

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};

/// Why a webhook request was rejected.
///
/// The variants follow the order of the checks (see the crate docs). Every variant maps to one
/// HTTP status ([`VerifyError::status`]) and one stable machine-readable code
/// ([`VerifyError::code`]); as an axum response it is that status with a JSON body
/// `{"error": "<code>", "message": "<Display text>"}` (except [`VerifyError::Replayed`], which is
/// an acknowledgement, see there). Messages never contain secrets, tokens or
/// body bytes.
///
/// Statuses: **401** for every authentication failure, **400** for a malformed request, **413**
/// for a body over the limit, **415** for a wrong content type, **503** when the replay store
/// cannot answer, and **200 OK** for a replayed event id ([`VerifyError::Replayed`]: a duplicate
/// delivery to acknowledge, by design). The database's reconciler retries every non-2xx status
/// except 410 (which it treats as dead at once, so this crate never sends 410).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum VerifyError {
    // -- the bearer token (401) --
    /// No `Authorization` header.
    MissingAuthorization,
    /// `Authorization` is not `Bearer <token>` (or is not visible ASCII).
    InvalidAuthorizationScheme,
    /// The token is not a JWT: not three dot-separated base64url parts (unpadded, canonical),
    /// or its header or claims are not JSON objects (duplicate keys, numbers past the `f64`
    /// range or lone surrogate escapes refused), or the header has no `alg`.
    MalformedToken(String),
    /// The header's `alg` is not `HS256` (e.g. `none`, `HS384`, `HS512`, `RS256`).
    UnsupportedAlgorithm(String),
    /// The header's `typ` is present and not exactly `JWT` (the database always sends `JWT`;
    /// `jwt`, `JWS` or `at+jwt` name other kinds of tokens).
    UnsupportedTokenType(String),
    /// The header has a parameter other than `alg`, `typ` and `kid` (e.g. `jku`, `crit`). The
    /// database never sends one, and refusing them keeps both verifiers from having to agree on
    /// what each would mean.
    UnsupportedHeaderParameter(String),
    /// The header's `kid` names no key this verifier holds: a key the orchestrator has not been
    /// given yet (add it to the key set before the database signs with it), or one it dropped.
    UnknownKeyId(String),
    /// The HS256 signature does not match the configured key.
    InvalidSignature,
    /// `exp + leeway` is not after the verifier's clock (a token is valid while `now < exp`).
    Expired {
        /// the token's `exp`
        exp: u64,
        /// the verifier's clock
        now: u64,
    },
    /// `iat` is later than the verifier's clock plus the leeway.
    IssuedInFuture {
        /// the token's `iat`
        iat: u64,
        /// the verifier's clock
        now: u64,
    },
    /// `aud` differs from the configured audience.
    AudienceMismatch {
        /// the configured audience (for this request's path)
        expected: String,
        /// the token's `aud`
        found: String,
    },
    /// The token carries `aud` but this verifier has no audience configured. Fail closed, as
    /// jsonwebtoken (and PyJWT) do: configure the audience to accept such tokens.
    UnexpectedAudience(String),
    /// A required claim (`exp`, `iat`, `jti`, `body_sha256`, a configured expected claim, or
    /// `aud` when an audience is configured) is absent.
    MissingClaim(String),
    /// A claim has the wrong type or shape (e.g. `exp` not an integer, `body_sha256` not 43
    /// base64url characters).
    InvalidClaim {
        /// the claim
        name: String,
        /// what is wrong with it
        reason: String,
    },
    /// A configured expected claim has another value.
    ClaimMismatch {
        /// the claim
        name: String,
        /// the configured value, as JSON
        expected: String,
        /// the token's value, as JSON
        found: String,
    },
    /// The `webhook-id` header differs from the token's `jti`.
    WebhookIdMismatch,

    // -- malformed requests (400 / 413 / 415) --
    /// No `webhook-id` header (400).
    MissingWebhookId,
    /// `Content-Type` is not `application/json` (415).
    UnsupportedContentType(String),
    /// The body is larger than the configured limit (413).
    PayloadTooLarge {
        /// the limit in bytes
        limit: usize,
    },
    /// The body could not be read (400).
    BodyRead(String),
    /// A header has a value that cannot be parsed, e.g. `webhook-timestamp` not an integer (400).
    MalformedHeader {
        /// the header
        name: &'static str,
        /// what is wrong with it
        reason: String,
    },

    // -- the body (401) --
    /// `body_sha256` is not the SHA-256 of the body bytes received.
    BodyHashMismatch,

    // -- Standard Webhooks, when a `whsec_` secret is configured (401) --
    /// `webhook-timestamp` or `webhook-signature` is absent.
    MissingWebhookHeader(&'static str),
    /// `webhook-timestamp` is further from the verifier's clock than the tolerance.
    StaleTimestamp {
        /// the header's timestamp
        timestamp: i64,
        /// the verifier's clock
        now: u64,
        /// the configured tolerance in seconds
        tolerance: u64,
    },
    /// No `v1,` signature in `webhook-signature` matches any configured secret.
    InvalidWebhookSignature,

    // -- replay (200 / 503) --
    /// This event id was already accepted and its entry has not expired: a duplicate delivery.
    ///
    /// It is an error for [`Verifier::verify`](crate::Verifier::verify) callers (the request is
    /// not handed over for processing), but its response status is **200 OK, by design**, with
    /// the body `{"ok": true, "duplicate": true, "event_id": "<id>"}` and the event's
    /// `webhook-receipt` header. The database delivers at
    /// least once: when it did not see the 2xx for an attempt (a timeout, a lost connection) it
    /// retries with a fresh token and the same `jti` / `webhook-id` until it gets a 2xx. A
    /// repeat of an accepted event id is therefore almost always such a retry of an event the
    /// orchestrator already has, and acknowledging it with 2xx lets the database record the
    /// event as delivered instead of retrying it for days and marking it dead. As an axum
    /// extractor rejection this means the handler is simply not run for a duplicate.
    ///
    /// Security: a replay is only reported after every other check passed, i.e. for a valid,
    /// unexpired token presented with the exact body it signs, on the endpoint it names (with
    /// `aud` on). A stolen token replayed that way gets a harmless 200 and nothing is processed
    /// again; any other body or endpoint is refused with 401 before the replay cache is
    /// consulted.
    ///
    /// If the handler fails after the id was recorded, the id must be forgotten so that the
    /// retry is processed rather than acknowledged: use the
    /// [`forget_on_failure`](crate::forget_on_failure) middleware, or call
    /// [`Verifier::forget`](crate::Verifier::forget) before answering non-2xx.
    Replayed {
        /// the `jti` / `webhook-id`
        event_id: String,
        /// the `webhook-receipt` value for this event, this (retry's) token's `iat` and the body
        /// ([`receipt`](crate::receipt)), which the 200 response carries
        receipt: String,
    },
    /// The replay store failed, or is full with [`WhenFull::RefuseNew`](crate::WhenFull::RefuseNew) (503, so
    /// the database retries later).
    ReplayStore(String),
}

impl VerifyError {
    /// The HTTP status the orchestrator answers with.
    pub fn status(&self) -> StatusCode {
        use VerifyError::*;
        match self {
            MissingWebhookId | BodyRead(_) | MalformedHeader { .. } => StatusCode::BAD_REQUEST,
            UnsupportedContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Replayed { .. } => StatusCode::OK,
            ReplayStore(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::UNAUTHORIZED,
        }
    }

    /// Whether this is a duplicate delivery to acknowledge ([`VerifyError::Replayed`]) rather
    /// than a refusal.
    pub fn is_duplicate(&self) -> bool {
        matches!(self, VerifyError::Replayed { .. })
    }

    /// The `webhook-receipt` value of a duplicate ([`VerifyError::Replayed`]), which its
    /// response carries; `None` for a refusal. A handler that answers duplicates itself should
    /// send it (the [`webhook_receipts`](crate::webhook_receipts) middleware does).
    pub fn receipt(&self) -> Option<&str> {
        match self {
            VerifyError::Replayed { receipt, .. } => Some(receipt),
            _ => None,
        }
    }

    /// A stable snake_case code naming the variant (the `error` field of the JSON response).
    pub fn code(&self) -> &'static str {
        use VerifyError::*;
        match self {
            MissingAuthorization => "missing_authorization",
            InvalidAuthorizationScheme => "invalid_authorization_scheme",
            MalformedToken(_) => "malformed_token",
            UnsupportedAlgorithm(_) => "unsupported_algorithm",
            UnsupportedTokenType(_) => "unsupported_token_type",
            UnsupportedHeaderParameter(_) => "unsupported_header_parameter",
            UnknownKeyId(_) => "unknown_key_id",
            InvalidSignature => "invalid_signature",
            Expired { .. } => "expired",
            IssuedInFuture { .. } => "issued_in_future",
            AudienceMismatch { .. } => "audience_mismatch",
            UnexpectedAudience(_) => "unexpected_audience",
            MissingClaim(_) => "missing_claim",
            InvalidClaim { .. } => "invalid_claim",
            ClaimMismatch { .. } => "claim_mismatch",
            WebhookIdMismatch => "webhook_id_mismatch",
            MissingWebhookId => "missing_webhook_id",
            UnsupportedContentType(_) => "unsupported_content_type",
            PayloadTooLarge { .. } => "payload_too_large",
            BodyRead(_) => "body_read",
            MalformedHeader { .. } => "malformed_header",
            BodyHashMismatch => "body_hash_mismatch",
            MissingWebhookHeader(_) => "missing_webhook_header",
            StaleTimestamp { .. } => "stale_timestamp",
            InvalidWebhookSignature => "invalid_webhook_signature",
            Replayed { .. } => "replayed",
            ReplayStore(_) => "replay_store",
        }
    }
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use VerifyError::*;
        match self {
            MissingAuthorization => write!(f, "missing Authorization header"),
            InvalidAuthorizationScheme => write!(f, "Authorization is not a Bearer token"),
            MalformedToken(why) => write!(f, "malformed token: {why}"),
            UnsupportedAlgorithm(alg) => write!(f, "token algorithm {alg} refused: only HS256"),
            UnsupportedTokenType(typ) => write!(f, "token typ {typ} refused: only JWT"),
            UnsupportedHeaderParameter(name) => {
                write!(
                    f,
                    "token header parameter {name:?} refused: only alg, kid and typ"
                )
            }
            UnknownKeyId(kid) => write!(f, "token key id {kid:?} names no key this verifier holds"),
            InvalidSignature => write!(f, "invalid token signature"),
            Expired { exp, now } => write!(f, "token expired at {exp} (now {now})"),
            IssuedInFuture { iat, now } => {
                write!(f, "token issued in the future at {iat} (now {now})")
            }
            AudienceMismatch { expected, found } => {
                write!(f, "token audience {found:?} is not {expected:?}")
            }
            UnexpectedAudience(found) => write!(
                f,
                "token has audience {found:?} but this verifier has none configured"
            ),
            MissingClaim(name) => write!(f, "token has no {name} claim"),
            InvalidClaim { name, reason } => write!(f, "token claim {name} invalid: {reason}"),
            ClaimMismatch {
                name,
                expected,
                found,
            } => write!(f, "token claim {name} is {found}, expected {expected}"),
            WebhookIdMismatch => write!(f, "webhook-id header differs from the token's jti"),
            MissingWebhookId => write!(f, "missing webhook-id header"),
            UnsupportedContentType(found) => {
                write!(f, "content type {found:?} refused: only application/json")
            }
            PayloadTooLarge { limit } => write!(f, "body larger than {limit} bytes"),
            BodyRead(why) => write!(f, "could not read the body: {why}"),
            MalformedHeader { name, reason } => write!(f, "malformed {name} header: {reason}"),
            BodyHashMismatch => write!(f, "body_sha256 does not match the body"),
            MissingWebhookHeader(name) => write!(f, "missing {name} header"),
            StaleTimestamp {
                timestamp,
                now,
                tolerance,
            } => write!(
                f,
                "webhook-timestamp {timestamp} is more than {tolerance} s from now ({now})"
            ),
            InvalidWebhookSignature => write!(f, "no valid v1 signature in webhook-signature"),
            Replayed { event_id, .. } => write!(f, "event {event_id} was already accepted"),
            ReplayStore(why) => write!(f, "replay store unavailable: {why}"),
        }
    }
}

impl std::error::Error for VerifyError {}

impl IntoResponse for VerifyError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = match &self {
            // 200 by design: acknowledge the duplicate so the database stops retrying.
            VerifyError::Replayed { event_id, .. } => {
                serde_json::json!({ "ok": true, "duplicate": true, "event_id": event_id })
            }
            _ => serde_json::json!({ "error": self.code(), "message": self.to_string() }),
        };
        let mut response = (status, body.to_string()).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let VerifyError::Replayed { receipt, .. } = &self {
            let (name, value) = crate::receipt::header(receipt);
            headers.insert(name, value);
        }
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
        }
        response
    }
}

/// The builder refused its configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// The HS256 key is empty.
    EmptySecret,
    /// A Standard Webhooks secret is not `whsec_<base64>`.
    InvalidWebhookSecret(String),
    /// The audience is not an absolute http(s) URL.
    InvalidAudience(String),
    /// An expected claim names one the verifier manages itself (`exp`, `iat`, `jti`,
    /// `body_sha256`, `aud`).
    ReservedClaim(String),
    /// The body limit is zero.
    InvalidBodyLimit,
    /// The key file cannot be read, or is not `{"jwt_secrets": [...], "webhook_secrets": [...]}`
    /// (the message names where, never a value).
    InvalidKeyFile(String),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::EmptySecret => write!(f, "the HS256 secret is empty"),
            ConfigError::InvalidWebhookSecret(why) => {
                write!(f, "invalid Standard Webhooks secret: {why}")
            }
            ConfigError::InvalidAudience(why) => write!(f, "invalid audience: {why}"),
            ConfigError::ReservedClaim(name) => write!(
                f,
                "claim {name} cannot be an expected claim: the verifier checks it itself"
            ),
            ConfigError::InvalidBodyLimit => write!(f, "the body limit must be at least 1 byte"),
            ConfigError::InvalidKeyFile(why) => write!(f, "invalid key file: {why}"),
        }
    }
}

impl std::error::Error for ConfigError {}
