//! The credits guard: one spend, decided and written by the database in one call. The
//! statement reads the tenant's plan (`limit::plan_sql`), adds the cost to the period's
//! counter only if the whole of it fits, and then — only then — appends the ledger row,
//! inserts the row the credits pay for and, for a metered credit type of a tenant with a
//! Stripe customer, the outbox row. The statements are built once per paid table
//! (`Statements`); a spend only binds its values.

use std::collections::HashMap;

use chrono::{DateTime, Duration, SubsecRound, Utc};
use entity::credit::ActorType;
use sea_orm::{DatabaseBackend, prelude::*};

use super::{
    FeatureLimitType, Period, alerts, feed, grants,
    limit::{self, plan_sql},
    usage::{PlanFeatureRow, subscribed_feature},
    usage_events,
};
use crate::{
    auth,
    config::CreditTypeConfig,
    db::{self, Session, Shape, Sql},
    error::{AppError, Shortfall},
    idempotency::{self, Claim, Fingerprint},
};

/// A table whose rows a credit type pays for, as the guarded resource describes it. The first
/// column is the row's id, which the ledger records as the spend's `object_id`.
#[derive(Debug)]
pub struct PaidTable {
    pub credit_type: &'static str,
    pub table: &'static str,
    pub columns: &'static [&'static str],
    /// What must hold for the row to be inserted — SQL over its values `:paid_0`, `:paid_1`,
    /// … (say, that the row it belongs to is not deleted) — checked in the spend's own
    /// statement; when it does not, the spend is refused with `NOT_FOUND` naming `missing`.
    pub requires: Option<(&'static str, &'static str)>,
}

impl PaidTable {
    /// The parameters of its row's values, in `columns`' order: `:paid_0, :paid_1, …`.
    fn values(&self) -> String {
        (0..self.columns.len())
            .map(|i| format!(":paid_{i}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// `model`'s row, its values in `columns`' order: what a `Spend` inserts.
    pub fn row<M: ModelTrait>(&'static self, model: &M) -> Result<Paid, AppError> {
        let values = self
            .columns
            .iter()
            .map(|name| {
                let column = name
                    .parse::<<M::Entity as EntityTrait>::Column>()
                    .map_err(|_| {
                        AppError::Internal(anyhow::anyhow!("{} has no column {name}", self.table))
                    })?;
                Ok(model.get(column))
            })
            .collect::<Result<Vec<_>, AppError>>()?;
        let id = match values.first() {
            Some(sea_orm::Value::Uuid(Some(id))) => *id,
            _ => {
                return Err(AppError::Internal(anyhow::anyhow!(
                    "the first column of {} is not its id",
                    self.table
                )));
            }
        };
        Ok(Paid::Row {
            table: self,
            id,
            values,
        })
    }
}

/// What a spend pays for.
#[derive(Debug)]
pub enum Paid {
    /// A row the guard inserts with the spend: its id is the ledger's object id, and what a
    /// replay returns.
    Row {
        table: &'static PaidTable,
        id: Uuid,
        values: Vec<sea_orm::Value>,
    },
    /// An action of the caller's own (`consumeCredits`): nothing is inserted beside the
    /// ledger row, whose id a replay returns; `object_id` is the caller's reference.
    Action { object_id: Option<String> },
}

impl Paid {
    fn table(&self) -> Option<&'static str> {
        match self {
            Paid::Row { table, .. } => Some(table.table),
            Paid::Action { .. } => None,
        }
    }
}

/// One guarded action's spend, as the caller describes it.
pub struct Spend {
    pub tenant_id: Uuid,
    pub user_id: Option<Uuid>,
    pub credit_type: CreditTypeConfig,
    pub paid: Paid,
    /// Who makes the spend (recorded with the ledger row).
    pub actor: Actor,
    /// The caller's own reference for who acted, when not a Tollgate user.
    pub subject: Option<String>,
    /// The caller's JSON object, recorded with the ledger row.
    pub metadata: Option<serde_json::Value>,
    pub key: Option<IdempotencyKey>,
    /// When the spend is made: the time its plan, period and grants are read at.
    pub at: DateTime<Utc>,
}

/// Who makes a spend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Actor {
    User(Uuid),
    ApiKey(Uuid),
    System,
}

impl Actor {
    pub fn kind(self) -> ActorType {
        match self {
            Actor::User(_) => ActorType::User,
            Actor::ApiKey(_) => ActorType::ApiKey,
            Actor::System => ActorType::System,
        }
    }

