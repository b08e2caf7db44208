//! Threshold alerts: a tenant hears *before* it runs out. A rule — `PERCENT_USED` of what the
//! period offers (the allowance, the grants drawn in the period and the grants still
//! spendable), or `REMAINING_BELOW` an absolute number of credits — fires when it starts to
//! hold, and resolves when a refund, a grant, a plan change or a released reservation makes it
//! stop holding. Beside the rules, `DEPLETED` (nothing available) is always watched, and
//! `LIMIT_REACHED` records the period's first refused spend.
//!
//! What fired is a `credit_alert` row per tenant, feature, period and rule key: its unique key
//! makes an alert fire once however many spends or replicas race to it; a resolved alert fires
//! again if its rule holds again, and a new period starts with no rows, so every rule re-arms.
//! The row and its webhook event are written in the transaction of the change that made them.
//!
//! A spend reads nothing to check its rules: `reconcile` keeps on the period's counter row the
//! consumption at which the next rule would start to hold (`alert_at`, see `next_alert_at`),
//! and the guard's counter upsert returns it. Only a spend that reaches it (or finds it unknown:
//! a new period, new rules) runs `reconcile`, inside the same transaction. Every other change of
//! a balance runs `reconcile` itself.
//!
//! The tenant's own rules replace the platform's (config `alerts.default_rules`, kept under the
//! nil tenant and feature `*` by `sync_defaults` at start-up) once the tenant has set any —
//! even none (`credit_alert_setting`).

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use entity::tenant_user::Role;
use sea_orm::{ColumnType, DbErr, prelude::*};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{
    balance::{self, Balance},
    feed,
    limit::plan_sql,
    usage::feature_value,
};
use crate::{
    auth::{self, ApiScope, Viewer},
    config::AlertRuleConfig,
    db::{Database, PerBackend, Shape, Tx},
    error::AppError,
    webhooks::{self, NewEvent},
};

/// The tenant the platform's default rules are kept under, and the feature they apply to.
const DEFAULTS_TENANT: Uuid = Uuid::nil();
const ANY_FEATURE: &str = "*";
/// The most rules one tenant may set for one feature.
pub const MAX_RULES: usize = 20;

/// What an alert watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AlertKind {
    /// At least `threshold` % of what the period offers is used.
    PercentUsed,
    /// Fewer than `threshold` credits are available.
    RemainingBelow,
    /// Nothing is available (always watched).
    Depleted,
    /// A spend was refused for want of credits (the period's first refusal).
    LimitReached,
}

impl AlertKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::PercentUsed => "PERCENT_USED",
            AlertKind::RemainingBelow => "REMAINING_BELOW",
            AlertKind::Depleted => "DEPLETED",
            AlertKind::LimitReached => "LIMIT_REACHED",
        }
    }

    fn parse(value: &str) -> Result<Self, DbErr> {
        [
            AlertKind::PercentUsed,
            AlertKind::RemainingBelow,
            AlertKind::Depleted,
            AlertKind::LimitReached,
        ]
        .into_iter()
        .find(|k| k.as_str() == value)
        .ok_or_else(|| DbErr::Type(format!("unknown alert kind {value:?}")))
    }
}

/// One alert rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub kind: AlertKind,
    /// A percentage (1–100) for `PERCENT_USED`, credits for `REMAINING_BELOW`.
    pub threshold: i64,
    /// Send `credits.threshold_resolved` when it stops holding.
    #[serde(default)]
    pub notify_resolved: bool,
}

/// Watched for every tenant and feature, whatever the rules.
const DEPLETED: Rule = Rule {
    kind: AlertKind::Depleted,
    threshold: 0,
    notify_resolved: false,
};

impl Rule {
    /// What makes its alert unique within a tenant's feature and period: rules with the same
    /// kind and threshold are the same rule, whoever set them.
    pub fn key(&self) -> String {
        match self.kind {
            AlertKind::PercentUsed | AlertKind::RemainingBelow => {
                format!("{}:{}", self.kind.as_str(), self.threshold)
            }
            kind => kind.as_str().to_owned(),
        }
    }

    /// `BAD_INPUT` unless a rule one may set.
    pub fn check(&self) -> Result<(), String> {
        match self.kind {
            AlertKind::PercentUsed if !(1..=100).contains(&self.threshold) => {
                Err("a PERCENT_USED threshold is a percentage from 1 to 100".into())
            }
            AlertKind::RemainingBelow
                if !(1..=super::grants::MAX_AMOUNT).contains(&self.threshold) =>
            {
                Err(format!(
                    "a REMAINING_BELOW threshold is from 1 to {} credits",
                    super::grants::MAX_AMOUNT
                ))
            }
            AlertKind::Depleted | AlertKind::LimitReached => Err(format!(
                "{} is always watched and cannot be set as a rule",
                self.kind.as_str()
            )),
            _ => Ok(()),
        }
    }

