//! SQLite reads on the request's own thread (rusqlite): a read costs no hand-off to a
//! connection thread, where sqlx-sqlite costs one per statement and one more per return to
//! its pool. Connections are kept idle between reads and opened as needed — a read never
//! awaits while it holds one, so there are at most as many as threads reading at once.
//!
//! Values are bound and read back exactly as sqlx-sqlite writes them (UUIDs as 16-byte blobs,
//! times as RFC 3339 text, booleans as integers), so both drivers share one database file.
//! Rows come back as `Row`s of sea-orm values typed by a `Shape`: the same decoding code
//! serves both databases.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{
    Connection, OpenFlags,
    types::{ToSqlOutput, Value as Sqlite, ValueRef},
};
use sea_orm::{
    ColumnTrait, ColumnType, DbErr, EntityTrait, IdenStatic, Iterable, Statement, Value,
};
use uuid::Uuid;

use super::Row;

/// Statements each connection keeps prepared (the hot reads, and `creditHistory`'s variants).
const PREPARED: usize = 256;

/// The column types of a query's result, by name, to read SQLite's values back as the types
/// sea-orm decodes. Columns not named here are read by their storage class.
#[derive(Clone, Debug, Default)]
pub struct Shape(Vec<(String, ColumnType)>);

impl Shape {
    /// Every column of entity `E`.
    pub fn of<E: EntityTrait>() -> Self {
        Shape::default().and::<E>()
    }

    /// … and every column of entity `E`.
    pub fn and<E: EntityTrait>(mut self) -> Self {
        for column in E::Column::iter() {
            let def = column.def();
            self.0.push((
                IdenStatic::as_str(&column).to_owned(),
                def.get_column_type().clone(),
            ));
        }
        self
    }

    /// … and a column `name` of type `kind`.
    pub fn with(mut self, name: &str, kind: ColumnType) -> Self {
        self.0.push((name.to_owned(), kind));
        self
    }

    fn kind(&self, name: &str) -> Option<&ColumnType> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, k)| k)
    }
}

/// One row's values, beside the column names of its query (shared by all its rows).
#[derive(Debug)]
pub struct Values {
    names: Arc<[String]>,
    values: Vec<Value>,
}

impl Values {
    fn at(&self, name: &str) -> Result<usize, DbErr> {
        self.names
            .iter()
            .position(|n| n == name)
            .ok_or_else(|| DbErr::Type(format!("no column {name}")))
    }

    /// Column `name`.
    pub fn get(&self, name: &str) -> Result<&Value, DbErr> {
        Ok(&self.values[self.at(name)?])
    }

    /// Column `name`, taken out of the row (a second take of it reads null).
    pub fn take(&mut self, name: &str) -> Result<Value, DbErr> {
        let at = self.at(name)?;
        Ok(std::mem::replace(&mut self.values[at], Value::String(None)))
    }
}

/// Reader connections to one SQLite file.
pub struct Readers {
    path: PathBuf,
    busy_timeout: Duration,
    idle: Mutex<Vec<Connection>>,
}

impl Readers {
    pub fn new(path: PathBuf, busy_timeout: Duration) -> Self {
        Readers {
            path,
            busy_timeout,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Runs one read-only statement on this thread; its rows typed by `shape`.
    pub fn query(&self, statement: &Statement, shape: &Shape) -> Result<Vec<Row>, DbErr> {
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let conn = match idle {
            Some(conn) => conn,
            None => self.open()?,
        };
        let rows = run(&conn, statement, shape);
        // A connection whose statement failed is still sound: SQLite reports, it does not
        // break. Keep it.
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(conn);
        rows
    }

    fn open(&self) -> Result<Connection, DbErr> {
        open(&self.path, self.busy_timeout, true)
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    pub(super) fn busy_timeout(&self) -> Duration {
        self.busy_timeout
    }
}

/// A connection to the database file at `path` (which sqlx has created and migrated), set up
/// as sqlx sets up its own; `query_only` for readers, which never write whatever a statement
/// says.
pub(super) fn open(
    path: &Path,
    busy_timeout: Duration,
    query_only: bool,
) -> Result<Connection, DbErr> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(path, flags).map_err(error)?;
    conn.busy_timeout(busy_timeout).map_err(error)?;
    conn.pragma_update(None, "foreign_keys", true)
        .map_err(error)?;
    // WAL is the file's (sqlx set it); NORMAL is per connection, as sqlx's.
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(error)?;
    if query_only {
        conn.pragma_update(None, "query_only", true)
            .map_err(error)?;
    }
    conn.set_prepared_statement_cache_capacity(PREPARED);
    Ok(conn)
}

/// One statement run for its effect; how many rows it changed.
pub(super) fn execute(conn: &Connection, statement: &Statement) -> Result<u64, DbErr> {
    let mut prepared = prepare(conn, statement)?;
    let changed = prepared.raw_execute().map_err(error)?;
    Ok(u64::try_from(changed).unwrap_or(0))
}

fn prepare<'c>(
    conn: &'c Connection,
    statement: &Statement,
) -> Result<rusqlite::CachedStatement<'c>, DbErr> {
    let mut prepared = conn.prepare_cached(&statement.sql).map_err(error)?;
    let values = statement.values.as_ref().map_or(&[][..], |v| &v.0[..]);
    for (i, value) in values.iter().enumerate() {
        prepared
            .raw_bind_parameter(i + 1, bind(value)?)
            .map_err(error)?;
    }
    Ok(prepared)
}