    pub fn id(self) -> Option<Uuid> {
        match self {
            Actor::User(id) | Actor::ApiKey(id) => Some(id),
            Actor::System => None,
        }
    }
}

/// Makes a spend idempotent: a repeat of the same request under `value` returns the first
/// result and charges nothing; another request under it is `IDEMPOTENCY_KEY_REUSED`.
pub struct IdempotencyKey {
    pub value: String,
    pub fingerprint: Fingerprint,
    /// How long the key is remembered.
    pub retention: Duration,
}

/// What a spend did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spent {
    /// Charged now, and the row inserted: the ledger row's id and time.
    Charged { ledger_id: Uuid, at: DateTime<Utc> },
    /// An idempotent replay: nothing charged; the first request's paid row (for an action,
    /// its ledger row) is this one.
    Replayed(Uuid),
}

/// The guard's statements for one paid table.
#[derive(Debug)]
enum GuardSql {
    /// One statement: data-modifying CTEs, each feeding the next; `keyed` claims the
    /// idempotency key first and spends only if the claim is new.
    Postgres { plain: Sql, keyed: Sql },
    /// Statements run one after the other on the writer's own thread (no round trip is a
    /// hand-off): the counter upsert, returning its period when it wrote its row, then —
    /// only then — the ledger row in that period (`:period`, numbered `feed::SQLITE_NEXT`),
    /// the paid row and, for a metered type, the outbox row.
    Sqlite {
        spend: Sql,
        ledger: Sql,
        paid: Option<Sql>,
        outbox: Sql,
    },
}

/// The statements of a spend the allowance alone could not pay (`beyond_allowance`), run
/// after `grants::funds` has locked the counter and the grants: the paid row (first, so that a
/// precondition that no longer holds writes nothing), the ledger row in the period the plan
/// names at `:now`, and the outbox row of the allowance's part (`:cost`).
#[derive(Debug)]
struct Slow {
    paid: Option<Sql>,
    ledger: Sql,
    outbox: Sql,
}

