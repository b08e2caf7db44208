//! `GET /graphql/ws`: GraphQL subscriptions over WebSocket, with both the current
//! `graphql-transport-ws` protocol and the legacy `graphql-ws` (subscriptions-transport-ws),
//! chosen by `Sec-WebSocket-Protocol`. The WebSocket is actix-ws's (no deprecated
//! actix-web-actors); the protocols are async-graphql's.
//!
//! The caller signs in with `connection_init`'s payload — `{"Authorization": "Bearer …"}`
//! (a JWT or an API key; `authorization`, or `token` alone, also work). A missing or invalid
//! token closes the connection with 4401, more than `graphql.max_connections_per_user` open
//! connections of one caller with 4429. A connection holds at most
//! `graphql.max_subscriptions_per_connection` subscriptions: one more is answered with an
//! `error` for its id (`RATE_LIMITED`). Membership is checked by each subscription, on every
//! value it sends.

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicU16, Ordering},
    },
};

use actix_web::{HttpRequest, HttpResponse, http::header, web};
use actix_ws::{AggregatedMessage, CloseCode, CloseReason};
use async_graphql::{
    Data,
    http::{WebSocket, WebSocketProtocols, WsMessage},
};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::{auth, graphql::Schemas, state::AppState};

/// The largest message a client may send.
const MAX_MESSAGE: usize = 64 * 1024;

/// Close codes of the graphql-transport-ws protocol.
const UNAUTHORIZED: u16 = 4401;
const TOO_MANY: u16 = 4429;

pub async fn graphql_ws(
    schemas: web::Data<Schemas>,
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Payload,
) -> actix_web::Result<HttpResponse> {
    let protocol = req
        .headers()
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.split(',')
                .find_map(|p| p.trim().parse::<WebSocketProtocols>().ok())
        });
    let Some(protocol) = protocol else {
        return Ok(state.reject(
            actix_web::http::StatusCode::BAD_REQUEST,
            "BAD_USER_INPUT",
            "GraphQL over WebSocket needs Sec-WebSocket-Protocol: graphql-transport-ws (or the legacy graphql-ws)",
        ));
    };
    let (response, session, stream) =
        actix_ws::handle_with_protocols(&req, body, &[protocol.sec_websocket_protocol()])?;
    let stream = stream
        .max_frame_size(MAX_MESSAGE)
        .aggregate_continuations()
        .max_continuation_size(MAX_MESSAGE);
    let schema = schemas.api.clone();
    let state = state.into_inner();
    actix_web::rt::spawn(serve(schema, state, session, stream, protocol));
    Ok(response)
}

