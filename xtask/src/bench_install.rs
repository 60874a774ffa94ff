//! `cargo xtask bench-install`: the update agent's install path against a shell pipeline
//! doing the least a download can do, on the same payload in the same run.
//!
//! Ours (`updater/examples/install_payload.rs`, release build): `NodeEngine` check +
//! download of a synthetic release of `--size-mib` MiB of /usr from a folder repository into
//! slot B of a disk image file — every frame hashed before and after decoding, written,
//! fdatasync'ed, the page cache dropped, the slot re-read and its verity tree and usr-hash
//! statement verified, the slot named — plus the kernel and initrd. Peer: `zstd -dc BLOB |
//! tee >(openssl dgst -sha256 >/dev/null) > FILE` on the usr blob alone (no verification, no
//! fsync; `curl` left out because the source is a folder: the HTTP comparison lives in
//! `cargo xtask bench`). A second peer line adds what the agent must also do and the first
//! peer skips — `sync --data` and a re-read from the device (`dd iflag=direct | openssl dgst`)
//! — so the same I/O is compared. Best of N interleaved rounds; ratios are peer time / our
//! time (target ≥ 0.9). Peak RSS is the agent's own `ru_maxrss`, measured at two payload sizes
//! to show it does not grow with the image (target ≤ 32 MiB).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Context, Result};
use clap::Parser;

use crate::sh;

#[derive(Debug, Parser)]
pub struct Args {
    /// Size of the /usr payload, in MiB.
    #[arg(long, default_value_t = 512)]
    size_mib: u64,
    /// Rounds; each figure is the best of them.
    #[arg(long, default_value_t = 3)]
    runs: u32,
}

struct Ours {
    seconds: f64,
    peak_rss_kib: u64,
}

fn example(root: &Path) -> PathBuf {
    root.join("target")
        .join("release")
        .join("examples")
        .join("install_payload")
}

fn prepared(root: &Path, size_mib: u64) -> Result<PathBuf> {
    let work = root
        .join("target")
        .join("bench")
        .join(format!("install-{size_mib}MiB"));
    if !work.join("usr-blob.path").exists() {
        if work.exists() {
            std::fs::remove_dir_all(&work)?;
        }
        eprintln!(
            "bench-install: preparing a {size_mib} MiB release in {}",
            work.display()
        );
        sh::run(
            Command::new(example(root))
                .arg("prepare")
                .arg(&work)
                .arg(size_mib.to_string()),
        )?;
    }
    Ok(work)
}

fn ours(root: &Path, work: &Path) -> Result<Ours> {
    let out = sh::output(Command::new(example(root)).arg("install").arg(work))?;
    let v: serde_json::Value =
        serde_json::from_str(out.trim()).with_context(|| format!("reading {out:?}"))?;
    Ok(Ours {
        seconds: v["seconds"].as_f64().context("seconds")?,
        peak_rss_kib: v["peak_rss_kib"].as_u64().context("peak_rss_kib")?,
    })
}

/// The peer pipeline ([`crate::bench::peer_pipeline`]) over the blob on disk.
fn peer(work: &Path, durable: bool) -> Result<f64> {
    let blob = std::fs::read_to_string(work.join("usr-blob.path"))?;
    crate::bench::peer_pipeline(
        &format!("zstd -dc '{}'", blob.trim()),
        &work.join("peer-slot"),
        durable,
    )
}

pub fn run(args: Args) -> Result<()> {
    ensure!(
        args.size_mib >= 16 && args.runs > 0,
        "--size-mib >= 16, --runs > 0"
    );
    let root = sh::root();
    sh::run(Command::new("cargo").current_dir(&root).args([
        "build",
        "--release",
        "-p",
        "basalt-updater",
        "--example",
        "install_payload",
    ]))?;
    let work = prepared(&root, args.size_mib)?;
    let (mut best_ours, mut best_peer, mut best_durable, mut rss) =
        (f64::MAX, f64::MAX, f64::MAX, 0u64);
    for round in 0..args.runs {
        let o = ours(&root, &work)?;
        let p = peer(&work, false)?;
        let d = peer(&work, true)?;
        eprintln!(
            "round {}: agent {:.2} s (peak RSS {} KiB), peer {:.2} s, durable peer {:.2} s",
            round + 1,
            o.seconds,
            o.peak_rss_kib,
            p,
            d
        );
        best_ours = best_ours.min(o.seconds);
        best_peer = best_peer.min(p);
        best_durable = best_durable.min(d);
        rss = rss.max(o.peak_rss_kib);
    }
    let small = prepared(&root, 64)?;
    let small_rss = ours(&root, &small)?.peak_rss_kib;
    let mib_s = |s: f64| args.size_mib as f64 / s;
    println!(
        "install of {} MiB of /usr, best of {} rounds:",
        args.size_mib, args.runs
    );
    println!(
        "  agent (verify included)        {best_ours:>7.2} s  {:>7.1} MiB/s",
        mib_s(best_ours)
    );
    println!(
        "  zstd -dc | tee >(sha256) > f   {best_peer:>7.2} s  {:>7.1} MiB/s",
        mib_s(best_peer)
    );
    println!(
        "  + sync --data, dd direct | sha {best_durable:>7.2} s  {:>7.1} MiB/s",
        mib_s(best_durable)
    );
    println!(
        "  ratio peer/agent               {:>7.2}  (target >= 0.9)",
        best_peer / best_ours
    );
    println!(
        "  ratio durable peer/agent       {:>7.2}  (the same I/O: durable write + re-read)",
        best_durable / best_ours
    );
    println!(
        "  agent peak RSS                 {:>7.1} MiB at {} MiB, {:.1} MiB at 64 MiB (target <= 32)",
        rss as f64 / 1024.0,
        args.size_mib,
        small_rss as f64 / 1024.0
    );
    Ok(())
}
