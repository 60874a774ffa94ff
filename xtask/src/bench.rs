//! `cargo xtask bench`: throughput against peers run in the same process run
//! (`--only verity|http|rollout|boot|adaptive` for one of them; the HTTP bench is in
//! `bench_http.rs`, the fleet server's in `bench_rollout.rs`, the boot and size bench against a
//! stock Debian reference in `bench_boot.rs`, the bytes of adaptive installs on real builds in
//! `bench_adaptive.rs`).
//!
//! verity: `basalt_verity::format` on one thread and on all cores vs `veritysetup format`, on
//! the same random file (1 GiB by default, cached under `target/bench/`), best of N rounds.
//! `sha256sum` of the file is printed as a context figure (it has no SHA-NI here; the real
//! ceiling is `openssl speed -evp sha256`), and so is a plain read of the file (the page-cache
//! copy every tool pays before hashing). Rounds interleave the tools so that load from other
//! processes on the machine hits all of them alike; compare the ratios, not absolute figures.
//! Every run also checks that our hash file and root hash equal veritysetup's. CPU seconds
//! (from /proc/self/stat, children included) are printed too: on a loaded machine they compare
//! the work each tool does far more stably than wall-clock time.

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
    /// Which benches to run.
    #[arg(long, value_enum, default_value_t = Only::All)]
    only: Only,
    /// Size of the file fetched over HTTP, in MiB.
    #[arg(long, default_value_t = 512)]
    http_size_mib: u64,
    /// Seconds of load per rollout check-in round.
    #[arg(long, default_value_t = 5)]
    rollout_seconds: u32,
    /// Nodes in the rollout fleet simulation.
    #[arg(long, default_value_t = 10_000)]
    rollout_nodes: usize,
    /// Interleaved boot rounds (each boots Basalt and the Debian reference on both paths).
    #[arg(long, default_value_t = 3)]
    boot_rounds: u32,
    /// Seconds a booted system settles before its memory is read.
    #[arg(long, default_value_t = 10)]
    settle: u32,
}

/// A subset of the benches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Only {
    All,
    /// `basalt_verity::format` vs `veritysetup format`.
    Verity,
    /// `HttpSource` vs `curl | openssl dgst` from nginx on 127.0.0.1.
    Http,
    /// Check-ins/s of `basalt-rollout serve` vs nginx; the 10,000-node fleet simulation.
    Rollout,
    /// The container-host image vs a stock Debian system with the same packages: boot
    /// stages, memory, sizes (`docs/benchmarks.md`).
    Boot,
    /// Bytes a node fetches for patch releases of the container-host image: full stream vs
    /// adaptive install (measured from nginx's log) vs RAUC-style fixed blocks; binary deltas.
    Adaptive,
}

const UUID: &str = "00000000-0000-4000-8000-000000000000";

pub fn run(args: Args) -> Result<()> {
    ensure!(
        args.size_mib > 0 && args.runs > 0 && args.http_size_mib > 0,
        "--size-mib, --http-size-mib and --runs must be positive"
    );
    if matches!(args.only, Only::All | Only::Verity) {
        verity(&args)?;
    }
    if matches!(args.only, Only::All | Only::Http) {
        crate::bench_http::run(args.http_size_mib, args.runs)?;
    }
    if matches!(args.only, Only::All | Only::Rollout) {
        crate::bench_rollout::run(args.runs, args.rollout_seconds, args.rollout_nodes)?;
    }
    if matches!(args.only, Only::All | Only::Boot) {
        crate::bench_boot::run(args.boot_rounds, args.settle)?;
    }
    if matches!(args.only, Only::All | Only::Adaptive) {
        crate::bench_adaptive::run()?;
    }
    Ok(())
}

