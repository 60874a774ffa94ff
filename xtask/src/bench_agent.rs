//! `cargo xtask bench-agent`: the real `basalt-updated` (release build) installing a release
//! from nginx on 127.0.0.1 into slot B of a disk image file, driven over D-Bus by the real
//! `basaltctl` on a private `dbus-daemon` — against the ceiling of a download:
//! `curl -s URL | zstd -dc | tee >(openssl dgst -sha256) > slot` on the same usr blob, in the
//! same run.
//!
//! The agent's side is `basaltctl update --download-only`, timed from the command's start to
//! its exit: the check (trust root, channel head), every frame hashed before and after
//! decoding, written, fdatasync'ed, the page cache dropped, the slot re-read and its verity
//! tree and usr-hash statement verified; plus the kernel and initrd (10 MiB), which the peer
//! does not fetch. A second peer line adds the I/O the agent also does and the first peer
//! skips (`sync --data`, a re-read with `dd iflag=direct | openssl dgst`). Ratios are peer
//! time / agent time (target ≥ 0.9 against the first peer).
//!
//! Memory: the daemon's `VmRSS` (from `/proc/PID/status`) after start-up, idle (target
//! ≤ 8 MiB), and its `VmHWM` (the kernel's high-water mark of resident memory) after an
//! install (target ≤ 32 MiB), at two payload sizes (`--size-mib` and 64 MiB) to show the
//! peak does not grow with the image. Each size runs in a fresh daemon.
//!
//! The releases and pristine disks come from `updater/examples/install_payload.rs prepare`
//! (cached under `target/bench/install-*`, shared with `cargo xtask bench-install`).
//!
//! **A patch release** (issue 12's memory goal for adaptive installs): `prepare-patch` makes
//! a [`PATCH_MIB`] 1.0.0 in slot A and a 2.0.0 whose data differs by a rebuilt 4 MiB run
//! every 64 MiB plus 1 MiB of new blocks, both published, so the daemon installs 2.0.0 from
//! the booted slot's blocks, binary deltas and a few frames. Printed: its time, the bytes
//! nginx served against the full stream, and the daemon's idle and peak RSS (same targets).

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;

use crate::sh;

#[derive(Debug, Parser)]
pub struct Args {
    /// Size of the /usr payload, in MiB (the second, small size is 64 MiB).
    #[arg(long, default_value_t = 512)]
    size_mib: u64,
    /// Rounds; each time figure is the best of them.
    #[arg(long, default_value_t = 3)]
    runs: u32,
}

/// A process this bench started; killed (by PID) when dropped.
struct Owned(Child);

