//! Start-up: connect, migrate, upsert the configured plans, bind, and serve. `build` returns a
//! value tests can start on port 0 and ask which port it got.

use std::{net::TcpListener, sync::Arc};

use actix_web::{App, HttpServer, dev::Server, web};
use migration::{Migrator, MigratorTrait};
use tracing_actix_web::TracingLogger;

use crate::{
    auth::Keys,
    billing::{self, StripeHttp},
    config::Config,
    credits,
    db::Database,
    graphql::{self, AppState},
    http, idempotency,
    projects::Writer,
};

pub struct Application {
    port: u16,
    server: Server,
    db: Database,
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let db = Database::connect(&config).await?;
        migrate(&db).await?;
        credits::sync_plans(&db, &config).await?;
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
        let stripe = match &config.stripe.secret_key {
            Some(key) => {
                let client = StripeHttp::new(
                    key,
                    &config.stripe.api_base,
                    std::time::Duration::from_millis(config.stripe.request_timeout_ms),
                )?;
                billing::spawn_reporter(db.clone(), client.clone(), config.stripe.clone());
                tracing::info!(api_base = %config.stripe.api_base, "Stripe usage reporting is on");
                Some(client)
            }
            None => {
                tracing::info!(
                    "Stripe is not configured (no stripe.secret_key): no usage is reported, Checkout and the billing portal are off"
                );
                None
            }
        };
        if config.stripe.webhook_secret.is_none() {
            tracing::info!("Stripe webhooks are off (no stripe.webhook_secret)");
        }
        let state = AppState {
            writer: Writer::spawn(db.clone(), config.database.max_batch),
            stripe,
            db: db.clone(),
            config: Arc::new(config),
            keys: Arc::new(keys),
        };
        let schema = web::Data::new(graphql::build_schema(Some(state.clone())));
        let state = web::Data::new(state);
        let server = HttpServer::new(move || {
            App::new()
                .wrap(TracingLogger::default())
                .app_data(schema.clone())
                .app_data(state.clone())
                .configure(http::routes)
        })
        .listen(listener)?
        .run();
        Ok(Application { port, server, db })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process's database handles (tests count statements through it).
    pub fn database(&self) -> &Database {
        &self.db
    }

    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        tracing::info!(port = self.port, "Tollgate listening; GraphiQL at /graphql");
        self.server.await
    }
}

/// Applies pending migrations.
pub async fn migrate(db: &Database) -> anyhow::Result<()> {
    Migrator::up(&db.write, None)
        .await
        .map_err(|e| anyhow::anyhow!("migrations failed: {e}"))
}
