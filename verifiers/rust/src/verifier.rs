//! The configuration and the checks.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use http::{HeaderMap, HeaderValue, header};
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::clock::{Clock, SystemClock};
use crate::error::{ConfigError, VerifyError};
use crate::json::strict_object;
use crate::keys::{KeyFile, KeySet, KeySource, decode_webhook_secret};
use crate::replay::{DEFAULT_MAX_ENTRIES, MemoryReplayStore, ReplayStore, WhenFull};

/// The default body limit: 1 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
/// The default Standard Webhooks timestamp tolerance: 5 minutes.
pub const DEFAULT_WEBHOOK_TOLERANCE_SECONDS: u64 = 300;
/// The longest `jti` accepted (the database sends a 36-character UUID).
pub const MAX_JTI_LENGTH: usize = 256;
/// The claims every token must carry by default: the project's default `secure-webhooks:claims`.
pub const DEFAULT_EXPECTED_CLAIMS: [(&str, &str); 3] = [
    ("role", "service_role"),
    ("iss", "supabase"),
    ("sub", "orchestrator"),
];
/// Claims the verifier checks itself, which cannot be expected claims.
const RESERVED_CLAIMS: [&str; 5] = ["exp", "iat", "jti", "body_sha256", "aud"];

/// The `webhook-id` header (Standard Webhooks' name; the database always sends it).
pub const WEBHOOK_ID: &str = "webhook-id";
/// The `webhook-timestamp` header (Standard Webhooks).
pub const WEBHOOK_TIMESTAMP: &str = "webhook-timestamp";
/// The `webhook-signature` header (Standard Webhooks).
pub const WEBHOOK_SIGNATURE: &str = "webhook-signature";

type HmacSha256 = Hmac<Sha256>;

/// The verified token's claims.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookClaims {
    /// Issued at, Unix seconds.
    pub iat: u64,
    /// Expires at, Unix seconds.
    pub exp: u64,
    /// The event id (a UUID; the same across retries of one event).
    pub jti: String,
    /// base64url (no padding) SHA-256 of the body, as the token states it.
    pub body_sha256: String,
    /// The URL the database posted to, when the deployment turned `aud` on.
    pub aud: Option<String>,
    /// Every claim of the token, including the ones above and e.g. `role`, `iss`, `sub`.
    pub all: Map<String, Value>,
}

impl WebhookClaims {
    /// Any claim by name.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.all.get(name)
    }

    /// A string claim by name.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.all.get(name).and_then(Value::as_str)
    }
}

/// A request that passed every check.
#[derive(Debug, Clone)]
pub struct VerifiedWebhook {
    /// The token's claims.
    pub claims: WebhookClaims,
    /// The event id: the token's `jti`, equal to the `webhook-id` header. Use it to drop
    /// duplicate deliveries (the database delivers at least once).
    pub event_id: String,
    /// The exact body bytes whose hash the token carries. Parse them (`serde_json::from_slice`);
    /// never re-serialise them to verify anything.
    pub body: Bytes,
    /// The `webhook-receipt` value for this event, its token's `iat` and the body
    /// ([`receipt`](crate::receipt)). The
    /// [`webhook_receipts`](crate::webhook_receipts) middleware adds it to a 2xx response; send
    /// it yourself outside axum ([`receipt_header`](Self::receipt_header)).
    pub receipt: String,
    /// The id ([`key_id`](crate::key_id)) of the key that verified the token and signed the
    /// receipt.
    pub kid: String,
}

impl VerifiedWebhook {
    /// `(webhook-receipt, value)` for the response.
    pub fn receipt_header(&self) -> (http::HeaderName, HeaderValue) {
        crate::receipt::header(&self.receipt)
    }
}

#[derive(Debug, Clone)]
enum Audience {
    Exact(String),
    BaseUrl(String),
}

/// Where the builder takes the HS256 keys from.
enum Keys {
    Secret(Vec<u8>),
    Set(KeySet),
    File(PathBuf),
}

