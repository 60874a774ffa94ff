//! `basalt`: the build-side tool. Thin command-line glue over the library crates
//! (`basalt-verity`, `basalt-manifest`, `basalt-disk`, `basalt-initramfs`, `basalt_image::build`);
//! all logic lives there.
//!
//! Exit codes: 0 success, 1 the operation failed (the message names what and why),
//! 2 bad command-line usage (clap), 3 verification refused the input (corrupt data, bad
//! signature, policy refusal).

mod disk;
mod image;
mod initramfs;
mod inspect;
mod key;
mod manifest;
#[path = "release/cli.rs"]
mod release_cli;
mod trust;
mod verity;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "basalt",
    version,
    about = "Build Basalt OS images, verity trees and signed releases"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// dm-verity hash trees, compatible with veritysetup.
    #[command(subcommand)]
    Verity(verity::Command),
    /// Ed25519 signing keys.
    #[command(subcommand)]
    Key(key::Command),
    /// Trust roots: the keys and threshold a node accepts.
    #[command(subcommand)]
    Trust(trust::Command),
    /// Signed release manifests.
    #[command(subcommand)]
    Manifest(manifest::Command),
    /// Basalt disk images: GPT layout, slots, ESP and boot entries.
    #[command(subcommand)]
    Disk(disk::Command),
    /// Initramfs images: basalt-init, kernel modules, trust root.
    #[command(subcommand)]
    Initramfs(initramfs::Command),
    /// OS images: an IMAGE.toml definition → signed release and bootable disk.
    #[command(subcommand)]
    Image(image::Command),
    /// Release repositories: publish releases and trust roots, list channels.
    #[command(subcommand)]
    Release(release_cli::Command),
}

/// A failure that should exit with code 3 (the input was refused), not 1.
#[derive(Debug)]
pub struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Verity(cmd) => verity::run(cmd),
        Command::Key(cmd) => key::run(cmd),
        Command::Trust(cmd) => trust::run(cmd),
        Command::Manifest(cmd) => manifest::run(cmd),
        Command::Disk(cmd) => disk::run(cmd),
        Command::Initramfs(cmd) => initramfs::run(cmd),
        Command::Image(cmd) => image::run(cmd),
        Command::Release(cmd) => release_cli::run(cmd),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Library code logs through `tracing`; without a subscriber those lines were dropped.
    if let Err(e) = basalt_log::init() {
        eprintln!("basalt: {e}");
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("basalt: {err:#}");
            if err.downcast_ref::<Refused>().is_some() {
                ExitCode::from(3)
            } else {
                ExitCode::from(1)
            }
        }
    }
}