/// Every guard statement this process can run, built once at start-up: per paid table, and
/// whether the credit type is metered.
#[derive(Debug)]
pub struct Statements {
    by_table: HashMap<(Option<&'static str>, bool), (GuardSql, Slow)>,
}

impl Statements {
    /// For every table of `tables`, and for actions that insert no row.
    pub fn build(backend: DatabaseBackend, tables: &[&'static PaidTable]) -> Self {
        let by_table = tables
            .iter()
            .map(|paid| Some(*paid))
            .chain([None])
            .flat_map(|paid| {
                [false, true].map(|metered| {
                    (
                        (paid.map(|p| p.table), metered),
                        (build(backend, paid, metered), slow(backend, paid)),
                    )
                })
            })
            .collect();
        Statements { by_table }
    }

    fn get(&self, spend: &Spend) -> Result<&(GuardSql, Slow), AppError> {
        let metered = spend.credit_type.meter.is_some();
        self.by_table
            .get(&(spend.paid.table(), metered))
            .ok_or_else(|| {
                AppError::Internal(anyhow::anyhow!(
                    "no guard statement for table {:?}",
                    spend.paid.table()
                ))
            })
    }
}

/// The counter upsert: adds `:cost` to the period's counter, creating it, only if the whole
/// cost fits the plan's ceiling and `:user` (when given) is a member of the tenant. Its row
/// lock decides between concurrent spenders, on any number of replicas.
fn spend_sql(backend: DatabaseBackend, requires: Option<&str>) -> String {
    let plan = plan_sql(backend);
    let requires = requires
        .map(|sql| format!(" AND {sql}"))
        .unwrap_or_default();
    format!(
        "INSERT INTO credit_usage (tenant_id, feature, period_start, used) \
         SELECT :tenant, :feature, p.period_start, :cost FROM ({plan}) p WHERE :cost <= p.lim \
         AND (:user IS NULL OR EXISTS (SELECT 1 FROM tenant_user tu \
         WHERE tu.tenant_id = :tenant AND tu.user_id = :user)) \
         AND (:api_key IS NULL OR EXISTS (SELECT 1 FROM api_key k \
         WHERE k.id = :api_key AND k.revoked_at IS NULL)){requires} \
         ON CONFLICT (tenant_id, feature, period_start) DO UPDATE SET used = credit_usage.used + excluded.used \
         WHERE credit_usage.used + excluded.used <= (SELECT p.lim FROM ({plan}) p)"
    )
}

/// The ledger row, its period start taken from `period` and its number among the tenant's
/// events from `seq`: selected `from` rows of other CTEs, else one row of values (SQLite's
/// `seq` reads `credit`, and an `INSERT … SELECT` reading its own table would first copy
/// the row into a temporary table).
fn ledger_sql(period: &str, seq: &str, from: Option<&str>) -> String {
    let values = format!(
        ":ledger_id, :tenant, :user, :credit_type, :cost, :object, :key, :feature, {period}, \
         :now, :subject, :metadata, :actor_type, :actor_id, {seq}"
    );
    let row = match from {
        Some(from) => format!("SELECT {values} FROM {from}"),
        None => format!("VALUES ({values})"),
    };
    format!(
        "INSERT INTO credit (id, tenant_id, user_id, type, amount, object_id, idempotency_key, \
         feature, period_start, created_at, subject, metadata, actor_type, actor_id, seq) {row}"
    )
}

/// The first CTE of PostgreSQL's guard: the tenant's event numbering locked before anything
/// else of the tenant (`feed`'s lock order); what comes next depends on it through
/// `FEED_TAKEN`, a condition that always holds once the lock is taken.
const FEED_LOCK: &str =
    "feed AS (SELECT last_seq FROM credit_feed WHERE tenant_id = :tenant FOR UPDATE)";
const FEED_TAKEN: &str = "(SELECT COUNT(*) FROM feed) >= 0";

fn build(backend: DatabaseBackend, paid: Option<&PaidTable>, metered: bool) -> GuardSql {
    // `INSERT INTO table (columns) … values` for a paid row.
    let insert = paid.map(|paid| {
        (
            format!("INSERT INTO {} ({})", paid.table, paid.columns.join(", ")),
            paid.values(),
        )
    });
    let paid_requires = paid.and_then(|p| p.requires).map(|(sql, _)| sql);
    match backend {
        DatabaseBackend::Postgres => {
            // The last CTE that inserts: the paid row when there is one, else the ledger's.
            let (paid, last) = match &insert {
                Some((into, values)) => (
                    format!(", paid AS ({into} SELECT {values} FROM ledger RETURNING 1)"),
                    "paid",
                ),
                None => (String::new(), "ledger"),
            };
            let outbox = match metered {
                true => format!(
                    ", outbox AS ({})",
                    usage_events::spend_event_sql(&format!("EXISTS (SELECT 1 FROM {last})"))
                ),
                false => String::new(),
            };
            let ledger = ledger_sql("spent.period_start", "seq.last_seq", Some("spent, seq"));
            // The ledger row's number, taken only when the counter took the cost.
            let seq = format!("seq AS ({})", feed::next_sql(Some("spent")));
            let spend = spend_sql(
                backend,
                Some(&match paid_requires {
                    Some(sql) => format!("{sql} AND {FEED_TAKEN}"),
                    None => FEED_TAKEN.to_owned(),
                }),
            );
            // Whether the spend reached the consumption at which an alert rule may start to
            // hold (`alerts`): read off the counter row the spend updated.
            let pending = format!(
                "CAST((SELECT COUNT(*) FROM spent WHERE {}) AS BIGINT) AS pending",
                alerts::PENDING_SQL
            );
            let plain = format!(
                "WITH {FEED_LOCK}, \
                 spent AS ({spend} RETURNING period_start, used, grants_used, alert_at), \
                 {seq}, ledger AS ({ledger} RETURNING id){paid}{outbox} \
                 SELECT CAST(1 AS BIGINT) AS created, {pending} FROM {last}"
            );
            // The same, spending only when this statement claims the key: one round trip
            // for a keyed spend too. `claimed` 1 and `created` 0 is a refusal (the claim
            // must be undone); `claimed` 0 means the key was there already.
            let keyed_spend = spend_sql(
                backend,
                Some(&match paid_requires {
                    Some(sql) => format!("{sql} AND EXISTS (SELECT 1 FROM claim)"),
                    None => "EXISTS (SELECT 1 FROM claim)".to_owned(),
                }),
            );
            let keyed = format!(
                "WITH {FEED_LOCK}, claim AS ({} RETURNING 1), \
                 spent AS ({keyed_spend} RETURNING period_start, used, grants_used, alert_at), \
                 {seq}, ledger AS ({ledger} RETURNING id){paid}{outbox} \
                 SELECT CAST((SELECT COUNT(*) FROM claim) AS BIGINT) AS claimed, \
                 CAST((SELECT COUNT(*) FROM {last}) AS BIGINT) AS created, {pending}",
                idempotency::claim_sql(Some(FEED_TAKEN))
            );
            GuardSql::Postgres {
                plain: Sql::new(backend, &plain),
                keyed: Sql::new(backend, &keyed),
            }
        }
        _ => GuardSql::Sqlite {
            spend: Sql::new(
                backend,
                &format!(
                    "{} RETURNING period_start, used, grants_used, alert_at",
                    spend_sql(backend, paid_requires)
                ),
            ),
            ledger: Sql::new(backend, &ledger_sql(":period", feed::SQLITE_NEXT, None)),
            paid: insert
                .map(|(into, values)| Sql::new(backend, &format!("{into} VALUES ({values})"))),
            outbox: Sql::new(backend, &usage_events::spend_event_sql("1 = 1")),
        },
    }
}

fn slow(backend: DatabaseBackend, paid: Option<&PaidTable>) -> Slow {
    let period = format!("(SELECT p.period_start FROM ({}) p)", plan_sql(backend));
    Slow {
        paid: paid.map(|paid| {
            let values = paid.values();
            let requires = paid
                .requires
                .map(|(sql, _)| format!(" WHERE {sql}"))
                .unwrap_or_default();
            Sql::new(
                backend,
                &format!(
                    "INSERT INTO {} ({}) SELECT {values}{requires}",
                    paid.table,
                    paid.columns.join(", ")
                ),
            )
        }),
        ledger: Sql::new(backend, &ledger_sql(&period, ":seq", None)),
        outbox: Sql::new(backend, &usage_events::spend_event_sql("1 = 1")),
    }
}

/// The spend's writes inside the session's open transaction: claim its key, then the guard's
/// statement; when the allowance alone cannot pay, the grants (`beyond_allowance`). On a
/// refusal (`INSUFFICIENT_CREDITS`, `FEATURE_NOT_INCLUDED`, `FORBIDDEN`) it has written
/// nothing: a key it claimed is forgotten again.
pub(super) async fn write(
    session: &mut Session,
    statements: &Statements,
    spend: &Spend,
) -> Result<Spent, AppError> {
    // Microseconds: what PostgreSQL keeps, so the time returned is the time stored.
    let now = spend.at.trunc_subsecs(6);
    let ledger_id = Uuid::now_v7();
    let charged = Spent::Charged { ledger_id, at: now };
    // What a replay of the key returns: the paid row, or for an action the ledger row.
    let resource_id = match &spend.paid {
        Paid::Row { id, .. } => *id,
        Paid::Action { .. } => ledger_id,
    };
    let (sql, slow) = statements.get(spend)?;
    let binding = Binding {
        spend,
        ledger_id,
        now,
        usage_id: Uuid::now_v7(),
        object_id: match &spend.paid {
            Paid::Row { id, .. } => Some(id.to_string()),
            Paid::Action { object_id } => object_id.clone(),
        },
    };
    let Some(key) = &spend.key else {
        let ran = run(session, sql, &binding, None).await?;
        return match ran.created {
            true => made(session, spend, ran, charged).await,
            false => beyond_allowance(session, slow, &binding).await,
        };
    };
    // PostgreSQL claims the key and spends in one statement; only a key seen before (a
    // replay, a reuse, an expired key) takes the long way below.
    if let GuardSql::Postgres { .. } = sql {
        let claim = Some((&key.fingerprint, resource_id));
        let ran = run(session, sql, &binding, claim).await?;
        if ran.created {
            return made(session, spend, ran, charged).await;
        }
        if ran.claimed {
            return unclaimed_unless_paid(session, slow, &binding, &key.value).await;
        }
    }
    let claim = idempotency::claim(
        session,
        spend.tenant_id,
        &key.value,
        &key.fingerprint,
        resource_id,
        now,
        key.retention,
    )
    .await?;
    if let Claim::Replay(original) = claim {
        // A replay writes nothing, so the guard's statement did not check the spender:
        // only a member (or a key still in force) may see what the key made.
        if let Some(user_id) = spend.user_id {
            auth::standing_in(session, user_id, spend.tenant_id).await?;
        }
        if let Actor::ApiKey(key_id) = spend.actor {
            key_in_force(session, key_id).await?;
        }
        return Ok(Spent::Replayed(original));
    }
    let ran = run(session, sql, &binding, None).await?;
    if ran.created {
        return made(session, spend, ran, charged).await;
    }
    unclaimed_unless_paid(session, slow, &binding, &key.value).await
}

/// A spend the guard's statement made: its alerts fired first when the statement found one
/// pending (in the same transaction).
async fn made(
    session: &mut Session,
    spend: &Spend,
    ran: Ran,
    charged: Spent,
) -> Result<Spent, AppError> {
    if ran.pending {
        alerts::reconcile(
            session,
            spend.tenant_id,
            &spend.credit_type.feature,
            spend.at,
        )
        .await?;
    }
    Ok(charged)
}

/// A keyed spend the allowance alone refused: paid beyond it, or refused with its claim of
/// `key` forgotten again (a refusal writes nothing, the key included).
async fn unclaimed_unless_paid(
    session: &mut Session,
    slow: &Slow,
    binding: &Binding<'_>,
    key: &str,
) -> Result<Spent, AppError> {
    match beyond_allowance(session, slow, binding).await {
        Ok(spent) => Ok(spent),
        Err(AppError::Internal(e)) => Err(AppError::Internal(e)),
        Err(refused) => {
            idempotency::forget(session, binding.spend.tenant_id, key).await?;
            Err(refused)
        }
    }
}

/// What the guard's statements did: claimed the spend's key (PostgreSQL's keyed statement
/// only), and spent.
struct Ran {
    claimed: bool,
    created: bool,
    /// An alert rule holds that does not fire yet: `alerts::reconcile` must run.
    pending: bool,
}

/// The values a spend's statements bind, by parameter name.
struct Binding<'a> {
    spend: &'a Spend,
    ledger_id: Uuid,
    now: DateTime<Utc>,
    usage_id: Uuid,
    object_id: Option<String>,
}

impl Binding<'_> {
    fn value(&self, name: &str) -> Option<sea_orm::Value> {
        let spend = self.spend;
        Some(match name {
            "tenant" => spend.tenant_id.into(),
            "feature" => spend.credit_type.feature.as_str().into(),
            "cost" => spend.credit_type.amount.into(),
            "now" => self.now.into(),
            "month" => Period::calendar_month(self.now).start.into(),
            "lifetime" => Period::lifetime().start.into(),
            "ledger_id" => self.ledger_id.into(),
            "user" => spend.user_id.into(),
            "credit_type" => spend.credit_type.value.as_str().into(),
            "object" => self.object_id.as_deref().into(),
            "key" => spend.key.as_ref().map(|k| k.value.as_str()).into(),
            "subject" => spend.subject.as_deref().into(),
            "metadata" => spend.metadata.clone().into(),
            "actor_type" => spend.actor.kind().into(),
            "actor_id" => spend.actor.id().into(),
            "api_key" => match spend.actor {
                Actor::ApiKey(id) => Some(id),
                _ => None,
            }
            .into(),
            name => match name.strip_prefix("paid_") {
                Some(i) => match &spend.paid {
                    Paid::Row { values, .. } => values.get(i.parse::<usize>().ok()?)?.clone(),
                    Paid::Action { .. } => return None,
                },
                None => usage_events::spend_event_value(
                    name,
                    self.usage_id,
                    spend.credit_type.meter.as_ref()?,
                )?,
            },
        })
    }
}

