//! The `tollgate` binary: parses the command line and runs it.

use clap::Parser;
use tollgate::cli::Cli;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    Cli::parse().run().await
}
