use serde_json::json;

use crate::helpers::spawn_app;

#[tokio::test]
async fn committed_schema_graphql_matches_the_live_schema() {
    let app = spawn_app().await;

    let out = app.cli(&["print-schema"]);
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/schema.graphql"))
        .expect("schema.graphql exists");

    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).expect("utf-8"),
        committed,
        "schema.graphql is stale: run `cargo run -- print-schema > schema.graphql`"
    );
}

#[tokio::test]
async fn every_type_and_field_of_the_schema_is_described() {
    let app = spawn_app().await;

    let body = app
        .gql(
            None,
            "{ __schema { types { name kind description fields { name description } inputFields { name description } } } }",
            json!({}),
        )
        .await;

    let mut missing = Vec::new();
    for t in body["data"]["__schema"]["types"].as_array().expect("types") {
        let name = t["name"].as_str().expect("name");
        if name.starts_with("__") || t["kind"] == "SCALAR" {
            continue;
        }
        if t["description"].as_str().is_none_or(str::is_empty) {
            missing.push(name.to_owned());
        }
        for f in t["fields"]
            .as_array()
            .into_iter()
            .chain(t["inputFields"].as_array())
            .flatten()
        {
            if f["description"].as_str().is_none_or(str::is_empty) {
                missing.push(format!("{name}.{}", f["name"].as_str().expect("field")));
            }
        }
    }
    assert!(missing.is_empty(), "undocumented: {missing:?}");
}

/// The tables that belong to a tenant: every one carries `tenant_id`, and every unique key of
/// each (primary keys included) contains it — what distributing the schema by tenant (Citus)
/// requires. A new tenant table must be added here, and keyed the same way.
const TENANT_TABLES: [&str; 18] = [
    "credit",
    "credit_alert",
    "credit_alert_rule",
    "credit_alert_setting",
    "credit_allocation",
    "credit_feed",
    "credit_grant",
    "credit_reservation",
    "credit_usage",
    "idempotency_key",
    "project",
    "task",
    "tenant_invitation",
    "tenant_subscription",
    "tenant_user",
    "usage_event",
    "webhook_delivery",
    "webhook_event",
];

/// Tables that name a tenant but belong to none: a platform API key, a platform webhook
/// endpoint has no tenant. They are few and small; distributed by tenant (Citus) they are
/// reference tables, copied to every node.
const REFERENCE_TABLES: [&str; 2] = ["api_key", "webhook_endpoint"];

#[tokio::test]
async fn every_unique_key_of_a_tenant_table_includes_tenant_id() {
    use sea_orm::{ConnectionTrait, Statement};

    let app = spawn_app().await;
    let db = app.db().await;
    let backend = db.get_database_backend();
    let rows = |sql: String| {
        let db = &db;
        async move {
            db.query_all_raw(Statement::from_string(backend, sql))
                .await
                .expect("schema query")
        }
    };
    // (table, key name, its columns) of every unique key of every table with `tenant_id`.
    let mut keys: Vec<(String, String, Vec<String>)> = Vec::new();
    let mut tables: Vec<String> = Vec::new();
    if app.is_postgres() {
        for row in rows(
            "SELECT table_name::text FROM information_schema.columns \
             WHERE table_schema = 'public' AND column_name = 'tenant_id' ORDER BY 1"
                .into(),
        )
        .await
        {
            tables.push(row.try_get_by_index(0).unwrap());
        }
        for row in rows(
            "SELECT c.relname::text, x.relname::text, (SELECT string_agg(a.attname::text, ',') \
             FROM pg_attribute a WHERE a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)) \
             FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid JOIN pg_class x ON x.oid = i.indexrelid \
             WHERE i.indisunique AND c.relnamespace = 'public'::regnamespace"
                .into(),
        )
        .await
        {
            let columns: String = row.try_get_by_index(2).unwrap();
            keys.push((
                row.try_get_by_index(0).unwrap(),
                row.try_get_by_index(1).unwrap(),
                columns.split(',').map(str::to_owned).collect(),
            ));
        }
    } else {
        for row in rows(
            "SELECT m.name FROM sqlite_master m JOIN pragma_table_info(m.name) c \
             WHERE m.type = 'table' AND c.name = 'tenant_id' ORDER BY 1"
                .into(),
        )
        .await
        {
            tables.push(row.try_get_by_index(0).unwrap());
        }
        for table in &tables {
            for index in rows(format!(
                "SELECT name FROM pragma_index_list('{table}') WHERE \"unique\" = 1"
            ))
            .await
            {
                let name: String = index.try_get_by_index(0).unwrap();
                let mut columns = Vec::new();
                for column in rows(format!("SELECT name FROM pragma_index_info('{name}')")).await {
                    columns.push(column.try_get_by_index(0).unwrap());
                }
                keys.push((table.clone(), name, columns));
            }
        }
    }
    tables.retain(|t| !REFERENCE_TABLES.contains(&t.as_str()));
    assert_eq!(tables, TENANT_TABLES, "the tables with a tenant_id column");
    for table in TENANT_TABLES {
        let own: Vec<_> = keys.iter().filter(|(t, _, _)| t == table).collect();
        assert!(!own.is_empty(), "{table} has no unique key");
        for (_, name, columns) in own {
            assert!(
                columns.iter().any(|c| c == "tenant_id"),
                "{table}: unique key {name} ({}) does not include tenant_id",
                columns.join(", ")
            );
        }
    }
}
