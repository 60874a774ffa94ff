//! `cargo xtask`: the project's developer tasks.
//!
//! - `test`  — install the Debian packages the tests need (when missing), then run fmt, clippy,
//!   every test (unit, property, peer interop, host integration, VM) and a short fuzz pass.
//! - `bench` — throughput figures against peers run in the same process run.
//! - `demo`  — the newcomer's tour of what Basalt does today.
//! - `image` — build an image (default: the container-host product) in one command.

mod bench;
mod bench_boot;
mod bench_http;
mod demo;
mod image;
mod sh;
mod test;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install test dependencies if missing, then run every check CI runs.
    Test(test::Args),
    /// Measure throughput against peers (veritysetup, sha256 ceilings).
    Bench(bench::Args),
    /// Show what Basalt does, step by step.
    Demo(demo::Args),
    /// Build an image (default: the container-host product) in one command.
    Image(image::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Test(args) => test::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Image(args) => image::run(args),
    }
}
