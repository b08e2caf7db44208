//! Limits async-graphql does not have built in: the length of a document, the number of
//! aliased fields (alias bombs), and the number of root fields of one operation. (Depth and
//! complexity are the schema's own `limit_depth` / `limit_complexity`.) Checked right after
//! parsing, before validation and execution; a refused document is
//! `GRAPHQL_VALIDATION_FAILED`.

use std::sync::Arc;

use async_graphql::{
    ServerError, ServerResult, Variables,
    extensions::{Extension, ExtensionContext, ExtensionFactory, NextParseQuery},
    parser::types::{ExecutableDocument, FragmentDefinition, Selection, SelectionSet},
};

use crate::config::GraphqlSettings;

#[derive(Clone, Copy)]
pub struct Limits {
    max_query_bytes: usize,
    max_aliases: usize,
    max_root_fields: usize,
}

impl Limits {
    pub fn new(settings: &GraphqlSettings) -> Self {
        Limits {
            max_query_bytes: settings.max_query_bytes,
            max_aliases: settings.max_aliases,
            max_root_fields: settings.max_root_fields,
        }
    }

    fn check(&self, document: &ExecutableDocument) -> Result<(), String> {
        let fragments = &document.fragments;
        let mut aliases = fragments
            .values()
            .map(|f| aliases_in(&f.node.selection_set.node))
            .sum::<usize>();
        for (_, operation) in document.operations.iter() {
            let selection_set = &operation.node.selection_set.node;
            aliases += aliases_in(selection_set);
            let root = root_fields(selection_set, fragments, 0);
            if root > self.max_root_fields {
                return Err(format!(
                    "an operation may select at most {} root fields; this one selects {root}",
                    self.max_root_fields
                ));
            }
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

fn aliases_in(set: &SelectionSet) -> usize {
    set.items
        .iter()
        .map(|item| match &item.node {
            Selection::Field(f) => {
                usize::from(f.node.alias.is_some()) + aliases_in(&f.node.selection_set.node)
            }
            Selection::InlineFragment(f) => aliases_in(&f.node.selection_set.node),
            Selection::FragmentSpread(_) => 0,
        })
        .sum()
}

/// Root fields, fragments expanded (a few levels: deeper spreads are validation's business).
fn root_fields(
    set: &SelectionSet,
    fragments: &std::collections::HashMap<
        async_graphql::Name,
        async_graphql::Positioned<FragmentDefinition>,
    >,
    level: usize,
) -> usize {
    if level > 4 {
        return 0;
    }
    set.items
        .iter()
        .map(|item| match &item.node {
            Selection::Field(_) => 1,
            Selection::InlineFragment(f) => {
                root_fields(&f.node.selection_set.node, fragments, level + 1)
            }
            Selection::FragmentSpread(s) => {
                fragments.get(&s.node.fragment_name.node).map_or(0, |f| {
                    root_fields(&f.node.selection_set.node, fragments, level + 1)
                })
            }
        })
        .sum()
}

impl ExtensionFactory for Limits {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(*self)
    }
}

#[async_trait::async_trait]
impl Extension for Limits {
    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let refused = |message: String| {
            super::with_code(ServerError::new(message, None), "GRAPHQL_VALIDATION_FAILED")
        };
        if query.len() > self.max_query_bytes {
            return Err(refused(format!(
                "the document is {} bytes; at most {} are accepted",
                query.len(),
                self.max_query_bytes
            )));
        }
        let document = next.run(ctx, query, variables).await?;
        self.check(&document).map_err(refused)?;
        Ok(document)
    }
}
