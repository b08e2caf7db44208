//! Relay connections with keyset cursors: a page costs the same however deep it is. One
//! macro makes each connection and edge type (GraphQL needs a concrete pair per node type).

use async_graphql::SimpleObject;

use super::{Credit, UsageReport};

/// Relay page information.
#[derive(SimpleObject, Clone, Debug)]
pub struct PageInfo {
    /// Whether rows follow this page.
    pub has_next_page: bool,
    /// Whether rows precede this page (true when `after` was given).
    pub has_previous_page: bool,
    /// The cursor of the first row of the page.
    pub start_cursor: Option<String>,
    /// The cursor of the last row of the page: pass it as `after` for the next page.
    pub end_cursor: Option<String>,
}

macro_rules! connection {
    ($connection:ident, $edge:ident, $node:ty, $what:literal, $row:literal) => {
        #[doc = concat!("A page of ", $what, " (a Relay connection), newest first.")]
        #[derive(SimpleObject, Clone, Debug)]
        pub struct $connection {
            /// The page's rows with their cursors.
            pub edges: Vec<$edge>,
            /// The page's rows.
            pub nodes: Vec<$node>,
            /// Where the page stands.
            pub page_info: PageInfo,
        }

        #[doc = concat!($row, " and its cursor.")]
        #[derive(SimpleObject, Clone, Debug)]
        pub struct $edge {
            /// Pass as `after` to get the rows that follow this one.
            pub cursor: String,
            /// The row.
            pub node: $node,
        }

        impl $connection {
            /// A page from `(cursor, row)` pairs.
            pub fn new(
                rows: Vec<(String, $node)>,
                has_previous_page: bool,
                has_next_page: bool,
            ) -> Self {
                let page_info = PageInfo {
                    has_next_page,
                    has_previous_page,
                    start_cursor: rows.first().map(|(c, _)| c.clone()),
                    end_cursor: rows.last().map(|(c, _)| c.clone()),
                };
                $connection {
                    nodes: rows.iter().map(|(_, n)| n.clone()).collect(),
                    edges: rows
                        .into_iter()
                        .map(|(cursor, node)| $edge { cursor, node })
                        .collect(),
                    page_info,
                }
            }
        }
    };
}

connection!(
    CreditConnection,
    CreditEdge,
    Credit,
    "the credit ledger",
    "A ledger row"
);
connection!(
    UsageReportConnection,
    UsageReportEdge,
    UsageReport,
    "usage reports",
    "A usage report"
);