impl Drop for Owned {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A private bus where root may own and call anything (the bench runs as root).
fn start_bus(dir: &Path) -> Result<(Owned, String)> {
    let socket = dir.join("bus");
    let _ = std::fs::remove_file(&socket);
    let config = dir.join("bus.conf");
    std::fs::write(
        &config,
        format!(
            r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>custom</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"#,
            socket.display()
        ),
    )?;
    let mut child = Command::new("dbus-daemon")
        .arg(format!("--config-file={}", config.display()))
        .args(["--nofork", "--print-address"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting dbus-daemon (package dbus)")?;
    let mut line = String::new();
    let stdout = child.stdout.take().context("dbus-daemon stdout")?;
    std::io::BufReader::new(stdout).read_line(&mut line)?;
    let address = line.trim().to_string();
    ensure!(
        address.starts_with("unix:"),
        "dbus-daemon printed {address:?}"
    );
    Ok((Owned(child), address))
}

fn release_dir(root: &Path) -> PathBuf {
    root.join("target").join("release")
}

/// The node programs as an image carries them (`--profile node`, see Cargo.toml).
fn node_dir(root: &Path) -> PathBuf {
    root.join("target").join("node")
}

/// `VmRSS` / `VmHWM` of `pid`, in KiB.
fn proc_kib(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("{field} of /proc/{pid}/status"))
}

/// Where a process's resident memory is, from `/proc/PID/smaps`: what `VmRSS` counts, split
/// by kind of mapping, and what of it is private (this process's alone) vs shared.
#[derive(Debug, Default, Clone, Copy)]
struct Breakdown {
    /// The program's own file (text, read-only data) as mapped: clean file pages, shared
    /// with every other process mapping the file and reclaimable by the kernel.
    binary_kib: u64,
    /// Shared libraries (libc, libgcc_s, ld.so): clean file pages, mostly shared.
    libs_kib: u64,
    /// `[heap]` and anonymous mappings (glibc arenas, thread stacks, large buffers).
    anon_kib: u64,
    /// Anything else (vdso, vvar, [stack]).
    other_kib: u64,
    /// `Private_Clean` + `Private_Dirty` over all mappings.
    private_kib: u64,
    /// `Private_Dirty` of anonymous memory (heap, arenas, stacks).
    anon_dirty_kib: u64,
    /// Proportional set size (shared pages divided among the processes sharing them).
    pss_kib: u64,
    /// Number of threads.
    threads: u64,
}

impl Breakdown {
    fn read(pid: u32) -> Result<Self> {
        let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))
            .with_context(|| format!("/proc/{pid}/smaps"))?;
        let exe = std::fs::read_link(format!("/proc/{pid}/exe"))?;
        let exe = exe.to_string_lossy().into_owned();
        let mut b = Breakdown::default();
        #[derive(PartialEq)]
        enum Kind {
            Binary,
            Lib,
            Anon,
            Other,
        }
        let mut kind = Kind::Other;
        for line in smaps.lines() {
            let mut words = line.split_whitespace();
            let Some(first) = words.next() else { continue };
            if let Some(field) = first.strip_suffix(':') {
                let kib: u64 = words.next().and_then(|v| v.parse().ok()).unwrap_or(0);
                match field {
                    "Rss" => match kind {
                        Kind::Binary => b.binary_kib += kib,
                        Kind::Lib => b.libs_kib += kib,
                        Kind::Anon => b.anon_kib += kib,
                        Kind::Other => b.other_kib += kib,
                    },
                    "Pss" => b.pss_kib += kib,
                    "Private_Clean" => b.private_kib += kib,
                    "Private_Dirty" => {
                        b.private_kib += kib;
                        if kind == Kind::Anon {
                            b.anon_dirty_kib += kib;
                        }
                    }
                    _ => {}
                }
                continue;
            }
            // A mapping header: `start-end perms offset dev inode [path]`.
            let path = line.split_whitespace().nth(5).unwrap_or("");
            kind = if path == exe {
                Kind::Binary
            } else if path.contains(".so") {
                Kind::Lib
            } else if path.is_empty() || path == "[heap]" {
                Kind::Anon
            } else {
                Kind::Other
            };
        }
        b.threads = proc_kib(pid, "Threads")?;
        Ok(b)
    }

    fn total_kib(&self) -> u64 {
        self.binary_kib + self.libs_kib + self.anon_kib + self.other_kib
    }
}

impl std::fmt::Display for Breakdown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |kib: u64| kib as f64 / 1024.0;
        write!(
            f,
            "RSS {:.1} MiB = binary {:.1} + libraries {:.1} + heap/arenas/stacks {:.1} + other {:.1}; \
             private {:.1} MiB (anonymous dirty {:.1}), PSS {:.1} MiB; {} threads",
            mib(self.total_kib()),
            mib(self.binary_kib),
            mib(self.libs_kib),
            mib(self.anon_kib),
            mib(self.other_kib),
            mib(self.private_kib),
            mib(self.anon_dirty_kib),
            mib(self.pss_kib),
            self.threads
        )
    }
}

struct Node<'a> {
    work: &'a Path,
    host: PathBuf,
    bus: &'a str,
    url: String,
}

struct Install {
    seconds: f64,
    idle_kib: u64,
    idle: Breakdown,
    peak_kib: u64,
    after_kib: u64,
    /// `RssAnon` / `RssFile` after the install: heap and stacks vs the binary's and
    /// libraries' pages (shared, clean, reclaimable).
    after_anon_kib: u64,
    after_file_kib: u64,
}

