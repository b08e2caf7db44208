//! The HTTP transport for async-stripe's request types. async-stripe builds each request
//! (path, form body) and parses each answer; this sends it, so that a failure keeps what the
//! reporter decides on: the status, Stripe's `Stripe-Should-Retry` header, and Stripe's error
//! message. (async-stripe's own client folds those into its retry loop and does not return
//! the header.)

use std::{fmt::Display, time::Duration};

use http_body_util::{BodyExt, Full};
use hyper::{
    Request,
    body::Bytes,
    header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, USER_AGENT},
};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use secrecy::{ExposeSecret, SecretString};
use stripe_client_core::{
    CustomizedStripeRequest, RequestStrategy, StripeClient, StripeClientErr, StripeMethod,
};

/// Why a Stripe call did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum StripeFailure {
    /// Stripe answered with an error status.
    #[error("Stripe answered {status}: {message}")]
    Api {
        status: u16,
        /// Stripe's `Stripe-Should-Retry` header, when it sent one.
        should_retry: Option<bool>,
        /// Stripe's error `code`, e.g. `resource_missing`.
        code: Option<String>,
        message: String,
    },
    /// No answer: the connection failed or the call timed out.
    #[error("Stripe could not be reached: {0}")]
    Transport(String),
    /// Stripe accepted the call, but its answer could not be read.
    #[error("Stripe's answer could not be read: {0}")]
    Decode(String),
}

impl StripeClientErr for StripeFailure {
    fn deserialize_err(msg: impl Display) -> Self {
        StripeFailure::Decode(msg.to_string())
    }
}

/// A Stripe API client: one secret key, one base URL, a timeout per call.
#[derive(Clone)]
pub struct StripeHttp {
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    api_base: String,
    authorization: HeaderValue,
    timeout: Duration,
}

impl StripeHttp {
    pub fn new(
        secret_key: &SecretString,
        api_base: &str,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let mut authorization =
            HeaderValue::from_str(&format!("Bearer {}", secret_key.expose_secret()))
                .map_err(|_| anyhow::anyhow!("stripe.secret_key is not a valid header value"))?;
        authorization.set_sensitive(true);
        let connector = HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .build();
        Ok(StripeHttp {
            http: Client::builder(TokioExecutor::new()).build(connector),
            api_base: api_base.trim_end_matches('/').to_owned(),
            authorization,
            timeout,
        })
    }

    async fn send(&self, request: Request<Full<Bytes>>) -> Result<Bytes, StripeFailure> {
        let exchange = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|e| StripeFailure::Transport(e.to_string()))?;
            let status = response.status();
            let should_retry = response
                .headers()
                .get("stripe-should-retry")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok());
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| StripeFailure::Transport(e.to_string()))?
                .to_bytes();
            if status.is_success() {
                return Ok(body);
            }
            let error = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error").cloned());
            let text = |key: &str| {
                error
                    .as_ref()
                    .and_then(|e| e.get(key))
                    .and_then(|v| v.as_str())
                    .map(str::to_owned)
            };
            Err(StripeFailure::Api {
                status: status.as_u16(),
                should_retry,
                code: text("code"),
                message: text("message").unwrap_or_else(|| {
                    String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned()
                }),
            })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .unwrap_or_else(|_| {
                Err(StripeFailure::Transport(format!(
                    "no answer within {} ms",
                    self.timeout.as_millis()
                )))
            })
    }
}

impl StripeClient for StripeHttp {
    type Err = StripeFailure;

    async fn execute(&self, req: CustomizedStripeRequest) -> Result<Bytes, StripeFailure> {
        let (req, config) = req.into_pieces();
        let mut uri = format!("{}/v1{}", self.api_base, req.path);
        if let Some(query) = &req.query {
            uri.push('?');
            uri.push_str(query);
        }
        let method = match req.method {
            StripeMethod::Get => hyper::Method::GET,
            StripeMethod::Post => hyper::Method::POST,
            StripeMethod::Delete => hyper::Method::DELETE,
        };
        let mut builder = Request::builder()
            .method(method)
            .uri(uri)
            .header(AUTHORIZATION, self.authorization.clone())
            .header(USER_AGENT, concat!("tollgate/", env!("CARGO_PKG_VERSION")))
            .header("stripe-version", stripe_shared::version::VERSION.as_str());
        if req.body.is_some() {
            builder = builder.header(CONTENT_TYPE, "application/x-www-form-urlencoded");
        }
        // The one strategy honoured: a key Stripe deduplicates the request by. (Retries are
        // the caller's, who keeps the key across them.)
        if let Some(RequestStrategy::Idempotent(key)) = &config.request_strategy {
            builder = builder.header("idempotency-key", key.as_str());
        }
        let request = builder
            .body(Full::new(Bytes::from(req.body.unwrap_or_default())))
            .map_err(|e| StripeFailure::Transport(e.to_string()))?;
        self.send(request).await
    }
}
