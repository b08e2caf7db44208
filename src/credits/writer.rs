//! The per-process guard writer: many callers' spends in one commit. Callers hand over a
//! `Spend` and wait; the writer takes what is queued (up to `max_batch`), runs each spend's
//! writes in one transaction and commits once, then answers every caller. A refused spend
//! writes nothing, so it needs no savepoint; if anything else fails, the batch is rolled back
//! and its spends are replayed one by one, each in its own transaction. A keyed spend runs
//! alone (a refusal must roll its key claim back). Correctness never rests on the writer
//! being alone: every spend is still the conditional upsert, so any number of replicas may
//! write to one database.
//!
//! Why: on SQLite every statement, BEGIN and COMMIT included, is a hand-off to sqlx's
//! connection thread, and on Postgres one tenant's spends wait for each other's commit to be
//! flushed; a batch shares those costs (DESIGN.md, "Performance architecture").

use std::sync::Arc;

use sea_orm::DbErr;
use tokio::sync::{mpsc, oneshot};

use super::guard::{self, Spend, Spent, Statements};
use crate::{
    db::{self, Database},
    error::AppError,
    metrics::Metrics,
};

/// Attempts of one spend's transaction before a contention error is given up on.
const ATTEMPTS: u32 = 5;

type Reply = oneshot::Sender<Result<Spent, AppError>>;

/// A handle to the process's guard writer.
#[derive(Clone)]
pub struct Writer {
    db: Database,
    statements: Arc<Statements>,
    jobs: mpsc::Sender<(Spend, Reply)>,
    metrics: Metrics,
}

impl Writer {
    /// Starts the writer task; it runs until every handle is dropped.
    pub fn spawn(db: Database, statements: Statements, max_batch: usize, metrics: Metrics) -> Self {
        let statements = Arc::new(statements);
        let (jobs, queue) = mpsc::channel(4 * max_batch.max(1));
        tokio::spawn(run(
            db.clone(),
            Arc::clone(&statements),
            queue,
            max_batch.max(1),
        ));
        Writer {
            db,
            statements,
            jobs,
            metrics,
        }
    }

    /// Runs `spend` and answers once its writes are committed (or refused).
    pub async fn submit(&self, spend: Spend) -> Result<Spent, AppError> {
        // What the credits metric needs, taken before the spend is handed over.
        let (credit_type, amount) = (spend.credit_type.value.clone(), spend.credit_type.amount);
        let spent = if spend.batchable() {
            let (reply, answer) = oneshot::channel();
            let stopped = || AppError::Internal(anyhow::anyhow!("the guard writer has stopped"));
            self.jobs
                .send((spend, reply))
                .await
                .map_err(|_| stopped())?;
            answer.await.map_err(|_| stopped())??
        } else {
            alone(&self.db, &self.statements, &spend).await?
        };
        if spent == Spent::Charged {
            self.metrics.credits(&credit_type, amount);
        }
        Ok(spent)
    }
}

async fn run(
    db: Database,
    statements: Arc<Statements>,
    mut queue: mpsc::Receiver<(Spend, Reply)>,
    max_batch: usize,
) {
    let mut batch = Vec::with_capacity(max_batch);
    while queue.recv_many(&mut batch, max_batch).await > 0 {
        // One lock order for every batch on every replica: no deadlocks between batches.
        batch.sort_by_key(|(spend, _)| spend.tenant_id);
        match write_batch(&db, &statements, &batch).await {
            Ok(outcomes) => {
                for ((_, reply), outcome) in batch.drain(..).zip(outcomes) {
                    let _ = reply.send(outcome);
                }
            }
            Err(e) => {
                tracing::warn!(error.cause = %format!("{e:#}"), batch.size = batch.len(), "guard batch failed; replaying one by one");
                for (spend, reply) in batch.drain(..) {
                    let _ = reply.send(alone(&db, &statements, &spend).await);
                }
            }
        }
    }
}

/// Every spend's writes in one transaction. `Err` means nothing was committed.
async fn write_batch(
    db: &Database,
    statements: &Statements,
    batch: &[(Spend, Reply)],
) -> Result<Vec<Result<Spent, AppError>>, anyhow::Error> {
    let txn = db.begin_write().await?;
    let mut outcomes = Vec::with_capacity(batch.len());
    for (spend, _) in batch {
        match guard::write(&txn, statements, spend).await {
            Err(AppError::Internal(e)) => return Err(e),
            outcome => outcomes.push(outcome),
        }
    }
    txn.commit().await?;
    Ok(outcomes)
}

/// The spend in a transaction of its own, again if the database aborted it for contention
/// (a Postgres serialization failure or deadlock, SQLite busy).
async fn alone(db: &Database, statements: &Statements, spend: &Spend) -> Result<Spent, AppError> {
    let mut attempt = 1;
    loop {
        let outcome = async {
            let txn = db.begin_write().await?;
            let spent = guard::write(&txn, statements, spend).await?;
            txn.commit().await?;
            Ok(spent)
        }
        .await;
        match outcome {
            Err(AppError::Internal(e))
                if attempt < ATTEMPTS
                    && e.downcast_ref::<DbErr>().is_some_and(db::is_transient) =>
            {
                tracing::debug!(attempt, "guard transaction aborted by contention; retrying");
                let jitter = u64::from(rand::random::<u8>() % 8);
                tokio::time::sleep(std::time::Duration::from_millis((2 << attempt) + jitter)).await;
                attempt += 1;
            }
            outcome => return outcome,
        }
    }
}