    /// Whether it holds for `balance` (never for an unlimited feature or one not included).
    pub fn holds(&self, balance: &Balance) -> bool {
        let (Some(offered), Some(available)) = (balance.offered(), balance.available()) else {
            return false;
        };
        match self.kind {
            // Exactly, not by the rounded percentage: consumed × 100 ≥ threshold × offered.
            AlertKind::PercentUsed => {
                balance.consumed() * 100 >= i128::from(self.threshold) * offered
            }
            AlertKind::RemainingBelow => available < self.threshold,
            AlertKind::Depleted => available <= 0,
            AlertKind::LimitReached => false,
        }
    }
}

/// `rules` as one may set them: each checked, none twice (the error names `name[i]`).
fn check_all(rules: &[Rule], name: &str) -> Result<(), String> {
    for (i, rule) in rules.iter().enumerate() {
        rule.check().map_err(|e| format!("{name}[{i}]: {e}"))?;
        if rules[..i].iter().any(|r| r.key() == rule.key()) {
            return Err(format!("{name}[{i}]: the same rule twice"));
        }
    }
    Ok(())
}

/// The platform's rules, as config gives them (`alerts.default_rules`), checked: the error
/// names the key.
pub fn default_rules(config: &[AlertRuleConfig]) -> Result<Vec<Rule>, String> {
    let rules = config
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let kind = match c.kind.as_str() {
                "PERCENT_USED" => AlertKind::PercentUsed,
                "REMAINING_BELOW" => AlertKind::RemainingBelow,
                other => {
                    return Err(format!(
                        "alerts.default_rules[{i}].kind: {other:?} is not PERCENT_USED or REMAINING_BELOW"
                    ));
                }
            };
            Ok(Rule {
                kind,
                threshold: c.threshold,
                notify_resolved: c.notify_resolved,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    check_all(&rules, "alerts.default_rules")?;
    Ok(rules)
}

/// The rules that apply to `:tenant`'s `:feature`: its own once it set any, else the
/// platform's.
const RULES_SQL: &str = "SELECT r.rule_key, r.kind, r.threshold, r.notify_resolved \
FROM credit_alert_rule r WHERE r.tenant_id = :tenant AND r.feature = :feature \
UNION ALL SELECT r.rule_key, r.kind, r.threshold, r.notify_resolved \
FROM credit_alert_rule r WHERE r.tenant_id = :defaults AND r.feature = '*' \
AND NOT EXISTS (SELECT 1 FROM credit_alert_setting s WHERE s.tenant_id = :tenant AND s.feature = :feature)";

/// Whether a spend that left its counter row at `used`, `grants_used` must look at its alerts:
/// it reached the row's `alert_at` (the consumption at which the next rule would start to
/// hold), or that is not known yet. In SQL, over the counter row's columns: `PENDING_SQL`.
pub fn pending(used: i64, grants_used: i64, alert_at: Option<i64>) -> bool {
    alert_at.is_none_or(|at| used.saturating_add(grants_used) >= at)
}

/// `pending`, in SQL.
pub(super) const PENDING_SQL: &str = "alert_at IS NULL OR used + grants_used >= alert_at";

/// Spends only add to the consumption (`used + grants_used`) and leave what the period offers
/// (the allowance and the period's grants) as it is, so every rule is a threshold on the
/// consumption until something else changes — and whatever else changes a balance runs
/// `reconcile`, which sets this again. The consumption at which the first rule of `rules`
/// that does not hold now would start to: `None` when none could (an unlimited feature, or
/// every rule holds).
fn next_alert_at(rules: &[Rule], balance: &Balance) -> Option<i64> {
    let (Some(offered), Some(available)) = (balance.offered(), balance.available()) else {
        return None;
    };
    let consumed = balance.consumed();
    let available = i128::from(available);
    rules
        .iter()
        .filter(|rule| !rule.holds(balance))
        .filter_map(|rule| {
            let at = match rule.kind {
                // consumed × 100 ≥ threshold × offered.
                AlertKind::PercentUsed => {
                    (i128::from(rule.threshold) * offered + 99).div_euclid(100)
                }
                // Each credit consumed is one less available.
                AlertKind::RemainingBelow => consumed + available - i128::from(rule.threshold) + 1,
                AlertKind::Depleted => consumed + available,
                AlertKind::LimitReached => return None,
            };
            i64::try_from(at.max(consumed + 1)).ok()
        })
        .min()
}

/// An alert that fired or resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alert {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub feature: String,
    pub period_start: DateTime<Utc>,
    pub rule: Rule,
    pub active: bool,
    pub times_reached: i32,
    pub reached_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub used: i64,
    pub limit: Option<i64>,
    pub available: Option<i64>,
}

static ALERT_SHAPE: LazyLock<Shape> = LazyLock::new(|| {
    Shape::default()
        .with("id", ColumnType::Uuid)
        .with("tenant_id", ColumnType::Uuid)
        .with("feature", ColumnType::Text)
        .with("period_start", ColumnType::TimestampWithTimeZone)
        .with("rule_key", ColumnType::Text)
        .with("kind", ColumnType::Text)
        .with("threshold", ColumnType::BigInteger)
        .with("notify_resolved", ColumnType::Boolean)
        .with("state", ColumnType::Text)
        .with("times_reached", ColumnType::Integer)
        .with("reached_at", ColumnType::TimestampWithTimeZone)
        .with("resolved_at", ColumnType::TimestampWithTimeZone)
        .with("used", ColumnType::BigInteger)
        .with("lim", ColumnType::BigInteger)
        .with("available", ColumnType::BigInteger)
});

fn alert_of(row: &crate::db::Row) -> Result<Alert, DbErr> {
    Ok(Alert {
        id: row.get("id")?,
        tenant_id: row.get("tenant_id")?,
        feature: row.get("feature")?,
        period_start: row.get("period_start")?,
        rule: rule_of(row)?,
        active: row.get::<String>("state")? == "ACTIVE",
        times_reached: row.get("times_reached")?,
        reached_at: row.get("reached_at")?,
        resolved_at: row.get("resolved_at")?,
        used: row.get("used")?,
        limit: row.get("lim")?,
        available: row.get("available")?,
    })
}

static RULE_SHAPE: LazyLock<Shape> = LazyLock::new(|| {
    Shape::default()
        .with("rule_key", ColumnType::Text)
        .with("kind", ColumnType::Text)
        .with("threshold", ColumnType::BigInteger)
        .with("notify_resolved", ColumnType::Boolean)
});

fn rule_of(row: &crate::db::Row) -> Result<Rule, DbErr> {
    Ok(Rule {
        kind: AlertKind::parse(&row.get::<String>("kind")?)?,
        threshold: row.get("threshold")?,
        notify_resolved: row.get("notify_resolved")?,
    })
}

fn value<'a>(
    tenant_id: Uuid,
    feature: &'a str,
    now: DateTime<Utc>,
) -> impl Fn(&str) -> Option<sea_orm::Value> + 'a {
    move |name| match name {
        "defaults" => Some(DEFAULTS_TENANT.into()),
        name => feature_value(name, tenant_id, feature, now),
    }
}

