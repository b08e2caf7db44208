//! `spawn_app`: the real server on port 0 with a fresh database (a temp SQLite file, or a
//! new Postgres database when TEST_DATABASE_URL is set), and a client that speaks GraphQL
//! over HTTP.

use std::{
    process::Command,
    sync::atomic::{AtomicU64, Ordering},
};

use sea_orm::{ConnectionTrait, Database as SeaDatabase, DatabaseConnection};
use secrecy::SecretString;
use serde_json::{Value, json};
use tollgate::{
    clock::Clock,
    config::{Config, PlanConfig, PlanFeatureConfig},
    credits::FeatureLimitType,
    db::Database,
    startup::Application,
};

pub const JWT_SECRET: &str = "test-secret-that-is-long-enough-for-hs256-0123456789";

pub struct TestApp {
    pub address: String,
    /// Where `/metrics` is served when `metrics.addr` gives it an address of its own.
    pub metrics_address: Option<String>,
    pub client: reqwest::Client,
    pub database_url: String,
    pub database: Database,
    dir: tempfile::TempDir,
    _postgres: Option<PostgresDb>,
}

/// A server with the built-in configuration.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// A server whose default plan limits `credits` as given.
pub async fn spawn_app_with_plan(kind: FeatureLimitType, value: i64) -> TestApp {
    spawn_app_with(|c| {
        c.plans = vec![plan("test", kind, value)];
        c.default_plan = "test".into();
    })
    .await
}

pub fn plan(slug: &str, kind: FeatureLimitType, value: i64) -> PlanConfig {
    PlanConfig {
        slug: slug.into(),
        title: format!("Plan {slug}"),
        description: None,
        features: vec![PlanFeatureConfig {
            name: "credits".into(),
            title: "Credits".into(),
            kind,
            value,
        }],
        stripe_price_ids: Vec::new(),
    }
}

/// A server with the built-in configuration changed by `configure`.
pub async fn spawn_app_with(configure: impl FnOnce(&mut Config)) -> TestApp {
    spawn_app_with_clock(Clock::default(), configure).await
}

/// `spawn_app_with`, its credits running on `clock` (a manual one stands where it is set).
pub async fn spawn_app_with_clock(clock: Clock, configure: impl FnOnce(&mut Config)) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let postgres = match std::env::var("TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => Some(PostgresDb::create(&url).await),
        _ => None,
    };
    let database_url = match &postgres {
        Some(pg) => pg.url.clone(),
        None => format!("sqlite://{}?mode=rwc", dir.path().join("test.db").display()),
    };
    let mut config = Config::defaults().expect("built-in configuration");
    config.addr = "127.0.0.1:0".into();
    config.database_url = database_url.clone();
    config.jwt_secret = Some(SecretString::from(JWT_SECRET));
    config.data_dir = dir.path().to_path_buf();
    config.database.max_connections = 8;
    config.database.acquire_timeout_ms = 30_000;
    // Tests send many requests from one address and user; the rate-limit tests turn it on.
    config.rate_limit.enabled = false;
    configure(&mut config);
    config.validate().expect("valid test config");
    if std::env::var_os("TEST_LOG").is_some() {
        tollgate::telemetry::init(config.log_format);
    }
    let app = Application::build_with_clock(config, clock)
        .await
        .expect("server builds");
    let address = format!("http://127.0.0.1:{}", app.port());
    let metrics_address = app
        .metrics_port()
        .map(|port| format!("http://127.0.0.1:{port}"));
    let database = app.database().clone();
    tokio::spawn(app.run_until_stopped());
    TestApp {
        address,
        metrics_address,
        client: reqwest::Client::new(),
        database_url,
        database,
        dir,
        _postgres: postgres,
    }
}

impl TestApp {
    /// POSTs a GraphQL document; returns the JSON body whatever the status.
    pub async fn gql(&self, token: Option<&str>, query: &str, variables: Value) -> Value {
        let mut request = self
            .client
            .post(format!("{}/graphql", self.address))
            .json(&json!({ "query": query, "variables": variables }));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request
            .send()
            .await
            .expect("request sent")
            .json()
            .await
            .expect("JSON body")
    }

