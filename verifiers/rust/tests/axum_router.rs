//! The extractor in a real axum Router, driven with tower's `oneshot`.

mod common;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, FromRef};
use axum::middleware;
use axum::routing::post;
use common::*;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use secure_webhook_verifier::{
    VerifiedWebhook, Verifier, VerifyError, forget_on_failure, receipt, webhook_receipts,
};
use serde_json::{Value, json};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Waker};
use tower::ServiceExt;

async fn ingest(webhook: VerifiedWebhook) -> String {
    let payload: Value = serde_json::from_slice(&webhook.body).unwrap();
    format!(
        "{} {}",
        webhook.event_id,
        payload["table"].as_str().unwrap()
    )
}

fn verifier() -> Verifier {
    Verifier::builder(SECRET).clock(|| NOW).build().unwrap()
}

fn app(verifier: Verifier) -> Router {
    Router::new().route(PATH, post(ingest)).with_state(verifier)
}

fn request(path: &str, token: &str, body: impl Into<Body>) -> Request<Body> {
    let mut request = Request::post(path).body(body.into()).unwrap();
    *request.headers_mut() = headers(token, EVENT_ID);
    request
}

async fn send(app: &Router, request: Request<Body>) -> (StatusCode, http::HeaderMap, String) {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8(body.to_vec()).unwrap())
}

fn error_code(body: &str) -> String {
    serde_json::from_str::<Value>(body).unwrap()["error"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A fresh token for `EVENT_ID`, as each retry of the database carries (`iat` shifted by `n`).
fn attempt(n: u64) -> String {
    let mut claims = claims(BODY);
    claims["iat"] = json!(NOW - 60 + n);
    claims["exp"] = json!(NOW + 3600 + n);
    sign(&claims)
}

/// The receipt the answer to `attempt(n)` carries: bound to that attempt's token's `iat`.
fn attempt_receipt(n: u64) -> String {
    receipt(SECRET, EVENT_ID, NOW - 60 + n, BODY.as_bytes())
}

#[tokio::test]
async fn accepts_then_acknowledges_the_replay_with_200_without_running_the_handler() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let app = Router::new()
        .route(
            PATH,
            post(move |webhook: VerifiedWebhook| async move {
                counted.fetch_add(1, Ordering::SeqCst);
                ingest(webhook).await
            }),
        )
        .with_state(verifier());
    let token = sign(&claims(BODY));
    let (status, _, body) = send(&app, request(PATH, &token, BODY)).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, &*format!("{EVENT_ID} resumes"))
    );
    // the same token again, then a retry with a fresh token and the same event id
    for token in [token, attempt(1)] {
        let (status, headers, body) = send(&app, request(PATH, &token, BODY)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["content-type"], "application/json");
        assert!(!headers.contains_key("www-authenticate"));
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap(),
            json!({"ok": true, "duplicate": true, "event_id": EVENT_ID})
        );
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // the replayed token with another body is still refused
    let changed = BODY.replace("Ada", "Eve");
    let (status, _, body) = send(&app, request(PATH, &attempt(2), changed)).await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (StatusCode::UNAUTHORIZED, "body_hash_mismatch")
    );
}

/// A handler that answers 500 to its first call and 200 afterwards, under `forget_on_failure`
/// when `layered`.
fn flaky_app(layered: bool) -> (Router, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let router = Router::new().route(
        PATH,
        post(move |webhook: VerifiedWebhook| async move {
            match counted.fetch_add(1, Ordering::SeqCst) {
                0 => (StatusCode::INTERNAL_SERVER_ERROR, "try again".to_owned()),
                _ => (StatusCode::OK, format!("processed {}", webhook.event_id)),
            }
        }),
    );
    let router = if layered {
        router.layer(middleware::from_fn(forget_on_failure))
    } else {
        router
    };
    (router.with_state(verifier()), calls)
}