impl Node<'_> {
    /// A fresh copy of the pristine node (disk, ESP, no state) and the daemon's files.
    fn reset(&self) -> Result<()> {
        let disk = self.work.join("disk.img");
        sh::run(
            Command::new("cp")
                .args(["--sparse=always"])
                .arg(self.work.join("pristine.img"))
                .arg(&disk),
        )?;
        for d in ["esp", "state"] {
            let p = self.work.join(d);
            if p.exists() {
                std::fs::remove_dir_all(&p)?;
            }
        }
        sh::run(
            Command::new("cp")
                .arg("-a")
                .arg(self.work.join("esp-pristine"))
                .arg(self.work.join("esp")),
        )?;
        if self.host.exists() {
            std::fs::remove_dir_all(&self.host)?;
        }
        let conf = self.host.join("etc/basalt/updater.d");
        std::fs::create_dir_all(&conf)?;
        let cmdline = std::fs::read_to_string(self.work.join("cmdline"))?;
        let usrhash = cmdline
            .split_whitespace()
            .find_map(|w| w.strip_prefix("usrhash="))
            .context("usrhash= in the prepared cmdline")?;
        std::fs::write(self.host.join("cmdline"), format!("{}\n", cmdline.trim()))?;
        std::fs::write(
            self.host.join("boot.env"),
            format!("BASALT_DISK={}\nBASALT_USRHASH={usrhash}\n", disk.display()),
        )?;
        std::fs::write(
            self.host.join("os-release"),
            "ID=basalt\nBASALT_CHANNEL=stable\n",
        )?;
        std::fs::write(self.host.join("boot_id"), "bench-1\n")?;
        std::fs::write(
            conf.join("50-bench.toml"),
            format!(
                "[repository]\nurl = \"{}\"\ntrust_root = \"{}\"\n\
                 [check]\ninitial_delay_secs = 3600\n\
                 [update]\nauto_download = false\nauto_apply = false\n\
                 [reboot]\nstrategy = \"off\"\n\
                 [boot]\nbackend = \"bls\"\ndisk = \"{}\"\nesp = \"{}\"\nkernel_options = \"console=ttyS0\"\n\
                 [metrics]\nlisten = \"off\"\n",
                self.url,
                self.work.join("trust.json").display(),
                disk.display(),
                self.work.join("esp").display()
            ),
        )?;
        Ok(())
    }

    fn ctl(&self, args: &[&str]) -> Result<String> {
        sh::output(
            Command::new(node_dir(&sh::root()).join("basaltctl"))
                .args(["--bus-address", self.bus])
                .args(args),
        )
    }

    /// Start the daemon, measure idle RSS, install, measure the peak, stop it.
    fn install(&self) -> Result<Install> {
        self.reset()?;
        let h = &self.host;
        let mut daemon = Owned(
            Command::new(node_dir(&sh::root()).join("basalt-updated"))
                .arg("--config-root")
                .arg(h)
                .arg("--state-dir")
                .arg(self.work.join("state"))
                .arg("--boot-env")
                .arg(h.join("boot.env"))
                .arg("--cmdline")
                .arg(h.join("cmdline"))
                .arg("--os-release")
                .arg(h.join("os-release"))
                .arg("--efivars")
                .arg(h.join("efivars"))
                .arg("--boot-id")
                .arg(h.join("boot_id"))
                .arg("--machine-id")
                .arg(h.join("machine-id"))
                .args(["--bus-address", self.bus])
                .env("BASALT_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .context("starting basalt-updated")?,
        );
        let pid = daemon.0.id();
        let end = Instant::now() + Duration::from_secs(30);
        while self.ctl(&["status"]).is_err() {
            if let Some(st) = daemon.0.try_wait()? {
                bail!("basalt-updated exited {st}");
            }
            ensure!(Instant::now() < end, "basalt-updated never answered");
            std::thread::sleep(Duration::from_millis(50));
        }
        // Idle: settled after start-up and one status call.
        std::thread::sleep(Duration::from_secs(2));
        let idle_kib = proc_kib(pid, "VmRSS")?;
        let idle = Breakdown::read(pid)?;
        let started = Instant::now();
        self.ctl(&["update", "--download-only"])?;
        let seconds = started.elapsed().as_secs_f64();
        let peak_kib = proc_kib(pid, "VmHWM")?;
        std::thread::sleep(Duration::from_secs(1));
        let after_kib = proc_kib(pid, "VmRSS")?;
        let after_anon_kib = proc_kib(pid, "RssAnon")?;
        let after_file_kib = proc_kib(pid, "RssFile")?;
        sh::run(Command::new("kill").args(["-TERM", &pid.to_string()]))?;
        let end = Instant::now() + Duration::from_secs(30);
        while daemon.0.try_wait()?.is_none() {
            ensure!(
                Instant::now() < end,
                "basalt-updated did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Install {
            seconds,
            idle_kib,
            idle,
            peak_kib,
            after_kib,
            after_anon_kib,
            after_file_kib,
        })
    }
}