    /// Signs a new user up; returns (token, user id).
    pub async fn sign_up(&self, email: &str) -> (String, String) {
        let body = self
            .gql(
                None,
                "mutation($input: SignUpInput!) { signUp(input: $input) { token user { id } } }",
                json!({ "input": { "email": email, "password": "correct horse", "name": email.split('@').next() } }),
            )
            .await;
        let payload = &body["data"]["signUp"];
        assert!(payload.is_object(), "signUp failed: {body}");
        (
            payload["token"].as_str().expect("token").to_owned(),
            payload["user"]["id"].as_str().expect("id").to_owned(),
        )
    }

    /// Creates a tenant owned by the token's user; returns its id.
    pub async fn create_tenant(&self, token: &str, slug: &str) -> String {
        let body = self
            .gql(
                Some(token),
                "mutation($input: CreateTenantInput!) { createTenant(input: $input) { id } }",
                json!({ "input": { "name": format!("Tenant {slug}"), "slug": slug } }),
            )
            .await;
        body["data"]["createTenant"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("createTenant failed: {body}"))
            .to_owned()
    }

    /// A signed-up user with a tenant: (token, tenant id).
    pub async fn owner_with_tenant(&self, slug: &str) -> (String, String) {
        let (token, _) = self.sign_up(&format!("{slug}@example.com")).await;
        let tenant = self.create_tenant(&token, slug).await;
        (token, tenant)
    }

    /// After a hostile run: the server is alive and still answers GraphQL.
    pub async fn assert_still_answering(&self) {
        let health = self
            .client
            .get(format!("{}/healthz", self.address))
            .send()
            .await
            .expect("the server answers");
        assert_eq!(health.status().as_u16(), 200);
        let body = self.gql(None, "{ creditTypes { value } }", json!({})).await;
        assert!(body["errors"].is_null(), "{body}");
    }

    /// Adds `user` to `tenant` with `role`, directly in the database (the invitation round
    /// trip is tested in teams.rs).
    pub async fn add_member(&self, tenant: &str, user: &str, role: &str) {
        let db = self.db().await;
        let backend = db.get_database_backend();
        let sql = match backend {
            sea_orm::DatabaseBackend::Postgres => {
                "INSERT INTO tenant_user (tenant_id, user_id, role, created_at) VALUES ($1, $2, $3, $4)"
            }
            _ => {
                "INSERT INTO tenant_user (tenant_id, user_id, role, created_at) VALUES (?, ?, ?, ?)"
            }
        };
        db.execute_raw(sea_orm::Statement::from_sql_and_values(
            backend,
            sql,
            [
                sea_orm::Value::from(uuid::Uuid::parse_str(tenant).expect("uuid")),
                sea_orm::Value::from(uuid::Uuid::parse_str(user).expect("uuid")),
                sea_orm::Value::from(role),
                sea_orm::Value::from(chrono::Utc::now()),
            ],
        ))
        .await
        .expect("member added");
    }

    pub async fn create_project(&self, token: &str, tenant_id: &str, name: &str) -> Value {
        self.gql(
            Some(token),
            "mutation($t: ID!, $input: CreateProjectInput!) { createProject(tenantId: $t, input: $input) { id tenantId name description createdAt } }",
            json!({ "t": tenant_id, "input": { "name": name } }),
        )
        .await
    }

    /// Creates a project that must succeed; returns its id.
    pub async fn project_id(&self, token: &str, tenant_id: &str) -> String {
        let body = self.create_project(token, tenant_id, "Project").await;
        body["data"]["createProject"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("createProject failed: {body}"))
            .to_owned()
    }

    pub async fn create_task(&self, token: &str, project_id: &str, title: &str) -> Value {
        self.gql(
            Some(token),
            "mutation($p: ID!, $input: CreateTaskInput!) { createTask(projectId: $p, input: $input) { id projectId title createdAt } }",
            json!({ "p": project_id, "input": { "title": title } }),
        )
        .await
    }

    pub async fn usage(&self, token: &str, tenant_id: &str) -> Value {
        let body = self
            .gql(
                Some(token),
                "query($t: ID!) { planFeatureUsage(tenantId: $t) { name title type value used remaining unlimited enabled message period { start end } } }",
                json!({ "t": tenant_id }),
            )
            .await;
        body["data"]["planFeatureUsage"].clone()
    }

    /// A direct connection to the test database, to arrange rows no API writes (back-dated
    /// usage) and to count what the API wrote.
    pub async fn db(&self) -> DatabaseConnection {
        SeaDatabase::connect(&self.database_url)
            .await
            .expect("test database connection")
    }

