//! Key sets: tokens chosen by `kid`, unknown ids refused, and a key file that is read again when
//! it changes (a rotation without a restart).

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use secure_webhook_verifier::{ConfigError, KeySet, Verifier, VerifyError, key_id, receipt};

const NEXT: &str = "test-only-next-jwt-secret-of-32-bytes-or-more";

/// Each token is for a new event (its own `jti`), so none is a duplicate of another.
static EVENTS: AtomicUsize = AtomicUsize::new(0);

fn token_with_kid(key: &str, kid: Option<String>) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = kid;
    let mut claims = claims(BODY);
    claims["jti"] = format!("event-{}", EVENTS.fetch_add(1, Ordering::Relaxed)).into();
    jsonwebtoken::encode(
        &header,
        &claims,
        &EncodingKey::from_secret(key.as_bytes()).unwrap(),
    )
    .unwrap()
}

/// The token's `jti`, which the `webhook-id` header must repeat.
fn jti(token: &str) -> String {
    let payload = token.split('.').nth(1).unwrap();
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    claims["jti"].as_str().unwrap().to_owned()
}

fn signed_by(key: &str) -> String {
    token_with_kid(key, Some(key_id(key)))
}

async fn check(verifier: &Verifier, token: &str) -> Result<String, VerifyError> {
    verifier
        .verify(
            &headers(token, &jti(token)),
            PATH,
            Bytes::copy_from_slice(BODY.as_bytes()),
        )
        .await
        .map(|webhook| webhook.kid)
}

/// Write `keys` to `path` as a new file renamed over the old one, as the docs ask.
fn write_keys(path: &Path, jwt_secrets: &[&str]) {
    let fresh = path.with_extension("new");
    let document = serde_json::json!({ "jwt_secrets": jwt_secrets });
    std::fs::write(&fresh, document.to_string()).unwrap();
    std::fs::rename(&fresh, path).unwrap();
}

#[test]
fn key_ids_are_the_ones_the_database_and_python_compute() {
    // webhook_verifier.key_id and the SQL of trigger_function.key_id_expression give the same
    assert_eq!(key_id("key"), "R6wPs6M70uxu7dmW");
    assert_eq!(key_id(SECRET).len(), 16);
    assert_ne!(key_id(SECRET), key_id(NEXT));
}

#[tokio::test]
async fn each_token_is_checked_with_the_key_its_kid_names() {
    let keys = KeySet::new([SECRET, NEXT], Vec::<String>::new()).unwrap();
    assert_eq!(
        keys.key_ids().collect::<Vec<_>>(),
        [key_id(SECRET), key_id(NEXT)]
    );
    let verifier = Verifier::builder_with_keys(keys)
        .clock(move || NOW)
        .build()
        .unwrap();
    // the receipt is signed with the key that verified the token
    for key in [NEXT, SECRET] {
        let token = signed_by(key);
        let accepted = verifier
            .verify(
                &headers(&token, &jti(&token)),
                PATH,
                Bytes::from_static(BODY.as_bytes()),
            )
            .await
            .unwrap();
        assert_eq!(accepted.kid, key_id(key));
        assert_eq!(
            accepted.receipt,
            receipt(key, &jti(&token), NOW, BODY.as_bytes())
        );
        // ... and names it, so the database checks it with that key
        assert!(
            accepted
                .receipt
                .starts_with(&format!("v1,{},", key_id(key))),
            "{}",
            accepted.receipt
        );
    }
    // a kid naming one held key, over a token another held key signed: only the named key is tried
    let mislabelled = token_with_kid(SECRET, Some(key_id(NEXT)));
    assert_eq!(
        check(&verifier, &mislabelled).await,
        Err(VerifyError::InvalidSignature)
    );
    // a token without kid (minted before key ids) is tried with every key held
    let both = Verifier::builder_with_keys(KeySet::new([SECRET, NEXT], [""; 0]).unwrap())
        .clock(move || NOW)
        .build()
        .unwrap();
    assert_eq!(
        check(&both, &token_with_kid(NEXT, None)).await,
        Ok(key_id(NEXT))
    );
}

#[tokio::test]
async fn an_unknown_kid_has_its_own_error() {
    let verifier = builder_for(SECRET);
    let error = check(&verifier, &signed_by(NEXT)).await.unwrap_err();
    assert_eq!(error, VerifyError::UnknownKeyId(key_id(NEXT)));
    assert_eq!(error.code(), "unknown_key_id");
    assert_eq!(error.status(), http::StatusCode::UNAUTHORIZED);
}

fn builder_for(secret: &str) -> Verifier {
    Verifier::builder(secret)
        .clock(move || NOW)
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_key_file_is_read_again_when_it_changes() {
    let directory = std::env::temp_dir().join(format!("key-rotation-{}", std::process::id()));
    std::fs::create_dir_all(&directory).unwrap();
    let path = directory.join("keys.json");
    write_keys(&path, &[SECRET]);
    let verifier = Verifier::builder_with_key_file(&path)
        .clock(move || NOW)
        .build()
        .unwrap();
    assert_eq!(
        check(&verifier, &signed_by(SECRET)).await,
        Ok(key_id(SECRET))
    );
    assert_eq!(
        check(&verifier, &signed_by(NEXT)).await,
        Err(VerifyError::UnknownKeyId(key_id(NEXT)))
    );

    // stage: the new key joins, no restart
    write_keys(&path, &[SECRET, NEXT]);
    assert_eq!(check(&verifier, &signed_by(NEXT)).await, Ok(key_id(NEXT)));
    assert_eq!(
        check(&verifier, &signed_by(SECRET)).await,
        Ok(key_id(SECRET))
    );

    // a broken file (half written, say) is ignored: the last good keys stay
    std::fs::write(&path, r#"{"jwt_secrets": ["#).unwrap();
    assert_eq!(check(&verifier, &signed_by(NEXT)).await, Ok(key_id(NEXT)));

    // retire: the old key leaves
    write_keys(&path, &[NEXT]);
    assert_eq!(
        check(&verifier, &signed_by(SECRET)).await,
        Err(VerifyError::UnknownKeyId(key_id(SECRET)))
    );
    std::fs::remove_dir_all(&directory).unwrap();
}

#[test]
fn a_bad_key_file_is_a_configuration_error_that_shows_no_key() {
    let directory = std::env::temp_dir().join(format!("key-file-errors-{}", std::process::id()));
    std::fs::create_dir_all(&directory).unwrap();
    let path = directory.join("keys.json");
    let missing = Verifier::builder_with_key_file(&path).build().unwrap_err();
    assert!(
        matches!(missing, ConfigError::InvalidKeyFile(_)),
        "{missing}"
    );
    // a secret where a list belongs: serde would quote it, the error must not
    std::fs::write(&path, format!(r#"{{"jwt_secrets": "{SECRET}"}}"#)).unwrap();
    let wrong = Verifier::builder_with_key_file(&path).build().unwrap_err();
    assert!(matches!(wrong, ConfigError::InvalidKeyFile(_)));
    assert!(!wrong.to_string().contains(SECRET), "{wrong}");
    std::fs::write(&path, r#"{"jwt_secrets": []}"#).unwrap();
    assert_eq!(
        Verifier::builder_with_key_file(&path).build().unwrap_err(),
        ConfigError::EmptySecret
    );
    std::fs::remove_dir_all(&directory).unwrap();
}
