//! `cargo xtask`: the project's developer tasks.
//!
//! - `test`  — install the Debian packages the tests need (when missing), then run fmt, clippy,
//!   every test (unit, property, peer interop, host integration, VM) and a short fuzz pass.
//! - `bench` — throughput figures against peers run in the same process run.
//! - `demo`  — the newcomer's tour of what Basalt does today.
//! - `image` — build an image (default: the container-host product) in one command.
//! - `crash-sweep` — the full crash sweep of a whole update (≥ 200 kill/tear points).
//! - `bench-install` — the update agent's install path vs a zstd/sha256 pipeline, peak RSS.
//! - `bench-agent` — the real `basalt-updated` over D-Bus installing from nginx vs `curl | zstd |
//!   tee`, its idle and peak RSS at two payload sizes.

mod bench;
mod bench_adaptive;
mod bench_agent;
mod bench_boot;
mod bench_http;
mod bench_install;
mod bench_rollout;
mod crash_sweep;
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
    /// Kill and tear every write of a whole update, then check the boot and the resume.
    CrashSweep(crash_sweep::Args),
    /// The agent's install path vs `zstd -dc | tee >(sha256) > file`, and its peak RSS.
    BenchInstall(bench_install::Args),
    /// The real basalt-updated installing from nginx over D-Bus vs `curl | zstd | tee`, and
    /// its idle and peak RSS at two payload sizes.
    BenchAgent(bench_agent::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Test(args) => test::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Image(args) => image::run(args),
        Command::CrashSweep(args) => crash_sweep::run(args),
        Command::BenchInstall(args) => bench_install::run(args),
        Command::BenchAgent(args) => bench_agent::run(args),
    }
}
