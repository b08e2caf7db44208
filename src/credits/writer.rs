//! The per-process guard writer: many callers' spends in one commit, on one connection of its
//! own. Callers hand over a `Spend` and wait; the writer takes what is queued (up to
//! `max_batch`), runs each spend's writes in one transaction and commits once, then answers
//! every caller. A refused spend writes nothing (a key it claimed is forgotten again), so it
//! needs no savepoint. If anything else fails, the batch is rolled back and its spends are
//! replayed one by one, each in its own transaction. Correctness never
//! rests on the writer being alone: every spend is still the conditional upsert, so any number
//! of replicas may write to one database.
//!
//! Where: on SQLite a thread of its own with a rusqlite connection — each statement a call on
//! that thread, no hand-off, and commits and checkpoints off the request threads; on
//! PostgreSQL an async job with an sqlx connection outside the pool (no ping after each batch). A
//! batch costs BEGIN and COMMIT once for all its spends (DESIGN.md, "Performance
//! architecture").

use std::sync::Arc;

use chrono::{DateTime, Utc};
use sea_orm::DbErr;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::{
    alerts,
    guard::{self, Spend, Spent, Statements},
};
use crate::{
    cache::Bounded,
    db::{self, Database, Session},
    error::{AppError, Shortfall},
    live::{Change, Changes},
    metrics::Metrics,
};

/// Attempts of one spend's transaction before a contention error is given up on.
const ATTEMPTS: u32 = 5;

type Reply = oneshot::Sender<Result<Spent, AppError>>;
/// A tenant's feature's period, by when it ends.
type Period = (Uuid, String, Option<DateTime<Utc>>);
type Job = (Spend, Reply);

/// A handle to the process's guard writer.
#[derive(Clone)]
pub struct Writer {
    jobs: mpsc::Sender<Job>,
    metrics: Metrics,
    changes: Changes,
    db: Database,
    /// The periods whose first refusal this process recorded (`alerts::limit_reached`): later
    /// refusals in them write nothing.
    refused: Arc<Bounded<Period, (), 65_536>>,
}

impl Writer {
    /// Opens the writer's connection and starts it; it runs until every handle is dropped.
    pub async fn spawn(
        db: Database,
        statements: Statements,
        max_batch: usize,
        metrics: Metrics,
        changes: Changes,
    ) -> Result<Self, DbErr> {
        let max_batch = max_batch.max(1);
        let (jobs, queue) = mpsc::channel(4 * max_batch);
        let session = db.session().await?;
        let running = Running {
            db: db.clone(),
            session,
            statements,
        };
        match running.db.backend() {
            sea_orm::DatabaseBackend::Postgres => {
                tokio::spawn(running.run(queue, max_batch));
            }
            // SQLite's calls never wait on the async runtime: a plain thread runs them.
            _ => {
                std::thread::Builder::new()
                    .name("tollgate-writer".to_owned())
                    .spawn(move || futures::executor::block_on(running.run(queue, max_batch)))
                    .map_err(|e| DbErr::Custom(format!("cannot start the writer thread: {e}")))?;
            }
        }
        Ok(Writer {
            jobs,
            metrics,
            changes,
            db,
            refused: Arc::default(),
        })
    }

    /// Runs `spend` and answers once its writes are committed (or refused).
    pub async fn submit(&self, spend: Spend) -> Result<Spent, AppError> {
        // What the credits metric needs, taken before the spend is handed over.
        let (credit_type, amount) = (spend.credit_type.value.clone(), spend.credit_type.amount);
        let (tenant_id, at) = (spend.tenant_id, spend.at);
        let (reply, answer) = oneshot::channel();
        let stopped = || AppError::Internal(anyhow::anyhow!("the guard writer has stopped"));
        self.jobs
            .send((spend, reply))
            .await
            .map_err(|_| stopped())?;
        let spent = match answer.await.map_err(|_| stopped())? {
            Err(AppError::InsufficientCredits(shortfall)) => {
                self.limit_reached(tenant_id, &shortfall, at).await;
                return Err(AppError::InsufficientCredits(shortfall));
            }
            outcome => outcome?,
        };
        if let Spent::Charged { .. } = spent {
            self.metrics.credits(&credit_type, amount);
            // Committed: the tenant's subscribers read their balance again.
            self.changes.publish(Change::Tenant(tenant_id));
        }
        Ok(spent)
    }
}

impl Writer {
    /// Records a refusal as the period's `credits.limit_reached`, in a short transaction of
    /// its own, unless this process did for the period already (a tenant hammering an empty
    /// balance costs one write per period, not one per refusal). A failure is logged and
    /// tried again at the next refusal; the refusal stands either way.
    async fn limit_reached(&self, tenant_id: Uuid, shortfall: &Shortfall, at: DateTime<Utc>) {
        let seen = (tenant_id, shortfall.feature.clone(), shortfall.resets_at);
        if self.refused.get(&seen).is_some() {
            return;
        }
        let outcome = async {
            let txn = self.db.begin_write().await?;
            let _recorded = alerts::limit_reached(
                &mut &txn,
                tenant_id,
                &shortfall.feature,
                &shortfall.credit_type,
                shortfall.required,
                at,
            )
            .await?;
            txn.commit().await
        }
        .await;
        match outcome {
            Ok(()) => {
                self.refused.insert(seen, ());
                self.changes.publish(Change::Tenant(tenant_id));
            }
            Err(e) => tracing::warn!(error.cause = %e, "cannot record credits.limit_reached"),
        }
    }
}