/// The guard's statements, bound and run: PostgreSQL's keyed statement when `claim` (the
/// request's fingerprint and the id a replay returns) is given, else the plain one.
async fn run(
    session: &mut Session,
    sql: &GuardSql,
    binding: &Binding<'_>,
    claim: Option<(&Fingerprint, Uuid)>,
) -> Result<Ran, AppError> {
    let value = |name: &str| -> Option<sea_orm::Value> {
        match name {
            "operation" => Some(claim?.0.operation.into()),
            "hash" => Some(claim?.0.hash.as_str().into()),
            "resource" => Some(claim?.1.into()),
            name => binding.value(name),
        }
    };
    match sql {
        GuardSql::Postgres { plain, keyed } => {
            let statement = match claim {
                Some(_) => keyed.bind(value)?,
                None => plain.bind(value)?,
            };
            let rows = session.query(&statement, &Shape::default()).await?;
            Ok(match (claim, rows.first()) {
                (Some(_), Some(row)) => Ran {
                    claimed: row.get::<i64>("claimed")? > 0,
                    created: row.get::<i64>("created")? > 0,
                    pending: row.get::<i64>("pending")? > 0,
                },
                (_, first) => Ran {
                    claimed: false,
                    created: first.is_some(),
                    pending: first
                        .map(|row| row.get::<i64>("pending"))
                        .transpose()?
                        .is_some_and(|n| n > 0),
                },
            })
        }
        GuardSql::Sqlite {
            spend: counter,
            ledger,
            paid,
            outbox,
        } => {
            // The period the counter took the cost in, as its row keeps it: the plan is
            // read once per spend.
            static COUNTER: std::sync::LazyLock<Shape> = std::sync::LazyLock::new(|| {
                Shape::default()
                    .with("used", sea_orm::ColumnType::BigInteger)
                    .with("grants_used", sea_orm::ColumnType::BigInteger)
                    .with("alert_at", sea_orm::ColumnType::BigInteger)
            });
            let rows = session.query(&counter.bind(value)?, &COUNTER).await?;
            let Some(row) = rows.first() else {
                return Ok(Ran {
                    claimed: false,
                    created: false,
                    pending: false,
                });
            };
            let period: Option<String> = row.get("period_start")?;
            let pending = alerts::pending(
                row.get("used")?,
                row.get("grants_used")?,
                row.get("alert_at")?,
            );
            let value = |name: &str| match name {
                "period" => Some(period.clone().into()),
                name => value(name),
            };
            session.execute(&ledger.bind(value)?).await?;
            if let Some(paid) = paid {
                session.execute(&paid.bind(value)?).await?;
            }
            if binding.spend.credit_type.meter.is_some() {
                session.execute(&outbox.bind(value)?).await?;
            }
            Ok(Ran {
                claimed: false,
                created: true,
                pending,
            })
        }
    }
}

