//! `POST /webhooks/stripe`: the HTTP side of Stripe's webhooks — the body, read within its
//! limits, and the answer; `billing::webhooks` checks the signature and applies the event.

use actix_web::{HttpRequest, HttpResponse, http::StatusCode, web};
use secrecy::ExposeSecret;
use serde_json::json;

use super::{BodyError, read_body};
use crate::{billing::webhooks::Rejected, state::AppState};

/// The largest webhook body accepted (Stripe's events are far smaller).
const MAX_EVENT_BYTES: usize = 1024 * 1024;

/// The handler of `POST /webhooks/stripe`.
pub async fn receive(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    let Some(secret) = &state.config.stripe.webhook_secret else {
        return answer(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "Stripe webhooks are not configured on this server",
        );
    };
    let timeout = std::time::Duration::from_secs(state.config.http.body_timeout_seconds);
    let body = match read_body(&req, payload, MAX_EVENT_BYTES, timeout).await {
        Ok(body) => body,
        Err(BodyError::Slow) => {
            return answer(
                StatusCode::REQUEST_TIMEOUT,
                "BAD_USER_INPUT",
                "the body arrived too slowly",
            );
        }
        Err(BodyError::TooLarge) => {
            return answer(
                StatusCode::PAYLOAD_TOO_LARGE,
                "BAD_USER_INPUT",
                "the body is too large for a Stripe event",
            );
        }
        Err(BodyError::Broken) => {
            return answer(
                StatusCode::BAD_REQUEST,
                "BAD_USER_INPUT",
                "the body could not be read",
            );
        }
    };
    let Some(signature) = req
        .headers()
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok())
    else {
        return answer(
            StatusCode::BAD_REQUEST,
            "BAD_USER_INPUT",
            "missing Stripe-Signature header",
        );
    };
    let Ok(payload) = std::str::from_utf8(&body) else {
        return answer(
            StatusCode::BAD_REQUEST,
            "BAD_USER_INPUT",
            "the body is not UTF-8",
        );
    };
    let handled = crate::billing::webhooks::handle(
        &state.db,
        &state.config,
        secret.expose_secret(),
        payload,
        signature,
    )
    .await;
    match handled {
        Ok(effect) => {
            // A plan, period or grant may have changed: live subscribers read again.
            state.changes.publish(crate::live::Change::All);
            HttpResponse::Ok().json(json!({ "received": true, "effect": effect }))
        }
        Err(Rejected::Invalid(message)) => {
            answer(StatusCode::BAD_REQUEST, "BAD_USER_INPUT", message)
        }
        // Not acknowledged: Stripe sends it again later.
        Err(Rejected::Failed(_)) => answer(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL_SERVER_ERROR",
            "the event could not be processed; Stripe will retry",
        ),
    }
}

fn answer(status: StatusCode, code: &str, message: &str) -> HttpResponse {
    HttpResponse::build(status).json(json!({ "error": { "code": code, "message": message } }))
}
