//! `basalt-updated`: the on-node update agent (a systemd service, `Type=notify`). Thin: parse
//! the command line, load the configuration, build the daemon's parts with
//! `basalt_updater::agent` (the production engine on the node's disk, the release source, the
//! HTTP clients), run `basalt_updater::dbus::run_service` on a current-thread tokio runtime
//! until SIGTERM.
//!
//! Exit codes: 0 stopped cleanly, 1 failed (the message names what), 2 bad command line,
//! 3 bad configuration, or a configuration that cannot work on this node (the message names
//! the key, the file that set it and the node file that was read; the unit does not restart
//! on it).
//!
//! The path options exist so tests (and a node image being assembled) can point the agent at
//! files that stand in for the node's; on a node every default is right.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use basalt_updater::agent::{self, HostPaths, NodeFacts};
use basalt_updater::config::{self, MetricsListen};
use basalt_updater::daemon::{Parts, Paths, SystemClock};
use basalt_updater::{dbus, health, metrics, notify, reboot, schedule};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "basalt-updated",
    version,
    about = "The Basalt update agent (D-Bus org.basalt.Updater1)"
)]
struct Cli {
    /// Prefix of the configuration directories (/usr/lib, /etc, /run …/basalt/updater.d).
    #[arg(long, value_name = "DIR")]
    config_root: Option<PathBuf>,
    /// The state directory: trust roots, download journal and staged files; the daemon's
    /// status file in its updater/ folder.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/basalt")]
    state_dir: PathBuf,
    /// basalt-init's record of what booted (BASALT_DISK, BASALT_USRHASH).
    #[arg(long, value_name = "FILE", default_value = "/run/basalt/boot.env")]
    boot_env: PathBuf,
    /// The running kernel's command line (its usrhash= names the booted slot).
    #[arg(long, value_name = "FILE", default_value = "/proc/cmdline")]
    cmdline: PathBuf,
    /// The OS identity (ID=, BASALT_CHANNEL=).
    #[arg(long, value_name = "FILE", default_value = "/usr/lib/os-release")]
    os_release: PathBuf,
    /// efivarfs, where basalt-init leaves its failure records.
    #[arg(long, value_name = "DIR", default_value = basalt_updater::bootfail::EFIVARS)]
    efivars: PathBuf,
    /// The boot id (a new one means the node rebooted).
    #[arg(
        long,
        value_name = "FILE",
        default_value = "/proc/sys/kernel/random/boot_id"
    )]
    boot_id: PathBuf,
    /// The machine id (the fleet-lock and fleet-server node ids are derived from it).
    #[arg(long, value_name = "FILE", default_value = "/etc/machine-id")]
    machine_id: PathBuf,
    /// Connect to this bus instead of the system bus (tests).
    #[arg(long, value_name = "ADDRESS")]
    bus_address: Option<String>,
    /// Load and validate the configuration against this node, print the result, exit.
    #[arg(long)]
    check_config: bool,
}

#[derive(Debug)]
struct BadConfig;
impl std::fmt::Display for BadConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("bad configuration")
    }
}
impl std::error::Error for BadConfig {}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let bad = |e: anyhow::Error| e.context(BadConfig);
    let dirs = config::default_dirs(cli.config_root.as_deref());
    let settings = config::load(&dirs).map_err(|e| bad(e.into()))?;
    let host = HostPaths {
        cmdline: cli.cmdline.clone(),
        boot_env: cli.boot_env.clone(),
        os_release: cli.os_release.clone(),
        state_dir: cli.state_dir.clone(),
        ..HostPaths::default()
    };
    let facts = NodeFacts::read(&host);
    let (engine, fleet) = agent::engine_and_fleet(&settings, &facts, &host, &cli.machine_id)
        .map_err(|e| bad(e.into()))?;
    let fleet_lock = agent::fleet_lock(&settings, &cli.machine_id).map_err(|e| bad(e.into()))?;
    let health_http = agent::health_client(&settings).map_err(|e| bad(e.into()))?;
    if cli.check_config {
        println!("{settings:#?}");
        println!("{:#?}", engine.config());
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let result = rt.block_on(async move {
        let conn = match &cli.bus_address {
            Some(a) => {
                zbus::connection::Builder::address(a.as_str())?
                    .build()
                    .await
            }
            None => zbus::Connection::system().await,
        }
        .context("connecting to the D-Bus bus")?;
        let paths = Paths {
            state_dir: cli.state_dir.join("updater"),
            boot_env: cli.boot_env.clone(),
            boot_id: cli.boot_id.clone(),
            machine_id: cli.machine_id.clone(),
            efivars: cli.efivars.clone(),
        };
        let metrics = metrics::Metrics::new();
        match &settings.metrics {
            MetricsListen::Off => {}
            MetricsListen::Tcp(addr) => {
                let l = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding the metrics address {addr}"))?;
                tokio::spawn(metrics::serve(metrics::Listener::Tcp(l), metrics.clone()));
            }
            MetricsListen::Unix(path) => {
                let _ = std::fs::remove_file(path);
                let l = tokio::net::UnixListener::bind(path)
                    .with_context(|| format!("binding the metrics socket {}", path.display()))?;
                tokio::spawn(metrics::serve(
                    metrics::Listener::Unix(l, path.clone()),
                    metrics.clone(),
                ));
            }
        }
        let parts = Parts {
            engine,
            probes: health::probes(&settings.health, &conn, &health_http),
            settings,
            paths,
            clock: Arc::new(SystemClock),
            random: Box::new(schedule::SystemRandom::default()),
            reboot: Arc::new(reboot::SystemdReboot::new(conn.clone())),
            fleet_lock,
            notifier: notify::Notifier::from_env(),
            metrics,
            watchdog: notify::watchdog_interval(),
            retry: basalt_updater::daemon::RETRY,
            fleet,
        };
        dbus::run_service(conn, parts, shutdown_signal()).await?;
        Ok(())
    });
    // A running engine call (a download) was told to stop; do not wait for it forever.
    rt.shutdown_timeout(std::time::Duration::from_secs(30));
    result
}

/// Large buffers (the download's frames, up to 4 MiB each) come straight from mmap and go back
/// to the kernel when freed. By default glibc raises its mmap threshold after the first such
/// free and keeps later ones in its arenas: measured with `cargo xtask bench-agent`, the daemon
/// kept 12.5 MiB of anonymous memory after an install (idle before it: 0.9 MiB). A fixed
/// threshold also turns that dynamic adjustment off.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt takes two integers and only changes glibc's allocator settings.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
    }
}

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    if let Err(e) = basalt_log::init() {
        eprintln!("basalt-updated: {e}");
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("basalt-updated: {err:#}");
            if err.downcast_ref::<BadConfig>().is_some() {
                ExitCode::from(3)
            } else {
                ExitCode::from(1)
            }
        }
    }
}