/// A spend the counter alone refused. Why, when the spender, the resource or the plan says
/// no; else the whole cost from what is left of the allowance and the tenant's spendable
/// grants (`grants::funds`, locked), or `INSUFFICIENT_CREDITS` with the figures of both.
async fn beyond_allowance(
    session: &mut Session,
    slow: &Slow,
    binding: &Binding<'_>,
) -> Result<Spent, AppError> {
    let spend = binding.spend;
    let now = binding.now;
    let (period, feature, grants_remaining) = precheck(session, spend, now).await?;
    let cost = spend.credit_type.amount;
    if limit::ceiling(feature.kind, feature.value) == Some(i64::MAX) {
        // Unlimited never refuses.
        return Err(AppError::Internal(anyhow::anyhow!(
            "an unlimited spend of {cost} was refused"
        )));
    }
    let shortfall = |used: i64, grants_remaining: i64| {
        AppError::InsufficientCredits(Box::new(Shortfall {
            feature: spend.credit_type.feature.clone(),
            credit_type: spend.credit_type.value.clone(),
            required: cost,
            used,
            limit: feature.value,
            resets_at: Period::current(feature.kind, period, now).end,
            grants_remaining,
        }))
    };
    // A tenant without spendable grants is refused as it stands, with nothing locked: its
    // refusals cost what they did before grants existed.
    if grants_remaining == 0 {
        return Err(shortfall(feature.used, 0));
    }
    let value = |name: &str| binding.value(name);
    let funds = grants::funds(session, &value).await?;
    let Some(allocation) = funds.allocate(cost) else {
        // The figures as they stand under the lock.
        return Err(shortfall(funds.used, funds.grants_remaining()));
    };
    if let (Some(paid), Paid::Row { table, .. }) = (&slow.paid, &spend.paid)
        && session.execute(&paid.bind(value)?).await? != 1
    {
        // Its precondition stopped holding since it was checked: nothing written.
        let missing = table.requires.map_or(table.table, |(_, missing)| missing);
        return Err(AppError::NotFound(missing));
    }
    let pending = grants::draw(session, &allocation, &value).await?;
    let seq = feed::next(session, spend.tenant_id).await?;
    let ledger = slow.ledger.bind(|name| match name {
        "seq" => Some(seq.into()),
        name => value(name),
    })?;
    session.execute(&ledger).await?;
    if pending {
        alerts::reconcile(session, spend.tenant_id, &spend.credit_type.feature, now).await?;
    }
    // Only the allowance's part is metered usage: grants were paid for (or given) already.
    if spend.credit_type.meter.is_some() && allocation.allowance > 0 {
        let statement = slow.outbox.bind(|name| match name {
            "cost" => Some(allocation.allowance.into()),
            name => value(name),
        })?;
        session.execute(&statement).await?;
    }
    Ok(Spent::Charged {
        ledger_id: binding.ledger_id,
        at: now,
    })
}

