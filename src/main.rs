//! The `tollgate` binary: parses the command line and runs it.

use clap::Parser;
use tollgate::cli::Cli;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    Cli::parse().run().await
}
