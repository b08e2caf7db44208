//! THE DOMAIN: the credits guard and what it reads and writes — credit types' spends, the
//! plan-limit rule, usage and the ledger. Its invariants (DESIGN.md), which every change here
//! must keep:
//!
//! 1. Atomic: a spend runs inside one transaction, together with the insert of the row it
//!    pays for; the plan is read and the counter incremented by one conditional upsert
//!    (`INSERT … ON CONFLICT DO UPDATE SET used = used + cost WHERE used + cost <= limit`),
//!    never a read followed by a write (`guard`).
//! 2. Never overspend: an action is allowed only if its *whole* cost fits (`limit::fits`); the
//!    database row lock, not anything in this process, decides between concurrent spenders.
//! 3. Ledger = counters = resources: each spend adds one ledger row and the same amount to the
//!    counter row of its period (`credit.period_start` names that row); `audit` checks it.
//! 4. Fail closed: no subscription, no feature or `NOT_INCLUDED` → `FEATURE_NOT_INCLUDED`;
//!    `INCLUDED` and `UNLIMITED` are allowed and still recorded.
//! 5. Periods in UTC (`limit::Period`): `MONTHLY` counts within the subscription's current
//!    period when known, else the calendar month; `MAX` is lifetime.
//! 7. One balance, known provenance: a spend the allowance alone cannot pay takes the rest
//!    from the tenant's spendable grants in burn order, only if the whole cost fits them all,
//!    and records what each grant paid (`grants`). Expired grants are never spendable.
//!
//! Nothing here names what the credits pay for: a guarded resource describes its row
//! (`PaidTable`, `Spend`) and hands the spend to the `Writer`.

pub mod alerts;
mod audit;
pub mod balance;
pub mod feed;
pub mod grants;
mod guard;
mod limit;
pub mod refunds;
mod usage;
pub mod usage_events;
mod writer;

pub use audit::{Report, verify};
pub use entity::plan_feature::FeatureLimitType;
pub use guard::{Actor, IdempotencyKey, Paid, PaidTable, Spend, Spent, Statements};
pub use limit::{Period, ceiling, fits};
pub use usage::{FeatureUsage, HistoryFilter, history, ledger_row, usage};
pub use writer::Writer;

/// The plan feature a credit type spends unless it names another (`credit_types[].feature`).
pub use crate::config::CREDITS_FEATURE;