/// `UNAUTHENTICATED` (`auth::api_keys::REVOKED`) when the spending API key was revoked.
async fn key_in_force(session: &mut Session, key_id: Uuid) -> Result<(), AppError> {
    static SQL: db::PerBackend = db::PerBackend::new(|_| {
        "SELECT 1 AS in_force FROM api_key WHERE id = :key AND revoked_at IS NULL".to_owned()
    });
    let statement = SQL
        .get(session.backend())
        .bind(|name| (name == "key").then(|| key_id.into()))?;
    match session
        .query(&statement, &Shape::default())
        .await?
        .is_empty()
    {
        true => Err(AppError::Unauthenticated(auth::api_keys::REVOKED)),
        false => Ok(()),
    }
}

/// Whether a spend the counter refused may be paid beyond the allowance: the refusal when the
/// spender is not a member (`FORBIDDEN`; its user gone: `UNAUTHENTICATED`), the resource's
/// precondition fails, or there is no entitlement; else the tenant's subscription period and
/// its plan's feature as they stand.
async fn precheck(
    session: &mut Session,
    spend: &Spend,
    now: DateTime<Utc>,
) -> Result<
    (
        (Option<DateTime<Utc>>, Option<DateTime<Utc>>),
        super::usage::Feature,
        i64,
    ),
    AppError,
