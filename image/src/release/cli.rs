//! `basalt release …` subcommands (compiled into the `basalt` binary only): thin glue over
//! `basalt_image::release`.

use std::path::PathBuf;

use anyhow::Context;
use basalt_image::release::{self, CompressOptions, PublishRequest, ReleaseError};
use basalt_manifest::chrono::TimeDelta;
use clap::Subcommand;

use crate::key::{load_signing_keys, read_capped};

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show a built release: its signed manifest (verified with --trust) and its bill of
    /// materials (checked against the manifest: the signatures cover it).
    Inspect(crate::inspect::InspectArgs),
    /// Publish a built release (a `basalt image build` output folder) on a channel: compress
    /// its artifacts into content-addressed blobs, re-sign the manifest (channel, sequence,
    /// compression) and replace the channel head atomically.
    Publish {
        /// The release folder (release.json, usr.img, vmlinuz, initrd.img).
        release_dir: PathBuf,
        /// The repository folder (what a web server serves, or a `file://` source reads).
        #[arg(long)]
        repo: PathBuf,
        /// The channel (e.g. stable, beta).
        #[arg(long)]
        channel: String,
        /// Private key file (NAME.key); repeat for each signer (a threshold of the
        /// repository's newest trust root).
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
        /// The sequence; default: the channel head's + 1.
        #[arg(long)]
        sequence: Option<u64>,
        /// Publish a version older than the channel head's (logged).
        #[arg(long)]
        allow_downgrade: bool,
        /// Days the published manifest stays valid; default: as built.
        #[arg(long)]
        valid_days: Option<u32>,
        /// zstd level.
        #[arg(long, default_value_t = release::DEFAULT_ZSTD_LEVEL)]
        level: i32,
        /// Uncompressed bytes per zstd frame.
        #[arg(long, default_value_t = basalt_manifest::frames::DEFAULT_FRAME_LEN)]
        frame_size: u32,
        /// Compression threads (0: one per core).
        #[arg(long, default_value_t = 0)]
        threads: usize,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Add the next trust-root generation to the repository's chain (generation 1 first,
    /// each later one a valid rotation of the previous).
    PublishRoot {
        /// The trust root envelope (from `basalt trust create` / `basalt trust rotate`).
        root: PathBuf,
        /// The repository folder.
        #[arg(long)]
        repo: PathBuf,
    },
    /// Show the channels, versions, sequences and sizes of a repository.
    List {
        /// The repository folder.
        #[arg(long)]
        repo: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// A library refusal (bad key, replay, downgrade, changed root…) exits 3, I/O failures 1.
fn classify(e: ReleaseError) -> anyhow::Error {
    match e {
        ReleaseError::Io { .. } | ReleaseError::Replace { .. } | ReleaseError::Compress { .. } => {
            e.into()
        }
        other => crate::Refused(format!("{:#}", anyhow::Error::from(other))).into(),
    }
}

pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Inspect(args) => crate::inspect::run_inspect(args),
        Command::Publish {
            release_dir,
            repo,
            channel,
            keys,
            sequence,
            allow_downgrade,
            valid_days,
            level,
            frame_size,
            threads,
            json,
        } => {
            let keys = load_signing_keys(&keys)?;
            let report = release::publish(&PublishRequest {
                release_dir: &release_dir,
                repo: &repo,
                channel: &channel,
                keys: &keys,
                sequence,
                allow_downgrade,
                now: basalt_image::build::image::issue_time_from_env(),
                valid_for: valid_days.map(|d| TimeDelta::days(i64::from(d))),
                compress: CompressOptions {
                    level,
                    frame_len: frame_size,
                    threads,
                },
            })
            .map_err(classify)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "published {} {} on {}/{} as sequence {} (head sha256 {})",
                    report.os,
                    report.version,
                    report.channel,
                    report.arch,
                    report.sequence,
                    report.head_sha256
                );
                for a in &report.artifacts {
                    println!(
                        "  {:<12} {:>12} → {:>12} bytes, {} frames, blob {}{}",
                        a.name,
                        a.size,
                        a.compressed_size,
                        a.frames,
                        a.blob,
                        if a.blob_written { "" } else { " (reused)" }
                    );
                }
            }
            Ok(())
        }
        Command::PublishRoot { root, repo } => {
            let bytes = read_capped(&root, basalt_manifest::MAX_TRUST_ROOT_BYTES)?;
            let generation = release::publish_root(&repo, &root, &bytes).map_err(classify)?;
            println!("trust root generation {generation} is published");
            Ok(())
        }
        Command::List { repo, json } => {
            let listing = release::list(&repo)
                .map_err(classify)
                .with_context(|| format!("listing {}", repo.display()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&listing)?);
                return Ok(());
            }
            match listing.trust_generation {
                Some(g) => println!("trust root: generation {g}"),
                None => println!("trust root: none"),
            }
            for c in &listing.channels {
                println!("{}/{}:", c.channel, c.arch);
                for r in &c.releases {
                    println!(
                        "  {} {:<16} sequence {:<6} issued {} expires {}  {} bytes ({} compressed){}",
                        if r.head { "*" } else { " " },
                        r.version.to_string(),
                        r.sequence,
                        r.issued_at.format("%Y-%m-%d %H:%M"),
                        r.expires_at.format("%Y-%m-%d %H:%M"),
                        r.size,
                        r.compressed_size,
                        r.refused
                            .as_ref()
                            .map(|why| format!("  REFUSED: {why}"))
                            .unwrap_or_default()
                    );
                }
            }
            Ok(())
        }
    }
}
