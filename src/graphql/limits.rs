//! Limits async-graphql does not have built in, checked before validation and execution:
//! - nesting: the brackets of a document and the depth of its variables, scanned **before
//!   anything parses them** (the parser recurses on values: 2,000 nested `[` overflowed a
//!   worker's stack and aborted the process) — `GRAPHQL_PARSE_FAILED`;
//! - the length of a document, aliased fields (alias bombs) and root fields of one operation,
//!   counted after expanding fragments — `GRAPHQL_VALIDATION_FAILED`;
//! - text: no control characters in any string argument, literal or variable —
//!   `BAD_USER_INPUT` (PostgreSQL refuses NUL, SQLite stores it: both must answer alike).
//!
//! Depth and complexity are the schema's own `limit_depth` / `limit_complexity`.
//!
//! The same extension keeps parsed documents and validation results (`validated`), and puts
//! Apollo's codes on the errors async-graphql raises before execution: one extension, as
//! async-graphql passes every hook of every field through each extension in turn.

use std::{collections::HashMap, sync::Arc};

use async_graphql::{
    Name, Positioned, Request, ServerError, ServerResult, ValidationResult, Value, Variables,
    extensions::{
        Extension, ExtensionContext, ExtensionFactory, NextParseQuery, NextPrepareRequest,
        NextValidation,
    },
    parser::types::{ExecutableDocument, FragmentDefinition, Selection, SelectionSet},
};

use super::{validated, with_code};
use crate::{cache::Bounded, config::GraphqlSettings};

#[derive(Clone)]
pub struct Limits {
    /// Documents already parsed, by their text (shared by every request of the schema).
    parsed: Arc<Parsed>,
    /// Documents already validated (shared likewise).
    validated: Arc<validated::Known>,
    max_query_bytes: usize,
    max_aliases: usize,
    max_root_fields: usize,
    max_nesting: usize,
}

type Fragments = HashMap<Name, Positioned<FragmentDefinition>>;

impl Limits {
    pub fn new(settings: &GraphqlSettings) -> Self {
        Limits {
            parsed: Arc::default(),
            validated: Arc::default(),
            max_query_bytes: settings.max_query_bytes,
            max_aliases: settings.max_aliases,
            max_root_fields: settings.max_root_fields,
            max_nesting: settings.max_nesting,
        }
    }

    fn check(&self, document: &ExecutableDocument) -> Result<(), String> {
        let mut counter = Counter {
            fragments: &document.fragments,
            memo: HashMap::new(),
        };
        let mut aliases = 0usize;
        for (_, operation) in document.operations.iter() {
            let counts = counter.count(&operation.node.selection_set.node);
            if counts.root_fields > self.max_root_fields {
                return Err(format!(
                    "an operation may select at most {} root fields; this one selects {}",
                    self.max_root_fields, counts.root_fields
                ));
            }
            aliases = aliases.saturating_add(counts.aliases);
        }
        if aliases > self.max_aliases {
            return Err(format!(
                "a document may hold at most {} aliased fields; this one holds {aliases}",
                self.max_aliases
            ));
        }
        Ok(())
    }
}

/// The first nesting problem of a request — its document's brackets, or its variables —
/// found without parsing either; `None` when both stay within `limit`.
pub fn nesting_error(query: &str, variables: &Variables, limit: usize) -> Option<String> {
    if document_nesting_exceeds(query, limit) {
        return Some(format!(
            "the document nests brackets deeper than {limit} levels"
        ));
    }
    let too_deep = variables.iter().any(|(_, v)| value_exceeds(v, limit, 1));
    too_deep.then(|| format!("the variables nest deeper than {limit} levels"))
}

/// Whether a document asks only about the schema: every root field of every operation
/// (fragments expanded) is `__schema`, `__type` or `__typename`. Only documents that name
/// `__schema` or `__type` are parsed to find out, and only once their nesting is known to be
/// safe.
pub fn is_introspection(query: &str, max_nesting: usize) -> bool {
    let mentions = query.contains("__schema")
        || query
            .match_indices("__type")
            .any(|(at, _)| query[at + "__type".len()..].trim_start().starts_with('('));
    if !mentions || document_nesting_exceeds(query, max_nesting) {
        return false;
    }
    let Ok(document) = async_graphql::parser::parse_query(query) else {
        return false;
    };
    fn only_meta(set: &SelectionSet, fragments: &Fragments, level: usize) -> bool {
        level < 8
            && set.items.iter().all(|item| match &item.node {
                Selection::Field(f) => matches!(
                    f.node.name.node.as_str(),
                    "__schema" | "__type" | "__typename"
                ),
                Selection::InlineFragment(f) => {
                    only_meta(&f.node.selection_set.node, fragments, level + 1)
                }
                Selection::FragmentSpread(s) => fragments
                    .get(&s.node.fragment_name.node)
                    .is_some_and(|f| only_meta(&f.node.selection_set.node, fragments, level + 1)),
            })
    }
    document
        .operations
        .iter()
        .all(|(_, op)| only_meta(&op.node.selection_set.node, &document.fragments, 0))
}