> {
    if let Actor::ApiKey(key_id) = spend.actor {
        key_in_force(session, key_id).await?;
    }
    if let Some(user_id) = spend.user_id {
        auth::standing_in(session, user_id, spend.tenant_id).await?;
    }
    if let Paid::Row { table, values, .. } = &spend.paid
        && let Some((requires, missing)) = table.requires
    {
        let sql = Sql::new(
            session.backend(),
            &format!("SELECT 1 AS holds WHERE {requires}"),
        );
        let value = |name: &str| {
            let i = name.strip_prefix("paid_")?.parse::<usize>().ok()?;
            values.get(i).cloned()
        };
        let rows = session.query(&sql.bind(value)?, &Shape::default()).await?;
        if rows.is_empty() {
            return Err(AppError::NotFound(missing));
        }
    }
    let row = subscribed_feature(session, spend.tenant_id, &spend.credit_type.feature, now).await?;
    // Every tenant has a subscription from its creation: none means no such tenant (a
    // platform key's spend names tenants by id; a user's was checked for membership above).
    let Some(row) = row else {
        return Err(AppError::NotFound("tenant"));
    };
    let PlanFeatureRow {
        period,
        feature: Some(feature),
        grants_remaining,
    } = row
    else {
        return Err(AppError::FeatureNotIncluded {
            feature: spend.credit_type.feature.clone(),
        });
    };
    if feature.kind == FeatureLimitType::NotIncluded {
        // Grants are frozen while the plan does not include the feature.
        return Err(AppError::FeatureNotIncluded {
            feature: spend.credit_type.feature.clone(),
        });
    }
    Ok((period, feature, grants_remaining))
}

