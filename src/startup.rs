//! Start-up: connect, migrate, upsert the configured plans, bind, and serve. `build` returns a
//! value tests can start on port 0 and ask which port it got. Stopping (SIGTERM, SIGINT):
//! the server stops accepting, lets the requests in flight finish (up to
//! `http.shutdown_timeout_seconds`), then the usage reporter finishes its round and stops.

use std::{net::TcpListener, sync::Arc};

use actix_cors::Cors;
use actix_web::{
    App, HttpServer,
    dev::Server,
    http::header,
    middleware::{Condition, from_fn},
    web,
};
use migration::{Migrator, MigratorTrait};
use sea_orm::ConnectionTrait;
use tokio::{sync::watch, task::JoinHandle};
use tracing_actix_web::TracingLogger;

use crate::{
    auth::{Hasher, Keys},
    billing::{self, StripeHttp},
    clock::Clock,
    config::Config,
    credits::{Statements, Writer},
    db::Database,
    graphql, http, idempotency,
    metrics::Metrics,
    plans, projects,
    rate_limit::RateLimits,
    state::AppState,
    telemetry::{self, RootSpan},
};

pub struct Application {
    port: u16,
    server: Server,
    /// `GET /metrics` on `metrics.addr`, when it has an address of its own.
    metrics_server: Option<(u16, Server)>,
    db: Database,
    stop: watch::Sender<bool>,
    reporter: Option<JoinHandle<()>>,
    webhook_sender: JoinHandle<()>,
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        Self::build_with_clock(config, Clock::default()).await
    }

    /// A server whose credits run on `clock` (tests of time boundaries set it by hand).
    pub async fn build_with_clock(config: Config, clock: Clock) -> anyhow::Result<Self> {
        let db = Database::connect(&config).await?;
        let turn = StartUpLock::take(&config).await?;
        migrate(&db).await?;
        plans::sync_plans(&db, &config).await?;
        let alert_rules = crate::credits::alerts::default_rules(&config.alerts.default_rules)
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        crate::credits::alerts::sync_defaults(&db, &alert_rules).await?;
        turn.release().await;
        let keys = Keys::from_config(&config)?;
        let listener = TcpListener::bind(&config.addr)
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.addr))?;
        let port = listener.local_addr()?.port();
        idempotency::spawn_purger(
            db.clone(),
            chrono::Duration::seconds(
                i64::try_from(config.idempotency.retention_seconds).unwrap_or(i64::MAX),
            ),
            std::time::Duration::from_secs(config.idempotency.purge_interval_seconds),
        );
        let changes = crate::live::Changes::start(&db, &config.database_url);
        let sweep = std::time::Duration::from_secs(config.grants.sweep_interval_seconds.max(1));
        crate::credits::grants::spawn_sweeper(db.clone(), clock.clone(), sweep, changes.clone());
        crate::reservations::spawn_expirer(db.clone(), clock.clone(), sweep, changes.clone());
        let metrics = Metrics::new()?;
        let (stop, stopped) = watch::channel(false);
        let webhook_sender = crate::webhooks::spawn_sender(
            db.clone(),
            config.webhooks.clone(),
            metrics.clone(),
            stopped.clone(),
        );
        let (stripe, reporter) = match &config.stripe.secret_key {
            Some(key) => {
                let client = StripeHttp::new(
                    key,
                    &config.stripe.api_base,
                    std::time::Duration::from_millis(config.stripe.request_timeout_ms),
                )?;
                let reporter = billing::spawn_reporter(
                    db.clone(),
                    client.clone(),
                    config.stripe.clone(),
                    metrics.clone(),
                    stopped,
                );
                tracing::info!(api_base = %config.stripe.api_base, "Stripe usage reporting is on");
                (Some(client), Some(reporter))
            }
            None => {
                tracing::info!(
                    "Stripe is not configured (no stripe.secret_key): no usage is reported, Checkout and the billing portal are off"
                );
                (None, None)
            }
        };
        let limits = RateLimits::new(&config.rate_limit);
        limits.spawn_cleanup();
        let cors_origins = config.http.cors_allowed_origins.clone();
        let shutdown_timeout = config.http.shutdown_timeout_seconds;
        if config.stripe.webhook_secret.is_none() {
            tracing::info!("Stripe webhooks are off (no stripe.webhook_secret)");
        }
        let hasher = Hasher::spawn(config.auth.hashing_concurrency, config.auth.hashing_queue)?;
        let state = AppState {
            writer: Writer::spawn(
                db.clone(),
                Statements::build(
                    db.backend(),
                    &[
                        projects::PAID[0],
                        projects::PAID[1],
                        &crate::reservations::RESERVATION,
                    ],
                ),
                config.database.max_batch,
                metrics.clone(),
                changes.clone(),
            )
            .await?,
            owners: Arc::default(),
            clock: clock.clone(),
            changes,
            connections: Arc::default(),
            stripe,
            db: db.clone(),
            config: Arc::new(config),
            keys: Arc::new(keys),
            hasher,
            metrics,
            limits,
        };
        let schemas = web::Data::new(graphql::Schemas::new(state.clone()));
        let state = web::Data::new(state);
        let metrics_server = match &state.config.metrics.addr {
            Some(addr) => {
                let listener = TcpListener::bind(addr)
                    .map_err(|e| anyhow::anyhow!("cannot listen on metrics.addr {addr}: {e}"))?;
                let port = listener.local_addr()?.port();
                let state = state.clone();
                let server = HttpServer::new(move || {
                    App::new()
                        .app_data(state.clone())
                        .configure(http::metrics_routes)
                })
                .workers(1)
                .disable_signals()
                .listen(listener)?
                .run();
                Some((port, server))
            }
            None => None,
        };
        let with_metrics = metrics_server.is_none();
        let server = HttpServer::new(move || {
            App::new()
                .wrap(Condition::new(
                    !cors_origins.is_empty(),
                    cors(&cors_origins),
                ))
                .wrap(TracingLogger::<RootSpan>::new())
                .wrap(from_fn(telemetry::request_id))
                .app_data(schemas.clone())
                .app_data(state.clone())
                .configure(|cfg| http::routes(cfg, with_metrics))
        })
        .shutdown_timeout(shutdown_timeout)
        .listen(listener)?
        .run();
        Ok(Application {
            port,
            server,
            metrics_server,
            db,
            stop,
            reporter,
            webhook_sender,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The port of `metrics.addr`, when `/metrics` has an address of its own.
    pub fn metrics_port(&self) -> Option<u16> {
        self.metrics_server.as_ref().map(|(port, _)| *port)
    }

    /// The process's database handles (tests count statements through it).
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Serves until SIGTERM or SIGINT; then drains and stops the background work.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        tracing::info!(port = self.port, "Tollgate listening; GraphiQL at /graphql");
        let metrics = self.metrics_server.map(|(port, server)| {
            tracing::info!(port, "metrics listening at /metrics");
            let handle = server.handle();
            (handle, tokio::spawn(server))
        });
        let served = self.server.await;
        if let Some((handle, task)) = metrics {
            handle.stop(true).await;
            let _ = task.await;
        }
        tracing::info!("server stopped; stopping background work");
        let _ = self.stop.send(true);
        if let Some(reporter) = self.reporter {
            let _ = reporter.await;
        }
        let _ = self.webhook_sender.await;
        tracing::info!("Tollgate stopped");
        served
    }
}

