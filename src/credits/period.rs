//! Counting periods, all in UTC: the subscription's current period when Stripe gave one,
//! else the calendar month; lifetime for `MAX` limits.

use chrono::{DateTime, Datelike, Months, TimeZone, Utc};

use super::FeatureLimitType;

/// A counting period: `[start, end)`; `end` is `None` for lifetime limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Period {
    pub start: DateTime<Utc>,
    pub end: Option<DateTime<Utc>>,
}

impl Period {
    /// The key of lifetime (`MAX`) counters.
    pub fn lifetime() -> Self {
        Period {
            start: DateTime::<Utc>::UNIX_EPOCH,
            end: None,
        }
    }

    /// The UTC calendar month holding `now`: `[1st 00:00, next 1st 00:00)`.
    pub fn calendar_month(now: DateTime<Utc>) -> Self {
        let start = Utc
            .with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
            .single()
            .unwrap_or(now);
        Period {
            start,
            end: start.checked_add_months(Months::new(1)),
        }
    }

    /// The period usage of a `kind` feature counts in at `now`, given the subscription's
    /// current period when Stripe gave one.
    pub(super) fn current(
        kind: FeatureLimitType,
        subscription_period: (Option<DateTime<Utc>>, Option<DateTime<Utc>>),
        now: DateTime<Utc>,
    ) -> Self {
        if kind == FeatureLimitType::Max {
            return Period::lifetime();
        }
        match subscription_period {
            (Some(start), Some(end)) if start <= now && now < end => Period {
                start,
                end: Some(end),
            },
            _ => Period::calendar_month(now),
        }
    }
}
