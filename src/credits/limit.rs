//! The plan-limit rule, once: how much of a feature a plan allows (`ceiling`, `fits`) and the
//! period a use counts in (`Period::current`), each in Rust and, beside it, in SQL — the guard
//! decides in SQL, `planFeatureUsage` and refusals explain in Rust, and the unit tests below
//! hold the two to the same answers.
//!
//! Periods are in UTC: the subscription's current period when Stripe gave one — rolled
//! forward by its own length once it has ended, until the renewal arrives (Stripe may retry a
//! webhook for days; a fresh calendar month would grant the budget twice) — else the calendar
//! month; lifetime for `MAX` limits.

use chrono::{DateTime, Datelike, Months, TimeZone, Utc};
use sea_orm::DatabaseBackend;

use super::FeatureLimitType;

/// The most a period may use of a feature limited by `kind` and `value`: `None` when the plan
/// does not include it (nothing may be used); `i64::MAX` when it is included without a cap.
pub fn ceiling(kind: FeatureLimitType, value: i64) -> Option<i64> {
    match kind {
        FeatureLimitType::Monthly | FeatureLimitType::Max => Some(value),
        FeatureLimitType::Included | FeatureLimitType::Unlimited => Some(i64::MAX),
        FeatureLimitType::NotIncluded => None,
    }
}

/// `ceiling` of plan feature row `pf`, in SQL (NULL refuses every spend).
pub(super) const CEILING_SQL: &str = "CASE WHEN pf.type IN ('MONTHLY', 'MAX') THEN pf.value \
WHEN pf.type IN ('INCLUDED', 'UNLIMITED') THEN 9223372036854775807 END";

/// The rule: a use of `cost` fits when the *whole* of it fits under the ceiling, on top of
/// what the period has `used`. In SQL: `used + :cost <= lim` (see `guard`).
pub fn fits(kind: FeatureLimitType, value: i64, used: i64, cost: i64) -> bool {
    ceiling(kind, value).is_some_and(|ceiling| used.saturating_add(cost) <= ceiling)
}

/// `Period::current`'s start, in SQL, for plan feature `pf` of subscription `ts` at `:now`,
/// given `:month` (the calendar month's start) and `:lifetime`. The rolled-forward start is
/// written exactly as the driver writes a timestamp, so that the renewal's
/// `current_period_start` (Stripe sets it to the old end) names the same counter row.
pub(super) fn period_start_sql(backend: DatabaseBackend) -> String {
    // start + ⌊(now − start) / length⌋ × length, in whole seconds.
    let rolled = match backend {
        DatabaseBackend::Postgres => {
            "to_timestamp(extract(epoch from ts.current_period_start) + \
             floor((extract(epoch from :now) - extract(epoch from ts.current_period_start)) / \
             (extract(epoch from ts.current_period_end) - extract(epoch from ts.current_period_start))) * \
             (extract(epoch from ts.current_period_end) - extract(epoch from ts.current_period_start)))"
        }
        _ => {
            "strftime('%Y-%m-%dT%H:%M:%S+00:00', unixepoch(ts.current_period_start) + \
             (unixepoch(:now) - unixepoch(ts.current_period_start)) / \
             (unixepoch(ts.current_period_end) - unixepoch(ts.current_period_start)) * \
             (unixepoch(ts.current_period_end) - unixepoch(ts.current_period_start)), 'unixepoch')"
        }
    };
    format!(
        "CASE WHEN pf.type = 'MAX' THEN :lifetime \
         WHEN ts.current_period_start <= :now AND :now < ts.current_period_end THEN ts.current_period_start \
         WHEN ts.current_period_start <= :now AND ts.current_period_start < ts.current_period_end THEN {rolled} \
         ELSE :month END"
    )
}

/// The tenant's plan for a feature, as one row of `lim` (its ceiling) and `period_start` (the
/// period a use counts in now); no row when the tenant has no subscription or its plan no
/// such feature. Parameters: `:tenant`, `:feature`, `:now`, `:month`, `:lifetime`.
pub(super) fn plan_sql(backend: DatabaseBackend) -> String {
    format!(
        "SELECT {CEILING_SQL} AS lim, {} AS period_start \
         FROM tenant_subscription ts JOIN plan_feature pf ON pf.plan_id = ts.plan_id \
         WHERE ts.tenant_id = :tenant AND pf.name = :feature",
        period_start_sql(backend)
    )
}

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
    pub fn current(
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

    #[test]
    fn a_spend_fits_only_when_its_whole_cost_fits_under_the_ceiling() {
        use FeatureLimitType::*;
        assert!(fits(Monthly, 10, 8, 2));
        assert!(!fits(Monthly, 10, 9, 2));
        assert!(!fits(Max, 0, 0, 1));
        assert!(fits(Unlimited, 0, i64::MAX - 1, 5));
        assert!(fits(Included, 0, 0, 1));
        assert!(!fits(NotIncluded, 100, 0, 0));
        assert_eq!(ceiling(NotIncluded, 5), None);
    }

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
