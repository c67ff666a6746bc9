//! Key sets: several HS256 keys chosen by `kid`, several Standard Webhooks keys, and a key file
//! that is read again when it changes.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::{Hmac, KeyInit, Mac};
use jsonwebtoken::DecodingKey;
use serde::Deserialize;
use sha2::Sha256;

use crate::error::ConfigError;

/// What a key id is an HMAC of (the database mints the same ids).
const KEY_ID_LABEL: &[u8] = b"secure-webhooks key id v1";
/// Characters of base64url a key id keeps.
const KEY_ID_CHARS: usize = 16;

/// The `kid` the database writes into every token signed with `key`: the first 16 characters of
/// base64url-nopad(HMAC-SHA256(key, `"secure-webhooks key id v1"`)).
///
/// Derived from the key, so a verifier computes the ids of the keys it holds (a key set is just a
/// list of keys); a pseudo-random function of the key, so the id reveals nothing a token signed
/// with the key did not already.
pub fn key_id(key: impl AsRef<[u8]>) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_ref()).expect("HMAC takes any key length");
    mac.update(KEY_ID_LABEL);
    let mut id = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    id.truncate(KEY_ID_CHARS);
    id
}

/// One HS256 key, ready to check tokens and sign receipts.
pub(crate) struct JwtKey {
    pub(crate) kid: String,
    pub(crate) decoding: DecodingKey,
    pub(crate) receipt_mac: Hmac<Sha256>,
}

/// The keys a [`Verifier`](crate::Verifier) accepts: HS256 keys by their [`key_id`], and
/// Standard Webhooks keys (with none, requests need no Standard Webhooks signature).
pub struct KeySet {
    pub(crate) jwt: Vec<JwtKey>,
    pub(crate) webhook: Vec<Vec<u8>>,
}

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeySet")
            .field(
                "kids",
                &self
                    .jwt
                    .iter()
                    .map(|key| key.kid.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("standard_webhooks_keys", &self.webhook.len())
            .finish()
    }
}

impl KeySet {
    /// HS256 keys (at least one, none empty) and `whsec_<base64>` secrets.
    pub fn new<K: AsRef<[u8]>, W: AsRef<str>>(
        jwt_secrets: impl IntoIterator<Item = K>,
        webhook_secrets: impl IntoIterator<Item = W>,
    ) -> Result<Self, ConfigError> {
        let mut jwt = Vec::new();
        for secret in jwt_secrets {
            let secret = secret.as_ref();
            if secret.is_empty() {
                return Err(ConfigError::EmptySecret);
            }
            let kid = key_id(secret);
            if jwt.iter().any(|key: &JwtKey| key.kid == kid) {
                continue;
            }
            jwt.push(JwtKey {
                kid,
                decoding: DecodingKey::from_secret(secret).map_err(|_| ConfigError::EmptySecret)?,
                receipt_mac: Hmac::<Sha256>::new_from_slice(secret)
                    .expect("HMAC takes any key length"),
            });
        }
        if jwt.is_empty() {
            return Err(ConfigError::EmptySecret);
        }
        let webhook = webhook_secrets
            .into_iter()
            .map(|secret| decode_webhook_secret(secret.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { jwt, webhook })
    }

    /// The key set of a key file's text: `{"jwt_secrets": [...], "webhook_secrets": [...]}`
    /// (`webhook_secrets` optional, no other member).
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Document {
            jwt_secrets: Vec<String>,
            #[serde(default)]
            webhook_secrets: Vec<String>,
        }
        // serde's messages quote the values they refuse: only the category and place are kept
        let document: Document = serde_json::from_str(text).map_err(|error| {
            ConfigError::InvalidKeyFile(format!(
                "not {{\"jwt_secrets\": [...], \"webhook_secrets\": [...]}} ({:?} error at line {}, column {})",
                error.classify(),
                error.line(),
                error.column()
            ))
        })?;
        Self::new(document.jwt_secrets, document.webhook_secrets)
    }

    /// The ids of the HS256 keys held, as tokens name them in `kid`.
    pub fn key_ids(&self) -> impl Iterator<Item = &str> {
        self.jwt.iter().map(|key| key.kid.as_str())
    }

    pub(crate) fn with_webhook_keys(mut self, extra: &[Vec<u8>]) -> Self {
        self.webhook.extend(extra.iter().cloned());
        self
    }
}

pub(crate) fn decode_webhook_secret(secret: &str) -> Result<Vec<u8>, ConfigError> {
    let encoded = secret
        .strip_prefix("whsec_")
        .ok_or_else(|| ConfigError::InvalidWebhookSecret("does not start with whsec_".into()))?;
    let key = STANDARD.decode(encoded).map_err(|error| {
        ConfigError::InvalidWebhookSecret(format!("the part after whsec_ is not base64: {error}"))
    })?;
    if key.is_empty() {
        return Err(ConfigError::InvalidWebhookSecret("the key is empty".into()));
    }
    Ok(key)
}

/// What identifies one version of the key file: modification time, size and (on Unix) inode.
type Stamp = (Option<SystemTime>, u64, u64);

fn stamp(path: &Path) -> std::io::Result<Stamp> {
    let metadata = std::fs::metadata(path)?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&metadata);
    #[cfg(not(unix))]
    let inode = 0;
    Ok((metadata.modified().ok(), metadata.len(), inode))
}

/// Where a verifier's keys come from: fixed at build time, or a key file.
pub(crate) enum KeySource {
    Fixed(Arc<KeySet>),
    File(KeyFile),
}

impl KeySource {
    pub(crate) fn current(&self) -> Arc<KeySet> {
        match self {
            KeySource::Fixed(keys) => keys.clone(),
            KeySource::File(file) => file.current(),
        }
    }
}

/// A key file read again whenever it changes. Each request stats the file (microseconds) and
/// reads it again when its modification time, size or inode changed; a file that cannot be read
/// or parsed (say, half written) is ignored and the last good key set stays in use, until the
/// next request tries again. Replace the file atomically (write a new file, rename it over the
/// old one).
pub(crate) struct KeyFile {
    path: PathBuf,
    extra_webhook_keys: Vec<Vec<u8>>,
    loaded: Mutex<(Stamp, Arc<KeySet>)>,
}

impl KeyFile {
    pub(crate) fn open(
        path: PathBuf,
        extra_webhook_keys: Vec<Vec<u8>>,
    ) -> Result<Self, ConfigError> {
        let loaded = Self::load(&path, &extra_webhook_keys)?;
        Ok(Self {
            path,
            extra_webhook_keys,
            loaded: Mutex::new(loaded),
        })
    }

    fn load(path: &Path, extra: &[Vec<u8>]) -> Result<(Stamp, Arc<KeySet>), ConfigError> {
        let unreadable = |error: std::io::Error| {
            ConfigError::InvalidKeyFile(format!("{}: {error}", path.display()))
        };
        let before = stamp(path).map_err(unreadable)?;
        let text = std::fs::read_to_string(path).map_err(unreadable)?;
        let keys = KeySet::from_json(&text)?.with_webhook_keys(extra);
        Ok((before, Arc::new(keys)))
    }

    fn current(&self) -> Arc<KeySet> {
        let mut loaded = self
            .loaded
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if stamp(&self.path).is_ok_and(|now| now != loaded.0) {
            if let Ok(fresh) = Self::load(&self.path, &self.extra_webhook_keys) {
                *loaded = fresh;
            }
        }
        loaded.1.clone()
    }
}