/// Runs one connection until either side ends it.
async fn serve(
    schema: crate::graphql::TollgateSchema,
    state: Arc<AppState>,
    mut session: actix_ws::Session,
    mut client: actix_ws::AggregatedMessageStream,
    protocol: WebSocketProtocols,
) {
    let (to_graphql, from_client) = mpsc::channel::<String>(16);
    // Why the connection init failed, as the close code to send.
    let refused = Arc::new(AtomicU16::new(0));
    let init = {
        let (state, refused) = (Arc::clone(&state), Arc::clone(&refused));
        move |payload: Value| async move {
            let outcome = init(&state, &payload).await;
            if let Err((code, _)) = &outcome {
                refused.store(*code, Ordering::Relaxed);
            }
            outcome.map_err(|(_, message)| async_graphql::Error::new(message))
        }
    };
    let input = futures::stream::unfold(from_client, |mut rx| async move {
        rx.recv().await.map(|message| (message, rx))
    });
    let ws = WebSocket::new(schema, input, protocol)
        .on_connection_init(init)
        .keepalive_timeout(None);
    let mut ws = std::pin::pin!(ws);
    let max = state.config.graphql.max_subscriptions_per_connection;
    let mut active: HashSet<String> = HashSet::new();
    let mut close: Option<CloseReason> = None;
    loop {
        tokio::select! {
            message = client.next() => match message {
                Some(Ok(AggregatedMessage::Text(text))) => {
                    match admit(&text, &mut active, max, protocol) {
                        Admit::Forward => {
                            if to_graphql.send(text.to_string()).await.is_err() {
                                break;
                            }
                        }
                        Admit::Refuse(answer) => {
                            if session.text(answer).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                Some(Ok(AggregatedMessage::Ping(bytes))) => {
                    if session.pong(&bytes).await.is_err() {
                        break;
                    }
                }
                Some(Ok(AggregatedMessage::Pong(_))) => {}
                Some(Ok(AggregatedMessage::Binary(_))) => {
                    close = Some(reason(4400, "binary messages are not GraphQL"));
                    break;
                }
                Some(Ok(AggregatedMessage::Close(_))) | Some(Err(_)) | None => break,
            },
            out = ws.next() => match out {
                Some(WsMessage::Text(text)) => {
                    settled(&text, &mut active);
                    if session.text(text).await.is_err() {
                        break;
                    }
                }
                Some(WsMessage::Close(code, message)) => {
                    let code = match refused.load(Ordering::Relaxed) {
                        0 => code,
                        own => own,
                    };
                    close = Some(reason(code, &message));
                    break;
                }
                None => {
                    if let code @ 1.. = refused.load(Ordering::Relaxed) {
                        close = Some(reason(code, "connection refused"));
                    }
                    break;
                }
            },
        }
    }
    let _ = session.close(close).await;
}

fn reason(code: u16, description: &str) -> CloseReason {
    CloseReason {
        code: CloseCode::Other(code),
        description: Some(description.to_owned()),
    }
}

/// Signs the caller in from `connection_init`'s payload and counts the connection: the
/// context data of its subscriptions. `Err`: the close code and why.
async fn init(state: &AppState, payload: &Value) -> Result<Data, (u16, String)> {
    let text = |key: &str| payload.get(key).and_then(Value::as_str).map(str::to_owned);
    let header = text("Authorization")
        .or_else(|| text("authorization"))
        .or_else(|| {
            payload
                .get("headers")
                .and_then(|h| h.get("Authorization").or_else(|| h.get("authorization")))
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .or_else(|| text("token").map(|t| format!("Bearer {t}")));
    let Some(header) = header else {
        return Err((
            UNAUTHORIZED,
            "Unauthorized: send {\"Authorization\": \"Bearer <token>\"} in connection_init".into(),
        ));
    };
    let viewer = auth::authenticate(&state.db, &state.keys, Some(&header))
        .await
        .map_err(|e| (UNAUTHORIZED, format!("Unauthorized: {e}")))?;
    let Some(caller) = viewer.caller_id() else {
        return Err((UNAUTHORIZED, "Unauthorized".into()));
    };
    let max = state.config.graphql.max_connections_per_user;
    let connection = state.connections.open(caller, max).ok_or_else(|| {
        (
            TOO_MANY,
            format!("Too many connections: at most {max} per user"),
        )
    })?;
    let mut data = Data::default();
    data.insert(viewer);
    data.insert(connection);
    // For the fields of ledger rows `creditEvents` sends (loaders without a cache: nothing
    // goes stale over a long connection).
    data.insert(crate::graphql::loaders::Loaders::new(state.db.read.clone()));
    Ok(data)
}

enum Admit {
    Forward,
    /// Not forwarded; this goes back to the client instead.
    Refuse(String),
}

/// Counts a client's `subscribe` (`start`, legacy) and forgets a `complete` (`stop`); one
/// subscription past `max` is refused with an error for its id.
fn admit(
    text: &str,
    active: &mut HashSet<String>,
    max: usize,
    protocol: WebSocketProtocols,
) -> Admit {
    let Ok(message) = serde_json::from_str::<Value>(text) else {
        return Admit::Forward;
    };
    let id = message.get("id").and_then(Value::as_str).map(str::to_owned);
    match (message.get("type").and_then(Value::as_str), id) {
        (Some("subscribe" | "start"), Some(id)) if !active.contains(&id) && active.len() >= max => {
            let error = json!({
                "message": format!("at most {max} subscriptions per connection"),
                "extensions": { "code": "RATE_LIMITED" },
            });
            let payload = match protocol {
                WebSocketProtocols::GraphQLWS => json!([error]),
                WebSocketProtocols::SubscriptionsTransportWS => error,
            };
            Admit::Refuse(json!({ "id": id, "type": "error", "payload": payload }).to_string())
        }
        (Some("subscribe" | "start"), Some(id)) => {
            active.insert(id);
            Admit::Forward
        }
        (Some("complete" | "stop"), Some(id)) => {
            active.remove(&id);
            Admit::Forward
        }
        _ => Admit::Forward,
    }
}

/// Forgets a subscription the server ended (`complete`, or an `error` for it).
fn settled(text: &str, active: &mut HashSet<String>) {
    if let Ok(message) = serde_json::from_str::<Value>(text)
        && matches!(
            message.get("type").and_then(Value::as_str),
            Some("complete" | "error")
        )
        && let Some(id) = message.get("id").and_then(Value::as_str)
    {
        active.remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscriptions_past_the_limit_are_refused_and_completed_ones_free_a_place() {
        let mut active = HashSet::new();
        let protocol = WebSocketProtocols::GraphQLWS;
        let subscribe =
            |id: &str| json!({ "id": id, "type": "subscribe", "payload": {} }).to_string();
        assert!(matches!(
            admit(&subscribe("1"), &mut active, 1, protocol),
            Admit::Forward
        ));
        let Admit::Refuse(answer) = admit(&subscribe("2"), &mut active, 1, protocol) else {
            panic!("the second is refused");
        };
        assert!(answer.contains("RATE_LIMITED"));
        settled(
            &json!({ "id": "1", "type": "complete" }).to_string(),
            &mut active,
        );
        assert!(matches!(
            admit(&subscribe("2"), &mut active, 1, protocol),
            Admit::Forward
        ));
    }
}