/// The alert event of `alert`: `kind`, its rule and id, and the balance.
fn event(kind: &'static str, alert: &Alert, balance: &Balance) -> NewEvent {
    NewEvent {
        tenant_id: Some(alert.tenant_id),
        kind,
        data: balance::with_balance(
            json!({
                "alertId": alert.id,
                "rule": {
                    "kind": alert.rule.kind.as_str(),
                    "threshold": alert.rule.threshold,
                    "notifyResolved": alert.rule.notify_resolved,
                },
                "timesReached": alert.times_reached,
            }),
            balance,
        ),
    }
}

/// Brings `tenant_id`'s alerts on `feature` in line with its balance, in `tx`'s open
/// transaction: a rule that holds and is not firing fires (`credits.threshold_reached`, or
/// `credits.depleted`), one firing that no longer holds resolves (`credits.threshold_resolved`
/// when its rule asks for it). Callers that change a balance call it after the change; the
/// guard, only when its statement says a rule is pending. Concurrent calls for one tenant
/// agree: firing and resolving are conditional writes on the alert's unique row.
/// Returns how many alerts it changed.
pub async fn reconcile(
    tx: &mut impl Tx,
    tenant_id: Uuid,
    feature: &str,
    now: DateTime<Utc>,
) -> Result<usize, DbErr> {
    let balance = balance::balance(tx, tenant_id, feature, now).await?;
    let backend = tx.backend();
    let value = value(tenant_id, feature, now);
    static RULES: PerBackend = PerBackend::new(|_| RULES_SQL.to_owned());
    let rows = tx
        .rows(&RULES.get(backend).bind(&value)?, &RULE_SHAPE)
        .await?;
    let mut rules = rows.iter().map(rule_of).collect::<Result<Vec<_>, _>>()?;
    rules.push(DEPLETED);
    static FIRING: PerBackend = PerBackend::new(|_| {
        "SELECT * FROM credit_alert WHERE tenant_id = :tenant AND feature = :feature \
         AND state = 'ACTIVE' AND kind <> 'LIMIT_REACHED'"
            .to_owned()
    });
    let rows = tx
        .rows(&FIRING.get(backend).bind(&value)?, &ALERT_SHAPE)
        .await?;
    let firing = rows.iter().map(alert_of).collect::<Result<Vec<_>, _>>()?;
    let mut changed = 0;
    // What fires no longer: its rule stopped holding, was removed, or its period is over.
    for alert in &firing {
        let current = balance.period_start == Some(alert.period_start);
        let rule = rules.iter().find(|r| r.key() == alert.rule.key());
        if current && rule.is_some_and(|r| r.holds(&balance)) {
            continue;
        }
        if let Some(resolved) = resolve(tx, alert, &balance, now).await? {
            changed += 1;
            // Told only when its rule still asks and the period is the same.
            if current && rule.is_some_and(|r| r.notify_resolved) {
                let event = event("credits.threshold_resolved", &resolved, &balance);
                record(tx, tenant_id, &event, now).await?;
            }
        }
    }
    let Some(period_start) = balance.period_start else {
        return Ok(changed);
    };
    // Where the next spends must look again (all that holds fires below).
    static ALERT_AT: PerBackend = PerBackend::new(|_| {
        "UPDATE credit_usage SET alert_at = :at WHERE tenant_id = :tenant AND feature = :feature \
         AND period_start = :period"
            .to_owned()
    });
    let at = next_alert_at(&rules, &balance).unwrap_or(i64::MAX);
    let statement = ALERT_AT.get(backend).bind(|name| match name {
        "at" => Some(at.into()),
        "period" => Some(period_start.into()),
        name => value(name),
    })?;
    tx.run(&statement).await?;
    for rule in rules.iter().filter(|r| r.holds(&balance)) {
        let key = rule.key();
        let is_firing = firing
            .iter()
            .any(|a| a.period_start == period_start && a.rule.key() == key);
        if is_firing {
            continue;
        }
        if let Some(alert) = fire(tx, tenant_id, period_start, rule, &balance, now).await? {
            changed += 1;
            let kind = match rule.kind {
                AlertKind::Depleted => "credits.depleted",
                _ => "credits.threshold_reached",
            };
            record(tx, tenant_id, &event(kind, &alert, &balance), now).await?;
        }
    }
    Ok(changed)
}

