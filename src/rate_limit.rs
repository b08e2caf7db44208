//! Rate limits (governor's keyed GCRA limiters), in this process: `signIn` and `signUp` per
//! client address (against password guessing and account probing), and every request per
//! signed-in user (anonymous ones per address). With N replicas a client gets N times the
//! rate: put a shared limiter in front (the load balancer) if that matters.

use std::{net::IpAddr, num::NonZeroU32, sync::Arc, time::Duration};

use governor::{
    DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter,
    clock::{Clock, DefaultClock},
};

use crate::{config::RateLimitSettings, error::AppError};

/// Who a request-level limit counts against.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub enum Client {
    User(uuid::Uuid),
    Address(IpAddr),
}

pub struct RateLimits {
    auth: Option<DefaultKeyedRateLimiter<IpAddr>>,
    /// All addresses' sign-ins together: one client with many addresses (a botnet, an IPv6
    /// block) gets no more than this.
    auth_global: Option<DefaultDirectRateLimiter>,
    requests: Option<DefaultKeyedRateLimiter<Client>>,
}

impl RateLimits {
    pub fn new(settings: &RateLimitSettings) -> Arc<Self> {
        let enabled = |n: u32| NonZeroU32::new(n).filter(|_| settings.enabled);
        let auth =
            enabled(settings.auth_per_minute).map(|n| RateLimiter::keyed(Quota::per_minute(n)));
        let requests = enabled(settings.requests_per_second).map(|n| {
            let burst = NonZeroU32::new(settings.burst).unwrap_or(n);
            RateLimiter::keyed(Quota::per_second(n).allow_burst(burst))
        });
        let auth_global = enabled(settings.auth_global_per_second)
            .map(|n| RateLimiter::direct(Quota::per_second(n)));
        Arc::new(RateLimits {
            auth,
            auth_global,
            requests,
        })
    }

    /// One `signIn`/`signUp` attempt from `address`: within its address's budget, then
    /// within everyone's.
    pub fn check_auth(&self, address: IpAddr) -> Result<(), AppError> {
        if let Some(limiter) = &self.auth {
            verdict(limiter.check_key(&address))?;
        }
        match &self.auth_global {
            Some(limiter) => verdict(limiter.check()),
            None => Ok(()),
        }
    }

    /// One request of `client`.
    pub fn check_request(&self, client: &Client) -> Result<(), AppError> {
        match &self.requests {
            Some(limiter) => verdict(limiter.check_key(client)),
            None => Ok(()),
        }
    }

    /// Forgets clients whose limits have fully recovered, every minute (bounded memory).
    pub fn spawn_cleanup(self: &Arc<Self>) {
        let limits = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(60)).await;
                let Some(limits) = limits.upgrade() else {
                    return;
                };
                if let Some(l) = &limits.auth {
                    l.retain_recent();
                }
                if let Some(l) = &limits.requests {
                    l.retain_recent();
                }
            }
        });
    }
}

fn verdict(
    outcome: Result<(), governor::NotUntil<<DefaultClock as Clock>::Instant>>,
) -> Result<(), AppError> {
    outcome.map_err(|not_until| {
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        AppError::RateLimited {
            retry_after: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
        }
    })
}
