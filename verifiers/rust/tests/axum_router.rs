//! The extractor in a real axum Router, driven with tower's `oneshot`.

mod common;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, FromRef};
use axum::routing::post;
use common::*;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use secure_webhook_verifier::{VerifiedWebhook, Verifier, VerifyError};
use serde_json::{Value, json};
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

#[tokio::test]
async fn accepts_then_refuses_the_replay_with_409() {
    let app = app(verifier());
    let token = sign(&claims(BODY));
    let (status, _, body) = send(&app, request(PATH, &token, BODY)).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, &*format!("{EVENT_ID} resumes"))
    );
    let (status, headers, body) = send(&app, request(PATH, &token, BODY)).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(error_code(&body), "replayed");
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
            // answer a replay of an already processed event with 200, so the database stops
            Err(VerifyError::Replayed { event_id }) => (StatusCode::OK, format!("dup {event_id}")),
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