fn verity(args: &Args) -> Result<()> {
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
    let names = [
        "basalt-verity, 1 thread".to_string(),
        format!("basalt-verity, {cores} threads"),
        "veritysetup format".to_string(),
        "sha256sum (context)".to_string(),
        "pread only, no hashing (ctx)".to_string(),
    ];
    let tick = clock_tick();
    let mut best = [Sample::worst(); 5];
    for round in 0..args.runs {
        let ours1 = work.path().join("ours-1");
        let ours_n = work.path().join("ours-n");
        let theirs = work.path().join("theirs");
        let samples = [
            measure(tick, || format_ours(&data, &ours1, &salt, 1))?,
            measure(tick, || format_ours(&data, &ours_n, &salt, 0))?,
            measure(tick, || {
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
            measure(tick, || {
                sh::output(Command::new("sha256sum").arg(&data)).map(|_| ())
            })?,
            measure(tick, || read_only(&data))?,
        ];
        if round == 0 {
            let (a, b, c) = (read(&ours1)?, read(&ours_n)?, read(&theirs)?);
            ensure!(a == c && b == c, "our hash file differs from veritysetup's");
        }
        for (b, s) in best.iter_mut().zip(samples) {
            b.wall = b.wall.min(s.wall);
            b.cpu = b.cpu.min(s.cpu);
        }
        for f in [&ours1, &ours_n, &theirs] {
            let _ = fs::remove_file(f);
        }
    }
    let rate = |secs: f64| bytes as f64 / secs / 1e6;
    println!(
        "  {:<28} {:>8} {:>10}   {:>8} {:>12}",
        "", "wall", "", "CPU", "per CPU-s"
    );
    for (name, b) in names.iter().zip(best) {
        println!(
            "  {name:<28} {:>7.3}s {:>6.0} MB/s   {:>7.2}s {:>7.0} MB/s",
            b.wall.as_secs_f64(),
            rate(b.wall.as_secs_f64()),
            b.cpu,
            rate(b.cpu)
        );
    }
    let vs = best[2].wall.as_secs_f64();
    println!(
        "  wall-clock ratio vs veritysetup: 1 thread {:.2}x (target >= 1.5x), {cores} threads {:.2}x (target >= 2.5x)",
        vs / best[0].wall.as_secs_f64(),
        vs / best[1].wall.as_secs_f64()
    );
    println!(
        "  CPU-time ratio vs veritysetup (robust to load from other processes): 1 thread {:.2}x",
        best[2].cpu / best[0].cpu
    );
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "  load average during the run: {} (above {cores}, wall figures are skewed by other processes)",
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    println!("  (hash files byte-identical to veritysetup's: checked)");
    Ok(())
}

/// Wall-clock time and CPU seconds (user + system, of this process and of waited-for
/// children) of one run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    pub(crate) wall: Duration,
    pub(crate) cpu: f64,
}

impl Sample {
    pub(crate) fn worst() -> Self {
        Sample {
            wall: Duration::MAX,
            cpu: f64::MAX,
        }
    }
}

/// Clock ticks per second of the times in /proc (`getconf CLK_TCK`, 100 on Linux).
pub(crate) fn clock_tick() -> f64 {
    sh::output(Command::new("getconf").arg("CLK_TCK"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime + cutime + cstime of this process, in ticks (fields 14-17 of /proc/self/stat).
fn cpu_ticks() -> Result<u64> {
    let stat = fs::read_to_string("/proc/self/stat").context("reading /proc/self/stat")?;
    let after_name = stat
        .rsplit_once(") ")
        .map(|(_, rest)| rest)
        .context("parsing /proc/self/stat")?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // after_name starts at field 3 (state): fields 14..=17 are indexes 11..=14.
    let mut sum = 0u64;
    for i in 11..=14 {
        let v: u64 = fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .context("parsing /proc/self/stat times")?;
        sum += v;
    }
    Ok(sum)
}

pub(crate) fn measure(tick: f64, f: impl FnOnce() -> Result<()>) -> Result<Sample> {
    let cpu0 = cpu_ticks()?;
    let start = Instant::now();
    f()?;
    let wall = start.elapsed();
    let cpu = (cpu_ticks()? - cpu0) as f64 / tick;
    Ok(Sample { wall, cpu })
}

/// Read the whole file with 256 KiB `pread`s, as the format does, without hashing: the
/// page-cache copy that every tool pays (on a VM it can cost as much as the hashing).
fn read_only(p: &Path) -> Result<()> {
    let f = File::open(p).with_context(|| format!("opening {}", p.display()))?;
    let mut buf = vec![0u8; 256 << 10];
    let mut off = 0u64;
    loop {
        let n = f
            .read_at(&mut buf, off)
            .with_context(|| format!("reading {}", p.display()))?;
        if n == 0 {
            return Ok(());
        }
        off += n as u64;
    }
}

fn read(p: &Path) -> Result<Vec<u8>> {
    fs::read(p).with_context(|| format!("reading {}", p.display()))
}

pub(crate) fn hex_encode(b: &[u8]) -> String {
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
pub(crate) fn ensure_random_file(path: &PathBuf, len: u64) -> Result<()> {
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

/// The install peers of `bench_install` and `bench_agent`: run `decode` (a shell pipeline
/// that writes the decoded usr blob to stdout: `zstd -dc FILE`, `curl … | zstd -dc`) and
/// hash its bytes with `openssl dgst -sha256` on their way into `slot`; `durable` adds what the agent also
/// does: make the bytes durable and hash them again from the device (`sync --data`, then
/// `dd iflag=direct | openssl dgst`). Seconds of wall clock; `slot` is removed afterwards.
pub(crate) fn peer_pipeline(decode: &str, slot: &Path, durable: bool) -> Result<f64> {
    let openssl = basalt_tests::tool::OPENSSL.locate()?;
    let mut script = format!(
        "set -e -o pipefail; {decode} | tee >('{}' dgst -sha256 >/dev/null) > '{}'",
        openssl.display(),
        slot.display()
    );
    if durable {
        script.push_str(&format!(
            "; sync --data '{0}'; dd if='{0}' iflag=direct bs=4M status=none | '{1}' dgst -sha256 >/dev/null",
            slot.display(),
            openssl.display()
        ));
    }
    let started = Instant::now();
    sh::output(Command::new("bash").args(["-c", &script]))
        .context("the peer needs bash, zstd (package zstd) and openssl (package openssl)")?;
    let seconds = started.elapsed().as_secs_f64();
    fs::remove_file(slot).with_context(|| format!("removing {}", slot.display()))?;
    Ok(seconds)
}