const INSERT_ALERT: &str = "INSERT INTO credit_alert (tenant_id, id, feature, period_start, \
rule_key, kind, threshold, notify_resolved, state, times_reached, reached_at, resolved_at, used, \
lim, available) VALUES (:tenant, :id, :feature, :period, :rule_key, :kind, :threshold, \
:notify_resolved, 'ACTIVE', 1, :now, NULL, :used, :lim, :available) \
ON CONFLICT (tenant_id, feature, period_start, rule_key)";

/// Fires `rule`'s alert for the period, unless it fires already (a concurrent change fired
/// it): the alert as it now stands, or `None`.
async fn fire(
    tx: &mut impl Tx,
    tenant_id: Uuid,
    period_start: DateTime<Utc>,
    rule: &Rule,
    balance: &Balance,
    now: DateTime<Utc>,
) -> Result<Option<Alert>, DbErr> {
    static SQL: PerBackend = PerBackend::new(|_| {
        format!(
            "{INSERT_ALERT} DO UPDATE SET state = 'ACTIVE', \
             times_reached = credit_alert.times_reached + 1, reached_at = excluded.reached_at, \
             resolved_at = NULL, notify_resolved = excluded.notify_resolved, \
             used = excluded.used, lim = excluded.lim, available = excluded.available \
             WHERE credit_alert.state = 'RESOLVED' RETURNING *"
        )
    });
    insert(tx, &SQL, tenant_id, period_start, rule, balance, now).await
}

/// The period's `LIMIT_REACHED` alert, unless recorded already.
async fn insert_once(
    tx: &mut impl Tx,
    tenant_id: Uuid,
    period_start: DateTime<Utc>,
    rule: &Rule,
    balance: &Balance,
    now: DateTime<Utc>,
) -> Result<Option<Alert>, DbErr> {
    static SQL: PerBackend = PerBackend::new(|_| format!("{INSERT_ALERT} DO NOTHING RETURNING *"));
    insert(tx, &SQL, tenant_id, period_start, rule, balance, now).await
}

async fn insert(
    tx: &mut impl Tx,
    sql: &PerBackend,
    tenant_id: Uuid,
    period_start: DateTime<Utc>,
    rule: &Rule,
    balance: &Balance,
    now: DateTime<Utc>,
) -> Result<Option<Alert>, DbErr> {
    let key = rule.key();
    let statement = sql.get(tx.backend()).bind(|name| {
        Some(match name {
            "tenant" => tenant_id.into(),
            "id" => Uuid::now_v7().into(),
            "feature" => balance.feature.as_str().into(),
            "period" => period_start.into(),
            "rule_key" => key.as_str().into(),
            "kind" => rule.kind.as_str().into(),
            "threshold" => rule.threshold.into(),
            "notify_resolved" => rule.notify_resolved.into(),
            "now" => now.into(),
            "used" => balance.used.into(),
            "lim" => balance.limit.into(),
            "available" => balance.available().into(),
            _ => return None,
        })
    })?;
    let rows = tx.rows(&statement, &ALERT_SHAPE).await?;
    rows.first().map(alert_of).transpose()
}