/// Builds a [`Verifier`]; see [`Verifier::builder`].
pub struct VerifierBuilder {
    keys: Keys,
    leeway: u64,
    audience: Option<Audience>,
    accept_missing_audience: bool,
    expected: BTreeMap<String, Value>,
    webhook_secrets: Vec<String>,
    webhook_tolerance: u64,
    max_body_bytes: usize,
    require_json_content_type: bool,
    replay_store: Option<Arc<dyn ReplayStore>>,
    replay_capacity: usize,
    replay_when_full: WhenFull,
    clock: Option<Arc<dyn Clock>>,
}

impl VerifierBuilder {
    /// Seconds of clock skew tolerated on `exp` and `iat` (default 0). The database mints each
    /// token just before sending it from the same host's clock as pg_cron, so only clock skew
    /// between the database and the orchestrator needs covering: keep it small (0–30 s).
    pub fn leeway(mut self, seconds: u64) -> Self {
        self.leeway = seconds;
        self
    }

    /// Require `aud` to equal `url` exactly (the full URL the database posts to, e.g.
    /// `https://orchestrator.example.com/ingest/resumes/batch`). Tokens without `aud` are then
    /// refused (see [`accept_missing_audience`](Self::accept_missing_audience)). Use one verifier
    /// per endpoint, or [`audience_base_url`](Self::audience_base_url).
    pub fn audience(mut self, url: impl Into<String>) -> Self {
        self.audience = Some(Audience::Exact(url.into()));
        self
    }

    /// Require `aud` to equal `base_url` (trailing `/` dropped) followed by the request's path,
    /// so one verifier serves every `/ingest/*` route. In axum the path is the original URI's
    /// (before `Router::nest` stripped a prefix). Behind a proxy that rewrites paths, use
    /// [`audience`](Self::audience) instead.
    pub fn audience_base_url(mut self, base_url: impl Into<String>) -> Self {
        let base: String = base_url.into();
        self.audience = Some(Audience::BaseUrl(base.trim_end_matches('/').to_owned()));
        self
    }

    /// With an audience configured, also accept tokens that carry no `aud` (default false). For
    /// the rollout only: configure the audience with this on, then turn `aud` on in the
    /// database, then turn this off once older tokens expired.
    pub fn accept_missing_audience(mut self, accept: bool) -> Self {
        self.accept_missing_audience = accept;
        self
    }

    /// Require claim `name` to equal `value` (JSON equality). The defaults are `role:
    /// service_role`, `iss: supabase`, `sub: orchestrator`; this adds or replaces one.
    pub fn expect_claim(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        self.expected.insert(name.into(), value.into());
        self
    }

    /// Stop requiring claim `name` (e.g. one of the defaults).
    pub fn without_expected_claim(mut self, name: &str) -> Self {
        self.expected.remove(name);
        self
    }

    /// Require no configured claims at all (only the ones the verifier manages).
    pub fn clear_expected_claims(mut self) -> Self {
        self.expected.clear();
        self
    }

    /// Also require a valid Standard Webhooks signature with this `whsec_<base64>` secret. Call
    /// again to accept several secrets while rotating: a request passes when any `v1` signature
    /// in `webhook-signature` matches any configured secret (or any in the key set or file).
    pub fn standard_webhooks_secret(mut self, secret: impl Into<String>) -> Self {
        self.webhook_secrets.push(secret.into());
        self
    }

    /// How far `webhook-timestamp` may be from the clock, either way (default 300 s).
    pub fn webhook_tolerance(mut self, seconds: u64) -> Self {
        self.webhook_tolerance = seconds;
        self
    }

