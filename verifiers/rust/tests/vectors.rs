//! Shared test vectors: recorded requests and whether the verifier must accept them.
//!
//! `WEBHOOK_VECTORS=/path/to/vectors.json cargo test --test vectors` runs a file produced
//! elsewhere (e.g. by the database side); the test fails if the variable is set and the file
//! cannot be read or parsed. Without the variable it runs `tests/vectors.sample.json`
//! (made by `tests/make_sample_vectors.py`). Every file's `reason`s are this crate's error codes
//! (`VerifyError::code`), compared too: the Python verifier reports the same codes
//! (`VerificationError.code`) and is held to the same files by tests/test_verifier_vectors.py.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use secure_webhook_verifier::{KeySet, ManualClock, Verifier, VerifyError, receipt};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct Vectors {
    secret: String,
    webhook_secret: Option<String>,
    cases: Vec<Case>,
    /// (secret, webhook id, iat, body) -> `webhook-receipt` examples.
    #[serde(default)]
    receipts: Vec<ReceiptCase>,
}

#[derive(Debug, Deserialize)]
struct ReceiptCase {
    name: String,
    secret: String,
    webhook_id: String,
    iat: u64,
    body_base64: String,
    receipt: String,
}

#[derive(Debug, Deserialize)]
struct Case {
    name: String,
    #[allow(dead_code)] // informational: `path` is what the verifier sees
    url: String,
    path: String,
    headers: BTreeMap<String, String>,
    body_base64: String,
    now: u64,
    audience: Option<String>,
    expect: Expect,
    reason: Option<String>,
    replay_of: Option<String>,
    /// The `webhook-receipt` an accepted (or duplicate) case's answer carries, when given.
    #[serde(default)]
    receipt: Option<String>,
    /// The verifier's key set for this case (a rotation), instead of `secret` and `webhook_secret`.
    #[serde(default)]
    keys: Option<Keys>,
}

#[derive(Debug, Deserialize)]
struct Keys {
    jwt_secrets: Vec<String>,
    webhook_secrets: Vec<String>,
}

#[derive(Debug, Deserialize, PartialEq, Eq, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum Expect {
    Accept,
    Reject,
}

fn load(path: &Path) -> Result<Vectors, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("cannot read vectors file {}: {error}", path.display()))?;
    let vectors: Vectors = serde_json::from_str(&text)
        .map_err(|error| format!("cannot parse vectors file {}: {error}", path.display()))?;
    if vectors.cases.is_empty() {
        return Err(format!("vectors file {} has no cases", path.display()));
    }
    Ok(vectors)
}

/// The file to run: `WEBHOOK_VECTORS`, or the sample.
fn vectors_file() -> PathBuf {
    match std::env::var_os("WEBHOOK_VECTORS") {
        Some(path) => PathBuf::from(path),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors.sample.json"),
    }
}

fn request(case: &Case) -> Result<(HeaderMap, Bytes), String> {
    let mut headers = HeaderMap::new();
    for (name, value) in &case.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|error| format!("header name {name:?}: {error}"))?;
        let value = HeaderValue::from_str(value)
            .map_err(|error| format!("header {name} value: {error}"))?;
        headers.append(name, value);
    }
    let body = STANDARD
        .decode(&case.body_base64)
        .map_err(|error| format!("body_base64: {error}"))?;
    Ok((headers, Bytes::from(body)))
}

fn verifier(vectors: &Vectors, case: &Case, clock: Arc<ManualClock>) -> Verifier {
    let mut builder = match &case.keys {
        Some(keys) => Verifier::builder_with_keys(
            KeySet::new(&keys.jwt_secrets, &keys.webhook_secrets)
                .unwrap_or_else(|error| panic!("case {}: its keys: {error}", case.name)),
        ),
        None => {
            let builder = Verifier::builder(&vectors.secret);
            match &vectors.webhook_secret {
                Some(secret) => builder.standard_webhooks_secret(secret),
                None => builder,
            }
        }
    }
    .clock(clock);
    if let Some(audience) = &case.audience {
        builder = builder.audience(audience);
    }
    builder.build().unwrap_or_else(|error| {
        panic!("case {}: cannot configure the verifier: {error}", case.name)
    })
}

/// The outcome, and the receipt the answer carries (accepted, or a duplicate).
async fn verify(
    verifier: &Verifier,
    clock: &ManualClock,
    case: &Case,
) -> Result<(Result<(), VerifyError>, Option<String>), String> {
    let (headers, body) = request(case)?;
    clock.set(case.now);
    Ok(match verifier.verify(&headers, &case.path, body).await {
        Ok(webhook) => (Ok(()), Some(webhook.receipt)),
        Err(error) => {
            let receipt = error.receipt().map(str::to_owned);
            (Err(error), receipt)
        }
    })
}

/// Whether `outcome` is what `case` expects; the reason (an error code) and the receipt, when
/// the case names one, are compared too.
fn judge(
    case: &Case,
    (outcome, receipt): &(Result<(), VerifyError>, Option<String>),
) -> Option<String> {
    let why = case.reason.as_deref().unwrap_or("no reason given");
    if case.receipt.is_some() && case.receipt != *receipt {
        return Some(format!(
            "expected webhook-receipt {:?}, got {receipt:?}",
            case.receipt
        ));
    }
    match (case.expect, outcome) {
        (Expect::Accept, Ok(())) => None,
        (Expect::Accept, Err(error)) => Some(format!(
            "expected accept, refused with {} ({error})",
            error.code()
        )),
        (Expect::Reject, Ok(())) => Some(format!("expected reject ({why}), accepted")),
        (Expect::Reject, Err(error)) if case.reason.as_deref() != Some(error.code()) => {
            Some(format!(
                "expected reject with {why}, refused with {} ({error})",
                error.code()
            ))
        }
        (Expect::Reject, Err(_)) => None,
    }
}

