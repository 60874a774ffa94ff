//! `cargo xtask bench`: throughput against peers run in the same process run.

use clap::Parser;

#[derive(Debug, Parser)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("no benches yet")
}