pub(super) fn run(
    conn: &Connection,
    statement: &Statement,
    shape: &Shape,
) -> Result<Vec<Row>, DbErr> {
    let mut prepared = prepare(conn, statement)?;
    let names: Arc<[String]> = prepared
        .column_names()
        .into_iter()
        .map(str::to_owned)
        .collect();
    let kinds: Vec<Option<&ColumnType>> = names.iter().map(|n| shape.kind(n)).collect();
    let mut rows = prepared.raw_query();
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(error)? {
        let mut values = Vec::with_capacity(names.len());
        for (i, (name, kind)) in names.iter().zip(&kinds).enumerate() {
            let value = row.get_ref(i).map_err(error)?;
            values.push(read(value, *kind, name)?);
        }
        out.push(Row::Sqlite(Values {
            names: Arc::clone(&names),
            values,
        }));
    }
    Ok(out)
}

/// A sea-orm value as sqlx-sqlite binds it. Text and blobs are bound from the value itself,
/// not from a copy: SQLite copies them once as it binds (`SQLITE_TRANSIENT`).
fn bind(value: &Value) -> Result<ToSqlOutput<'_>, DbErr> {
    let owned = |v: Sqlite| ToSqlOutput::Owned(v);
    Ok(match value {
        Value::Bool(v) => owned(v.map_or(Sqlite::Null, |b| Sqlite::Integer(i64::from(b)))),
        Value::TinyInt(v) => owned(v.map_or(Sqlite::Null, |n| Sqlite::Integer(n.into()))),
        Value::SmallInt(v) => owned(v.map_or(Sqlite::Null, |n| Sqlite::Integer(n.into()))),
        Value::Int(v) => owned(v.map_or(Sqlite::Null, |n| Sqlite::Integer(n.into()))),
        Value::BigInt(v) => owned(v.map_or(Sqlite::Null, Sqlite::Integer)),
        Value::TinyUnsigned(v) => owned(v.map_or(Sqlite::Null, |n| Sqlite::Integer(n.into()))),
        Value::SmallUnsigned(v) => owned(v.map_or(Sqlite::Null, |n| Sqlite::Integer(n.into()))),
        Value::Unsigned(v) => owned(v.map_or(Sqlite::Null, |n| Sqlite::Integer(n.into()))),
        Value::Double(v) => owned(v.map_or(Sqlite::Null, Sqlite::Real)),
        Value::String(v) => ToSqlOutput::Borrowed(
            v.as_deref()
                .map_or(ValueRef::Null, |t| ValueRef::Text(t.as_bytes())),
        ),
        Value::Bytes(v) => {
            ToSqlOutput::Borrowed(v.as_deref().map_or(ValueRef::Null, ValueRef::Blob))
        }
        Value::Uuid(v) => ToSqlOutput::Borrowed(
            v.as_ref()
                .map_or(ValueRef::Null, |u| ValueRef::Blob(u.as_bytes())),
        ),
        Value::ChronoDateTimeUtc(v) => owned(v.map_or(Sqlite::Null, |t| {
            Sqlite::Text(t.to_rfc3339_opts(SecondsFormat::AutoSi, false))
        })),
        Value::Json(v) => owned(
            v.as_ref()
                .map_or(Sqlite::Null, |j| Sqlite::Text(j.to_string())),
        ),
        other => {
            return Err(DbErr::Custom(format!("no SQLite binding for {other:?}")));
        }
    })
}