/// Before a batch on the writer's own thread: the threads that woke it may still be handling
/// requests whose spends are on their way (on a core they share with the writer, it took the
/// core from them as it woke). The writer lets them run first and takes what they queued
/// meanwhile, so that one commit serves those spends too. Where they run on other cores, the
/// yield returns at once.
fn gather(queue: &mut mpsc::Receiver<Job>, batch: &mut Vec<Job>, max_batch: usize) {
    if batch.len() >= max_batch {
        return;
    }
    std::thread::yield_now();
    while batch.len() < max_batch {
        match queue.try_recv() {
            Ok(job) => batch.push(job),
            Err(_) => break,
        }
    }
}

struct Running {
    db: Database,
    session: Session,
    statements: Statements,
}

impl Running {
    async fn run(mut self, mut queue: mpsc::Receiver<Job>, max_batch: usize) {
        let mut batch = Vec::with_capacity(max_batch);
        let on_own_thread = self.db.backend() != sea_orm::DatabaseBackend::Postgres;
        while queue.recv_many(&mut batch, max_batch).await > 0 {
            if on_own_thread {
                self.db.hand_off();
                gather(&mut queue, &mut batch, max_batch);
            }
            // One lock order for every batch on every replica: no deadlocks between batches.
            batch.sort_by_key(|(spend, _)| spend.tenant_id);
            match self.write_batch(&batch).await {
                Ok(outcomes) => {
                    for ((_, reply), outcome) in batch.drain(..).zip(outcomes) {
                        let _ = reply.send(outcome);
                    }
                }
                Err(e) => {
                    tracing::warn!(error.cause = %format!("{e:#}"), batch.size = batch.len(), "guard batch failed; replaying one by one");
                    self.recover().await;
                    for (spend, reply) in batch.drain(..) {
                        let outcome = self.alone(&spend).await;
                        let _ = reply.send(outcome);
                    }
                }
            }
        }
    }

    /// Every spend's writes in one transaction. `Err` means nothing was committed.
    async fn write_batch(
        &mut self,
        batch: &[Job],
    ) -> Result<Vec<Result<Spent, AppError>>, anyhow::Error> {
        self.session.begin().await?;
        let mut outcomes = Vec::with_capacity(batch.len());
        for (spend, _) in batch {
            match self.write(spend).await {
                Err(AppError::Internal(e)) => return Err(e),
                outcome => outcomes.push(outcome),
            }
        }
        self.session.commit().await?;
        Ok(outcomes)
    }

    /// One spend's writes in the open transaction (a refused one writes nothing).
    async fn write(&mut self, spend: &Spend) -> Result<Spent, AppError> {
        guard::write(&mut self.session, &self.statements, spend).await
    }

    /// The spend in a transaction of its own, again if the database aborted it for
    /// contention (a Postgres serialization failure or deadlock, SQLite busy).
    async fn alone(&mut self, spend: &Spend) -> Result<Spent, AppError> {
        let mut attempt = 1;
        loop {
            let outcome = async {
                self.session.begin().await?;
                let spent = self.write(spend).await?;
                self.session.commit().await?;
                Ok(spent)
            }
            .await;
            match outcome {
                Ok(spent) => return Ok(spent),
                Err(e) => {
                    self.recover().await;
                    let transient = matches!(&e, AppError::Internal(e)
                        if e.downcast_ref::<DbErr>().is_some_and(db::is_transient));
                    if !transient || attempt >= ATTEMPTS {
                        return Err(e);
                    }
                    tracing::debug!(attempt, "guard transaction aborted by contention; retrying");
                    let jitter = u64::from(rand::random::<u8>() % 8);
                    pause(std::time::Duration::from_millis((2 << attempt) + jitter)).await;
                    attempt += 1;
                }
            }
        }
    }

    /// After a failure: roll back what is open; a connection that cannot even do that is
    /// replaced.
    async fn recover(&mut self) {
        if self.session.rollback().await.is_ok() {
            return;
        }
        match self.db.session().await {
            Ok(session) => self.session = session,
            Err(e) => tracing::error!(error.cause = %e, "the guard writer cannot reconnect"),
        }
    }
}

/// Waits `duration` on whichever thread the writer runs: the async runtime's timer on
/// PostgreSQL, a plain sleep on SQLite's own thread.
async fn pause(duration: std::time::Duration) {
    match tokio::runtime::Handle::try_current() {
        Ok(_) => tokio::time::sleep(duration).await,
        Err(_) => std::thread::sleep(duration),
    }
}
