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
