//! Validation once per document, not once per request. async-graphql validates every request
//! in full (twenty-two rules walked over the document, then its complexity and depth): a
//! tenth of a guarded request's instructions, for clients that send the same few documents
//! over and over.
//!
//! A document's validation depends on nothing but its text, the operation run and the
//! values of its variables. So the first request of a document is validated in full, as
//! ever; when that passes, the result is kept with what the document declares of its
//! variables. A later request with the same text is then checked only for what can differ:
//! its variables' values, each against the type the document declares for it. Only
//! documents for which that check is the whole of what the values change are kept:
//! - one operation (so which operation runs cannot change);
//! - every argument that uses a variable is that variable alone (`input: $i`, not
//!   `input: {title: $t}`: validation checks a literal holding a variable only once the
//!   variable is substituted);
//! - no variable is an argument of a field whose complexity is computed from its arguments
//!   (`first: $n` of a page: the result's complexity would depend on the value).
//!
//! The check is stricter than async-graphql's, never looser: whatever it does not accept (a
//! required value left out, a null where a default would stand in, any value of the wrong
//! shape) is validated in full, so every error a client sees is async-graphql's own.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError},
};

use async_graphql::{
    Name, ServerError, ValidationResult, Value, Variables,
    extensions::{ExtensionContext, NextValidation},
    parser::types::{DocumentOperations, ExecutableDocument, Selection, SelectionSet},
    registry::{MetaType, MetaTypeName, Registry, ScalarValidatorFn},
};

use crate::cache::Bounded;

/// Results of documents validated before, shared by every request of one schema.
#[derive(Default)]
pub struct Known {
    /// Passed documents, by their text.
    passed: Bounded<String, Arc<Passed>, KNOWN_MAX>,
    /// Fields whose complexity is computed from their arguments (by name, in any type).
    computed_complexity: OnceLock<HashSet<String>>,
}

const KNOWN_MAX: usize = 256;
/// Longer documents are validated every time (they are rare, and the cache stays small).
const KNOWN_MAX_BYTES: usize = 2048;

/// A document that passed validation, and what a later request must bring to pass again.
struct Passed {
    result: ValidationResult,
    /// The operation's name, when it has one.
    operation: Option<Name>,
    variables: Vec<Declared>,
}

/// A variable as the document declares it, its type resolved against the schema.
struct Declared {
    name: Name,
    expected: Expected,
    has_default: bool,
}

/// An input type, resolved once: what a value must be to conform.
enum Expected {
    NonNull(Box<Expected>),
    List(Box<Expected>),
    /// A scalar, and its own check when it has one.
    Scalar(Option<ScalarValidatorFn>),
    Enum(HashSet<String>),
    Input {
        fields: Vec<InputField>,
        /// How many of them must be given.
        required: usize,
        oneof: bool,
    },
}

struct InputField {
    name: String,
    expected: Expected,
    /// Non-null without a default: it must be given.
    required: bool,
}

/// How deep input objects may nest in a declared type for the document to be kept (a
/// recursive input type would otherwise never end).
const MAX_INPUT_DEPTH: usize = 8;

/// One request's way through: the operation it names, then what its document and variables
/// allow.
#[derive(Default)]
pub struct Pending(Mutex<State>);

#[derive(Default)]
struct State {
    operation_name: Option<String>,
    /// The kept result, when the request's variables conform to the document's declarations.
    reused: Option<ValidationResult>,
    /// The document's shape when it may be kept once it passes.
    candidate: Option<(String, Passed)>,
}

