//! The live balance's fan-out: after a change to a tenant's credits or membership commits,
//! every process's subscribers of that tenant hear of it, and read the balance again.
//!
//! On SQLite (one process) a change is an in-process broadcast. On PostgreSQL it is sent with
//! `NOTIFY` — **after** commit and in small batches, never inside a guard's transaction (a
//! NOTIFY there takes a database-wide lock at commit and would serialize every guard) — and
//! every process `LISTEN`s, rebroadcasting what it hears, its own changes included. A listener
//! that lost its connection tells every subscriber to read again (`Change::All`) once it is
//! back, so nothing missed meanwhile stays unseen.

use std::{collections::BTreeSet, time::Duration};

use sea_orm::{ConnectionTrait, DatabaseBackend};
use tokio::sync::{broadcast, mpsc};
use uuid::Uuid;

use crate::db::{Database, PerBackend};

/// The channel every process listens on.
const CHANNEL: &str = "tollgate_changes";

/// A NOTIFY payload must stay under 8000 bytes: ids (36 bytes and a comma) per notification.
const IDS_PER_NOTIFY: usize = 200;

/// How long changes gather before they are sent (a batch).
const GATHER: Duration = Duration::from_millis(10);

/// What changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// A tenant's credits, plan or members.
    Tenant(Uuid),
    /// Anything may have: read again (after a lost connection, or a change of many tenants).
    All,
}

impl Change {
    /// Whether a subscriber of `tenant` must read again.
    pub fn concerns(self, tenant: Uuid) -> bool {
        match self {
            Change::Tenant(t) => t == tenant,
            Change::All => true,
        }
    }
}

/// The process's fan-out of changes.
#[derive(Clone)]
pub struct Changes {
    local: broadcast::Sender<Change>,
    /// PostgreSQL: to the notifier, which NOTIFYs in batches.
    notify: Option<mpsc::UnboundedSender<Change>>,
}

impl Changes {
    /// Starts the fan-out for `db` (on PostgreSQL its notifier and listener, connecting to
    /// `database_url`).
    pub fn start(db: &Database, database_url: &str) -> Changes {
        let (local, _) = broadcast::channel(1024);
        let notify = (db.backend() == DatabaseBackend::Postgres).then(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(notifier(db.clone(), rx));
            tokio::spawn(listener(database_url.to_owned(), local.clone()));
            tx
        });
        Changes { local, notify }
    }

    /// Tells every subscriber, on every process, that `change` happened. Call it after the
    /// change committed.
    pub fn publish(&self, change: Change) {
        match &self.notify {
            Some(notify) => {
                let _ = notify.send(change);
            }
            // No receiver is not an error: nobody is watching.
            None => {
                let _ = self.local.send(change);
            }
        }
    }

    /// The changes from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.local.subscribe()
    }
}

/// Sends what is published as NOTIFYs of comma-separated tenant ids (`*`: all), gathering
/// for `GATHER` so a burst of spends costs a few statements.
async fn notifier(db: Database, mut changes: mpsc::UnboundedReceiver<Change>) {
    static NOTIFY: PerBackend =
        PerBackend::new(|_| format!("SELECT pg_notify('{CHANNEL}', :payload)"));
    while let Some(first) = changes.recv().await {
        tokio::time::sleep(GATHER).await;
        let mut all = false;
        let mut tenants = BTreeSet::new();
        let mut next = Some(first);
        while let Some(change) = next {
            match change {
                Change::All => all = true,
                Change::Tenant(t) => {
                    tenants.insert(t);
                }
            }
            next = changes.try_recv().ok();
        }
        let payloads: Vec<String> = if all {
            vec!["*".to_owned()]
        } else {
            let tenants: Vec<String> = tenants.iter().map(Uuid::to_string).collect();
            tenants
                .chunks(IDS_PER_NOTIFY)
                .map(|chunk| chunk.join(","))
                .collect()
        };
        for payload in payloads {
            let sent = match NOTIFY
                .get(db.backend())
                .bind(|name| (name == "payload").then(|| payload.as_str().into()))
            {
                Ok(statement) => db.write.execute_raw(statement).await.map(|_| ()),
                Err(e) => Err(e),
            };
            if let Err(e) = sent {
                tracing::warn!(error.cause = %e, "change notification not sent; subscribers of other replicas see it with the next one");
            }
        }
    }
}

/// LISTENs on `CHANNEL` and rebroadcasts what it hears, for as long as the process runs,
/// connecting again a second after a failure.
async fn listener(url: String, local: broadcast::Sender<Change>) {
    loop {
        let Err(e) = listen(&url, &local).await;
        tracing::warn!(error.cause = %e, "change listener lost; listening again in a second");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// One connection's listening; after a lost connection (once listening again) every
/// subscriber is told to read again. Returns only with the error that ended it.
async fn listen(
    url: &str,
    local: &broadcast::Sender<Change>,
) -> Result<std::convert::Infallible, sqlx::Error> {
    let mut listener = sqlx::postgres::PgListener::connect(url).await?;
    listener.listen(CHANNEL).await?;
    // Whatever happened while not listening.
    let _ = local.send(Change::All);
    loop {
        match listener.try_recv().await? {
            Some(notification) => {
                for change in parse(notification.payload()) {
                    let _ = local.send(change);
                }
            }
            // The connection was lost and is back: read again.
            None => {
                let _ = local.send(Change::All);
            }
        }
    }
}

/// Open subscription connections per caller (a user or an API key), bounded.
#[derive(Default)]
pub struct Connections(std::sync::Mutex<std::collections::HashMap<Uuid, usize>>);

impl Connections {
    /// Counts a new connection of `caller`, unless it has `max` already; the guard gives it
    /// back when dropped.
    pub fn open(self: &std::sync::Arc<Self>, caller: Uuid, max: usize) -> Option<Connection> {
        let mut open = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = open.entry(caller).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(Connection {
            connections: std::sync::Arc::clone(self),
            caller,
        })
    }
}

/// One open connection, counted until dropped.
pub struct Connection {
    connections: std::sync::Arc<Connections>,
    caller: Uuid,
}

impl Drop for Connection {
    fn drop(&mut self) {
        let mut open = self
            .connections
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.caller) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.caller);
            }
        }
    }
}

/// The changes a NOTIFY payload names.
fn parse(payload: &str) -> Vec<Change> {
    if payload == "*" {
        return vec![Change::All];
    }
    payload
        .split(',')
        .filter_map(|id| Uuid::parse_str(id.trim()).ok())
        .map(Change::Tenant)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_names_tenants_or_all() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        assert_eq!(
            parse(&format!("{a},{b}")),
            vec![Change::Tenant(a), Change::Tenant(b)]
        );
        assert_eq!(parse("*"), vec![Change::All]);
        assert!(parse("nonsense").is_empty());
        assert!(Change::All.concerns(a) && Change::Tenant(a).concerns(a));
        assert!(!Change::Tenant(a).concerns(b));
    }

    #[test]
    fn a_full_notify_payload_stays_under_postgres_limit() {
        let ids: Vec<String> = (0..IDS_PER_NOTIFY)
            .map(|_| Uuid::now_v7().to_string())
            .collect();
        assert!(ids.join(",").len() < 8000);
    }
}
