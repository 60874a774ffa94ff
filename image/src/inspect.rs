//! `basalt release inspect`: glue over `basalt_image::build::inspect`.

use std::path::PathBuf;

use basalt_image::build::inspect::{inspect, Inspection};
use basalt_manifest::chrono::{DateTime, Utc};
use clap::Args;

use crate::key::load_trust_chain;

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The release directory (what `basalt image build` wrote).
    pub dir: PathBuf,
    /// Trust root file(s) to verify the signatures with (anchor first, then each rotation).
    /// Without it the manifest is only parsed, and the output says so.
    #[arg(long = "trust")]
    pub trust: Vec<PathBuf>,
    /// The time to verify at (RFC 3339); default: now.
    #[arg(long)]
    pub now: Option<DateTime<Utc>>,
    /// List every package of the SBOM.
    #[arg(long)]
    pub packages: bool,
    /// Print JSON (manifest, verification, SBOM summary) instead of text.
    #[arg(long)]
    pub json: bool,
    /// A release repository this release is published in: print the expected usr download
    /// (adaptive install) from each earlier release of its channel.
    #[arg(long)]
    pub repo: Option<PathBuf>,
    /// The channel to look in with `--repo` (default: the manifest's).
    #[arg(long)]
    pub channel: Option<String>,
}

pub fn run_inspect(args: InspectArgs) -> anyhow::Result<()> {
    let trust = if args.trust.is_empty() {
        None
    } else {
        Some(load_trust_chain(&args.trust)?)
    };
    let now = args.now.unwrap_or_else(Utc::now);
    let seen = match inspect(&args.dir, trust.as_ref(), now) {
        Ok(seen) => seen,
        Err(e) if Inspection::is_refusal(&e) => {
            return Err(crate::Refused(format!("{:#}", anyhow::Error::new(e))).into())
        }
        Err(e) => return Err(e.into()),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&seen)?);
        return Ok(());
    }
    let m = &seen.manifest;
    println!(
        "{} {} ({} / {}), sequence {}, issued {}, expires {}",
        m.os, m.version, m.channel, m.arch, m.sequence, m.issued_at, m.expires_at
    );
    if seen.verified {
        println!("signatures: verified by {}", seen.signed_by.join(", "));
    } else {
        println!("signatures: NOT checked (pass --trust TRUST.json)");
    }
    for a in &m.artifacts {
        println!(
            "  {:<7} {:<16} {:>12} bytes  sha256 {}",
            format!("{:?}", a.kind).to_lowercase(),
            a.name,
            a.size,
            a.sha256.to_hex()
        );
    }
    if let Some(repo) = &args.repo {
        let channel = args.channel.as_deref().unwrap_or(&m.channel);
        let store = basalt_image::release::Repo::read_only(repo);
        match basalt_image::release::adaptive::expected_downloads(
            &store, channel, &m.arch, &m.version,
        )
        .map_err(anyhow::Error::msg)?
        {
            None => println!("adaptive install: {channel}: this release has no block index"),
            Some(list) if list.is_empty() => {
                println!("adaptive install: {channel}: no earlier release with a block index")
            }
            Some(list) => {
                println!("adaptive install on {channel} (usr.img download, block index included):");
                for d in list {
                    let pct = |b: u64| 100.0 * b as f64 / d.full_bytes.max(1) as f64;
                    println!(
                        "  from {:<12} (sequence {:>4}) {:>12} bytes = {:>6.2} % of the full stream ({} bytes); {} binary deltas (block reuse alone: {:.2} %)",
                        d.from_version.to_string(),
                        d.from_sequence,
                        d.adaptive_bytes,
                        pct(d.adaptive_bytes),
                        d.full_bytes,
                        d.deltas_used,
                        pct(d.block_reuse_bytes)
                    );
                }
            }
        }
    }
    match &seen.sbom {
        None => println!("no SBOM listed in this release"),
        Some(s) => {
            println!(
                "SBOM {} (SPDX 2.3, created {}): {} Debian packages in /usr",
                s.name,
                s.created,
                s.debian.len()
            );
            for (name, version) in &s.other_debian {
                println!("  also Debian {name} {version}");
            }
            for (name, revision, at) in &s.basalt {
                println!("  Basalt {name} at {at}, git revision {revision}");
            }
            if args.packages {
                for (name, version, arch, source) in &s.debian {
                    println!("  {name} {version} {arch} (source {source})");
                }
            }
        }
    }
    Ok(())
}
