//! SQL text with named parameters, turned once into a dialect's numbered ones (`Sql`),
//! statements that are constants of the code, built once per dialect (`PerBackend`), and
//! statements whose text varies with a small key, built once per key (`Variants`).

use std::{
    collections::HashMap,
    hash::Hash,
    sync::{Arc, Mutex, OnceLock, PoisonError},
};

use sea_orm::{DatabaseBackend, DbErr, Statement};

/// SQL written once with named parameters (`:tenant`, `:now`; a name may repeat), turned
/// into `backend`'s numbered ones (`$1` on Postgres, `?1` on SQLite): each name gets the number
/// of its first appearance. Build it once; bind it per call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sql {
    backend: DatabaseBackend,
    text: String,
    /// The parameter names, in number order.
    names: Vec<String>,
}

impl Sql {
    pub fn new(backend: DatabaseBackend, named: &str) -> Self {
        let sign = match backend {
            DatabaseBackend::Postgres => '$',
            _ => '?',
        };
        let mut text = String::with_capacity(named.len());
        let mut names: Vec<String> = Vec::new();
        let mut chars = named.char_indices().peekable();
        let mut quoted = false;
        while let Some((i, c)) = chars.next() {
            let starts_name = !quoted
                && c == ':'
                && !named[..i].ends_with(':')
                && chars
                    .peek()
                    .is_some_and(|&(_, n)| n.is_ascii_lowercase() || n == '_');
            if !starts_name {
                quoted ^= c == '\'';
                text.push(c);
                continue;
            }
            let mut name = String::new();
            while let Some(&(_, n)) = chars.peek() {
                if !(n.is_ascii_alphanumeric() || n == '_') {
                    break;
                }
                name.push(n);
                chars.next();
            }
            let number = match names.iter().position(|known| *known == name) {
                Some(at) => at + 1,
                None => {
                    names.push(name);
                    names.len()
                }
            };
            text.push(sign);
            text.push_str(&number.to_string());
        }
        Sql {
            backend,
            text,
            names,
        }
    }

    /// The statement as the database sees it.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The parameter names, in number order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The statement with each parameter bound to `value(name)`; an error names a parameter
    /// `value` does not know.
    pub fn bind(
        &self,
        mut value: impl FnMut(&str) -> Option<sea_orm::Value>,
    ) -> Result<Statement, DbErr> {
        let values = self
            .names
            .iter()
            .map(|name| {
                value(name)
                    .ok_or_else(|| DbErr::Custom(format!("SQL parameter :{name} is not bound")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Statement::from_sql_and_values(
            self.backend,
            self.text.clone(),
            values,
        ))
    }
}

/// A statement whose text is a constant of the code, built the first time each dialect needs
/// it (a `static`: it never changes once built).
pub struct PerBackend {
    build: fn(DatabaseBackend) -> String,
    postgres: OnceLock<Sql>,
    sqlite: OnceLock<Sql>,
}

impl PerBackend {
    pub const fn new(build: fn(DatabaseBackend) -> String) -> Self {
        PerBackend {
            build,
            postgres: OnceLock::new(),
            sqlite: OnceLock::new(),
        }
    }

    pub fn get(&self, backend: DatabaseBackend) -> &Sql {
        let cell = match backend {
            DatabaseBackend::Postgres => &self.postgres,
            _ => &self.sqlite,
        };
        cell.get_or_init(|| Sql::new(backend, &(self.build)(backend)))
    }
}

/// Statements whose text depends on a small key — which filters a query has, its page size —
/// each built the first time a dialect needs it for that key. The caller bounds the keys.
pub struct Variants<K>(Mutex<HashMap<(bool, K), Arc<Sql>>>);

impl<K> Default for Variants<K> {
    fn default() -> Self {
        Variants(Mutex::new(HashMap::new()))
    }
}

impl<K: Eq + Hash + Copy> Variants<K> {
    pub fn get(
        &self,
        backend: DatabaseBackend,
        key: K,
        build: impl FnOnce() -> String,
    ) -> Arc<Sql> {
        let postgres = matches!(backend, DatabaseBackend::Postgres);
        let mut built = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(
            built
                .entry((postgres, key))
                .or_insert_with(|| Arc::new(Sql::new(backend, &build()))),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_parameters_are_numbered_by_first_appearance_outside_quotes() {
        let named = "SELECT :b, ':not_a_param', :a, :b, x::text, strftime('%H:%M', :a_2)";
        let pg = Sql::new(DatabaseBackend::Postgres, named);
        assert_eq!(
            pg.text(),
            "SELECT $1, ':not_a_param', $2, $1, x::text, strftime('%H:%M', $3)"
        );
        assert_eq!(pg.names(), ["b", "a", "a_2"]);
        let sqlite = Sql::new(DatabaseBackend::Sqlite, named);
        assert!(
            sqlite
                .text()
                .starts_with("SELECT ?1, ':not_a_param', ?2, ?1")
        );
    }

    #[test]
    fn binding_fails_when_a_named_parameter_has_no_value() {
        let sql = Sql::new(DatabaseBackend::Postgres, "SELECT :known, :unknown");
        let err = sql
            .bind(|name| (name == "known").then(|| 1i64.into()))
            .unwrap_err();
        assert!(err.to_string().contains(":unknown"), "{err}");
        let ok = sql.bind(|_| Some(1i64.into())).unwrap();
        assert_eq!(ok.values.map(|v| v.0.len()), Some(2));
    }
}