/// Resolves `alert` unless something resolved it already: it as resolved, or `None`.
async fn resolve(
    tx: &mut impl Tx,
    alert: &Alert,
    balance: &Balance,
    now: DateTime<Utc>,
) -> Result<Option<Alert>, DbErr> {
    static SQL: PerBackend = PerBackend::new(|_| {
        "UPDATE credit_alert SET state = 'RESOLVED', resolved_at = :now, used = :used, \
         lim = :lim, available = :available WHERE tenant_id = :tenant AND id = :id \
         AND state = 'ACTIVE' RETURNING *"
            .to_owned()
    });
    let statement = SQL.get(tx.backend()).bind(|name| {
        Some(match name {
            "tenant" => alert.tenant_id.into(),
            "id" => alert.id.into(),
            "now" => now.into(),
            "used" => balance.used.into(),
            "lim" => balance.limit.into(),
            "available" => balance.available().into(),
            _ => return None,
        })
    })?;
    let rows = tx.rows(&statement, &ALERT_SHAPE).await?;
    rows.first().map(alert_of).transpose()
}

/// Records alert event `event` of `tenant_id` under the tenant's next number (`feed`): the
/// alert events `creditEvents` carries are numbered with the ledger.
async fn record(
    tx: &mut impl Tx,
    tenant_id: Uuid,
    event: &NewEvent,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    let seq = feed::next(tx, tenant_id).await?;
    webhooks::record_numbered(tx, event, now, seq).await?;
    Ok(())
}

/// Records the period's first refused spend of `feature` (`credits.limit_reached`), in `tx`'s
/// open transaction; `false` when the period had one already. `required` and `credit_type`
/// describe the refused spend.
pub async fn limit_reached(
    tx: &mut impl Tx,
    tenant_id: Uuid,
    feature: &str,
    credit_type: &str,
    required: i64,
    now: DateTime<Utc>,
) -> Result<bool, DbErr> {
    const RULE: Rule = Rule {
        kind: AlertKind::LimitReached,
        threshold: 0,
        notify_resolved: false,
    };
    feed::lock(tx, tenant_id).await?;
    let balance = balance::balance(tx, tenant_id, feature, now).await?;
    let Some(period_start) = balance.period_start else {
        return Ok(false);
    };
    let Some(alert) = insert_once(tx, tenant_id, period_start, &RULE, &balance, now).await? else {
        return Ok(false);
    };
    let mut event = event("credits.limit_reached", &alert, &balance);
    if let serde_json::Value::Object(data) = &mut event.data {
        data.insert("creditType".into(), json!(credit_type));
        data.insert("required".into(), json!(required));
    }
    record(tx, tenant_id, &event, now).await?;
    Ok(true)
}

/// Every feature of `tenant_id` that can alert after its plan changed: its plan's features
/// and those with alerts firing; each reconciled.
pub async fn reconcile_plan(
    tx: &mut impl Tx,
    tenant_id: Uuid,
    now: DateTime<Utc>,
) -> Result<usize, DbErr> {
    static SQL: PerBackend = PerBackend::new(|_| {
        "SELECT pf.name AS feature FROM tenant_subscription ts \
         JOIN plan_feature pf ON pf.plan_id = ts.plan_id WHERE ts.tenant_id = :tenant \
         UNION SELECT a.feature FROM credit_alert a WHERE a.tenant_id = :tenant \
         AND a.state = 'ACTIVE'"
            .to_owned()
    });
    static SHAPE: LazyLock<Shape> =
        LazyLock::new(|| Shape::default().with("feature", ColumnType::Text));
    feed::lock(tx, tenant_id).await?;
    let statement = SQL
        .get(tx.backend())
        .bind(|name| (name == "tenant").then(|| tenant_id.into()))?;
    let features = tx
        .rows(&statement, &SHAPE)
        .await?
        .iter()
        .map(|row| row.get::<String>("feature"))
        .collect::<Result<Vec<_>, _>>()?;
    let mut changed = 0;
    for feature in features {
        changed += reconcile(tx, tenant_id, &feature, now).await?;
    }
    Ok(changed)
}

