//! The per-process guard writer: many callers' guards in one commit. Callers hand over a
//! `Guarded` and wait; the writer takes what is queued (up to `max_batch`), runs each guard's
//! writes in one transaction and commits once, then answers every caller. A refused guard
//! writes nothing, so it needs no savepoint; if anything else fails, the batch is rolled back
//! and its guards are replayed one by one, each in its own transaction. Correctness never
//! rests on the writer being alone: every spend is still the conditional upsert, so any
//! number of replicas may write to one database.
//!
//! Why: on SQLite every statement, BEGIN and COMMIT included, is a hand-off to sqlx's
//! connection thread, and on Postgres one tenant's guards wait for each other's commit to be
//! flushed; a batch shares those costs (DESIGN.md, "Performance architecture").

use tokio::sync::{mpsc, oneshot};

use super::{Created, Guarded, guard::Written};
use crate::{db::Database, error::AppError, metrics::Metrics};

type Reply = oneshot::Sender<Result<Written, AppError>>;

/// A handle to the process's guard writer.
#[derive(Clone)]
pub struct Writer {
    db: Database,
    jobs: mpsc::Sender<(Guarded, Reply)>,
    metrics: Metrics,
}

impl Writer {
    /// Starts the writer task; it runs until every handle is dropped.
    pub fn spawn(db: Database, max_batch: usize, metrics: Metrics) -> Self {
        let (jobs, queue) = mpsc::channel(4 * max_batch.max(1));
        tokio::spawn(run(db.clone(), queue, max_batch.max(1)));
        Writer { db, jobs, metrics }
    }

    /// Runs `guarded` and answers once its writes are committed (or refused).
    pub async fn submit(&self, guarded: Guarded) -> Result<Created, AppError> {
        // What the credits metric needs, taken before the guard is handed over.
        let (credit_type, amount) = (
            guarded.credit_type().value.clone(),
            guarded.credit_type().amount,
        );
        let written = if guarded.batchable() {
            let (reply, answer) = oneshot::channel();
            let stopped = || AppError::Internal(anyhow::anyhow!("the guard writer has stopped"));
            self.jobs
                .send((guarded, reply))
                .await
                .map_err(|_| stopped())?;
            answer.await.map_err(|_| stopped())??
        } else {
            guarded.run_alone(&self.db).await?
        };
        if written.charged {
            self.metrics.credits(&credit_type, amount);
        }
        Ok(written.created)
    }
}

async fn run(db: Database, mut queue: mpsc::Receiver<(Guarded, Reply)>, max_batch: usize) {
    let mut batch = Vec::with_capacity(max_batch);
    while queue.recv_many(&mut batch, max_batch).await > 0 {
        // One lock order for every batch on every replica: no deadlocks between batches.
        batch.sort_by_key(|(guarded, _)| guarded.tenant_id());
        match write_batch(&db, &batch).await {
            Ok(outcomes) => {
                for ((_, reply), outcome) in batch.drain(..).zip(outcomes) {
                    let _ = reply.send(outcome);
                }
            }
            Err(e) => {
                tracing::warn!(error.cause = %format!("{e:#}"), batch.size = batch.len(), "guard batch failed; replaying one by one");
                for (guarded, reply) in batch.drain(..) {
                    let _ = reply.send(guarded.run_alone(&db).await);
                }
            }
        }
    }
}

/// Every guard's writes in one transaction. `Err` means nothing was committed.
async fn write_batch(
    db: &Database,
    batch: &[(Guarded, Reply)],
) -> Result<Vec<Result<Written, AppError>>, anyhow::Error> {
    let txn = db.begin_write().await?;
    let mut outcomes = Vec::with_capacity(batch.len());
    for (guarded, _) in batch {
        match guarded.write(&txn).await {
            Err(AppError::Internal(e)) => return Err(e),
            outcome => outcomes.push(outcome),
        }
    }
    txn.commit().await?;
    Ok(outcomes)
}
