//! Counting periods, all in UTC: the subscription's current period when Stripe gave one —
//! rolled forward by its own length once it has ended, until the renewal arrives (Stripe may
//! retry a webhook for days; a fresh calendar month would grant the budget twice) — else the
//! calendar month; lifetime for `MAX` limits. `credits::PERIOD_START` is the same rule in
//! SQL.

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
            (Some(start), Some(end)) if start <= now && start < end => {
                // Whole seconds, as in SQL: Stripe's periods are whole seconds.
                let length = (end - start).num_seconds().max(1);
                let passed = (now - start).num_seconds() / length;
                let start = start + chrono::Duration::seconds(passed.saturating_mul(length));
                Period {
                    start,
                    end: Some(start + chrono::Duration::seconds(length)),
                }
            }
            _ => Period::calendar_month(now),
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn at(d: u32, h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, d, h, 0, 0).unwrap()
    }

    #[test]
    fn a_stripe_period_counts_while_it_lasts_then_rolls_forward_by_its_length() {
        let stripe = (Some(at(1, 0)), Some(at(11, 0)));
        let monthly = FeatureLimitType::Monthly;
        let inside = Period::current(monthly, stripe, at(5, 0));
        assert_eq!((inside.start, inside.end), (at(1, 0), Some(at(11, 0))));
        // Ended, renewal not yet known: the next 10 days, then the 10 after those.
        let once = Period::current(monthly, stripe, at(11, 0));
        assert_eq!((once.start, once.end), (at(11, 0), Some(at(21, 0))));
        let twice = Period::current(monthly, stripe, at(25, 3));
        assert_eq!((twice.start, twice.end), (at(21, 0), Some(at(31, 0))));
        // Before the period (or without one): the calendar month.
        let early = Period::current(monthly, (Some(at(20, 0)), Some(at(30, 0))), at(5, 0));
        assert_eq!(early.start, at(1, 0));
        assert_eq!(
            Period::current(FeatureLimitType::Max, stripe, at(25, 0)),
            Period::lifetime()
        );
    }
}