#[tokio::test]
async fn forget_on_failure_lets_the_retry_of_a_failed_event_reach_the_handler() {
    let (app, calls) = flaky_app(true);
    let (status, _, body) = send(&app, request(PATH, &attempt(0), BODY)).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::INTERNAL_SERVER_ERROR, "try again")
    );
    // the database retries with a fresh token: processed this time
    let (status, _, body) = send(&app, request(PATH, &attempt(1), BODY)).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, format!("processed {EVENT_ID}"))
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // a third delivery (the 200 was lost) is acknowledged as a duplicate, not processed
    let (status, _, body) = send(&app, request(PATH, &attempt(2), BODY)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["duplicate"],
        true
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn without_forget_on_failure_the_retry_of_a_failed_event_is_acknowledged() {
    // why the layer exists: the event id stays recorded after the 500
    let (app, calls) = flaky_app(false);
    let (status, _, _) = send(&app, request(PATH, &attempt(0), BODY)).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let (status, _, body) = send(&app, request(PATH, &attempt(1), BODY)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["duplicate"],
        true
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn refused_requests_under_forget_on_failure_forget_nothing() {
    let (app, calls) = flaky_app(true);
    calls.store(1, Ordering::SeqCst); // the handler succeeds from the start
    let (status, _, _) = send(&app, request(PATH, &attempt(0), BODY)).await;
    assert_eq!(status, StatusCode::OK);
    // a forged request with the accepted event id: 401, and the id stays recorded
    let forged = sign_with(
        &claims(BODY),
        jsonwebtoken::Algorithm::HS256,
        b"another key of 32 bytes or more!!",
    );
    let (status, _, _) = send(&app, request(PATH, &forged, BODY)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = send(&app, request(PATH, &attempt(1), BODY.replace("Ada", "Eve"))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // a duplicate answered 200 by the rejection is not a failure either
    for n in 2..4 {
        let (status, _, body) = send(&app, request(PATH, &attempt(n), BODY)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap()["duplicate"],
            true
        );
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn forget_on_failure_forgets_when_the_handler_is_cancelled() {
    // the client hangs up (the database's timeout) while the handler is still working
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let app = Router::new()
        .route(
            PATH,
            post(move |_webhook: VerifiedWebhook| async move {
                if counted.fetch_add(1, Ordering::SeqCst) == 0 {
                    std::future::pending::<()>().await;
                }
                "processed"
            }),
        )
        .layer(middleware::from_fn(forget_on_failure))
        .with_state(verifier());
    {
        let mut first = std::pin::pin!(app.clone().oneshot(request(PATH, &attempt(0), BODY)));
        let mut context = Context::from_waker(Waker::noop());
        for _ in 0..100 {
            if calls.load(Ordering::SeqCst) == 1 {
                break;
            }
            assert!(first.as_mut().poll(&mut context).is_pending());
            tokio::task::yield_now().await;
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1, "the handler never ran");
    } // dropped here, as hyper drops it when the connection closes
    let (status, _, body) = send(&app, request(PATH, &attempt(1), BODY)).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "processed"));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn auth_failures_are_401_with_www_authenticate() {
    let app = app(verifier());
    let changed = BODY.replace("Ada", "Eve");
    let (status, headers, body) = send(&app, request(PATH, &sign(&claims(BODY)), changed)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        headers["www-authenticate"],
        "Bearer error=\"invalid_token\""
    );
    assert_eq!(error_code(&body), "body_hash_mismatch");

    let no_auth = Request::post(PATH)
        .header("content-type", "application/json")
        .header("webhook-id", EVENT_ID)
        .body(Body::from(BODY))
        .unwrap();
    let (status, _, body) = send(&app, no_auth).await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (StatusCode::UNAUTHORIZED, "missing_authorization")
    );
}

#[tokio::test]
async fn malformed_requests_are_4xx() {
    let app = app(verifier());
    let token = sign(&claims(BODY));
    let mut no_id = request(PATH, &token, BODY);
    no_id.headers_mut().remove("webhook-id");
    let (status, _, body) = send(&app, no_id).await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (StatusCode::BAD_REQUEST, "missing_webhook_id")
    );

    let mut text = request(PATH, &token, BODY);
    text.headers_mut()
        .insert("content-type", "text/plain".parse().unwrap());
    let (status, _, _) = send(&app, text).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

#[tokio::test]
async fn body_limit_is_enforced_with_and_without_content_length() {
    let big = format!(
        r#"{{"type": "INSERT", "table": "resumes", "pad": "{}"}}"#,
        "x".repeat(2048)
    );
    let token = sign(&claims(&big));
    let small = Verifier::builder(SECRET)
        .clock(|| NOW)
        .max_body_bytes(1024)
        .build()
        .unwrap();
    let app = app(small);
    // no Content-Length header: refused while reading
    let (status, _, body) = send(&app, request(PATH, &token, big.clone())).await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
    );
    // declared Content-Length: refused before reading
    let mut declared = request(PATH, &token, big.clone());
    declared
        .headers_mut()
        .insert("content-length", big.len().into());
    let (status, _, _) = send(&app, declared).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    // the default (1 MiB) takes it
    let (status, _, _) = send(&self::app(verifier()), request(PATH, &token, big.clone())).await;
    assert_eq!(status, StatusCode::OK);
    // and axum's DefaultBodyLimit, when smaller, applies too
    let limited = self::app(verifier()).layer(DefaultBodyLimit::max(100));
    let (status, _, _) = send(&limited, request(PATH, &token, big)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[derive(Clone)]
struct AppState {
    verifier: Verifier,
    name: &'static str,
}

impl FromRef<AppState> for Verifier {
    fn from_ref(state: &AppState) -> Verifier {
        state.verifier.clone()
    }
}

#[tokio::test]
async fn nested_router_with_app_state_checks_aud_against_the_original_path() {
    async fn handler(
        axum::extract::State(state): axum::extract::State<AppState>,
        webhook: Result<VerifiedWebhook, VerifyError>,
    ) -> (StatusCode, String) {
        match webhook {
            Ok(webhook) => (
                StatusCode::OK,
                format!("{} {}", state.name, webhook.event_id),
            ),
            // a duplicate is acknowledged with 2xx (error.status() is 200 for it too)
            Err(VerifyError::Replayed { event_id, .. }) => {
                (StatusCode::OK, format!("dup {event_id}"))
            }
            Err(error) => (error.status(), error.code().to_owned()),
        }
    }
    let verifier = Verifier::builder(SECRET)
        .clock(|| NOW)
        .audience_base_url("https://orchestrator.example.com")
        .build()
        .unwrap();
    let ingest = Router::new().route("/resumes/batch", post(handler));
    let app = Router::new().nest("/ingest", ingest).with_state(AppState {
        verifier,
        name: "orchestrator",
    });

    let token = sign(
        &claims(BODY)
            .as_object()
            .cloned()
            .map(|mut c| {
                c.insert("aud".into(), json!(URL));
                Value::Object(c)
            })
            .unwrap(),
    );
    let (status, _, body) = send(&app, request(PATH, &token, BODY)).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, format!("orchestrator {EVENT_ID}"))
    );
    let (status, _, body) = send(&app, request(PATH, &token, BODY)).await;
    assert_eq!((status, body), (StatusCode::OK, format!("dup {EVENT_ID}")));

    // the token for the resumes endpoint, replayed against another endpoint
    let other = Router::new()
        .route("/ingest/zip_archives/batch", post(handler))
        .with_state(AppState {
            verifier: Verifier::builder(SECRET)
                .clock(|| NOW)
                .audience_base_url("https://orchestrator.example.com")
                .build()
                .unwrap(),
            name: "zip",
        });
    let (status, _, body) = send(&other, request("/ingest/zip_archives/batch", &token, BODY)).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::UNAUTHORIZED, "audience_mismatch")
    );
}

#[tokio::test]
async fn every_2xx_answer_to_an_accepted_event_carries_its_receipt_duplicates_too() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let app = Router::new()
        .route(
            PATH,
            post(move |webhook: VerifiedWebhook| async move {
                match counted.fetch_add(1, Ordering::SeqCst) {
                    0 => (StatusCode::SERVICE_UNAVAILABLE, "busy".to_owned()),
                    _ => (StatusCode::OK, ingest(webhook).await),
                }
            }),
        )
        .layer(middleware::from_fn(forget_on_failure))
        .layer(middleware::from_fn(webhook_receipts))
        .with_state(verifier());
    // the handler fails: no receipt (the event was not taken), and the retry reaches it again
    let (status, headers, _) = send(&app, request(PATH, &attempt(0), BODY)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(!headers.contains_key("webhook-receipt"));
    // accepted: the handler did nothing for it
    let (status, headers, _) = send(&app, request(PATH, &attempt(1), BODY)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["webhook-receipt"], attempt_receipt(1).as_str());
    // a duplicate, answered by the extractor: the receipt of its own attempt (its token's iat)
    let (status, headers, body) = send(&app, request(PATH, &attempt(2), BODY)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(headers["webhook-receipt"], attempt_receipt(2).as_str());
    assert_ne!(attempt_receipt(2), attempt_receipt(1));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // refused: none
    let changed = BODY.replace("Ada", "Eve");
    let (status, headers, _) = send(&app, request(PATH, &attempt(3), changed)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(!headers.contains_key("webhook-receipt"));
}

#[tokio::test]
async fn without_the_layer_only_the_crates_own_duplicate_answer_has_the_receipt() {
    let app = app(verifier());
    let (status, headers, _) = send(&app, request(PATH, &attempt(0), BODY)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!headers.contains_key("webhook-receipt"));
    let (status, headers, _) = send(&app, request(PATH, &attempt(1), BODY)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["webhook-receipt"], attempt_receipt(1).as_str());
}

#[tokio::test]
async fn a_duplicate_the_handler_answers_itself_gets_the_receipt_from_the_layer() {
    async fn handler(webhook: Result<VerifiedWebhook, VerifyError>) -> (StatusCode, String) {
        match webhook {
            Ok(webhook) => (StatusCode::OK, webhook.event_id),
            Err(error) if error.is_duplicate() => (StatusCode::ACCEPTED, "dup".into()),
            Err(error) => (StatusCode::OK, error.code().into()), // a refusal answered 2xx
        }
    }
    let app = Router::new()
        .route(PATH, post(handler))
        .layer(middleware::from_fn(webhook_receipts))
        .with_state(verifier());
    for n in 0..2 {
        let (status, headers, _) = send(&app, request(PATH, &attempt(n), BODY)).await;
        assert!(status.is_success());
        assert_eq!(headers["webhook-receipt"], attempt_receipt(n).as_str());
    }
    let (status, headers, body) = send(&app, request(PATH, &attempt(2), "{}")).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "body_hash_mismatch")
    );
    assert!(
        !headers.contains_key("webhook-receipt"),
        "no receipt for a refusal"
    );
}
