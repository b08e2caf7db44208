//! The Stripe usage event a spend of a metered credit type adds to the outbox, inside the
//! guard's own statement (the reporter in `billing` sends it). Its SQL lives with the guard
//! that writes it.

use sea_orm::prelude::Uuid;

use crate::config::Meter;

/// The usage event of one spend, for the guard's statement: inserted only for a tenant with a
/// Stripe customer, and only when `condition` (SQL) holds. The spend's own parameters are
/// `:tenant`, `:ledger_id`, `:cost` and `:now`; the event's are `spend_event_value`'s.
pub fn spend_event_sql(condition: &str) -> String {
    format!(
        "INSERT INTO usage_event (id, tenant_id, credit_id, unit, event_name, stripe_customer_id, \
         quantity, identifier, status, attempts, next_attempt_at, created_at) \
         SELECT :usage_id, :tenant, :ledger_id, :unit, :event_name, t.stripe_customer_id, :cost, \
         :identifier, 'PENDING', 0, :now, :now FROM tenant t \
         WHERE t.id = :tenant AND t.stripe_customer_id IS NOT NULL AND {condition}"
    )
}

/// The value of the usage event's own parameter `name` in `spend_event_sql`, for event `id`
/// of `meter`; `None` for any other name.
pub fn spend_event_value(name: &str, id: Uuid, meter: &Meter) -> Option<sea_orm::Value> {
    Some(match name {
        "usage_id" => id.into(),
        "unit" => meter.unit.as_str().into(),
        "event_name" => meter.event_name.as_str().into(),
        "identifier" => identifier(id).into(),
        _ => return None,
    })
}

/// The meter-event `identifier` of a usage event: derived from its id alone, so every send of
/// the row — after a crash, by another replica — carries the same one, and Stripe keeps one.
pub fn identifier(usage_event_id: Uuid) -> String {
    format!("tollgate-{usage_event_id}")
}
