//! Subscription resolvers: the live balance, over WebSocket (`GET /graphql/ws`).

use std::collections::VecDeque;

use async_graphql::{Context, ErrorExtensions, ID, Json, ResultExt, Subscription};
use futures::{Stream, stream};
use tokio::sync::broadcast::error::RecvError;

use crate::{
    auth::{ApiScope, Viewer},
    credits::{
        self, FeatureUsage,
        feed::{self, FeedEvent},
    },
    error::AppError,
    graphql::{
        state,
        types::{Credit, CreditEvent, CreditEventType, PlanFeatureUsage, Sequence, parse_id},
        viewer,
    },
    live::Change,
    state::AppState,
};

/// What can be watched.
pub struct Subscription;

/// What can be watched.
#[Subscription]
impl Subscription {
    /// A tenant's usage of a feature (default `credits`), live: the current value first, then
    /// every change — a spend, refund, grant, expiry, reservation, plan or period change —
    /// made on any replica. Members (and API keys with `CREDITS_READ`); a member removed
    /// meanwhile gets `FORBIDDEN` and the subscription ends.
    async fn credit_balance(
        &self,
        ctx: &Context<'_>,
        tenant_id: ID,
        #[graphql(default = "credits")] feature: String,
    ) -> async_graphql::Result<impl Stream<Item = async_graphql::Result<PlanFeatureUsage>>> {
        let state = state(ctx)?.clone();
        let viewer = viewer(ctx).clone();
        let tenant = parse_id(&tenant_id, "tenantId").extend()?;
        // Listening before the first read: nothing between the two is missed.
        let changes = state.changes.subscribe();
        let first = read(&state, &viewer, tenant, &feature).await.extend()?;
        let watch = Watch {
            state,
            viewer,
            tenant,
            feature,
            changes,
            last: None,
            first: Some(first),
            done: false,
        };
        Ok(stream::unfold(watch, |mut watch| async move {
            let item = watch.next().await?;
            Some((item, watch))
        }))
    }

    /// A tenant's credit events, live, in the order they committed on any replica: ledger
    /// rows (spends, refunds, grants, expiries, voids) and alert events (thresholds reached
    /// and resolved, depleted, limit reached); `types` to choose. Each has the tenant's
    /// `sequence` number (1, 2, 3, …, the same for every subscriber). Without `after`, the
    /// events from now on; with `after` (a sequence number seen before, say before a
    /// reconnect, or 0 for all), every event after it first — nothing missed, nothing twice.
    /// Members (and API keys with `CREDITS_READ`); a member removed meanwhile gets
    /// `FORBIDDEN` and the subscription ends.
    async fn credit_events(
        &self,
        ctx: &Context<'_>,
        tenant_id: ID,
        types: Option<Vec<CreditEventType>>,
        after: Option<Sequence>,
    ) -> async_graphql::Result<impl Stream<Item = async_graphql::Result<CreditEvent>>> {
        let state = state(ctx)?.clone();
        let viewer = viewer(ctx).clone();
        let tenant = parse_id(&tenant_id, "tenantId").extend()?;
        // Listening before the first read: nothing between the two is missed.
        let changes = state.changes.subscribe();
        // Checks the viewer may read the tenant's events, whether or not it starts from now.
        let newest = feed::newest(&state.db, &viewer, tenant).await.extend()?;
        let feed = Feed {
            state,
            viewer,
            tenant,
            types,
            changes,
            after: after.map_or(newest, |after| after.0),
            ready: VecDeque::new(),
            more: after.is_some(),
            done: false,
        };
        Ok(stream::unfold(feed, |mut feed| async move {
            let item = feed.next().await?;
            Some((item, feed))
        }))
    }
}

/// How often at most a `creditEvents` subscriber reads the database: changes arriving
/// meanwhile are read together.
const EVENTS_EVERY: std::time::Duration = std::time::Duration::from_millis(50);

/// One subscriber's feed of a tenant's events.
struct Feed {
    state: AppState,
    viewer: Viewer,
    tenant: uuid::Uuid,
    types: Option<Vec<CreditEventType>>,
    changes: tokio::sync::broadcast::Receiver<Change>,
    /// The number read through: the next read is of the events after it.
    after: i64,
    ready: VecDeque<CreditEvent>,
    /// Read again at once, before waiting for a change: the first read of a resumed feed,
    /// or after a full page.
    more: bool,
    done: bool,
}