/// Keeps config's `alerts.default_rules` as the platform's rules (at start-up).
/// When they are not the ones kept already, every counter's `alert_at` is forgotten: the next
/// spend of each period looks at its alerts again.
pub async fn sync_defaults(db: &Database, rules: &[Rule]) -> Result<(), DbErr> {
    static KEPT: PerBackend = PerBackend::new(|_| {
        "SELECT rule_key FROM credit_alert_rule WHERE tenant_id = :tenant AND feature = :feature"
            .to_owned()
    });
    static FORGET: PerBackend =
        PerBackend::new(|_| "UPDATE credit_usage SET alert_at = NULL".to_owned());
    static SHAPE: LazyLock<Shape> =
        LazyLock::new(|| Shape::default().with("rule_key", ColumnType::Text));
    let txn = db.begin_write().await?;
    let mut tx = &txn;
    let now = Utc::now();
    let value = value(DEFAULTS_TENANT, ANY_FEATURE, now);
    let kept = tx
        .rows(&KEPT.get(db.backend()).bind(&value)?, &SHAPE)
        .await?;
    let mut kept = kept
        .iter()
        .map(|row| row.get::<String>("rule_key"))
        .collect::<Result<Vec<_>, _>>()?;
    let mut wanted: Vec<String> = rules.iter().map(Rule::key).collect();
    kept.sort();
    wanted.sort();
    if kept != wanted {
        tx.run(&FORGET.get(db.backend()).bind(|_| None)?).await?;
    }
    write_rules(&mut tx, DEFAULTS_TENANT, ANY_FEATURE, rules, now).await?;
    txn.commit().await
}

/// Replaces the rules of `tenant_id`'s `feature` with `rules`.
async fn write_rules(
    tx: &mut impl Tx,
    tenant_id: Uuid,
    feature: &str,
    rules: &[Rule],
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    static DELETE: PerBackend = PerBackend::new(|_| {
        "DELETE FROM credit_alert_rule WHERE tenant_id = :tenant AND feature = :feature".to_owned()
    });
    static INSERT: PerBackend = PerBackend::new(|_| {
        "INSERT INTO credit_alert_rule (tenant_id, feature, rule_key, kind, threshold, \
         notify_resolved, created_at) VALUES (:tenant, :feature, :rule_key, :kind, :threshold, \
         :notify_resolved, :now)"
            .to_owned()
    });
    let backend = tx.backend();
    let value = value(tenant_id, feature, now);
    tx.run(&DELETE.get(backend).bind(&value)?).await?;
    for rule in rules {
        let key = rule.key();
        let statement = INSERT.get(backend).bind(|name| match name {
            "rule_key" => Some(key.as_str().into()),
            "kind" => Some(rule.kind.as_str().into()),
            "threshold" => Some(rule.threshold.into()),
            "notify_resolved" => Some(rule.notify_resolved.into()),
            name => value(name),
        })?;
        tx.run(&statement).await?;
    }
    Ok(())
}

/// Who may set a tenant's rules: its OWNER or ADMIN, or a key with `WEBHOOKS_WRITE` (a tenant
/// key for its own tenant).
async fn authorize_write(db: &Database, viewer: &Viewer, tenant_id: Uuid) -> Result<(), AppError> {
    let key = auth::api_keys::reaching(db, viewer, tenant_id, ApiScope::WebhooksWrite, "tenant");
    if key.await?.is_some() {
        return tenant_exists(db, tenant_id).await;
    }
    match auth::require_member(db, viewer, tenant_id).await? {
        Role::Owner | Role::Admin => Ok(()),
        Role::Member => Err(AppError::Forbidden),
    }
}

/// Who may read a tenant's rules, alerts and events: a member, or a key with `CREDITS_READ`.
pub(crate) async fn authorize_read(
    db: &Database,
    viewer: &Viewer,
    tenant_id: Uuid,
) -> Result<(), AppError> {
    let key = auth::api_keys::reaching(db, viewer, tenant_id, ApiScope::CreditsRead, "tenant");
    if key.await?.is_some() {
        return tenant_exists(db, tenant_id).await;
    }
    auth::require_member(db, viewer, tenant_id)
        .await
        .map(|_| ())
}

/// `NOT_FOUND` unless the tenant exists (a platform key names any id).
async fn tenant_exists(db: &Database, tenant_id: Uuid) -> Result<(), AppError> {
    entity::tenant::Entity::find_by_id(tenant_id)
        .one(&db.read)
        .await?
        .map(|_| ())
        .ok_or(AppError::NotFound("tenant"))
}

/// A tenant's rules for a feature, and whether they are the platform's.
pub struct Rules {
    pub feature: String,
    pub rules: Vec<Rule>,
    pub is_default: bool,
}

/// The rules that apply to `tenant_id`'s `feature`.
pub async fn rules(
    db: &Database,
    viewer: &Viewer,
    tenant_id: Uuid,
    feature: &str,
) -> Result<Rules, AppError> {
    authorize_read(db, viewer, tenant_id).await?;
    read_rules(db, tenant_id, feature).await
}

