//! What the benches share: a PostgreSQL database of their own, made and dropped, the
//! UNLIMITED plan the measured tenants are on, and a GraphQL-over-HTTP call.

use sea_orm::{ConnectionTrait, Database as SeaDatabase};
use serde_json::{Value, json};
use tollgate::{
    config::{Config, PlanConfig, PlanFeatureConfig},
    credits::FeatureLimitType,
};

/// Makes `unlimited` (credits UNLIMITED) the only plan and the default one.
pub fn on_unlimited_plan(config: &mut Config) {
    config.plans = vec![PlanConfig {
        slug: "unlimited".into(),
        title: "Unlimited".into(),
        description: None,
        features: vec![PlanFeatureConfig {
            name: "credits".into(),
            title: "Credits".into(),
            kind: FeatureLimitType::Unlimited,
            value: 0,
        }],
        stripe_price_ids: Vec::new(),
    }];
    config.default_plan = "unlimited".into();
}

/// A new database on the server at `server_url`: (its URL, a dropper to call at the end).
pub async fn create_pg_database(server_url: &str, name: &str) -> Option<(String, PgDropper)> {
    let admin = SeaDatabase::connect(server_url).await.ok()?;
    admin
        .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
        .await
        .ok()?;
    let base = server_url.rsplit_once('/').map_or(server_url, |(b, _)| b);
    Some((
        format!("{base}/{name}"),
        PgDropper {
            server_url: server_url.to_owned(),
            name: name.to_owned(),
        },
    ))
}

pub struct PgDropper {
    server_url: String,
    name: String,
}

impl PgDropper {
    pub async fn drop_database(self) {
        if let Ok(admin) = SeaDatabase::connect(&self.server_url).await {
            let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
            let _ = admin.execute_unprepared(&sql).await;
        }
    }
}

/// POSTs a GraphQL document to the server at `base`; the JSON answer.
pub async fn gql(
    client: &reqwest::Client,
    base: &str,
    token: Option<&str>,
    query: &str,
    variables: Value,
) -> Value {
    let mut request = client
        .post(format!("{base}/graphql"))
        .json(&json!({ "query": query, "variables": variables }));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json")
}
