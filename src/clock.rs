//! The time the credits domain runs on: the system clock, or — for tests of boundaries such
//! as a grant's exact expiry — a clock that stands where it is set.

use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, SubsecRound, Utc};

/// `Clock::default()` is the system clock.
#[derive(Clone, Debug, Default)]
pub struct Clock(Option<Arc<Mutex<DateTime<Utc>>>>);

impl Clock {
    /// A clock that reads `at` until it is set again.
    pub fn manual(at: DateTime<Utc>) -> Self {
        Clock(Some(Arc::new(Mutex::new(at))))
    }

    /// Now, in microseconds (what PostgreSQL keeps, so a time returned is the time stored).
    pub fn now(&self) -> DateTime<Utc> {
        match &self.0 {
            Some(at) => *at.lock().unwrap_or_else(PoisonError::into_inner),
            None => Utc::now(),
        }
        .trunc_subsecs(6)
    }

    /// Moves a manual clock to `at`; the system clock cannot be set.
    pub fn set(&self, at: DateTime<Utc>) {
        if let Some(clock) = &self.0 {
            *clock.lock().unwrap_or_else(PoisonError::into_inner) = at;
        }
    }
}