    /// A single number from a SQL query (COUNT, SUM) on the test database.
    pub async fn scalar(&self, sql: &str) -> i64 {
        let db = self.db().await;
        let row = db
            .query_one_raw(sea_orm::Statement::from_string(
                db.get_database_backend(),
                sql,
            ))
            .await
            .expect("query runs")
            .expect("one row");
        row.try_get_by_index::<Option<i64>>(0)
            .expect("an integer")
            .unwrap_or(0)
    }

    /// The `tollgate` binary, set to use this app's database and secret.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tollgate"));
        command
            .args(args)
            .env("DATABASE_URL", &self.database_url)
            .env("TOLLGATE_JWT_SECRET", JWT_SECRET)
            .env("TOLLGATE_RATE_LIMIT__ENABLED", "false")
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        command
    }

    /// Writes a config file into the app's temp dir; returns its path.
    pub fn write_config(&self, toml: &str) -> String {
        let path = self
            .dir
            .path()
            .join(format!("tollgate-{}.toml", uuid::Uuid::now_v7()));
        std::fs::write(&path, toml).expect("config written");
        path.to_string_lossy().into_owned()
    }

    /// A config file for more servers of this app whose default plan `test` gives `limit`
    /// credits a month (as `spawn_app_with_plan(Monthly, limit)` does), and the environment
    /// a replica needs beside it: long lock waits, as many replicas share one database, and
    /// few connections each — the multi-replica tests run side by side against one
    /// PostgreSQL server (100 connections by default), whose "too many clients" would fail
    /// requests that have nothing to do with what is tested.
    pub fn replica_env(&self, limit: i64) -> Vec<(&'static str, String)> {
        let config = self.write_config(&format!(
            "default_plan = \"test\"\n[[plans]]\nslug = \"test\"\ntitle = \"Test\"\n\
             [[plans.features]]\nname = \"credits\"\ntitle = \"Credits\"\ntype = \"MONTHLY\"\nvalue = {limit}\n"
        ));
        vec![
            ("TOLLGATE_CONFIG", config),
            ("TOLLGATE_DATABASE__ACQUIRE_TIMEOUT_MS", "60000".to_owned()),
            // Pool and readers of 4 each (with the writer's and the change listener's own
            // connections, 10 a replica): three replicas and the test's own server fit in
            // PostgreSQL's 100 side by side with the other tests.
            ("TOLLGATE_DATABASE__MAX_CONNECTIONS", "4".to_owned()),
            (
                "TOLLGATE_DATABASE__SQLITE_BUSY_TIMEOUT_MS",
                "60000".to_owned(),
            ),
        ]
    }

    /// Runs the `tollgate` binary against this app's database, to completion.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        self.command(args).output().expect("tollgate runs")
    }
}

/// The `extensions.code` of the first error, if any.
pub fn error_code(body: &Value) -> Option<&str> {
    body["errors"][0]["extensions"]["code"].as_str()
}

/// A Postgres database made for one test and dropped after it.
struct PostgresDb {
    admin_url: String,
    name: String,
    url: String,
}

impl PostgresDb {
    async fn create(server_url: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let base = server_base(server_url);
        let name = format!(
            "tollgate_test_{}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            uuid::Uuid::now_v7().simple()
        );
        let admin_url = format!("{base}/postgres");
        let admin = SeaDatabase::connect(&admin_url)
            .await
            .expect("TEST_DATABASE_URL reachable");
        admin
            .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
            .await
            .expect("create test database");
        let url = format!("{base}/{name}");
        PostgresDb {
            admin_url,
            name,
            url,
        }
    }
}

impl Drop for PostgresDb {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        // Drop runs inside the test's runtime: do the async work on a thread of its own.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok(admin) = SeaDatabase::connect(&admin_url).await {
                    let _ = admin.execute_unprepared(&sql).await;
                }
            });
        })
        .join();
    }
}

/// `postgres://user@host:port[/db][?…]` → `postgres://user@host:port`.
fn server_base(url: &str) -> String {
    let without_query = url.split('?').next().unwrap_or(url);
    let after_scheme = without_query.find("://").map_or(0, |i| i + 3);
    match without_query[after_scheme..].find('/') {
        Some(slash) => without_query[..after_scheme + slash].to_owned(),
        None => without_query.to_owned(),
    }
}