/// CORS for the configured origins (`*`: any). Browsers may send `Authorization`,
/// `Content-Type`, `Idempotency-Key` and `X-Request-Id`, and read `X-Request-Id` and
/// `Retry-After`; cookies are never involved.
fn cors(origins: &[String]) -> Cors {
    let mut cors = Cors::default()
        .allowed_methods(["GET", "POST"])
        .allowed_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::HeaderName::from_static("idempotency-key"),
            header::HeaderName::from_static("x-request-id"),
        ])
        .expose_headers([
            header::HeaderName::from_static("x-request-id"),
            header::RETRY_AFTER,
        ])
        .max_age(600);
    for origin in origins {
        cors = if origin == "*" {
            cors.allow_any_origin()
        } else {
            cors.allowed_origin(origin)
        };
    }
    cors
}

/// Replicas starting together take turns at migrating and syncing the plans (two at once
/// raced on a fresh PostgreSQL database: `duplicate key … pg_type_typname_nsp_index`, and all
/// but one exited). On PostgreSQL a session advisory lock, on its own connection so that it
/// ends with the process however it ends; on SQLite an exclusive lock on a file beside the
/// database.
enum StartUpLock {
    Postgres(sea_orm::DatabaseConnection),
    File(std::fs::File),
    None,
}

/// The advisory lock's key: "tollgate" in ASCII, as a number.
const START_UP_LOCK_KEY: i64 = 0x746f_6c6c_6761_7465;

impl StartUpLock {
    async fn take(config: &Config) -> anyhow::Result<Self> {
        if !config.is_sqlite() {
            let mut options = sea_orm::ConnectOptions::new(config.database_url.clone());
            options
                .max_connections(1)
                .min_connections(1)
                .sqlx_logging(false);
            let conn = sea_orm::Database::connect(options)
                .await
                .map_err(|e| anyhow::anyhow!("cannot connect to the database: {e}"))?;
            conn.execute_unprepared(&format!("SELECT pg_advisory_lock({START_UP_LOCK_KEY})"))
                .await
                .map_err(|e| anyhow::anyhow!("cannot take the start-up lock: {e}"))?;
            return Ok(StartUpLock::Postgres(conn));
        }
        let Some(path) = sqlite_path(&config.database_url) else {
            return Ok(StartUpLock::None);
        };
        let lock_path = format!("{path}.start-up-lock");
        let file = tokio::task::spawn_blocking(move || -> std::io::Result<std::fs::File> {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&lock_path)?;
            file.lock()?;
            Ok(file)
        })
        .await?
        .map_err(|e| anyhow::anyhow!("cannot take the start-up lock beside {path}: {e}"))?;
        Ok(StartUpLock::File(file))
    }

    async fn release(self) {
        match self {
            StartUpLock::Postgres(conn) => {
                let unlock = format!("SELECT pg_advisory_unlock({START_UP_LOCK_KEY})");
                let _ = conn.execute_unprepared(&unlock).await;
                let _ = conn.close().await;
            }
            StartUpLock::File(file) => {
                let _ = file.unlock();
            }
            StartUpLock::None => {}
        }
    }
}

/// The file of a `sqlite://PATH?…` URL (none for an in-memory database).
fn sqlite_path(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next()?;
    (!path.is_empty() && !path.contains(":memory:")).then_some(path)
}

/// How many migrations the database has not had yet.
pub async fn pending_migrations(db: &Database) -> anyhow::Result<usize> {
    Ok(Migrator::get_pending_migrations(&db.write)
        .await
        .map_err(|e| anyhow::anyhow!("cannot read the applied migrations: {e}"))?
        .len())
}

/// Applies pending migrations.
pub async fn migrate(db: &Database) -> anyhow::Result<()> {
    Migrator::up(&db.write, None)
        .await
        .map_err(|e| anyhow::anyhow!("migrations failed: {e}"))
}