/// Whether `{`, `[` and `(` nest deeper than `limit` in a GraphQL document, outside strings,
/// block strings and comments (lexed as the GraphQL spec does). Linear, no allocation, no
/// recursion.
fn document_nesting_exceeds(query: &str, limit: usize) -> bool {
    let bytes = query.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'#' => {
                while i < bytes.len() && !matches!(bytes[i], b'\n' | b'\r') {
                    i += 1;
                }
            }
            b'"' if bytes[i..].starts_with(b"\"\"\"") => {
                i += 3;
                while i < bytes.len() && !bytes[i..].starts_with(b"\"\"\"") {
                    i += if bytes[i..].starts_with(b"\\\"\"\"") {
                        4
                    } else {
                        1
                    };
                }
                i += 2;
            }
            b'"' => {
                i += 1;
                // A string ends at its closing quote, or (invalid, as the parser will say)
                // at the end of the line.
                while i < bytes.len() && !matches!(bytes[i], b'"' | b'\n' | b'\r') {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'{' | b'[' | b'(' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b'}' | b']' | b')' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    false
}

/// Whether a variable's value nests deeper than `limit` (it was read by serde_json, whose own
/// recursion limit of 128 bounds this recursion).
fn value_exceeds(value: &Value, limit: usize, level: usize) -> bool {
    if level > limit {
        return true;
    }
    match value {
        Value::List(items) => items.iter().any(|v| value_exceeds(v, limit, level + 1)),
        Value::Object(fields) => fields.values().any(|v| value_exceeds(v, limit, level + 1)),
        _ => false,
    }
}

/// Whether a text input holds a control character (tab, line feed and carriage return are
/// text; NUL, escape, DEL and the C1 controls are not).
pub fn has_control_characters(text: &str) -> bool {
    text.chars()
        .any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
}

/// Whether any string in the request — literal arguments (of fields and directives),
/// variable defaults, or variables — holds a control character.
fn has_control_text(document: &ExecutableDocument, variables: &Variables) -> bool {
    fn in_const(value: &Value) -> bool {
        match value {
            Value::String(s) => has_control_characters(s),
            Value::List(items) => items.iter().any(in_const),
            Value::Object(fields) => fields.values().any(in_const),
            _ => false,
        }
    }
    fn in_value(value: &async_graphql_value::Value) -> bool {
        use async_graphql_value::Value as V;
        match value {
            V::String(s) => has_control_characters(s),
            V::List(items) => items.iter().any(in_value),
            V::Object(fields) => fields.values().any(in_value),
            _ => false,
        }
    }
    fn in_set(set: &SelectionSet) -> bool {
        set.items.iter().any(|item| match &item.node {
            Selection::Field(f) => {
                f.node.arguments.iter().any(|(_, v)| in_value(&v.node))
                    || f.node
                        .directives
                        .iter()
                        .any(|d| d.node.arguments.iter().any(|(_, v)| in_value(&v.node)))
                    || in_set(&f.node.selection_set.node)
            }
            Selection::InlineFragment(f) => in_set(&f.node.selection_set.node),
            Selection::FragmentSpread(_) => false,
        })
    }
    variables.iter().any(|(_, v)| in_const(v))
        || document
            .fragments
            .values()
            .any(|f| in_set(&f.node.selection_set.node))
        || document.operations.iter().any(|(_, op)| {
            op.node
                .variable_definitions
                .iter()
                .filter_map(|d| d.node.default_value.as_ref())
                .any(|v| in_const(&v.node))
                || in_set(&op.node.selection_set.node)
        })
}

#[derive(Clone, Copy, Default)]
struct Counts {
    /// Fields at this level (fragments expanded).
    root_fields: usize,
    /// Aliased fields at any level below (fragments expanded).
    aliases: usize,
}

/// Counts selections with every fragment expanded, each fragment counted once and then
/// remembered, so nested and reused fragments count in full without exponential work.
struct Counter<'a> {
    fragments: &'a Fragments,
    /// `None` while a fragment is being counted: a cycle (which validation refuses) counts 0.
    memo: HashMap<&'a str, Option<Counts>>,
}

impl<'a> Counter<'a> {
    fn count(&mut self, set: &'a SelectionSet) -> Counts {
        let mut total = Counts::default();
        for item in &set.items {
            let counts = match &item.node {
                Selection::Field(f) => {
                    let inner = self.count(&f.node.selection_set.node);
                    Counts {
                        root_fields: 1,
                        aliases: inner
                            .aliases
                            .saturating_add(usize::from(f.node.alias.is_some())),
                    }
                }
                Selection::InlineFragment(f) => self.count(&f.node.selection_set.node),
                Selection::FragmentSpread(s) => self.fragment(s.node.fragment_name.node.as_str()),
            };
            total.root_fields = total.root_fields.saturating_add(counts.root_fields);
            total.aliases = total.aliases.saturating_add(counts.aliases);
        }
        total
    }

    fn fragment(&mut self, name: &'a str) -> Counts {
        match self.memo.get(name) {
            Some(Some(counts)) => return *counts,
            Some(None) => return Counts::default(),
            None => {}
        }
        let Some(fragment) = self.fragments.get(name) else {
            return Counts::default();
        };
        self.memo.insert(name, None);
        let counts = self.count(&fragment.node.selection_set.node);
        self.memo.insert(name, Some(counts));
        counts
    }
}

/// A bounded cache of parsed documents: clients send the same few documents over and over,
/// and parsing them is a tenth of a request. Only short documents are kept, at most
/// `PARSED_MAX` of them (then the cache starts over), so its memory stays small whatever
/// clients send. A document's text is its whole input: the same text always parses the same.
#[derive(Default)]
struct Parsed(Bounded<String, ExecutableDocument, PARSED_MAX>);

const PARSED_MAX: usize = 256;
const PARSED_MAX_BYTES: usize = 2048;

impl Parsed {
    fn get(&self, query: &str) -> Option<ExecutableDocument> {
        self.0.get(query)
    }

    fn keep(&self, query: &str, document: &ExecutableDocument) {
        if query.len() <= PARSED_MAX_BYTES {
            self.0.insert(query.to_owned(), document.clone());
        }
    }
}

impl ExtensionFactory for Limits {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(LimitsRequest {
            limits: self.clone(),
            validation: validated::Pending::default(),
        })
    }
}

