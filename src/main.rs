//! The `tollgate` binary: parses the command line and runs it.

use clap::Parser;
use tollgate::cli::Cli;

/// mimalloc: a request makes some 200 allocations, which cost glibc's malloc and free ~245
/// instructions a pair and mimalloc a fraction of that (BENCHMARKS.md, "the allocator"). Built
/// without transparent huge pages (feature `no_thp`): its resident memory stays within a few
/// MB of glibc's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    Cli::parse().run().await
}
