//! `cargo xtask bench`: throughput against peers run in the same process run.
//!
//! verity: `basalt_verity::format` on one thread and on all cores vs `veritysetup format`, on
//! the same random file (1 GiB by default, cached under `target/bench/`), best of N rounds.
//! `sha256sum` of the file is printed as a context figure (it has no SHA-NI here; the real
//! ceiling is `openssl speed -evp sha256`). Rounds interleave the tools so that load from other
//! processes on the machine hits all of them alike; compare the ratios, not absolute figures.
//! Every run also checks that our hash file and root hash equal veritysetup's.

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;

use crate::sh;

#[derive(Debug, Parser)]
pub struct Args {
    /// Size of the random data file, in MiB.
    #[arg(long, default_value_t = 1024)]
    size_mib: u64,
    /// Rounds; each figure is the best of them.
    #[arg(long, default_value_t = 3)]
    runs: u32,
}

const UUID: &str = "00000000-0000-4000-8000-000000000000";

pub fn run(args: Args) -> Result<()> {
    ensure!(
        args.size_mib > 0 && args.runs > 0,
        "--size-mib and --runs must be positive"
    );
    let veritysetup = ["/usr/sbin/veritysetup", "/sbin/veritysetup"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .context("veritysetup not found: install the Debian package cryptsetup-bin")?;
    let bytes = args.size_mib << 20;
    let cache = sh::root().join("target").join("bench");
    fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    let data = cache.join(format!("random-{}MiB.bin", args.size_mib));
    ensure_random_file(&data, bytes)?;
    let work = tempfile::tempdir_in(&cache).context("creating a work directory")?;
    let salt = basalt_verity::random_salt()?;
    let salt_hex = hex_encode(&salt);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());

    println!(
        "verity format of {} MiB ({}), best of {} interleaved rounds, {cores} cores",
        args.size_mib,
        data.display(),
        args.runs
    );
    let mut best = [Duration::MAX; 4];
    let names = [
        "basalt-verity, 1 thread".to_string(),
        format!("basalt-verity, {cores} threads"),
        "veritysetup format".to_string(),
        "sha256sum (context)".to_string(),
    ];
    for round in 0..args.runs {
        let ours1 = work.path().join("ours-1");
        let ours_n = work.path().join("ours-n");
        let theirs = work.path().join("theirs");
        let times = [
            time(|| format_ours(&data, &ours1, &salt, 1))?,
            time(|| format_ours(&data, &ours_n, &salt, 0))?,
            time(|| {
                // veritysetup creates the hash file with O_EXCL.
                let _ = fs::remove_file(&theirs);
                sh::output(
                    Command::new(veritysetup)
                        .arg("format")
                        .arg(&data)
                        .arg(&theirs)
                        .args(["--salt", &salt_hex, "--uuid", UUID]),
                )
                .map(|_| ())
            })?,
            time(|| sh::output(Command::new("sha256sum").arg(&data)).map(|_| ()))?,
        ];
        if round == 0 {
            let (a, b, c) = (read(&ours1)?, read(&ours_n)?, read(&theirs)?);
            ensure!(a == c && b == c, "our hash file differs from veritysetup's");
        }
        for (b, t) in best.iter_mut().zip(times) {
            *b = (*b).min(t);
        }
        for f in [&ours1, &ours_n, &theirs] {
            let _ = fs::remove_file(f);
        }
    }
    let rate = |d: Duration| bytes as f64 / d.as_secs_f64() / 1e6;
    for (name, d) in names.iter().zip(best) {
        println!(
            "  {name:<28} {:>7.3} s  {:>7.0} MB/s",
            d.as_secs_f64(),
            rate(d)
        );
    }
    let vs = best[2].as_secs_f64();
    println!(
        "  ratio vs veritysetup: 1 thread {:.2}x (target >= 1.5x), {cores} threads {:.2}x (target >= 2.5x)",
        vs / best[0].as_secs_f64(),
        vs / best[1].as_secs_f64()
    );
    println!("  (hash files byte-identical to veritysetup's: checked)");
    Ok(())
}

fn time(f: impl FnOnce() -> Result<()>) -> Result<Duration> {
    let start = Instant::now();
    f()?;
    Ok(start.elapsed())
}

fn read(p: &Path) -> Result<Vec<u8>> {
    fs::read(p).with_context(|| format!("reading {}", p.display()))
}

fn hex_encode(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn format_ours(data: &Path, hash: &Path, salt: &[u8], threads: usize) -> Result<()> {
    let _ = fs::remove_file(hash);
    let mut uuid = [0u8; 16];
    uuid[6] = 0x40;
    uuid[8] = 0x80;
    let opts = basalt_verity::FormatOptions {
        salt: salt.to_vec(),
        uuid: Some(uuid),
        threads,
        ..Default::default()
    };
    basalt_verity::format_path(data, hash, None, &opts)?;
    Ok(())
}

/// Create `path` with `len` pseudo-random bytes unless it already has that size (the content
/// does not matter for hashing speed, only that it is not compressible or sparse).
fn ensure_random_file(path: &PathBuf, len: u64) -> Result<()> {
    if fs::metadata(path).map(|m| m.len() == len).unwrap_or(false) {
        return Ok(());
    }
    eprintln!("creating {} ({} bytes)", path.display(), len);
    let f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let seed = basalt_verity::random_bytes(8)?;
    let mut x = u64::from_le_bytes(seed.as_slice().try_into()?) | 1;
    let mut buf = vec![0u8; 4 << 20];
    let mut off = 0u64;
    while off < len {
        for chunk in buf.chunks_exact_mut(8) {
            // xorshift64*
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            chunk.copy_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
        }
        let n = (len - off).min(buf.len() as u64) as usize;
        f.write_all_at(&buf[..n], off)
            .with_context(|| format!("writing {}", path.display()))?;
        off += n as u64;
    }
    if fs::metadata(path)?.len() != len {
        bail!("{} has the wrong size", path.display());
    }
    Ok(())
}
