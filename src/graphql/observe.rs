//! What each GraphQL request did, for metrics and logs: its operation (type and root fields,
//! e.g. `mutation createTask`, taken from the parsed document and kept only if the document
//! validates — so the label's values are bounded by the schema, whatever clients send), how
//! long it took, and the codes of its errors.

use std::{
    sync::{Arc, Mutex},
    time::Instant,
};

use async_graphql::{
    Request, Response, ServerError, ServerResult, ValidationResult, Variables,
    extensions::{
        Extension, ExtensionContext, ExtensionFactory, NextParseQuery, NextPrepareRequest,
        NextRequest, NextValidation,
    },
    parser::types::{ExecutableDocument, OperationType, Selection},
};

use crate::metrics::Metrics;

pub struct Observe(pub Metrics);

impl ExtensionFactory for Observe {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(ObserveRequest {
            metrics: self.0.clone(),
            seen: Mutex::default(),
        })
    }
}

#[derive(Default)]
struct Seen {
    operation_name: Option<String>,
    label: Option<String>,
}

struct ObserveRequest {
    metrics: Metrics,
    seen: Mutex<Seen>,
}

impl ObserveRequest {
    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// `query a+b` for the operation the request runs: its type and root field names (the first
/// three in alphabetical order).
fn label(document: &ExecutableDocument, name: Option<&str>) -> Option<String> {
    let operation = document
        .operations
        .iter()
        .find(|(n, _)| name.is_none() || n.map(|n| n.as_str()) == name)?
        .1;
    let kind = match operation.node.ty {
        OperationType::Query => "query",
        OperationType::Mutation => "mutation",
        OperationType::Subscription => "subscription",
    };
    // Sorted and deduplicated: the order and repetition of root fields is the client's
    // choice, and must not make new series.
    let mut fields: Vec<&str> = operation
        .node
        .selection_set
        .node
        .items
        .iter()
        .filter_map(|item| match &item.node {
            Selection::Field(f) => Some(f.node.name.node.as_str()),
            _ => None,
        })
        .collect();
    fields.sort_unstable();
    fields.dedup();
    fields.truncate(3);
    Some(format!("{kind} {}", fields.join("+")))
}

#[async_trait::async_trait]
impl Extension for ObserveRequest {
    async fn request(&self, ctx: &ExtensionContext<'_>, next: NextRequest<'_>) -> Response {
        let started = Instant::now();
        let response = next.run(ctx).await;
        let label = self
            .seen()
            .label
            .take()
            .unwrap_or_else(|| "invalid".to_owned());
        tracing::Span::current().record("graphql.operation", label.as_str());
        self.metrics.request(&label, started.elapsed());
        for error in &response.errors {
            let code = error
                .extensions
                .as_ref()
                .and_then(|e| e.get("code"))
                .and_then(|v| match v {
                    async_graphql::Value::String(s) => Some(s.as_str()),
                    _ => None,
                })
                .unwrap_or("BAD_USER_INPUT");
            self.metrics.error(code);
        }
        response
    }

    async fn prepare_request(
        &self,
        ctx: &ExtensionContext<'_>,
        request: Request,
        next: NextPrepareRequest<'_>,
    ) -> ServerResult<Request> {
        if let Some(name) = &request.operation_name {
            // The client's name for it, for the logs (bounded; never a metrics label).
            let name: String = name
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                .take(64)
                .collect();
            tracing::Span::current().record("graphql.operation_name", name.as_str());
        }
        self.seen().operation_name = request.operation_name.clone();
        next.run(ctx, request).await
    }

    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let document = next.run(ctx, query, variables).await?;
        let mut seen = self.seen();
        seen.label = label(&document, seen.operation_name.as_deref());
        Ok(document)
    }

    async fn validation(
        &self,
        ctx: &ExtensionContext<'_>,
        next: NextValidation<'_>,
    ) -> Result<ValidationResult, Vec<ServerError>> {
        let result = next.run(ctx).await;
        if result.is_err() {
            self.seen().label = None;
        }
        result
    }
}