impl Pending {
    fn state(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The operation the request asks for by name.
    pub fn named(&self, operation_name: Option<&str>) {
        self.state().operation_name = operation_name.map(str::to_owned);
    }

    /// Once the document is parsed: whether its kept result holds for these variables, or
    /// whether it may be kept once it passes.
    pub fn parsed(
        &self,
        known: &Known,
        registry: &Registry,
        query: &str,
        variables: &Variables,
        document: &ExecutableDocument,
    ) {
        let mut state = self.state();
        match known.passed.get(query) {
            Some(passed) => {
                let same_operation = state.operation_name.is_none()
                    || state.operation_name.as_deref() == passed.operation.as_deref();
                if same_operation && conforms(&passed.variables, variables) {
                    state.reused = Some(passed.result);
                }
            }
            None if query.len() <= KNOWN_MAX_BYTES => {
                let computed = known
                    .computed_complexity
                    .get_or_init(|| computed_complexity(registry));
                state.candidate =
                    keepable(registry, document, computed).map(|p| (query.to_owned(), p));
            }
            None => {}
        }
    }

    /// The kept result, or async-graphql's validation (kept when it passes and may be).
    pub async fn validate(
        &self,
        known: &Known,
        ctx: &ExtensionContext<'_>,
        next: NextValidation<'_>,
    ) -> Result<ValidationResult, Vec<ServerError>> {
        let (reused, candidate) = {
            let mut state = self.state();
            (state.reused.take(), state.candidate.take())
        };
        if let Some(result) = reused {
            return Ok(result);
        }
        let result = next.run(ctx).await?;
        if let Some((query, mut passed)) = candidate {
            passed.result = result;
            known.passed.insert(query, Arc::new(passed));
        }
        Ok(result)
    }
}

/// The document's declarations when its validation may be reused (see the module's
/// comment); its `result` is filled in once it has passed.
fn keepable(
    registry: &Registry,
    document: &ExecutableDocument,
    computed: &HashSet<String>,
) -> Option<Passed> {
    let (name, operation) = match &document.operations {
        DocumentOperations::Single(operation) => (None, operation),
        DocumentOperations::Multiple(operations) if operations.len() == 1 => {
            let (name, operation) = operations.iter().next()?;
            (Some(name.clone()), operation)
        }
        DocumentOperations::Multiple(_) => return None,
    };
    let sets = std::iter::once(&operation.node.selection_set.node).chain(
        document
            .fragments
            .values()
            .map(|f| &f.node.selection_set.node),
    );
    for set in sets {
        if !variables_kept_apart(set, computed) {
            return None;
        }
    }
    let variables = operation
        .node
        .variable_definitions
        .iter()
        .map(|d| {
            Some(Declared {
                name: d.node.name.node.clone(),
                expected: expected(registry, &d.node.var_type.node.to_string(), 0)?,
                has_default: d.node.default_value.is_some(),
            })
        })
        .collect::<Option<_>>()?;
    Some(Passed {
        result: ValidationResult {
            cache_control: Default::default(),
            complexity: 0,
            depth: 0,
        },
        operation: name,
        variables,
    })
}

/// Whether every argument (of fields and directives) that uses a variable is that variable
/// alone, and no field in `computed` takes one.
fn variables_kept_apart(set: &SelectionSet, computed: &HashSet<String>) -> bool {
    use async_graphql::{Positioned, parser::types::Directive};
    use async_graphql_value::Value as Literal;
    fn holds_variable(value: &Literal) -> bool {
        match value {
            Literal::Variable(_) => true,
            Literal::List(items) => items.iter().any(holds_variable),
            Literal::Object(fields) => fields.values().any(holds_variable),
            _ => false,
        }
    }
    let apart = |arguments: &[(Positioned<Name>, Positioned<Literal>)]| {
        arguments
            .iter()
            .all(|(_, v)| matches!(v.node, Literal::Variable(_)) || !holds_variable(&v.node))
    };
    let directives_apart =
        |directives: &[Positioned<Directive>]| directives.iter().all(|d| apart(&d.node.arguments));
    set.items.iter().all(|item| match &item.node {
        Selection::Field(f) => {
            let field = &f.node;
            let takes_variable = field.arguments.iter().any(|(_, v)| holds_variable(&v.node));
            apart(&field.arguments)
                && !(takes_variable && computed.contains(field.name.node.as_str()))
                && directives_apart(&field.directives)
                && variables_kept_apart(&field.selection_set.node, computed)
        }
        Selection::InlineFragment(f) => {
            directives_apart(&f.node.directives)
                && variables_kept_apart(&f.node.selection_set.node, computed)
        }
        Selection::FragmentSpread(s) => directives_apart(&s.node.directives),
    })
}

/// The names of fields, in any type, whose complexity is computed from their arguments.
fn computed_complexity(registry: &Registry) -> HashSet<String> {
    registry
        .types
        .values()
        .filter_map(|ty| match ty {
            MetaType::Object { fields, .. } | MetaType::Interface { fields, .. } => Some(fields),
            _ => None,
        })
        .flat_map(|fields| fields.values())
        .filter(|f| f.compute_complexity.is_some())
        .map(|f| f.name.clone())
        .collect()
}

/// Type `ty` (as written) resolved against the schema; `None` for a type it does not have or
/// that is not an input, or input objects nested deeper than `MAX_INPUT_DEPTH`.
fn expected(registry: &Registry, ty: &str, depth: usize) -> Option<Expected> {
    let inner = |ty, depth| expected(registry, ty, depth).map(Box::new);
    Some(match MetaTypeName::create(ty) {
        MetaTypeName::NonNull(ty) => Expected::NonNull(inner(ty, depth)?),
        MetaTypeName::List(ty) => Expected::List(inner(ty, depth)?),
        MetaTypeName::Named(name) => match registry.types.get(name)? {
            MetaType::Scalar { is_valid, .. } => Expected::Scalar(is_valid.clone()),
            MetaType::Enum { enum_values, .. } => {
                Expected::Enum(enum_values.keys().cloned().collect())
            }
            MetaType::InputObject {
                input_fields,
                oneof,
                ..
            } if depth < MAX_INPUT_DEPTH => {
                let fields: Vec<InputField> = input_fields
                    .values()
                    .map(|f| {
                        Some(InputField {
                            name: f.name.clone(),
                            expected: expected(registry, &f.ty, depth + 1)?,
                            required: f.default_value.is_none()
                                && MetaTypeName::create(&f.ty).is_non_null(),
                        })
                    })
                    .collect::<Option<_>>()?;
                Expected::Input {
                    required: fields.iter().filter(|f| f.required).count(),
                    fields,
                    oneof: *oneof,
                }
            }
            _ => return None,
        },
    })
}

/// Whether every declared variable's value is one its type accepts. A value left out, or
/// null, conforms only where validation could not be told apart from a full one.
fn conforms(declared: &[Declared], variables: &Variables) -> bool {
    declared.iter().all(|d| {
        let nullable = !matches!(d.expected, Expected::NonNull(_));
        match variables.get(&d.name) {
            // Left out: the default (checked with the document), or an error at execution.
            None => d.has_default || nullable,
            // Null in a nullable variable: fine where the variable cannot stand in a non-null
            // position, i.e. without a default.
            Some(Value::Null) => !d.has_default && nullable,
            Some(value) => d.expected.accepts(value),
        }
    })
}

impl Expected {
    /// Whether `value` is one this type accepts as input.
    fn accepts(&self, value: &Value) -> bool {
        match (self, value) {
            (Expected::NonNull(_), Value::Null) => false,
            (Expected::NonNull(inner), value) => inner.accepts(value),
            (_, Value::Null) => true,
            (Expected::List(item), Value::List(items)) => items.iter().all(|v| item.accepts(v)),
            // A single value stands for a list of one.
            (Expected::List(item), value) => item.accepts(value),
            (Expected::Scalar(check), value) => check.as_ref().is_none_or(|f| f(value)),
            (Expected::Enum(values), Value::Enum(v)) => values.contains(v.as_str()),
            (Expected::Enum(values), Value::String(v)) => values.contains(v.as_str()),
            (Expected::Enum(_), _) => false,
            (
                Expected::Input {
                    fields,
                    required,
                    oneof,
                },
                Value::Object(given),
            ) => {
                if *oneof && (given.len() != 1 || given.values().any(|v| matches!(v, Value::Null)))
                {
                    return false;
                }
                // Every given field is one of the type's and conforms to it, and every field
                // that must be given is.
                let mut given_required = 0;
                given.iter().all(|(name, v)| {
                    fields
                        .iter()
                        .find(|f| f.name == name.as_str())
                        .is_some_and(|f| {
                            given_required += usize::from(f.required);
                            f.expected.accepts(v)
                        })
                }) && given_required == *required
            }
            (Expected::Input { .. }, _) => false,
        }
    }
}