/// Run every case; return the failures as (case name, what went wrong).
async fn run(vectors: &Vectors) -> Vec<(String, String)> {
    let by_name: BTreeMap<&str, &Case> =
        vectors.cases.iter().map(|c| (c.name.as_str(), c)).collect();
    let mut failures = Vec::new();
    let mut names = HashSet::new();
    for case in &vectors.cases {
        let mut fail = |message: String| failures.push((case.name.clone(), message));
        if !names.insert(case.name.as_str()) {
            fail("duplicate name".into());
            continue;
        }
        let clock = Arc::new(ManualClock::new(case.now));
        let verifier = verifier(vectors, case, clock.clone());
        // replay_of: verify the earlier case(s) first with the same verifier (shared jti cache),
        // each at its own `now` and with its own expected outcome
        let mut chain = Vec::new();
        let mut previous = case.replay_of.as_deref();
        while let Some(name) = previous {
            match by_name.get(name) {
                Some(earlier)
                    if !chain.iter().any(|c: &&Case| c.name == name) && name != case.name =>
                {
                    chain.push(*earlier);
                    previous = earlier.replay_of.as_deref();
                }
                Some(_) => {
                    fail(format!("replay_of loops at {name}"));
                    break;
                }
                None => {
                    fail(format!("replay_of names no case {name:?}"));
                    break;
                }
            }
        }
        for earlier in chain.iter().rev() {
            match verify(&verifier, &clock, earlier).await {
                Ok(outcome) => {
                    if let Some(wrong) = judge(earlier, &outcome) {
                        fail(format!("its replay_of case {}: {wrong}", earlier.name));
                    }
                }
                Err(error) => fail(format!("its replay_of case {}: {error}", earlier.name)),
            }
        }
        match verify(&verifier, &clock, case).await {
            Ok(outcome) => {
                if let Some(wrong) = judge(case, &outcome) {
                    fail(wrong);
                }
            }
            Err(error) => fail(error),
        }
    }
    failures
}

#[tokio::test]
async fn shared_vectors() {
    let path = vectors_file();
    let vectors = load(&path).unwrap_or_else(|error| panic!("{error}"));
    let failures = run(&vectors).await;
    assert!(
        failures.is_empty(),
        "{} of {} vectors in {} failed:\n{}",
        failures.len(),
        vectors.cases.len(),
        path.display(),
        failures
            .iter()
            .map(|(name, message)| format!("case {name}: {message}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    println!(
        "{} vectors in {} passed",
        vectors.cases.len(),
        path.display()
    );
}

#[test]
fn receipts_are_computed_as_the_vectors_say() {
    let path = vectors_file();
    let vectors = load(&path).unwrap_or_else(|error| panic!("{error}"));
    for case in &vectors.receipts {
        let body = STANDARD.decode(&case.body_base64).unwrap();
        assert_eq!(
            receipt(&case.secret, &case.webhook_id, case.iat, &body),
            case.receipt,
            "receipt {}",
            case.name
        );
    }
}

#[test]
fn the_sample_has_receipts_for_every_acknowledged_case() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors.sample.json");
    let vectors = load(&path).unwrap();
    assert!(vectors.receipts.len() >= 5);
    for case in &vectors.cases {
        let acknowledged =
            case.expect == Expect::Accept || case.reason.as_deref() == Some("replayed");
        assert_eq!(case.receipt.is_some(), acknowledged, "case {}", case.name);
    }
}

#[test]
fn a_missing_vectors_file_is_an_error_not_a_skip() {
    let error = load(Path::new("/nonexistent/vectors.json")).unwrap_err();
    assert!(error.contains("cannot read vectors file"), "{error}");
}

#[tokio::test]
async fn the_sample_vectors_detect_a_verifier_that_accepts_everything() {
    // flip every expectation: each case must now fail, so none passes vacuously
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors.sample.json");
    let mut vectors = load(&path).unwrap();
    let count = vectors.cases.len();
    for case in &mut vectors.cases {
        case.expect = match case.expect {
            Expect::Accept => Expect::Reject,
            Expect::Reject => Expect::Accept,
        };
    }
    let failing: HashSet<String> = run(&vectors)
        .await
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    assert_eq!(failing.len(), count);
}

#[tokio::test]
async fn the_sample_vectors_detect_a_wrong_reason() {
    // every refusal names its error code: swapping two codes fails both cases
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors.sample.json");
    let mut vectors = load(&path).unwrap();
    let expired = vectors
        .cases
        .iter()
        .position(|c| c.name == "expired")
        .unwrap();
    let typ = vectors
        .cases
        .iter()
        .position(|c| c.name == "typ_jws")
        .unwrap();
    vectors.cases[expired].reason = Some("unsupported_token_type".into());
    vectors.cases[typ].reason = Some("expired".into());
    let failing: HashSet<String> = run(&vectors)
        .await
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    assert_eq!(failing, HashSet::from(["expired".into(), "typ_jws".into()]));
}

#[tokio::test]
async fn the_sample_vectors_detect_a_wrong_receipt() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors.sample.json");
    let mut vectors = load(&path).unwrap();
    let valid = vectors
        .cases
        .iter()
        .position(|c| c.name == "valid_with_audience")
        .unwrap();
    vectors.cases[valid].receipt = Some(receipt("another key", "x", 0, b""));
    let failing: HashSet<String> = run(&vectors)
        .await
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    assert_eq!(failing, HashSet::from(["valid_with_audience".into()]));
}