#[cfg(test)]
mod tests {
    use super::*;

    static WIDGET: PaidTable = PaidTable {
        credit_type: "credit-widget",
        table: "widget",
        columns: &["id", "tenant_id", "label"],
        requires: None,
    };

    /// The statement, a clause a line, and its parameters in number order.
    fn readable(sql: &Sql) -> String {
        let mut text = sql.text().to_owned();
        for clause in [
            " WITH ",
            "), ",
            " SELECT ",
            " FROM ",
            " WHERE ",
            " ON CONFLICT ",
            " INSERT ",
            "; ",
        ] {
            text = text.replace(clause, &format!("\n{}", clause.trim_start()));
        }
        format!("{text}\n-- parameters: {}", sql.names().join(", "))
    }

    fn snapshot(backend: DatabaseBackend, paid: Option<&PaidTable>, metered: bool) -> String {
        match build(backend, paid, metered) {
            GuardSql::Postgres { plain, .. } => readable(&plain),
            GuardSql::Sqlite {
                spend,
                ledger,
                paid,
                outbox,
            } => [Some(spend), Some(ledger), paid, Some(outbox)]
                .iter()
                .flatten()
                .map(readable)
                .collect::<Vec<_>>()
                .join("\n\n-- then, if the counter took the cost:\n"),
        }
    }

    #[test]
    fn postgres_guard_is_one_statement_of_chained_ctes() {
        insta::assert_snapshot!(snapshot(DatabaseBackend::Postgres, Some(&WIDGET), true));
        let unmetered = snapshot(DatabaseBackend::Postgres, Some(&WIDGET), false);
        assert!(!unmetered.contains("usage_event"), "{unmetered}");
    }

    #[test]
    fn postgres_keyed_guard_claims_its_key_in_the_same_statement() {
        let GuardSql::Postgres { keyed, .. } = build(DatabaseBackend::Postgres, None, false) else {
            panic!("a PostgreSQL statement");
        };
        insta::assert_snapshot!(readable(&keyed));
    }

    #[test]
    fn sqlite_guard_is_the_counter_upsert_then_the_rows_it_pays_for() {
        insta::assert_snapshot!(snapshot(DatabaseBackend::Sqlite, Some(&WIDGET), true));
    }

    #[test]
    fn an_action_s_guard_writes_the_ledger_row_and_no_other() {
        insta::assert_snapshot!(snapshot(DatabaseBackend::Postgres, None, true));
        let sqlite = snapshot(DatabaseBackend::Sqlite, None, false);
        assert!(!sqlite.contains("widget"), "{sqlite}");
        assert_eq!(sqlite.matches("INSERT INTO").count(), 3, "{sqlite}");
    }

    #[test]
    fn statements_are_built_for_every_paid_table_and_actions_metered_or_not() {
        let statements = Statements::build(DatabaseBackend::Postgres, &[&WIDGET]);
        assert_eq!(statements.by_table.len(), 4);
        assert!(statements.by_table.contains_key(&(Some("widget"), true)));
        assert!(statements.by_table.contains_key(&(None, false)));
    }
}