/// A database outage made by a test: Postgres refuses connections to the app's database
/// (and drops the open ones). An open SQLite file cannot go away under a process, so there
/// another connection holds the write lock instead: writes fail, reads still work.
pub struct Outage {
    admin: DatabaseConnection,
    postgres_name: Option<String>,
}

impl TestApp {
    pub fn is_postgres(&self) -> bool {
        self._postgres.is_some()
    }

    pub async fn database_outage(&self) -> Outage {
        match &self._postgres {
            Some(pg) => {
                let admin = SeaDatabase::connect(&pg.admin_url).await.expect("admin");
                admin
                    .execute_unprepared(&format!(
                        "ALTER DATABASE \"{0}\" ALLOW_CONNECTIONS false; \
                         SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{0}'",
                        pg.name
                    ))
                    .await
                    .expect("outage starts");
                Outage {
                    admin,
                    postgres_name: Some(pg.name.clone()),
                }
            }
            None => {
                let mut options = sea_orm::ConnectOptions::new(self.database_url.clone());
                options.max_connections(1).min_connections(1);
                let admin = SeaDatabase::connect(options).await.expect("locker");
                admin
                    .execute_unprepared("PRAGMA busy_timeout = 10000; BEGIN IMMEDIATE")
                    .await
                    .expect("outage starts");
                Outage {
                    admin,
                    postgres_name: None,
                }
            }
        }
    }
}

impl Outage {
    pub async fn end(self) {
        let sql = match &self.postgres_name {
            Some(name) => format!("ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS true"),
            None => "COMMIT".to_owned(),
        };
        self.admin
            .execute_unprepared(&sql)
            .await
            .expect("outage ends");
        let _ = self.admin.close().await;
    }
}

/// A database nothing has touched yet (a new PostgreSQL database when TEST_DATABASE_URL is
/// set, else a new SQLite file in `dir`): its URL, and what drops it.
pub async fn empty_database(dir: &std::path::Path) -> (String, Option<impl Drop>) {
    match std::env::var("TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => {
            let pg = PostgresDb::create(&url).await;
            (pg.url.clone(), Some(pg))
        }
        _ => (
            format!("sqlite://{}?mode=rwc", dir.join("empty.db").display()),
            None,
        ),
    }
}

/// A `tollgate serve` process of its own (for crash and multi-replica tests); killed on drop.
pub struct ServerProcess {
    pub url: String,
    /// Its stdout and stderr.
    pub log: std::path::PathBuf,
    child: std::process::Child,
}

impl TestApp {
    /// Starts `tollgate serve` on this app's database, with `env` set, and waits until ready.
    pub async fn start_server<K, V>(&self, env: &[(K, V)]) -> ServerProcess
    where
        K: AsRef<std::ffi::OsStr>,
        V: AsRef<std::ffi::OsStr>,
    {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut command = self.command(&["serve", "--addr", &format!("127.0.0.1:{port}")]);
        let log = self.dir.path().join(format!("server-{port}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        command
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(file.try_clone().expect("log file"))
            .stderr(file);
        let child = command.spawn().expect("tollgate serve starts");
        let server = ServerProcess {
            url: format!("http://127.0.0.1:{port}"),
            log,
            child,
        };
        for _ in 0..200 {
            let ready = self
                .client
                .get(format!("{}/readyz", server.url))
                .send()
                .await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return server;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("tollgate serve did not become ready at {}", server.url);
    }

    /// POSTs a GraphQL document to another server of this app.
    pub async fn gql_at(
        &self,
        url: &str,
        token: &str,
        query: &str,
        variables: Value,
    ) -> Result<Value, reqwest::Error> {
        self.client
            .post(format!("{url}/graphql"))
            .bearer_auth(token)
            .json(&json!({ "query": query, "variables": variables }))
            .send()
            .await?
            .json()
            .await
    }
}

impl ServerProcess {
    /// What the server has logged so far (warnings and errors: `RUST_LOG=warn`).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then waits (up to 30 s) for the process to exit; its exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(sent.is_ok_and(|s| s.success()), "SIGTERM sent");
        for _ in 0..300 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("the server did not stop within 30 s of SIGTERM");
    }

    /// A figure of /proc/PID/status, in KiB (`VmRSS`, `VmHWM`: the peak).
    pub fn memory_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the server is running");
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{field} in /proc/PID/status"))
    }

    /// SIGKILL: no shutdown, no flush, no goodbye.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
