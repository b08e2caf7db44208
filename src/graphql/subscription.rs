//! Subscription resolvers: the live balance, over WebSocket (`GET /graphql/ws`).

use async_graphql::{Context, ErrorExtensions, ID, ResultExt, Subscription};
use futures::{Stream, stream};
use tokio::sync::broadcast::error::RecvError;

use crate::{
    auth::{ApiScope, Viewer},
    credits::{self, FeatureUsage},
    error::AppError,
    graphql::{state, types::PlanFeatureUsage, types::parse_id, viewer},
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