/// The ceiling: fetch, decode and hash the usr blob into a file; `durable` adds the agent's
/// extra I/O (durable write, re-read from the device).
fn peer(work: &Path, url: &str, durable: bool) -> Result<f64> {
    let curl = basalt_tests::tool::CURL.locate()?;
    crate::bench::peer_pipeline(
        &format!("'{}' -sf '{url}' | zstd -dc", curl.display()),
        &work.join("peer-slot"),
        durable,
    )
    .context("the fetching peer also needs curl")
}

/// The `/usr` size of the patch-release scenario.
const PATCH_MIB: u64 = 256;

fn prepared(root: &Path, size_mib: u64) -> Result<PathBuf> {
    prepared_as(root, size_mib, "prepare", "install")
}

fn prepared_as(root: &Path, size_mib: u64, mode: &str, name: &str) -> Result<PathBuf> {
    let work = root
        .join("target")
        .join("bench")
        .join(format!("{name}-{size_mib}MiB"));
    if !work.join("usr-blob.path").exists() {
        if work.exists() {
            std::fs::remove_dir_all(&work)?;
        }
        eprintln!(
            "bench-agent: preparing a {size_mib} MiB release in {}",
            work.display()
        );
        sh::run(
            Command::new(release_dir(root).join("examples").join("install_payload"))
                .arg(mode)
                .arg(&work)
                .arg(size_mib.to_string()),
        )?;
    }
    Ok(work)
}

pub fn run(args: Args) -> Result<()> {
    ensure!(
        args.size_mib >= 16 && args.runs > 0,
        "--size-mib >= 16, --runs > 0"
    );
    let root = sh::root();
    sh::run(Command::new("cargo").current_dir(&root).args([
        "build",
        "--profile",
        "node",
        "-p",
        "basalt-updater",
        "--bins",
    ]))?;
    sh::run(Command::new("cargo").current_dir(&root).args([
        "build",
        "--release",
        "-p",
        "basalt-updater",
        "--example",
        "install_payload",
    ]))?;
    let sizes = [args.size_mib, 64];
    let mut lines = Vec::new();
    for (i, size) in sizes.into_iter().enumerate() {
        let work = prepared(&root, size)?;
        let blob = std::fs::read_to_string(work.join("usr-blob.path"))?;
        let blob_rel = Path::new(blob.trim())
            .strip_prefix(work.join("repo"))
            .context("the usr blob is inside the repository")?
            .to_path_buf();
        let nginx = basalt_tests::web::Nginx::start(&work.join("nginx"), &work.join("repo"))?;
        let (_bus, address) = start_bus(&work)?;
        let node = Node {
            work: &work,
            host: work.join("host"),
            bus: &address,
            url: nginx.url(),
        };
        let blob_url = format!("{}{}", nginx.url(), blob_rel.display());
        // The small size only for memory: one round.
        let runs = if i == 0 { args.runs } else { 1 };
        let (mut ours, mut p, mut d) = (f64::MAX, f64::MAX, f64::MAX);
        let (mut idle, mut peak, mut after) = (0u64, 0u64, 0u64);
        let mut idle_breakdown = Breakdown::default();
        for round in 0..runs {
            let o = node.install()?;
            let pt = peer(&work, &blob_url, false)?;
            let dt = peer(&work, &blob_url, true)?;
            eprintln!(
                "{size} MiB round {}: agent {:.2} s (idle {} KiB, peak {} KiB, after {} KiB = anon {} + file {}), peer {pt:.2} s, durable peer {dt:.2} s",
                round + 1,
                o.seconds,
                o.idle_kib,
                o.peak_kib,
                o.after_kib,
                o.after_anon_kib,
                o.after_file_kib
            );
            ours = ours.min(o.seconds);
            p = p.min(pt);
            d = d.min(dt);
            eprintln!("  idle: {}", o.idle);
            if o.idle_kib >= idle {
                idle_breakdown = o.idle;
            }
            idle = idle.max(o.idle_kib);
            peak = peak.max(o.peak_kib);
            after = after.max(o.after_kib);
        }
        let mib = |kib: u64| kib as f64 / 1024.0;
        let rate = |s: f64| size as f64 / s;
        lines.push(format!(
            "{size:>5} MiB of /usr from nginx, best of {runs}:\n\
             \x20 basalt-updated (basaltctl update --download-only)  {ours:>7.2} s  {:>7.1} MiB/s\n\
             \x20 curl | zstd -dc | tee >(openssl sha256) > slot    {p:>7.2} s  {:>7.1} MiB/s   ratio peer/agent {:.2} (target >= 0.9)\n\
             \x20 + sync --data, dd iflag=direct | openssl sha256   {d:>7.2} s  {:>7.1} MiB/s   ratio peer/agent {:.2} (same I/O)\n\
             \x20 daemon RSS: idle {:.1} MiB (target <= 8), peak {:.1} MiB (target <= 32), after {:.1} MiB\n\
             \x20 idle, from smaps: {idle_breakdown}",
            rate(ours),
            rate(p),
            p / ours,
            rate(d),
            d / ours,
            mib(idle),
            mib(peak),
            mib(after)
        ));
    }
    lines.push(patch_release(&root)?);
    for l in lines {
        println!("{l}");
    }
    Ok(())
}