    /// The largest body accepted, in bytes (default 1 MiB). axum's `DefaultBodyLimit`, when
    /// smaller, applies too.
    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body_bytes = bytes;
        self
    }

    /// Require `Content-Type: application/json` (default true; parameters such as `charset`
    /// are allowed).
    pub fn require_json_content_type(mut self, require: bool) -> Self {
        self.require_json_content_type = require;
        self
    }

    /// Use this store for `jti` replay detection instead of a private [`MemoryReplayStore`]
    /// (needed when several orchestrator replicas must share what they saw).
    pub fn replay_store(mut self, store: impl ReplayStore + 'static) -> Self {
        self.replay_store = Some(Arc::new(store));
        self
    }

    /// The capacity of the default in-memory replay store (default 200,000 entries).
    pub fn replay_capacity(mut self, entries: usize) -> Self {
        self.replay_capacity = entries;
        self
    }

    /// What the default in-memory replay store does with a new event id when it is full of
    /// unexpired ones (default [`WhenFull::EvictSoonestExpiring`]; see [`WhenFull`]).
    pub fn replay_when_full(mut self, when_full: WhenFull) -> Self {
        self.replay_when_full = when_full;
        self
    }

    /// The clock to verify against (default the system clock).
    pub fn clock(mut self, clock: impl Clock + 'static) -> Self {
        self.clock = Some(Arc::new(clock));
        self
    }

    /// Check the configuration and build the verifier.
    pub fn build(self) -> Result<Verifier, ConfigError> {
        if self.max_body_bytes == 0 {
            return Err(ConfigError::InvalidBodyLimit);
        }
        if let Some(name) = self
            .expected
            .keys()
            .find(|name| RESERVED_CLAIMS.contains(&name.as_str()))
        {
            return Err(ConfigError::ReservedClaim(name.clone()));
        }
        if let Some(Audience::Exact(url) | Audience::BaseUrl(url)) = &self.audience {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(ConfigError::InvalidAudience(format!(
                    "{url:?} is not an absolute http(s) URL"
                )));
            }
        }
        let webhook_keys = self
            .webhook_secrets
            .iter()
            .map(|secret| decode_webhook_secret(secret))
            .collect::<Result<Vec<_>, _>>()?;
        let keys = match self.keys {
            Keys::Secret(secret) => {
                KeySource::Fixed(Arc::new(KeySet::new([secret], &self.webhook_secrets)?))
            }
            Keys::Set(set) => KeySource::Fixed(Arc::new(set.with_webhook_keys(&webhook_keys))),
            Keys::File(path) => KeySource::File(KeyFile::open(path, webhook_keys)?),
        };
        let replay_store = self.replay_store.unwrap_or_else(|| {
            Arc::new(MemoryReplayStore::with_policy(
                self.replay_capacity,
                self.replay_when_full,
            )) as Arc<dyn ReplayStore>
        });
        Ok(Verifier {
            inner: Arc::new(Inner {
                keys,
                leeway: self.leeway,
                audience: self.audience,
                accept_missing_audience: self.accept_missing_audience,
                expected: self.expected,
                webhook_tolerance: self.webhook_tolerance,
                max_body_bytes: self.max_body_bytes,
                require_json_content_type: self.require_json_content_type,
                replay_store,
                clock: self.clock.unwrap_or_else(|| Arc::new(SystemClock)),
            }),
        })
    }
}

impl fmt::Debug for VerifierBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifierBuilder")
            .field("leeway", &self.leeway)
            .field("audience", &self.audience)
            .field("expected", &self.expected)
            .finish_non_exhaustive()
    }
}

/// Verifies webhook requests from the database. Cheap to clone (one `Arc`); share one per
/// configuration, since the replay cache lives in it.
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

struct Inner {
    /// The HS256 keys (each also the key of its receipts) and Standard Webhooks keys.
    keys: KeySource,
    leeway: u64,
    audience: Option<Audience>,
    accept_missing_audience: bool,
    expected: BTreeMap<String, Value>,
    webhook_tolerance: u64,
    max_body_bytes: usize,
    require_json_content_type: bool,
    replay_store: Arc<dyn ReplayStore>,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner;
        f.debug_struct("Verifier")
            .field("leeway", &inner.leeway)
            .field("audience", &inner.audience)
            .field("accept_missing_audience", &inner.accept_missing_audience)
            .field("expected", &inner.expected)
            .field("keys", &inner.keys.current())
            .field("webhook_tolerance", &inner.webhook_tolerance)
            .field("max_body_bytes", &inner.max_body_bytes)
            .finish_non_exhaustive()
    }
}