/// A SQLite value as the sea-orm value of `kind` (by storage class when unknown).
fn read(value: ValueRef<'_>, kind: Option<&ColumnType>, name: &str) -> Result<Value, DbErr> {
    let wrong = || DbErr::Type(format!("column {name}: unexpected SQLite value {value:?}"));
    let null = matches!(value, ValueRef::Null);
    Ok(match kind {
        Some(ColumnType::Uuid) => Value::Uuid(match value {
            ValueRef::Blob(b) => Some(Uuid::from_slice(b).map_err(|_| wrong())?),
            ValueRef::Text(t) => Some(Uuid::try_parse_ascii(t).map_err(|_| wrong())?),
            _ if null => None,
            _ => return Err(wrong()),
        }),
        Some(ColumnType::TimestampWithTimeZone | ColumnType::Timestamp | ColumnType::DateTime) => {
            Value::ChronoDateTimeUtc(match value {
                ValueRef::Text(t) => Some(time(t).ok_or_else(wrong)?),
                _ if null => None,
                _ => return Err(wrong()),
            })
        }
        Some(ColumnType::Boolean) => Value::Bool(match value {
            ValueRef::Integer(n) => Some(n != 0),
            _ if null => None,
            _ => return Err(wrong()),
        }),
        Some(ColumnType::Integer) => Value::Int(match value {
            ValueRef::Integer(n) => Some(i32::try_from(n).map_err(|_| wrong())?),
            _ if null => None,
            _ => return Err(wrong()),
        }),
        Some(ColumnType::BigInteger) => Value::BigInt(match value {
            ValueRef::Integer(n) => Some(n),
            _ if null => None,
            _ => return Err(wrong()),
        }),
        Some(ColumnType::Json | ColumnType::JsonBinary) => Value::Json(match value {
            ValueRef::Text(t) => Some(Box::new(serde_json::from_slice(t).map_err(|_| wrong())?)),
            _ if null => None,
            _ => return Err(wrong()),
        }),
        Some(_) | None => match value {
            ValueRef::Null => Value::String(None),
            ValueRef::Integer(n) => Value::BigInt(Some(n)),
            ValueRef::Real(f) => Value::Double(Some(f)),
            ValueRef::Text(t) => {
                Value::String(Some(String::from_utf8(t.to_vec()).map_err(|_| wrong())?))
            }
            ValueRef::Blob(b) => Value::Bytes(Some(b.to_vec())),
        },
    })
}

/// A time as sqlx-sqlite writes it (RFC 3339), or as SQLite's own functions do.
fn time(text: &[u8]) -> Option<DateTime<Utc>> {
    let text = std::str::from_utf8(text).ok()?;
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc));
    }
    chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f")
        .ok()
        .map(|t| t.and_utc())
}

/// What a busy or locked SQLite error's message starts with (`db::is_transient`).
pub(super) const BUSY: &str = "SQLite busy: ";

pub(super) fn error(e: rusqlite::Error) -> DbErr {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
            DbErr::Custom(format!("{BUSY}{e}"))
        }
        _ => DbErr::Custom(format!("SQLite: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rusqlite_and_sqlx_link_the_one_same_sqlite() {
        let lock = include_str!("../../Cargo.lock");
        let versions = lock.matches("name = \"libsqlite3-sys\"").count();
        assert_eq!(
            versions, 1,
            "two libsqlite3-sys versions would link two SQLites"
        );
    }

    #[test]
    fn values_round_trip_in_the_encoding_sqlx_writes() {
        let conn = Connection::open_in_memory().unwrap();
        let id = Uuid::now_v7();
        let at = DateTime::parse_from_rfc3339("2026-11-30T08:00:00.123456789+00:00")
            .unwrap()
            .with_timezone(&Utc);
        let statement = Statement::from_sql_and_values(
            sea_orm::DatabaseBackend::Sqlite,
            "SELECT ?1 AS id, ?2 AS at, ?3 AS at_text, ?4 AS n, ?5 AS gone",
            [
                id.into(),
                at.into(),
                at.into(),
                7i64.into(),
                Option::<Uuid>::None.into(),
            ],
        );
        let shape = Shape::default()
            .with("id", ColumnType::Uuid)
            .with("at", ColumnType::TimestampWithTimeZone)
            .with("n", ColumnType::BigInteger)
            .with("gone", ColumnType::Uuid);
        let rows = run(&conn, &statement, &shape).unwrap();
        let row = &rows[0];
        assert_eq!(row.get::<Uuid>("id").unwrap(), id);
        assert_eq!(row.get::<DateTime<Utc>>("at").unwrap(), at);
        // Exactly sqlx-sqlite's text: counter rows are keyed by it.
        assert_eq!(
            row.get::<String>("at_text").unwrap(),
            "2026-11-30T08:00:00.123456789+00:00"
        );
        assert_eq!(row.get::<i64>("n").unwrap(), 7);
        assert_eq!(row.get::<Option<Uuid>>("gone").unwrap(), None);
    }
}