/// The patch-release scenario (module docs): one install, its bytes and the daemon's memory.
fn patch_release(root: &Path) -> Result<String> {
    let work = prepared_as(root, PATCH_MIB, "prepare-patch", "install-patch")?;
    let blob = std::fs::read_to_string(work.join("usr-blob.path"))?;
    let full = std::fs::metadata(blob.trim())?.len();
    let nginx = basalt_tests::web::Nginx::start(&work.join("nginx"), &work.join("repo"))?;
    let (_bus, address) = start_bus(&work)?;
    let node = Node {
        work: &work,
        host: work.join("host"),
        bus: &address,
        url: nginx.url(),
    };
    let before = nginx.access_log()?.len();
    let o = node.install()?;
    let log = nginx.access_log()?;
    let new = &log[before.min(log.len())..];
    // The usr image's bytes: its block index, frame-store ranges and (on a fallback) stream.
    let names = std::fs::read_to_string(work.join("usr-adaptive.names"))?;
    let stream_name = blob.trim().rsplit('/').next().unwrap_or("-").to_owned();
    let usr: Vec<_> = new
        .iter()
        .filter(|a| {
            names
                .lines()
                .any(|n| !n.is_empty() && a.request.contains(n))
                || a.request.contains(&stream_name)
        })
        .collect();
    let served: u64 = usr.iter().map(|a| a.body_bytes).sum();
    let ranged = usr.iter().filter(|a| a.range.is_some()).count();
    let stream = usr.iter().any(|a| a.request.contains(&stream_name));
    let mib = |kib: u64| kib as f64 / 1024.0;
    eprintln!("  idle: {}", o.idle);
    Ok(format!(
        "patch release, {PATCH_MIB} MiB of /usr (a rebuilt 4 MiB run every 64 MiB + 1 MiB new):\n\
         \x20 basalt-updated {:.2} s (kernel and initrd included); nginx served {:.2} MB for usr.img in {} requests ({ranged} ranged) against a {:.1} MB full stream ({:.2} %){}\n\
         \x20 daemon RSS: idle {:.1} MiB (target <= 8), peak {:.1} MiB (target <= 32), after {:.1} MiB",
        o.seconds,
        served as f64 / 1e6,
        usr.len(),
        full as f64 / 1e6,
        100.0 * served as f64 / full.max(1) as f64,
        if stream {
            "; FELL BACK to the full stream"
        } else {
            ""
        },
        mib(o.idle_kib),
        mib(o.peak_kib),
        mib(o.after_kib)
    ))
}