/// What the header checks found, waiting for the body.
#[derive(Debug)]
pub(crate) struct Pending {
    claims: WebhookClaims,
    /// The keys as they were when the token was checked, and which of them verified it.
    keys: Arc<KeySet>,
    key: usize,
    body_digest: [u8; 32],
    timestamp: Option<HeaderValue>,
    signature: Option<HeaderValue>,
    now: u64,
}

impl Verifier {
    /// Start a configuration with the HS256 key (the Vault's `app_jwt_secret`; RFC 7518 wants at
    /// least 32 bytes).
    pub fn builder(secret: impl AsRef<[u8]>) -> VerifierBuilder {
        Self::builder_from(Keys::Secret(secret.as_ref().to_vec()))
    }

    /// Start a configuration with several HS256 keys (and Standard Webhooks keys), e.g. the
    /// current and the staged key of a rotation. A token is checked with the key its `kid` names.
    pub fn builder_with_keys(keys: KeySet) -> VerifierBuilder {
        Self::builder_from(Keys::Set(keys))
    }

    /// Start a configuration whose keys come from a JSON file (`{"jwt_secrets": [...],
    /// "webhook_secrets": [...]}`, see [`KeySet::from_json`]). It is read when the verifier is
    /// built (an unreadable or invalid file is a [`ConfigError`]) and read again on the first
    /// request after its modification time, size or inode changed, so keys rotate without a
    /// restart. Replace it atomically (write a new file, then rename it over the old one): a file
    /// that does not parse is ignored and the last good keys stay in use.
    pub fn builder_with_key_file(path: impl Into<PathBuf>) -> VerifierBuilder {
        Self::builder_from(Keys::File(path.into()))
    }

    fn builder_from(keys: Keys) -> VerifierBuilder {
        VerifierBuilder {
            keys,
            leeway: 0,
            audience: None,
            accept_missing_audience: false,
            expected: DEFAULT_EXPECTED_CLAIMS
                .iter()
                .map(|(name, value)| ((*name).to_owned(), Value::from(*value)))
                .collect(),
            webhook_secrets: Vec::new(),
            webhook_tolerance: DEFAULT_WEBHOOK_TOLERANCE_SECONDS,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            require_json_content_type: true,
            replay_store: None,
            replay_capacity: DEFAULT_MAX_ENTRIES,
            replay_when_full: WhenFull::default(),
            clock: None,
        }
    }

    /// The body limit in bytes.
    pub fn max_body_bytes(&self) -> usize {
        self.inner.max_body_bytes
    }

    /// Verify a whole request: its headers, the path it was posted to (for
    /// [`audience_base_url`](VerifierBuilder::audience_base_url)) and its exact body bytes.
    /// On success the event id is recorded in the replay store.
    pub async fn verify(
        &self,
        headers: &HeaderMap,
        path: &str,
        body: Bytes,
    ) -> Result<VerifiedWebhook, VerifyError> {
        let pending = self.check_headers(headers, path)?;
        self.check_body(pending, body).await
    }

    /// Forget an accepted event id, so that the database's next delivery of it is accepted (and
    /// processed) instead of being acknowledged as a duplicate ([`VerifyError::Replayed`]):
    /// call it when the handler could not process the event and answers non-2xx. The
    /// [`forget_on_failure`](crate::forget_on_failure) middleware does this for axum handlers.
    pub async fn forget(&self, event_id: &str) -> Result<(), VerifyError> {
        self.inner
            .replay_store
            .forget(event_id)
            .await
            .map_err(|error| VerifyError::ReplayStore(error.0))
    }