async fn read_rules(db: &Database, tenant_id: Uuid, feature: &str) -> Result<Rules, AppError> {
    static SQL: PerBackend = PerBackend::new(|_| {
        format!("SELECT x.* FROM ({RULES_SQL}) x ORDER BY x.kind, x.threshold")
    });
    static OWN: PerBackend = PerBackend::new(|_| {
        "SELECT 1 AS own FROM credit_alert_setting s WHERE s.tenant_id = :tenant \
         AND s.feature = :feature"
            .to_owned()
    });
    let value = value(tenant_id, feature, Utc::now());
    let rows = db
        .query(&SQL.get(db.backend()).bind(&value)?, &RULE_SHAPE)
        .await?;
    let rules = rows.iter().map(rule_of).collect::<Result<Vec<_>, _>>()?;
    let own = !db
        .query(&OWN.get(db.backend()).bind(&value)?, &RULE_SHAPE)
        .await?
        .is_empty();
    Ok(Rules {
        feature: feature.to_owned(),
        rules,
        is_default: !own,
    })
}

/// Sets `tenant_id`'s own rules for `feature` (`None`: back to the platform's), and brings
/// its alerts in line with them at once.
pub async fn set_rules(
    db: &Database,
    viewer: &Viewer,
    tenant_id: Uuid,
    feature: &str,
    rules: Option<Vec<Rule>>,
    now: DateTime<Utc>,
) -> Result<Rules, AppError> {
    if feature.is_empty() || feature.len() > 255 || feature == ANY_FEATURE {
        return Err(AppError::bad_input("feature must be 1 to 255 characters"));
    }
    if let Some(rules) = &rules {
        if rules.len() > MAX_RULES {
            return Err(AppError::bad_input(format!(
                "at most {MAX_RULES} rules per feature"
            )));
        }
        check_all(rules, "rules").map_err(AppError::bad_input)?;
    }
    authorize_write(db, viewer, tenant_id).await?;
    static OWN: PerBackend = PerBackend::new(|_| {
        "INSERT INTO credit_alert_setting (tenant_id, feature, updated_at) \
         VALUES (:tenant, :feature, :now) \
         ON CONFLICT (tenant_id, feature) DO UPDATE SET updated_at = excluded.updated_at"
            .to_owned()
    });
    static DEFAULT: PerBackend = PerBackend::new(|_| {
        "DELETE FROM credit_alert_setting WHERE tenant_id = :tenant AND feature = :feature"
            .to_owned()
    });
    let txn = db.begin_write().await?;
    let outcome = async {
        let mut tx = &txn;
        feed::lock(&mut tx, tenant_id).await?;
        let value = value(tenant_id, feature, now);
        let backend = db.backend();
        match &rules {
            Some(rules) => {
                tx.run(&OWN.get(backend).bind(&value)?).await?;
                write_rules(&mut tx, tenant_id, feature, rules, now).await?;
            }
            None => {
                tx.run(&DEFAULT.get(backend).bind(&value)?).await?;
                write_rules(&mut tx, tenant_id, feature, &[], now).await?;
            }
        }
        reconcile(&mut tx, tenant_id, feature, now).await
    }
    .await;
    match outcome {
        Ok(_) => txn.commit().await?,
        Err(e) => {
            let _ = txn.rollback().await;
            return Err(e.into());
        }
    }
    read_rules(db, tenant_id, feature).await
}