/// The extension as one request meets it.
struct LimitsRequest {
    limits: Limits,
    validation: validated::Pending,
}

#[async_trait::async_trait]
impl Extension for LimitsRequest {
    async fn prepare_request(
        &self,
        ctx: &ExtensionContext<'_>,
        request: Request,
        next: NextPrepareRequest<'_>,
    ) -> ServerResult<Request> {
        self.validation.named(request.operation_name.as_deref());
        next.run(ctx, request).await
    }

    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let limits = &self.limits;
        let refused = |message: String, code| with_code(ServerError::new(message, None), code);
        if let Some(message) = nesting_error(query, variables, limits.max_nesting) {
            return Err(refused(message, "GRAPHQL_PARSE_FAILED"));
        }
        if query.len() > limits.max_query_bytes {
            return Err(refused(
                format!(
                    "the document is {} bytes; at most {} are accepted",
                    query.len(),
                    limits.max_query_bytes
                ),
                "GRAPHQL_VALIDATION_FAILED",
            ));
        }
        let document = match limits.parsed.get(query) {
            Some(document) => document,
            None => {
                let document = next
                    .run(ctx, query, variables)
                    .await
                    .map_err(|e| with_code(e, "GRAPHQL_PARSE_FAILED"))?;
                limits.parsed.keep(query, &document);
                document
            }
        };
        limits
            .check(&document)
            .map_err(|m| refused(m, "GRAPHQL_VALIDATION_FAILED"))?;
        if has_control_text(&document, variables) {
            return Err(refused(
                "text inputs may not contain control characters (NUL, ESC, DEL, …)".to_owned(),
                "BAD_USER_INPUT",
            ));
        }
        let registry = &ctx.schema_env.registry;
        self.validation
            .parsed(&limits.validated, registry, query, variables, &document);
        Ok(document)
    }

    async fn validation(
        &self,
        ctx: &ExtensionContext<'_>,
        next: NextValidation<'_>,
    ) -> Result<ValidationResult, Vec<ServerError>> {
        self.validation
            .validate(&self.limits.validated, ctx, next)
            .await
            .map_err(|errors| {
                errors
                    .into_iter()
                    .map(|e| with_code(e, "GRAPHQL_VALIDATION_FAILED"))
                    .collect()
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brackets_in_strings_and_comments_do_not_count() {
        let deep = "[".repeat(10);
        assert!(!document_nesting_exceeds(
            &format!("{{ a(x: \"{deep}\") }}"),
            3
        ));
        assert!(!document_nesting_exceeds(
            &format!("{{ a(x: \"\"\"{deep}\"\"\") }}"),
            3
        ));
        assert!(!document_nesting_exceeds(&format!("{{ a # {deep}\n }}"), 3));
        assert!(!document_nesting_exceeds(
            &format!("{{ a(x: \"\\\"{deep}\") }}"),
            3
        ));
        assert!(document_nesting_exceeds(&format!("{{ a(x: {deep}) }}"), 3));
        // A string cannot hide what follows its line's end.
        assert!(document_nesting_exceeds(
            &format!("{{ a(x: \"\n{deep}) }}"),
            3
        ));
    }

    #[test]
    fn ten_thousand_levels_are_seen_without_recursion() {
        let query = format!("{{ a(x: {}) }}", "[".repeat(10_000));
        assert!(document_nesting_exceeds(&query, 64));
        assert!(!document_nesting_exceeds("{ a { b { c } } }", 64));
    }

    #[test]
    fn control_characters_are_refused_but_line_breaks_are_text() {
        assert!(has_control_characters("ann\0@example.com"));
        assert!(has_control_characters("esc\u{1b}"));
        assert!(has_control_characters("c1\u{85}"));
        assert!(!has_control_characters("two\nlines\tand\r\n"));
        assert!(!has_control_characters("Zoë 🚀"));
    }
}