    /// Every check that needs only the headers, in order: the token (signature, time,
    /// audience, claims), `webhook-id`, the content type. Reads the clock once.
    pub(crate) fn check_headers(
        &self,
        headers: &HeaderMap,
        path: &str,
    ) -> Result<Pending, VerifyError> {
        let inner = &self.inner;
        let now = inner.clock.now();
        let token = bearer_token(headers)?;
        let keys = inner.keys.current();
        let (all, key) = decode(&keys, token)?;

        // exp and iat: first their order, which no clock changes, then the clock
        let exp = integer_claim(&all, "exp")?;
        let iat = integer_claim(&all, "iat")?;
        if exp <= iat {
            return Err(VerifyError::InvalidClaim {
                name: "exp".into(),
                reason: "not after iat".into(),
            });
        }
        if now >= exp.saturating_add(inner.leeway) {
            return Err(VerifyError::Expired { exp, now });
        }
        if iat > now.saturating_add(inner.leeway) {
            return Err(VerifyError::IssuedInFuture { iat, now });
        }

        // aud
        let aud = match all.get("aud") {
            None => None,
            Some(Value::String(aud)) => Some(aud.clone()),
            Some(other) => {
                return Err(VerifyError::InvalidClaim {
                    name: "aud".into(),
                    reason: format!("must be a string, not {other}"),
                });
            }
        };
        match (&inner.audience, &aud) {
            (None, None) => {}
            (None, Some(found)) => return Err(VerifyError::UnexpectedAudience(found.clone())),
            (Some(_), None) if inner.accept_missing_audience => {}
            (Some(_), None) => return Err(VerifyError::MissingClaim("aud".into())),
            (Some(expected), Some(found)) => {
                let expected = match expected {
                    Audience::Exact(url) => url.clone(),
                    Audience::BaseUrl(base) => format!("{base}{path}"),
                };
                if *found != expected {
                    return Err(VerifyError::AudienceMismatch {
                        expected,
                        found: found.clone(),
                    });
                }
            }
        }

        // required claims
        let jti = string_claim(&all, "jti")?;
        if jti.is_empty() || jti.len() > MAX_JTI_LENGTH {
            return Err(VerifyError::InvalidClaim {
                name: "jti".into(),
                reason: format!("must be 1 to {MAX_JTI_LENGTH} bytes long"),
            });
        }
        let body_sha256 = string_claim(&all, "body_sha256")?;
        let body_digest = URL_SAFE_NO_PAD
            .decode(body_sha256)
            .ok()
            .and_then(|digest| <[u8; 32]>::try_from(digest).ok())
            .ok_or_else(|| VerifyError::InvalidClaim {
                name: "body_sha256".into(),
                reason: "not a base64url (unpadded) SHA-256 digest".into(),
            })?;
        for (name, expected) in &inner.expected {
            match all.get(name) {
                None => return Err(VerifyError::MissingClaim(name.clone())),
                Some(found) if found != expected => {
                    return Err(VerifyError::ClaimMismatch {
                        name: name.clone(),
                        expected: expected.to_string(),
                        found: found.to_string(),
                    });
                }
                Some(_) => {}
            }
        }

        // webhook-id
        let webhook_id = headers
            .get(WEBHOOK_ID)
            .ok_or(VerifyError::MissingWebhookId)?;
        if webhook_id.as_bytes() != jti.as_bytes() {
            return Err(VerifyError::WebhookIdMismatch);
        }

        // content type
        if inner.require_json_content_type {
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
                .unwrap_or_default();
            let media_type = content_type.split(';').next().unwrap_or("").trim();
            if !media_type.eq_ignore_ascii_case("application/json") {
                return Err(VerifyError::UnsupportedContentType(content_type));
            }
        }

        let claims = WebhookClaims {
            iat,
            exp,
            jti: jti.to_owned(),
            body_sha256: body_sha256.to_owned(),
            aud,
            all,
        };
        Ok(Pending {
            claims,
            keys,
            key,
            body_digest,
            timestamp: headers.get(WEBHOOK_TIMESTAMP).cloned(),
            signature: headers.get(WEBHOOK_SIGNATURE).cloned(),
            now,
        })
    }

