//! The command line: `serve` (default), `migrate`, `print-schema`, `verify`, `token`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::{
    auth::{
        self, ApiScope, Keys,
        api_keys::{self, NewApiKey},
    },
    config::{Config, Overrides},
    db::Database,
    graphql,
    startup::{self, Application},
    telemetry,
};

#[derive(Debug, Parser)]
#[command(
    name = "tollgate",
    version,
    about = "Credits guard, ledger and GraphQL API for SaaS plans"
)]
pub struct Cli {
    /// TOML config file (every key can also be set by environment: TOLLGATE_<KEY>).
    #[arg(long, global = true, env = "TOLLGATE_CONFIG")]
    config: Option<PathBuf>,
    /// Database URL: sqlite://FILE?mode=rwc or postgres://… (env DATABASE_URL).
    #[arg(long, global = true)]
    database_url: Option<String>,
    /// Address `serve` listens on (env TOLLGATE_ADDR; default 127.0.0.1:8080).
    #[arg(long, global = true)]
    addr: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the HTTP server (the default).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Print the GraphQL schema (SDL) to stdout.
    PrintSchema,
    /// Check that the ledger, the usage counters and the resources agree (exit 1 if not).
    Verify,
    /// Mint an access token for an existing user, for local use.
    Token {
        #[arg(long)]
        email: String,
    },
    /// Manage API keys from the server's machine.
    #[command(subcommand)]
    ApiKey(ApiKeyCommand),
}

#[derive(Debug, Subcommand)]
enum ApiKeyCommand {
    /// Create a key and print its secret (shown only this once) on stdout.
    Create {
        /// A platform key: any tenant.
        #[arg(long, conflicts_with = "tenant")]
        platform: bool,
        /// A tenant's key: only this tenant (its id).
        #[arg(long, required_unless_present = "platform")]
        tenant: Option<uuid::Uuid>,
        #[arg(long)]
        name: String,
        /// Scopes, comma-separated: CREDITS_CONSUME, CREDITS_READ, CREDITS_GRANT, TENANTS_WRITE.
        #[arg(long, value_delimiter = ',', required = true)]
        scopes: Vec<String>,
    },
}

impl Cli {
    pub async fn run(self) -> anyhow::Result<()> {
        let command = self.command.unwrap_or(Command::Serve);
        if let Command::PrintSchema = command {
            print!("{}", graphql::sdl());
            return Ok(());
        }
        let overrides = Overrides {
            addr: self.addr,
            database_url: self.database_url,
        };
        let config = Config::load(self.config.as_deref(), &overrides)?;
        telemetry::init(config.log_format);
        match command {
            Command::Serve => {
                Application::build(config)
                    .await?
                    .run_until_stopped()
                    .await?
            }
            Command::Migrate => {
                startup::migrate(&Database::connect(&config).await?).await?;
                eprintln!("migrations applied");
            }
            Command::Verify => {
                let db = Database::connect(&config).await?;
                // Read-only: it checks the database as it is, and says so when it is behind.
                let pending = startup::pending_migrations(&db).await?;
                if pending > 0 {
                    anyhow::bail!(
                        "the database has {pending} migration(s) not applied yet: run `tollgate migrate` (or start the server) first"
                    );
                }
                let report = crate::credits::verify(&db.read, &crate::projects::PAID).await?;
                print!("{report}");
                if !report.is_clean() {
                    std::process::exit(1);
                }
            }
            Command::Token { email } => {
                let db = Database::connect(&config).await?;
                let email = auth::normalize_email(&email)?;
                let user = auth::find_by_email(&db.read, &email)
                    .await?
                    .with_context(|| format!("no user with the email {email}"))?;
                println!("{}", Keys::from_config(&config)?.mint(user.id)?);
            }
            Command::ApiKey(ApiKeyCommand::Create {
                platform: _,
                tenant,
                name,
                scopes,
            }) => {
                let scopes = scopes
                    .iter()
                    .map(|s| {
                        ApiScope::parse(s.trim()).with_context(|| format!("unknown scope {s:?}"))
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let db = Database::connect(&config).await?;
                let request = NewApiKey {
                    tenant_id: tenant,
                    name,
                    scopes,
                    expires_at: None,
                };
                let (key, secret) = api_keys::create_unchecked(&db, request).await?;
                eprintln!("created API key {} ({})", key.id, key.prefix);
                println!("{secret}");
            }
            Command::PrintSchema => {}
        }
        Ok(())
    }
}
