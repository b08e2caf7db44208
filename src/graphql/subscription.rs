//! Subscription resolvers: the live balance, over WebSocket (`GET /graphql/ws`).

use std::collections::{BTreeMap, VecDeque};

use async_graphql::{Context, ErrorExtensions, ID, Json, ResultExt, Subscription};
use chrono::{DateTime, Utc};
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
        types::{Credit, CreditEvent, CreditEventType, PlanFeatureUsage, parse_id},
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
    /// and resolved, depleted, limit reached); `types` to choose. Each has a `sequence` (1,
    /// 2, 3, … within the subscription). `after`: an event id seen before (say, before a
    /// reconnect) — the events after it are sent first, and those of the few seconds before
    /// it again (skip ids already handled). Members (and API keys with `CREDITS_READ`); a
    /// member removed meanwhile gets `FORBIDDEN` and the subscription ends.
    async fn credit_events(
        &self,
        ctx: &Context<'_>,
        tenant_id: ID,
        types: Option<Vec<CreditEventType>>,
        after: Option<ID>,
    ) -> async_graphql::Result<impl Stream<Item = async_graphql::Result<CreditEvent>>> {
        let state = state(ctx)?.clone();
        let viewer = viewer(ctx).clone();
        let tenant = parse_id(&tenant_id, "tenantId").extend()?;
        let after = after.map(|a| parse_id(&a, "after")).transpose().extend()?;
        // Listening before the first read: nothing between the two is missed.
        let changes = state.changes.subscribe();
        let now = state.clock.now().max(chrono::Utc::now());
        let mut feed = Feed {
            state,
            viewer,
            tenant,
            types,
            changes,
            since: now - feed::LOOKBACK,
            seen: BTreeMap::new(),
            ready: VecDeque::new(),
            sequence: 0,
            read_now: after.is_some(),
            done: false,
        };
        match after {
            Some(after) => feed.since = feed::made_at(after) - feed::LOOKBACK,
            None => {
                // What is there already is not news: read it once, to skip it.
                feed.read().await.extend()?;
                feed.sequence = 0;
                feed.ready.clear();
            }
        }
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
    /// Read from here on (moves to the newest event seen, less `feed::LOOKBACK`).
    since: DateTime<Utc>,
    /// What was sent (or found already there at the start), by id: skipped when read again.
    seen: BTreeMap<uuid::Uuid, DateTime<Utc>>,
    ready: VecDeque<CreditEvent>,
    sequence: i32,
    /// Read at once (the first read), before waiting for a change.
    read_now: bool,
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
            if !self.read_now {
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
            self.read_now = false;
            if let Err(e) = self.read().await {
                // Refused (a removed member, a revoked key): say why, then end.
                self.done = true;
                return Some(Err(e.extend()));
            }
        }
    }

    /// Reads what is new since `since`, page by page, into `ready`.
    async fn read(&mut self) -> Result<(), AppError> {
        loop {
            let (events, more) =
                feed::since(&self.state.db, &self.viewer, self.tenant, self.since).await?;
            for event in events {
                let id = event.id();
                if self.seen.contains_key(&id) {
                    continue;
                }
                let at = match &event {
                    FeedEvent::Ledger(c) => c.created_at,
                    FeedEvent::Alert { at, .. } => *at,
                };
                self.seen.insert(id, at);
                let (kind, feature, credit, data) = match event {
                    FeedEvent::Ledger(c) => (
                        CreditEventType::of_movement(&c.movement),
                        Some(c.feature.clone()),
                        Some(Credit::from(*c)),
                        None,
                    ),
                    FeedEvent::Alert { kind, data, .. } => {
                        let Some(kind) = CreditEventType::of_alert(&kind) else {
                            continue;
                        };
                        let feature = data["feature"].as_str().map(str::to_owned);
                        (kind, feature, None, Some(Json(data)))
                    }
                };
                if self.types.as_ref().is_some_and(|t| !t.contains(&kind)) {
                    continue;
                }
                self.sequence += 1;
                self.ready.push_back(CreditEvent {
                    sequence: self.sequence,
                    id: ID(id.to_string()),
                    kind,
                    at,
                    feature,
                    credit,
                    data,
                });
            }
            // Look back from the newest id seen, for rows that commit late; forget what is
            // older than that.
            if let Some((newest, _)) = self.seen.last_key_value() {
                let newest_at = feed::made_at(*newest);
                self.since = self.since.max(newest_at - feed::LOOKBACK);
            }
            let since = self.since;
            self.seen.retain(|id, _| feed::made_at(*id) >= since);
            match more {
                Some(next) => self.since = next,
                None => return Ok(()),
            }
        }
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