    /// The checks that need the body, in order: size, `body_sha256`, the Standard Webhooks
    /// signature (when configured), and last the replay cache.
    pub(crate) async fn check_body(
        &self,
        pending: Pending,
        body: Bytes,
    ) -> Result<VerifiedWebhook, VerifyError> {
        let inner = &self.inner;
        if body.len() > inner.max_body_bytes {
            return Err(VerifyError::PayloadTooLarge {
                limit: inner.max_body_bytes,
            });
        }
        let digest: [u8; 32] = Sha256::digest(&body).into();
        if !bool::from(digest.ct_eq(&pending.body_digest)) {
            return Err(VerifyError::BodyHashMismatch);
        }
        if !pending.keys.webhook.is_empty() {
            self.check_standard_webhooks(&pending, &body)?;
        }
        let Pending {
            claims,
            now,
            keys,
            key,
            ..
        } = pending;
        let key = &keys.jwt[key];
        let expires_at = claims.exp.saturating_add(inner.leeway);
        let new = inner
            .replay_store
            .check_and_record(&claims.jti, expires_at, now)
            .await
            .map_err(|error| VerifyError::ReplayStore(error.0))?;
        let receipt = crate::receipt::sign(
            key.receipt_mac.clone(),
            &key.kid,
            &claims.jti,
            claims.iat,
            &digest,
        );
        if !new {
            return Err(VerifyError::Replayed {
                event_id: claims.jti,
                receipt,
            });
        }
        Ok(VerifiedWebhook {
            event_id: claims.jti.clone(),
            claims,
            body,
            receipt,
            kid: key.kid.clone(),
        })
    }

    fn check_standard_webhooks(&self, pending: &Pending, body: &[u8]) -> Result<(), VerifyError> {
        let inner = &self.inner;
        let timestamp_header = pending
            .timestamp
            .as_ref()
            .ok_or(VerifyError::MissingWebhookHeader(WEBHOOK_TIMESTAMP))?;
        let timestamp_text =
            timestamp_header
                .to_str()
                .map_err(|_| VerifyError::MalformedHeader {
                    name: WEBHOOK_TIMESTAMP,
                    reason: "not visible ASCII".into(),
                })?;
        // ASCII digits only: `i64::from_str` would also take a sign ("+1767225600"), which
        // Standard Webhooks never sends and the Python verifier refuses.
        let timestamp: i64 = Some(timestamp_text)
            .filter(|text| !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit()))
            .and_then(|text| text.parse().ok())
            .ok_or_else(|| VerifyError::MalformedHeader {
                name: WEBHOOK_TIMESTAMP,
                reason: "not an integer number of seconds".into(),
            })?;
        let skew = (i128::from(timestamp) - i128::from(pending.now)).unsigned_abs();
        if skew > u128::from(inner.webhook_tolerance) {
            return Err(VerifyError::StaleTimestamp {
                timestamp,
                now: pending.now,
                tolerance: inner.webhook_tolerance,
            });
        }
        let signatures = pending
            .signature
            .as_ref()
            .ok_or(VerifyError::MissingWebhookHeader(WEBHOOK_SIGNATURE))?;
        let signatures = String::from_utf8_lossy(signatures.as_bytes());
        let candidates: Vec<Vec<u8>> = signatures
            .split_whitespace()
            .filter_map(|entry| entry.split_once(','))
            .filter(|(version, _)| *version == "v1")
            .filter_map(|(_, encoded)| STANDARD.decode(encoded).ok())
            .collect();
        for key in &pending.keys.webhook {
            let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
            mac.update(pending.claims.jti.as_bytes());
            mac.update(b".");
            mac.update(timestamp_text.as_bytes());
            mac.update(b".");
            mac.update(body);
            let expected = mac.finalize().into_bytes();
            if candidates
                .iter()
                .any(|candidate| bool::from(candidate.as_slice().ct_eq(expected.as_slice())))
            {
                return Ok(());
            }
        }
        Err(VerifyError::InvalidWebhookSignature)
    }
}

