//! `cargo xtask crash-sweep`: the full crash sweep of a whole update (every write point of
//! check → download → apply, killed and torn, on both boot-control backends; see
//! `updater/tests/crash_sweep.rs`). `cargo test` runs a reduced sweep (every 4th point).

use std::process::Command;

use anyhow::Result;
use clap::Parser;

use crate::sh;

#[derive(Debug, Parser)]
pub struct Args {}

pub fn run(_args: Args) -> Result<()> {
    sh::run(
        Command::new("cargo")
            .current_dir(sh::root())
            .env("BASALT_CRASH_SWEEP", "full")
            .args([
                "test",
                "-p",
                "basalt-updater",
                "--test",
                "crash_sweep",
                "--",
                "--nocapture",
            ]),
    )
}
