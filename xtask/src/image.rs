//! `cargo xtask image`: build a Basalt image from a fresh clone in one command.
//!
//! The same library call as `basalt image build`, with the developer defaults filled in:
//! the definition `image/definitions/container-host.toml`, `basalt-init` built by cargo (the
//! tool says so), and — unless `--key`/`--trust` are given — the fixed TEST key and trust
//! root of the test suite (`build/cache/test-keys`), announced as such: an image signed with
//! them is for development only.

use std::path::PathBuf;

use anyhow::{ensure, Result};
use basalt_image::build::workspace::find_or_build_init;
use basalt_image::build::{build_with_progress, BuildRequest, Variant};
use clap::Parser;

use crate::sh;

#[derive(Debug, Parser)]
pub struct Args {
    /// The image definition (default: image/definitions/container-host.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// `product` (default) or `test` (adds the test hooks).
    #[arg(long, default_value = "product")]
    variant: Variant,
    /// Build this version instead of the definition's.
    #[arg(long = "set-version")]
    version: Option<semver::Version>,
    /// Output folder (default: build/images/<definition>-<variant>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Signing key (repeat); default: the fixed test key (development only).
    #[arg(long = "key")]
    keys: Vec<PathBuf>,
    /// Trust root; default: the test trust root (development only).
    #[arg(long)]
    trust: Option<PathBuf>,
    /// Resolve Debian packages against the index fetched last time.
    #[arg(long)]
    offline: bool,
}

pub fn run(args: Args) -> Result<()> {
    let root = sh::root();
    let config = args
        .config
        .unwrap_or_else(|| root.join("image/definitions/container-host.toml"));
    ensure!(
        args.keys.is_empty() == args.trust.is_none(),
        "give --key and --trust together, or neither (then the test key signs)"
    );
    let (keys, trust) = if args.keys.is_empty() {
        let test = basalt_tests::artifacts::test_keys()?;
        eprintln!(
            "xtask image: signing with the fixed TEST key ({}): for development only; give \
             --key and --trust for a real release",
            test.key.display()
        );
        (vec![test.key], test.trust)
    } else {
        (args.keys, args.trust.unwrap_or_default())
    };
    let stem = config
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into());
    let out = args.out.unwrap_or_else(|| {
        root.join("build")
            .join("images")
            .join(format!("{stem}-{}", args.variant.as_str()))
    });
    let mut say = |msg: &str| eprintln!("xtask image: {msg}");
    let init = find_or_build_init(None, &root, &root.join("basalt"), &mut say)?;
    let mut req = BuildRequest::new(config, keys, trust, init.path, out.clone());
    req.init_revision = init.revision;
    req.variant = args.variant;
    req.version = args.version;
    req.offline = args.offline;
    let report = build_with_progress(&req, &mut say)?;
    let f = &report.facts;
    println!(
        "{} {} ({}, {}) in {} — {} Debian packages, /usr {:.1} MiB (erofs), root hash {}{}",
        f.os,
        f.version,
        f.profile,
        f.variant.as_str(),
        out.display(),
        f.packages.len(),
        f.hash_offset as f64 / (1u64 << 20) as f64,
        f.root_hash,
        if report.from_cache {
            "; unsigned artifacts from the cache, signed now"
        } else {
            ""
        }
    );
    println!(
        "boot it: {}/disk.img (OVMF + systemd-boot); see what is in it: \
         basalt release inspect {} --trust <trust.json> --packages",
        out.display(),
        out.display()
    );
    Ok(())
}