impl Feed {
    async fn next(&mut self) -> Option<async_graphql::Result<CreditEvent>> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Some(Ok(event));
            }
            if self.done {
                return None;
            }
            if !self.more {
                loop {
                    match self.changes.recv().await {
                        Ok(change) if !change.concerns(self.tenant) => continue,
                        Ok(_) | Err(RecvError::Lagged(_)) => break,
                        Err(RecvError::Closed) => return None,
                    }
                }
                // Changes close together are read together.
                tokio::time::sleep(EVENTS_EVERY).await;
                while self.changes.try_recv().is_ok() {}
            }
            if let Err(e) = self.read().await {
                // Refused (a removed member, a revoked key): say why, then end.
                self.done = true;
                return Some(Err(e.extend()));
            }
        }
    }

    /// Reads a page of what committed after `after` into `ready`.
    async fn read(&mut self) -> Result<(), AppError> {
        let read = feed::since(&self.state.db, &self.viewer, self.tenant, self.after).await?;
        for event in read.events {
            let (sequence, id) = (Sequence(event.seq()), event.id());
            let (kind, at, feature, credit, data) = match event {
                FeedEvent::Ledger(c) => (
                    CreditEventType::of_movement(&c.movement),
                    c.created_at,
                    Some(c.feature.clone()),
                    Some(Credit::from(*c)),
                    None,
                ),
                FeedEvent::Alert { kind, at, data, .. } => {
                    let Some(kind) = CreditEventType::of_alert(&kind) else {
                        continue;
                    };
                    let feature = data["feature"].as_str().map(str::to_owned);
                    (kind, at, feature, None, Some(Json(data)))
                }
            };
            if self.types.as_ref().is_some_and(|t| !t.contains(&kind)) {
                continue;
            }
            self.ready.push_back(CreditEvent {
                sequence,
                id: ID(id.to_string()),
                kind,
                at,
                feature,
                credit,
                data,
            });
        }
        self.after = read.through;
        self.more = read.more;
        Ok(())
    }
}

/// One subscriber's view of a tenant's balance.
struct Watch {
    state: AppState,
    viewer: Viewer,
    tenant: uuid::Uuid,
    feature: String,
    changes: tokio::sync::broadcast::Receiver<Change>,
    last: Option<FeatureUsage>,
    first: Option<FeatureUsage>,
    done: bool,
}

impl Watch {
    /// The next value that differs from the last sent; `None` once the stream is over.
    async fn next(&mut self) -> Option<async_graphql::Result<PlanFeatureUsage>> {
        if self.done {
            return None;
        }
        if let Some(first) = self.first.take() {
            self.last = Some(first.clone());
            return Some(Ok(first.into()));
        }
        loop {
            // The period's end changes the balance without any write: read again then.
            let period_end = self
                .last
                .as_ref()
                .and_then(|u| u.period)
                .and_then(|p| p.end);
            let until_end = period_end
                .map(|end| (end - self.state.clock.now()).to_std().unwrap_or_default())
                .unwrap_or(std::time::Duration::from_secs(3600));
            tokio::select! {
                received = self.changes.recv() => match received {
                    Ok(change) if !change.concerns(self.tenant) => continue,
                    Ok(_) | Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return None,
                },
                _ = tokio::time::sleep(until_end + std::time::Duration::from_millis(10)) => {}
            }
            match read(&self.state, &self.viewer, self.tenant, &self.feature).await {
                Ok(usage) if self.last.as_ref() == Some(&usage) => continue,
                Ok(usage) => {
                    self.last = Some(usage.clone());
                    return Some(Ok(usage.into()));
                }
                Err(e) => {
                    // Refused (a removed member, a revoked key): say why, then end.
                    self.done = true;
                    return Some(Err(e.extend()));
                }
            }
        }
    }
}

/// The tenant's usage of `feature` now, as the viewer may see it.
async fn read(
    state: &AppState,
    viewer: &Viewer,
    tenant: uuid::Uuid,
    feature: &str,
) -> Result<FeatureUsage, AppError> {
    let now = state.clock.now();
    let usage = credits::usage(
        &state.db,
        viewer,
        tenant,
        feature,
        now,
        ApiScope::CreditsRead,
    );
    usage.await?.ok_or(AppError::NotFound("feature"))
}