/// The JOSE header (HS256 only, `typ` JWT and `kid` if any, no other parameter), the MAC
/// (checked by jsonwebtoken) with the key `kid` names (any key held, for a token without `kid`),
/// then the claims; and which key verified it. Both JSON parts are parsed strictly (duplicate
/// keys refused, see [`strict_object`]) and base64url strictly (no padding, no stray bits), the
/// same way the Python verifier reads them.
fn decode(keys: &KeySet, token: &str) -> Result<(Map<String, Value>, usize), VerifyError> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(VerifyError::MalformedToken(
            "not three dot-separated parts".into(),
        ));
    };
    let header_json = URL_SAFE_NO_PAD
        .decode(header)
        .ok()
        .and_then(|json| strict_object(&json))
        .ok_or_else(|| {
            VerifyError::MalformedToken("the header is not a base64url JSON object".into())
        })?;
    match header_json.get("alg") {
        Some(Value::String(alg)) if alg == "HS256" => {}
        Some(Value::String(alg)) => return Err(VerifyError::UnsupportedAlgorithm(alg.clone())),
        Some(other) => return Err(VerifyError::UnsupportedAlgorithm(other.to_string())),
        None => return Err(VerifyError::MalformedToken("the header has no alg".into())),
    }
    match header_json.get("typ") {
        None => {}
        Some(Value::String(typ)) if typ == "JWT" => {}
        Some(other) => {
            let typ = other
                .as_str()
                .map_or_else(|| other.to_string(), str::to_owned);
            return Err(VerifyError::UnsupportedTokenType(typ));
        }
    }
    // serde_json's Map is sorted, so this is the first other parameter by name, as in Python
    if let Some(name) = header_json
        .keys()
        .find(|name| !matches!(name.as_str(), "alg" | "kid" | "typ"))
    {
        return Err(VerifyError::UnsupportedHeaderParameter(name.clone()));
    }
    // with kid, only the key it names; without (tokens minted before key ids), every key held
    let candidates: Vec<usize> = match header_json.get("kid") {
        None => (0..keys.jwt.len()).collect(),
        Some(Value::String(kid)) => match keys.jwt.iter().position(|key| key.kid == *kid) {
            Some(index) => vec![index],
            None => return Err(VerifyError::UnknownKeyId(kid.clone())),
        },
        Some(_) => {
            return Err(VerifyError::MalformedToken(
                "the header's kid is not a string".into(),
            ));
        }
    };
    if URL_SAFE_NO_PAD.decode(signature).is_err() {
        return Err(VerifyError::MalformedToken(
            "the signature is not base64url".into(),
        ));
    }
    let message = &token[..header.len() + 1 + payload.len()];
    let mut verified = None;
    for index in candidates {
        match jsonwebtoken::crypto::verify(
            signature,
            message.as_bytes(),
            &keys.jwt[index].decoding,
            Algorithm::HS256,
        ) {
            Ok(true) => {
                verified = Some(index);
                break;
            }
            Ok(false) => {}
            Err(_) => {
                return Err(VerifyError::MalformedToken(
                    "the signature is not base64url".into(),
                ));
            }
        }
    }
    let key = verified.ok_or(VerifyError::InvalidSignature)?;
    let claims = URL_SAFE_NO_PAD
        .decode(payload)
        .ok()
        .and_then(|json| strict_object(&json))
        .ok_or_else(|| {
            VerifyError::MalformedToken("the claims are not a base64url JSON object".into())
        })?;
    Ok((claims, key))
}

fn bearer_token(headers: &HeaderMap) -> Result<&str, VerifyError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or(VerifyError::MissingAuthorization)?
        .to_str()
        .map_err(|_| VerifyError::InvalidAuthorizationScheme)?;
    let (scheme, token) = value
        .trim()
        .split_once(' ')
        .ok_or(VerifyError::InvalidAuthorizationScheme)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(VerifyError::InvalidAuthorizationScheme);
    }
    Ok(token)
}

fn integer_claim(claims: &Map<String, Value>, name: &str) -> Result<u64, VerifyError> {
    let value = claims
        .get(name)
        .ok_or_else(|| VerifyError::MissingClaim(name.into()))?;
    value.as_u64().ok_or_else(|| VerifyError::InvalidClaim {
        name: name.into(),
        reason: format!("must be a non-negative integer number of seconds, not {value}"),
    })
}

fn string_claim<'a>(claims: &'a Map<String, Value>, name: &str) -> Result<&'a str, VerifyError> {
    let value = claims
        .get(name)
        .ok_or_else(|| VerifyError::MissingClaim(name.into()))?;
    value.as_str().ok_or_else(|| VerifyError::InvalidClaim {
        name: name.into(),
        reason: format!("must be a string, not {value}"),
    })
}
