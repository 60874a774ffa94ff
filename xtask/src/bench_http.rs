//! `cargo xtask bench --only http`: fetching a large file from nginx on 127.0.0.1 through
//! `basalt_updater::source::http::HttpSource` (read into a 256 KiB buffer, SHA-256 with ring:
//! what the pipeline does before decompressing) vs `curl -s URL | openssl dgst -sha256` on the
//! same file, best of N interleaved rounds, ratio printed. Both digests must agree.
//!
//! Wall-clock figures on a shared 2-core machine move with other people's builds; the CPU
//! seconds (this process and its waited-for children) are the steadier comparison. nginx's own
//! CPU time is not counted for either side (it is the same work for both).

use std::io::Read;
use std::process::Command;

use anyhow::{ensure, Context, Result};
use basalt_updater::http::HttpConfig;
use basalt_updater::source::http::HttpSource;
use basalt_updater::source::Source;

use crate::bench::{clock_tick, ensure_random_file, hex_encode, measure, Sample};
use crate::sh;

pub fn run(size_mib: u64, runs: u32) -> Result<()> {
    let bytes = size_mib << 20;
    let work = sh::root().join("target").join("bench").join("http");
    let www = work.join("www");
    std::fs::create_dir_all(&www).with_context(|| format!("creating {}", www.display()))?;
    let file = www.join(format!("random-{size_mib}MiB.bin"));
    ensure_random_file(&file, bytes)?;
    let nginx = basalt_tests::web::Nginx::start(&work.join("nginx"), &www)?;
    let name = format!("random-{size_mib}MiB.bin");
    let url = format!("{}{name}", nginx.url());
    let source = HttpSource::new(&nginx.url(), HttpConfig::default())?;
    let curl = basalt_tests::tool::CURL.locate()?;
    let openssl = basalt_tests::tool::OPENSSL.locate()?;
    let pipeline = format!(
        "set -o pipefail; '{}' -sf '{url}' | '{}' dgst -sha256 -r",
        curl.display(),
        openssl.display()
    );

    println!(
        "HTTP fetch + sha256 of {size_mib} MiB from nginx on 127.0.0.1 ({url}), best of {runs} interleaved rounds"
    );
    let tick = clock_tick();
    let mut best = [Sample::worst(); 2];
    let mut digests = (String::new(), String::new());
    for _ in 0..runs {
        let ours = measure(tick, || {
            digests.0 = fetch_ours(&source, &name, bytes)?;
            Ok(())
        })?;
        let theirs = measure(tick, || {
            let out = sh::output(Command::new("bash").arg("-c").arg(&pipeline))?;
            digests.1 = out
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string();
            Ok(())
        })?;
        ensure!(
            digests.0 == digests.1,
            "digests differ: ours {} vs curl|openssl {}",
            digests.0,
            digests.1
        );
        for (b, s) in best.iter_mut().zip([ours, theirs]) {
            b.wall = b.wall.min(s.wall);
            b.cpu = b.cpu.min(s.cpu);
        }
    }
    let rate = |secs: f64| bytes as f64 / secs / 1e6;
    println!("  {:<34} {:>8} {:>10}   {:>8}", "", "wall", "", "CPU");
    for (label, b) in ["HttpSource + ring sha256", "curl -s | openssl dgst -sha256"]
        .iter()
        .zip(best)
    {
        println!(
            "  {label:<34} {:>7.3}s {:>6.0} MB/s   {:>7.2}s",
            b.wall.as_secs_f64(),
            rate(b.wall.as_secs_f64()),
            b.cpu
        );
    }
    println!(
        "  wall-clock ratio (curl|openssl time / ours): {:.2}x (>= 1.0 means ours is as fast or faster)",
        best[1].wall.as_secs_f64() / best[0].wall.as_secs_f64()
    );
    println!(
        "  CPU ratio (curl|openssl CPU-s / ours): {:.2}x",
        best[1].cpu / best[0].cpu
    );
    println!("  (digests equal: checked, {})", digests.0);
    Ok(())
}

/// Read the whole file through the source into a 256 KiB buffer, hashing it.
fn fetch_ours(source: &HttpSource, path: &str, len: u64) -> Result<String> {
    let mut reader = source.open(path, None, Some(len))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 256 << 10];
    let mut total = 0u64;
    loop {
        let n = reader.read(&mut buf).context("reading the HTTP body")?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
        total += n as u64;
    }
    ensure!(total == len, "fetched {total} bytes, expected {len}");
    Ok(hex_encode(ctx.finish().as_ref()))
}
