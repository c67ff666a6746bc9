//! Forgetting an accepted event id when the handler did not acknowledge it.

use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Waker};

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;

use crate::verifier::Verifier;

/// Put in the request's extensions by [`forget_on_failure`]; the extractor fills it with the
/// event id it recorded in the replay store.
#[derive(Clone, Default)]
pub(crate) struct AcceptedSlot(Arc<Mutex<Option<(Verifier, String)>>>);

impl AcceptedSlot {
    pub(crate) fn set(&self, verifier: Verifier, event_id: String) {
        *self.lock() = Some((verifier, event_id));
    }

    fn get(&self) -> Option<(Verifier, String)> {
        self.lock().clone()
    }

    fn clear(&self) {
        self.lock().take();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(Verifier, String)>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Forgets the recorded event id if it is dropped armed: the handler's future was cancelled
/// (the client hung up) or panicked before a response was produced.
struct Guard(AcceptedSlot);

impl Drop for Guard {
    fn drop(&mut self) {
        let Some((verifier, event_id)) = self.0.get() else {
            return;
        };
        // Drop cannot await: poll the store's `forget` once. The in-memory store finishes at
        // once; a store that needs I/O (Redis, SQL) may not, and then the id stays recorded
        // until its entry expires (see the README).
        let mut forget = pin!(verifier.forget(&event_id));
        let _ = forget
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()));
    }
}

/// axum middleware: when the handler does not answer 2xx, forget the event id that
/// [`VerifiedWebhook`](crate::VerifiedWebhook) recorded for this request, so that the
/// database's retry reaches the handler again instead of being acknowledged as a duplicate.
///
/// ```no_run
/// use axum::{Router, middleware, routing::post};
/// use secure_webhook_verifier::{VerifiedWebhook, Verifier, forget_on_failure};
///
/// async fn ingest(webhook: VerifiedWebhook) -> http::StatusCode {
///     // ... a 5xx here makes the database retry, and the retry is processed again
///     http::StatusCode::OK
/// }
///
/// # let verifier = Verifier::builder("secret").build().unwrap();
/// let app: Router = Router::new()
///     .route("/ingest/resumes/batch", post(ingest))
///     .layer(middleware::from_fn(forget_on_failure))
///     .with_state(verifier);
/// ```
///
/// The event id is forgotten when the response status is not 2xx, and also when the handler's
/// future is dropped before answering (the client hung up, or the handler panicked). Requests
/// the extractor refused record nothing, so they never make it forget anything: a forged request
/// carrying someone else's `webhook-id` cannot clear that id. Without this layer, call
/// [`Verifier::forget`] yourself before answering non-2xx.
pub async fn forget_on_failure(mut request: Request, next: Next) -> Response {
    let slot = AcceptedSlot::default();
    request.extensions_mut().insert(slot.clone());
    let guard = Guard(slot);
    let response = next.run(request).await;
    if !response.status().is_success() {
        if let Some((verifier, event_id)) = guard.0.get() {
            // A failing store leaves the id recorded until it expires; nothing better to do
            // here, the response is already a failure and the database retries.
            let _ = verifier.forget(&event_id).await;
        }
    }
    guard.0.clear();
    response
}
