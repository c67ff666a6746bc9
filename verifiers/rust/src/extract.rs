//! The axum extractor.

use axum::body::Body;
use axum::extract::rejection::{BytesRejection, FailedToBufferBody};
use axum::extract::{FromRef, FromRequest, OriginalUri, Request};
use bytes::Bytes;
use http::header;
use http_body_util::Limited;

use crate::error::VerifyError;
use crate::forget::AcceptedSlot;
use crate::receipt::ReceiptSlot;
use crate::verifier::{VerifiedWebhook, Verifier};

/// Verifies the request with the [`Verifier`] in the router's state (the state itself, or a
/// field of it through [`FromRef`]). It consumes the body, so it must be the handler's last
/// extractor. Rejections are [`VerifyError`] responses; take `Result<VerifiedWebhook,
/// VerifyError>` instead to answer them yourself. A replayed event id is rejected with **200
/// OK** (see [`VerifyError::Replayed`]), so the handler does not run for a duplicate delivery.
/// Under the [`forget_on_failure`](crate::forget_on_failure) middleware, the event id is
/// forgotten again when the handler does not answer 2xx; under the
/// [`webhook_receipts`](crate::webhook_receipts) middleware, the handler's 2xx answer gets the
/// event's `webhook-receipt` header (the duplicate answer always has it).
///
/// The token is checked before the body is read, so an unauthenticated request is refused
/// without buffering its body. The body is read up to [`Verifier::max_body_bytes`] (and axum's
/// `DefaultBodyLimit`, when that is smaller): a `Content-Length` over the limit is refused at
/// once, a longer chunked body as soon as it passes the limit.
impl<S> FromRequest<S> for VerifiedWebhook
where
    S: Send + Sync,
    Verifier: FromRef<S>,
{
    type Rejection = VerifyError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let verifier = Verifier::from_ref(state);
        let path = match req.extensions().get::<OriginalUri>() {
            Some(original) => original.path().to_owned(),
            None => req.uri().path().to_owned(),
        };
        let pending = verifier.check_headers(req.headers(), &path)?;
        let limit = verifier.max_body_bytes();
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<u64>().ok());
        if declared.is_some_and(|length| length > limit as u64) {
            return Err(VerifyError::PayloadTooLarge { limit });
        }
        let slot = req.extensions().get::<AcceptedSlot>().cloned();
        let receipts = req.extensions().get::<ReceiptSlot>().cloned();
        let (parts, body) = req.into_parts();
        let limited = Request::from_parts(parts, Body::new(Limited::new(body, limit)));
        let body =
            Bytes::from_request(limited, state)
                .await
                .map_err(|rejection| match rejection {
                    BytesRejection::FailedToBufferBody(FailedToBufferBody::LengthLimitError(_)) => {
                        VerifyError::PayloadTooLarge { limit }
                    }
                    other => VerifyError::BodyRead(other.body_text()),
                })?;
        let outcome = verifier.check_body(pending, body).await;
        if let Some(receipts) = receipts {
            // accepted or a duplicate: the handler's 2xx answer acknowledges the event
            match &outcome {
                Ok(webhook) => receipts.set(webhook.receipt.clone()),
                Err(VerifyError::Replayed { receipt, .. }) => receipts.set(receipt.clone()),
                Err(_) => {}
            }
        }
        let webhook = outcome?;
        if let Some(slot) = slot {
            slot.set(verifier, webhook.event_id.clone());
        }
        Ok(webhook)
    }
}
