//! Relay connections with keyset cursors: a page costs the same however deep it is. One
//! macro makes each connection and edge type (GraphQL needs a concrete pair per node type).

use async_graphql::SimpleObject;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use uuid::Uuid;

use super::{Credit, Project, Task, UsageReport, WebhookDelivery};
use crate::error::AppError;

/// The largest page a connection returns.
pub const MAX_PAGE: i32 = 100;

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

connection!(
    WebhookDeliveryConnection,
    WebhookDeliveryEdge,
    WebhookDelivery,
    "webhook deliveries",
    "A webhook delivery"
);

/// A page's size and keyset position from `first` and `after`.
pub fn page(first: Option<i32>, after: Option<&str>) -> Result<(u64, Option<Uuid>), AppError> {
    let first = first.unwrap_or(20);
    if !(0..=MAX_PAGE).contains(&first) {
        return Err(AppError::bad_input(format!(
            "first must be between 0 and {MAX_PAGE}"
        )));
    }
    let after = after.map(decode_cursor).transpose()?;
    Ok((first.unsigned_abs().into(), after))
}

/// Cursors are opaque to clients: a versioned encoding of the row id (the keyset position).
pub fn encode_cursor(id: Uuid) -> String {
    URL_SAFE_NO_PAD.encode(format!("c1:{id}"))
}

fn decode_cursor(cursor: &str) -> Result<Uuid, AppError> {
    URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| Uuid::parse_str(text.strip_prefix("c1:")?).ok())
        .ok_or_else(|| AppError::bad_input("after is not a cursor this API returned"))
}

connection!(
    ProjectConnection,
    ProjectEdge,
    Project,
    "projects",
    "A project"
);
connection!(TaskConnection, TaskEdge, Task, "tasks", "A task");
