//! `cargo xtask demo`: the newcomer's tour.

use clap::Parser;

#[derive(Debug, Parser)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("no demo yet")
}
