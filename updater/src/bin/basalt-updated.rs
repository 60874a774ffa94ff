//! `basalt-updated`: the on-node update agent (a systemd service, `Type=notify`). Thin: parse
//! the command line, load the configuration, build the daemon's parts, run
//! `basalt_updater::dbus::run_service` on a current-thread tokio runtime until SIGTERM.
//!
//! Exit codes: 0 stopped cleanly, 1 failed (the message names what), 2 bad command line,
//! 3 bad configuration.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use basalt_updater::config::{self, MetricsListen, RebootStrategy};
use basalt_updater::daemon::{Parts, Paths, SystemClock};
use basalt_updater::engine::{
    CancelFlag, Candidate, CheckOutcome, CheckRequest, Downloaded, Engine, EngineError, ErrorClass,
    NodeView, Progress,
};
use basalt_updater::{dbus, fleetlock, health, metrics, notify, reboot, schedule};
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
    /// The state directory (status file).
    #[arg(long, value_name = "DIR", default_value = "/var/lib/basalt/updater")]
    state_dir: PathBuf,
    /// basalt-init's record of what booted.
    #[arg(long, value_name = "FILE", default_value = "/run/basalt/boot.env")]
    boot_env: PathBuf,
    /// Connect to this bus instead of the system bus (tests).
    #[arg(long, value_name = "ADDRESS")]
    bus_address: Option<String>,
    /// Load and validate the configuration, print it, exit.
    #[arg(long)]
    check_config: bool,
}

/// Stand-in until the update pipeline (branch `engine`) is wired in by the lead: every call
/// fails with a configuration error that says so. Nothing is written anywhere.
#[derive(Debug)]
struct UnwiredEngine;

#[derive(Debug, thiserror::Error)]
#[error("this build of basalt-updated has no update pipeline wired in")]
struct Unwired;

impl EngineError for Unwired {
    fn class(&self) -> ErrorClass {
        ErrorClass::Config
    }
    fn name(&self) -> &'static str {
        "PipelineNotWired"
    }
}

impl Engine for UnwiredEngine {
    type Error = Unwired;
    fn node(&mut self) -> Result<NodeView, Unwired> {
        Err(Unwired)
    }
    fn check(&mut self, _: &CheckRequest) -> Result<CheckOutcome, Unwired> {
        Err(Unwired)
    }
    fn verify_candidate(&mut self, _: &[u8], _: &CheckRequest) -> Result<Candidate, Unwired> {
        Err(Unwired)
    }
    fn download(
        &mut self,
        _: &Candidate,
        _: &mut dyn FnMut(&Progress),
        _: &CancelFlag,
    ) -> Result<Downloaded, Unwired> {
        Err(Unwired)
    }
    fn apply(&mut self, _: &Downloaded, _: u32) -> Result<(), Unwired> {
        Err(Unwired)
    }
    fn cancel(&mut self) -> Result<(), Unwired> {
        Err(Unwired)
    }
    fn rollback(&mut self) -> Result<basalt_disk::Slot, Unwired> {
        Err(Unwired)
    }
    fn mark_good(&mut self) -> Result<(), Unwired> {
        Err(Unwired)
    }
    fn mark_bad(&mut self, _: basalt_disk::Slot) -> Result<(), Unwired> {
        Err(Unwired)
    }
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
    let dirs = config::default_dirs(cli.config_root.as_deref());
    let settings = config::load(&dirs).map_err(|e| anyhow::Error::new(e).context(BadConfig))?;
    if cli.check_config {
        println!("{settings:#?}");
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
            state_dir: cli.state_dir.clone(),
            boot_env: cli.boot_env.clone(),
            ..Paths::default()
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
        let fleet_lock = match &settings.reboot {
            RebootStrategy::FleetLock(l) => Some(
                fleetlock::FleetLock::new(l, &paths.machine_id.display().to_string())
                    .context("setting up the fleet-lock client")?,
            ),
            _ => None,
        };
        let parts = Parts {
            engine: UnwiredEngine,
            probes: health::probes(&settings.health, &conn),
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
        };
        dbus::run_service(conn, parts, shutdown_signal()).await?;
        Ok(())
    });
    // A running engine call (a download) was told to stop; do not wait for it forever.
    rt.shutdown_timeout(std::time::Duration::from_secs(30));
    result
}

fn main() -> ExitCode {
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
