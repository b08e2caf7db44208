//! Signed webhooks Tollgate sends to its customers' endpoints, in the Standard Webhooks format
//! (spec v1). (Stripe's webhooks to Tollgate are `billing::webhooks`.)
//!
//! An event is recorded in the transaction of the change it tells of (`events`), so it exists
//! if and only if the change committed. A sender in every process fans new events out to the
//! endpoints that want them — one delivery per endpoint and event — and sends due deliveries,
//! claimed as the Stripe reporter claims usage (`sender`). Every request carries
//! `webhook-id` (the event's, the same on every retry), `webhook-timestamp` and
//! `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">` under each secret in
//! force (during a rotation, the old one too).

pub mod endpoints;
pub mod events;
pub mod sender;
mod target;

use base64::{Engine, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use uuid::Uuid;

pub use events::{NewEvent, record, record_numbered};
pub use sender::spawn_sender;

/// The prefix of an endpoint's signing secret.
pub const SECRET_PREFIX: &str = "whsec_";

/// A new signing secret: `whsec_` and the base64 of 32 random bytes.
pub fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{SECRET_PREFIX}{}", STANDARD.encode(bytes))
}

/// The `webhook-id` of an event: the same for every delivery and retry of it.
pub fn message_id(event_id: Uuid) -> String {
    format!("msg_{}", event_id.simple())
}

/// One signature, `v1,<base64>`, of `body` sent as message `id` at `timestamp` (unix
/// seconds) under `secret`; `None` for a secret that is not `whsec_` and base64.
pub fn signature(secret: &str, id: &str, timestamp: i64, body: &str) -> Option<String> {
    let key = STANDARD.decode(secret.strip_prefix(SECRET_PREFIX)?).ok()?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).ok()?;
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    Some(format!(
        "v1,{}",
        STANDARD.encode(mac.finalize().into_bytes())
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_match_the_standard_webhooks_reference_library() {
        let secret = new_secret();
        let body = r#"{"type":"webhook.test","data":{}}"#;
        let reference = standardwebhooks::Webhook::new(&secret).unwrap();
        assert_eq!(
            signature(&secret, "msg_1", 1_614_265_330, body).unwrap(),
            reference
                .sign("msg_1", 1_614_265_330, body.as_bytes())
                .unwrap()
        );
        assert_eq!(signature("not-a-secret", "msg_1", 1, body), None);
    }

    #[test]
    fn a_new_secret_is_32_random_bytes() {
        let (a, b) = (new_secret(), new_secret());
        assert_ne!(a, b);
        let key = STANDARD
            .decode(a.strip_prefix(SECRET_PREFIX).unwrap())
            .unwrap();
        assert_eq!(key.len(), 32);
    }
}