/// The alerts of `tenant_id`'s `feature` in the period starting at `period_start` (default:
/// the period that counts now), in the order they first fired.
pub async fn alerts(
    db: &Database,
    viewer: &Viewer,
    tenant_id: Uuid,
    feature: &str,
    period_start: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<Vec<Alert>, AppError> {
    authorize_read(db, viewer, tenant_id).await?;
    static SQL: PerBackend = PerBackend::new(|backend| {
        format!(
            "SELECT a.* FROM credit_alert a WHERE a.tenant_id = :tenant AND a.feature = :feature \
             AND a.period_start = COALESCE(:period, (SELECT p.period_start FROM ({}) p)) \
             ORDER BY a.id",
            plan_sql(backend)
        )
    });
    let value = value(tenant_id, feature, now);
    let statement = SQL.get(db.backend()).bind(|name| match name {
        "period" => Some(period_start.into()),
        name => value(name),
    })?;
    let rows = db.query(&statement, &ALERT_SHAPE).await?;
    Ok(rows.iter().map(alert_of).collect::<Result<Vec<_>, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn balance(used: i64, grants_used: i64, limit: Option<i64>, grants_remaining: i64) -> Balance {
        Balance {
            feature: "credits".into(),
            period_start: Some(Utc::now()),
            used,
            grants_used,
            limit,
            grants_remaining,
        }
    }

    fn rule(kind: AlertKind, threshold: i64) -> Rule {
        Rule {
            kind,
            threshold,
            notify_resolved: false,
        }
    }

    #[test]
    fn percent_used_is_of_the_allowance_and_the_period_s_grants() {
        let eighty = rule(AlertKind::PercentUsed, 80);
        assert!(!eighty.holds(&balance(7, 0, Some(10), 0)));
        assert!(eighty.holds(&balance(8, 0, Some(10), 0)));
        // A grant of 10 beside: 8 of 20 is 40 %.
        assert!(!eighty.holds(&balance(8, 0, Some(10), 10)));
        // The allowance spent and 6 of the grant's 10: 16 of 20.
        assert!(eighty.holds(&balance(10, 6, Some(10), 4)));
        assert!(!eighty.holds(&balance(10, 5, Some(10), 5)));
        // Unlimited and not-included features never alert.
        assert!(!eighty.holds(&balance(1_000, 0, None, 0)));
        let mut frozen = balance(10, 0, Some(10), 0);
        frozen.period_start = None;
        assert!(!DEPLETED.holds(&frozen));
    }

    #[test]
    fn remaining_below_and_depleted_count_what_is_available() {
        let below = rule(AlertKind::RemainingBelow, 3);
        assert!(!below.holds(&balance(7, 0, Some(10), 0)));
        assert!(below.holds(&balance(8, 0, Some(10), 0)));
        assert!(!below.holds(&balance(8, 0, Some(10), 1)));
        assert!(!DEPLETED.holds(&balance(9, 0, Some(10), 0)));
        assert!(DEPLETED.holds(&balance(10, 0, Some(10), 0)));
        assert!(!DEPLETED.holds(&balance(10, 0, Some(10), 2)));
    }

    #[test]
    fn the_next_alert_is_at_the_consumption_where_the_first_rule_not_holding_would() {
        let rules = [
            rule(AlertKind::PercentUsed, 80),
            rule(AlertKind::RemainingBelow, 3),
            DEPLETED,
        ];
        // 10 offered, 2 used: 80 % at 8, fewer than 3 left at 8, depleted at 10.
        assert_eq!(next_alert_at(&rules, &balance(2, 0, Some(10), 0)), Some(8));
        // A grant of 10 beside: 20 offered — 80 % at 16, below 3 at 18, depleted at 20.
        assert_eq!(
            next_alert_at(&rules, &balance(2, 0, Some(10), 10)),
            Some(16)
        );
        // Past 80 % and below 3 (those hold): depleted next.
        assert_eq!(next_alert_at(&rules, &balance(9, 0, Some(10), 0)), Some(10));
        // Everything holds, or nothing can: none.
        assert_eq!(next_alert_at(&rules, &balance(10, 0, Some(10), 0)), None);
        assert_eq!(next_alert_at(&rules, &balance(10, 0, None, 0)), None);
        // An uneven percentage rounds up: 80 % of 7 is 5.6, so at 6.
        assert_eq!(
            next_alert_at(&rules[..1], &balance(0, 0, Some(7), 0)),
            Some(6)
        );
        // At each threshold the rule holds, one below it does not.
        for (used, grants) in [(2, 0), (0, 10), (5, 3)] {
            let b = balance(used, 0, Some(10), grants);
            let at = next_alert_at(&rules, &b).unwrap();
            let after = balance(
                at.min(10),
                (at - 10).max(0),
                Some(10),
                grants - (at - 10).max(0),
            );
            let before = balance(
                (at - 1).min(10),
                (at - 11).max(0),
                Some(10),
                grants - (at - 11).max(0),
            );
            assert!(
                rules.iter().any(|r| r.holds(&after)),
                "{used} {grants} at {at}"
            );
            assert!(
                !rules.iter().any(|r| r.holds(&before) && !r.holds(&b)),
                "{used} {grants} at {at}"
            );
        }
    }

    #[test]
    fn rules_are_checked_and_keyed_by_kind_and_threshold() {
        assert!(rule(AlertKind::PercentUsed, 0).check().is_err());
        assert!(rule(AlertKind::PercentUsed, 101).check().is_err());
        assert!(rule(AlertKind::RemainingBelow, 0).check().is_err());
        assert!(DEPLETED.check().is_err());
        assert_eq!(rule(AlertKind::PercentUsed, 80).key(), "PERCENT_USED:80");
        let config = |kind: &str, threshold| AlertRuleConfig {
            kind: kind.into(),
            threshold,
            notify_resolved: false,
        };
        let twice = [config("PERCENT_USED", 80), config("PERCENT_USED", 80)];
        assert!(
            default_rules(&twice)
                .unwrap_err()
                .contains("default_rules[1]")
        );
        let unknown = default_rules(&[config("DEPLETED", 0)]).unwrap_err();
        assert!(unknown.contains("default_rules[0].kind"), "{unknown}");
        assert_eq!(
            default_rules(&[config("REMAINING_BELOW", 5)]),
            Ok(vec![rule(AlertKind::RemainingBelow, 5)])
        );
    }
}
