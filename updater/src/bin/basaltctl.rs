//! `basaltctl`: the command-line client of `basalt-updated` (D-Bus `org.basalt.Updater1`).
//! Thin: each subcommand is one or two method calls through the generated proxy; `update`
//! follows the daemon's `PropertiesChanged` signals to draw progress.
//!
//! Exit codes (stable; one per failure class):
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | other error |
//! | 2 | bad command line |
//! | 3 | basalt-updated is not running |
//! | 4 | the bus policy does not allow this user to do this (root or group basalt-update) |
//! | 5 | the D-Bus bus cannot be reached |
//! | 10–17 | refused: Busy, NothingToCancel, UpdatePending, Pinned, NotPendingHealth, RebootPending, DowngradeNotAllowed, InvalidArgument |
//! | 20–28 | failed: Network, Integrity, Policy, Disk, BootControl, Cancelled, Config, Internal, ShuttingDown |
//! | 30–32 | extension requests refused: UnknownExtension, ExtensionNotStaged, ExtensionIncompatible |

use std::collections::HashMap;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use basalt_updater::dbus::{self, Updater1Proxy, UpdaterError, EXIT_NO_BUS};
use clap::{Parser, Subcommand};
use futures_util::StreamExt;
use serde::Serialize;
use zbus::zvariant::{OwnedValue, Value};
use zbus::DBusError as _;

const AFTER_HELP: &str = "Exit codes: 0 ok, 1 other error, 2 usage, 3 basalt-updated not running, \
4 not allowed (root or group basalt-update), 5 no D-Bus; refusals 10 Busy, 11 NothingToCancel, \
12 UpdatePending, 13 Pinned, 14 NotPendingHealth, 15 RebootPending, 16 DowngradeNotAllowed, \
17 InvalidArgument; failures 20 Network, 21 Integrity, 22 Policy, 23 Disk, 24 BootControl, \
25 Cancelled, 26 Config, 27 Internal, 28 ShuttingDown; extensions 30 UnknownExtension, \
31 ExtensionNotStaged, 32 ExtensionIncompatible.";

#[derive(Debug, Parser)]
#[command(name = "basaltctl", version, about = "Control the Basalt update agent", after_help = AFTER_HELP)]
struct Cli {
    /// Talk to this bus instead of the system bus.
    #[arg(long, global = true, value_name = "ADDRESS")]
    bus_address: Option<String>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Show the update state, both slots, progress, the last error and the next check.
    Status {
        /// Machine-readable output (format: dist/basaltctl/status.json).
        #[arg(long)]
        json: bool,
    },
    /// Check the repository now.
    Check,
    /// Download, verify and stage the newest release (follows the progress).
    Update {
        /// Stop after download and verification; do not stage.
        #[arg(long)]
        download_only: bool,
        /// Reboot as soon as the update is staged.
        #[arg(long, conflicts_with = "download_only")]
        reboot: bool,
        /// Allow an older release (operator-approved downgrade; logged by the daemon).
        #[arg(long)]
        allow_downgrade: bool,
    },
    /// Stop a download or withdraw a downloaded/staged update.
    Cancel,
    /// Boot the other slot next and mark the booted one bad.
    Rollback,
    /// Declare the freshly booted update good.
    MarkGood,
    /// Declare the freshly booted update bad (the node reboots into the previous slot).
    MarkBad,
    /// Hold the node at its version.
    Pin,
    /// Allow updates again.
    Unpin,
    /// Show the last update outcomes.
    History {
        #[arg(long)]
        json: bool,
    },
    /// System extensions: the sets staged with each OS version, and the active ones.
    Extensions {
        #[command(subcommand)]
        command: ExtCmd,
    },
}

#[derive(Debug, Subcommand)]
enum ExtCmd {
    /// Activate the booted OS version's set (run at boot by basalt-extensions.service; local,
    /// no D-Bus): verify each image against the trust root, dm-verity, erofs read-only under
    /// /run/extensions, then systemd-sysext refresh.
    Activate,
    /// List the staged sets (per OS version, each extension with its version), the active
    /// extensions and the pins (over D-Bus).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Keep extension NAME at VERSION across updates (over D-Bus): a node-image-only update
    /// keeps it while it fits the new OS; a full update must ship that version.
    Pin { name: String, version: String },
    /// Remove extension NAME's pin (over D-Bus).
    Unpin { name: String },
}

/// `basaltctl extensions activate`: local, without the bus (it runs before D-Bus is up).
fn activate_extensions() -> Res<()> {
    use basalt_updater::agent::HostPaths;
    let paths = HostPaths::default();
    let run = std::path::Path::new(basalt_sysext::activate::RUN_EXTENSIONS);
    let dirs: Vec<std::path::PathBuf> = basalt_updater::config::CONFIG_DIRS
        .iter()
        .map(std::path::PathBuf::from)
        .collect();
    let settings = basalt_updater::config::load(&dirs).map_err(|e| Failure {
        // The Config failure class (see the exit-code table).
        code: 26,
        message: e.to_string(),
    })?;
    let done = basalt_updater::extensions::activate(
        &mut basalt_sysext::activate::System,
        &settings,
        &paths,
        run,
    )
    .map_err(|e| Failure {
        code: 1,
        message: format!("extensions not activated: {e}"),
    })?;
    for v in &done.adoption.adopted {
        println!("adopted the install-time extension set of {v}");
    }
    for v in &done.adoption.already {
        println!(
            "the store already had the extension set of {v}; the install-time copy was removed"
        );
    }
    for p in &done.adoption.ignored {
        println!("left alone (not an extension set): {}", p.display());
    }
    for a in &done.activated {
        println!(
            "activated {} {} ({} at {})",
            a.extension.statement.name,
            a.extension.statement.version,
            a.device.display(),
            a.mount_point.display()
        );
    }
    if done.activated.is_empty() {
        println!("no extensions staged for the booted OS version");
    }
    Ok(())
}

/// `basaltctl extensions list|pin|unpin`, over D-Bus.
async fn extensions(p: &Updater1Proxy<'_>, cmd: ExtCmd) -> Res<()> {
    match cmd {
        // Answered before the bus is reached (see `run`); kept total for the compiler.
        ExtCmd::Activate => activate_extensions(),
        ExtCmd::List { json } => {
            let (staged, active, pins) = z(p.list_extensions().await)?;
            if json {
                let v = serde_json::json!({
                    "staged": staged.iter().map(|(os, exts)| serde_json::json!({
                        "os_version": os,
                        "extensions": exts.iter().map(|(n, v)| serde_json::json!({"name": n, "version": v})).collect::<Vec<_>>(),
                    })).collect::<Vec<_>>(),
                    "active": active,
                    "pins": pins.iter().map(|(n, v)| serde_json::json!({"name": n, "version": v})).collect::<Vec<_>>(),
                });
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                for (os, exts) in &staged {
                    let list: Vec<String> = exts.iter().map(|(n, v)| format!("{n} {v}")).collect();
                    println!("staged {os}: {}", list.join(", "));
                }
                println!("active: {}", active.join(" "));
                let list: Vec<String> = pins.iter().map(|(n, v)| format!("{n} {v}")).collect();
                println!("pinned: {}", list.join(", "));
            }
            Ok(())
        }
        ExtCmd::Pin { name, version } => {
            z(p.pin_extension(name.clone(), version.clone()).await)?;
            println!("pinned {name} {version}");
            Ok(())
        }
        ExtCmd::Unpin { name } => {
            z(p.unpin_extension(name.clone()).await)?;
            println!("unpinned {name}");
            Ok(())
        }
    }
}

/// A failure with its exit code.
#[derive(Debug)]
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn from_zbus(e: zbus::Error) -> Self {
        match &e {
            zbus::Error::MethodError(name, detail, _) => {
                let name = name.as_str();
                let code = dbus::exit_code_for_error(name);
                let message = match code {
                    dbus::EXIT_NOT_RUNNING => "basalt-updated is not running (start it: systemctl start basalt-updated)".to_owned(),
                    dbus::EXIT_ACCESS_DENIED => format!(
                        "not allowed: only root and members of the basalt-update group may do this ({})",
                        detail.clone().unwrap_or_default()
                    ),
                    _ => detail.clone().unwrap_or_else(|| name.to_owned()),
                };
                Failure { code, message }
            }
            zbus::Error::FDO(fdo) => {
                let name = fdo.name();
                let code = dbus::exit_code_for_error(name.as_str());
                let message = match code {
                    dbus::EXIT_NOT_RUNNING => {
                        "basalt-updated is not running (start it: systemctl start basalt-updated)"
                            .to_owned()
                    }
                    dbus::EXIT_ACCESS_DENIED => {
                        "not allowed: only root and members of the basalt-update group may do this"
                            .to_owned()
                    }
                    _ => fdo.to_string(),
                };
                Failure { code, message }
            }
            _ => Failure {
                code: 1,
                message: e.to_string(),
            },
        }
    }
}

impl From<zbus::Error> for Failure {
    fn from(e: zbus::Error) -> Self {
        Failure::from_zbus(e)
    }
}

impl From<UpdaterError> for Failure {
    fn from(e: UpdaterError) -> Self {
        match e {
            UpdaterError::ZBus(e) => Failure::from_zbus(e),
            other => Failure {
                code: dbus::exit_code_for_error(other.name().as_str()),
                message: other.description().unwrap_or_default().to_owned(),
            },
        }
    }
}

type Res<T> = Result<T, Failure>;

fn z<T, E: Into<Failure>>(r: Result<T, E>) -> Res<T> {
    r.map_err(Into::into)
}

fn zf<T>(r: zbus::fdo::Result<T>) -> Res<T> {
    r.map_err(|e| Failure::from_zbus(zbus::Error::FDO(Box::new(e))))
}

/// `basaltctl status --json`: the committed format (dist/basaltctl/status.json).
#[derive(Debug, Serialize)]
struct StatusJson {
    format: u32,
    state: String,
    current_version: String,
    booted_slot: String,
    next_boot_slot: String,
    available_version: String,
    staged_version: String,
    pinned: bool,
    reboot_required: bool,
    reboot_strategy: String,
    progress: ProgressJson,
    last_error: ErrorJson,
    /// RFC 3339, or null.
    last_check: Option<String>,
    next_check: Option<String>,
    slots: Vec<SlotJson>,
}

#[derive(Debug, Serialize)]
struct ProgressJson {
    phase: String,
    done: u64,
    total: u64,
    fetched: u64,
    reused: u64,
}

#[derive(Debug, Serialize)]
struct ErrorJson {
    name: String,
    message: String,
}

#[derive(Debug, Serialize)]
struct SlotJson {
    slot: String,
    version: String,
    state: String,
    boot: String,
    tries_left: u32,
}

fn time(secs: i64) -> Option<String> {
    (secs > 0)
        .then(|| basalt_manifest::chrono::DateTime::from_timestamp(secs, 0))
        .flatten()
        .map(|t| t.to_rfc3339_opts(basalt_manifest::chrono::SecondsFormat::Secs, true))
}

async fn status(p: &Updater1Proxy<'_>) -> Res<StatusJson> {
    let proxy = zbus::fdo::PropertiesProxy::builder(p.inner().connection())
        .destination(dbus::BUS_NAME)?
        .path(dbus::OBJECT_PATH)?
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await?;
    let props = zf(proxy
        .get_all(zbus::names::InterfaceName::from_static_str_unchecked(
            dbus::INTERFACE,
        ))
        .await)?;
    fn get<T: TryFrom<OwnedValue>>(props: &HashMap<String, OwnedValue>, k: &str) -> Res<T> {
        let v = props.get(k).ok_or_else(|| Failure {
            code: 1,
            message: format!("property {k} missing"),
        })?;
        let v = v.try_clone().map_err(|e| Failure {
            code: 1,
            message: e.to_string(),
        })?;
        T::try_from(v).map_err(|_| Failure {
            code: 1,
            message: format!("property {k} has an unexpected type"),
        })
    }
    let (phase, done, total, fetched, reused): (String, u64, u64, u64, u64) =
        get(&props, "Progress")?;
    let (en, em): (String, String) = get(&props, "LastError")?;
    let slot = |k: &str, letter: &str| -> Res<SlotJson> {
        let (version, state, boot, tries_left): (String, String, String, u32) = get(&props, k)?;
        Ok(SlotJson {
            slot: letter.to_owned(),
            version,
            state,
            boot,
            tries_left,
        })
    };
    Ok(StatusJson {
        format: 1,
        state: get(&props, "State")?,
        current_version: get(&props, "CurrentVersion")?,
        booted_slot: get(&props, "BootedSlot")?,
        next_boot_slot: get(&props, "NextBootSlot")?,
        available_version: get(&props, "AvailableVersion")?,
        staged_version: get(&props, "StagedVersion")?,
        pinned: get(&props, "Pinned")?,
        reboot_required: get(&props, "RebootRequired")?,
        reboot_strategy: get(&props, "RebootStrategy")?,
        progress: ProgressJson {
            phase,
            done,
            total,
            fetched,
            reused,
        },
        last_error: ErrorJson {
            name: en,
            message: em,
        },
        last_check: time(get(&props, "LastCheck")?),
        next_check: time(get(&props, "NextCheck")?),
        slots: vec![slot("SlotA", "A")?, slot("SlotB", "B")?],
    })
}

fn print_status(s: &StatusJson) {
    let v = |x: &str| {
        if x.is_empty() {
            "-".to_owned()
        } else {
            x.to_owned()
        }
    };
    println!(
        "State:     {}{}",
        s.state,
        if s.pinned { " (pinned)" } else { "" }
    );
    println!(
        "Running:   {} (slot {})",
        v(&s.current_version),
        v(&s.booted_slot)
    );
    if !s.available_version.is_empty() {
        println!("Available: {}", s.available_version);
    }
    if !s.staged_version.is_empty() {
        println!("Staged:    {}", s.staged_version);
    }
    if !s.progress.phase.is_empty() {
        println!(
            "Progress:  {} {}",
            s.progress.phase,
            percent(s.progress.done, s.progress.total)
        );
    }
    for slot in &s.slots {
        let tries = if slot.boot == "trying" {
            format!(", {} tries left", slot.tries_left)
        } else {
            String::new()
        };
        println!(
            "Slot {}:    {} ({}, boot {}{tries})",
            slot.slot,
            v(&slot.version),
            v(&slot.state),
            v(&slot.boot)
        );
    }
    println!(
        "Next boot: slot {}{}",
        v(&s.next_boot_slot),
        if s.reboot_required {
            " (reboot required)"
        } else {
            ""
        }
    );
    println!("Reboot:    {}", s.reboot_strategy);
    println!(
        "Checked:   {}",
        s.last_check.clone().unwrap_or_else(|| "never".into())
    );
    println!(
        "Next check: {}",
        s.next_check
            .clone()
            .unwrap_or_else(|| "not scheduled".into())
    );
    if !s.last_error.name.is_empty() {
        println!(
            "Last error: {}: {}",
            s.last_error.name.rsplit('.').next().unwrap_or_default(),
            s.last_error.message
        );
    }
}

/// One progress line: the state, the phase when it says more than the state (the daemon's
/// phase is often the state's own name), and the amount when the total is known.
fn progress_line(state: &str, phase: &str, done: u64, total: u64) -> String {
    let mut line = state.to_owned();
    if !phase.is_empty() && phase != state {
        line.push_str(": ");
        line.push_str(phase);
    }
    if total > 0 {
        line.push_str(&format!(
            " {} ({} / {} MiB)",
            percent(done, total),
            done >> 20,
            total >> 20
        ));
    }
    line
}

fn percent(done: u64, total: u64) -> String {
    if total == 0 {
        return String::new();
    }
    format!("{:.0}%", done as f64 * 100.0 / total as f64)
}

fn options(allow_downgrade: bool) -> Res<HashMap<String, OwnedValue>> {
    let mut o = HashMap::new();
    if allow_downgrade {
        let v = Value::from(true).try_to_owned().map_err(|e| Failure {
            code: 1,
            message: e.to_string(),
        })?;
        o.insert(dbus::ALLOW_DOWNGRADE.to_owned(), v);
    }
    Ok(o)
}

/// Draw progress until the state is one of `done`; returns the final state.
async fn follow(p: &Updater1Proxy<'_>, done: &[&str]) -> Res<String> {
    // Change streams need a caching proxy (zbus delivers none without a cache); values are
    // still read fresh through `p`.
    let signals = z(Updater1Proxy::new(p.inner().connection()).await)?;
    let mut states = signals.receive_state_changed().await;
    let mut progress = signals.receive_progress_changed().await;
    let tty = basalt_log::stderr_is_terminal();
    let mut last_line = String::new();
    loop {
        let state = z(p.state().await)?;
        if done.contains(&state.as_str()) || state == "failed" {
            if tty && !last_line.is_empty() {
                eprintln!();
            }
            return Ok(state);
        }
        let (phase, d, t, _, _) = z(p.progress().await)?;
        let line = progress_line(&state, &phase, d, t);
        if line != last_line {
            if tty {
                let width = 30usize;
                let filled = if t > 0 {
                    (d.min(t) as f64 / t as f64 * width as f64) as usize
                } else {
                    0
                };
                eprint!(
                    "\r[{}{}] {line:<60}",
                    "#".repeat(filled),
                    " ".repeat(width - filled)
                );
                let _ = std::io::stderr().flush();
            } else {
                eprintln!("{line}");
            }
            last_line = line;
        }
        // A signal, or a poll every two seconds in case one was missed.
        tokio::select! {
            _ = states.next() => {}
            _ = progress.next() => {}
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

async fn last_error(p: &Updater1Proxy<'_>) -> Failure {
    match p.last_error().await {
        Ok((name, message)) => Failure {
            code: dbus::exit_code_for_error(&name),
            message,
        },
        Err(e) => Failure::from_zbus(e),
    }
}

async fn run(cli: Cli) -> Res<()> {
    if let Cmd::Extensions {
        command: ExtCmd::Activate,
    } = &cli.command
    {
        return activate_extensions();
    }
    let conn = match &cli.bus_address {
        Some(a) => match zbus::connection::Builder::address(a.as_str()) {
            Ok(b) => b.build().await,
            Err(e) => Err(e),
        },
        None => zbus::Connection::system().await,
    }
    .map_err(|e| Failure {
        code: EXIT_NO_BUS,
        message: format!(
            "cannot reach the D-Bus bus {}: {e}",
            cli.bus_address.as_deref().unwrap_or("(system bus)")
        ),
    })?;
    let p = z(Updater1Proxy::builder(&conn)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await)?;
    match cli.command {
        Cmd::Status { json } => {
            let s = status(&p).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
            } else {
                print_status(&s);
            }
        }
        Cmd::Check => {
            let v = z(p.check().await)?;
            if v.is_empty() {
                println!("up to date");
            } else {
                println!("available: {v}");
            }
        }
        Cmd::Update {
            download_only,
            reboot,
            allow_downgrade,
        } => {
            if download_only {
                z(p.download(options(allow_downgrade)?).await)?;
            } else {
                z(p.apply(options(allow_downgrade)?).await)?;
            }
            let wanted: &[&str] = if download_only {
                &["downloaded", "idle", "available", "staged"]
            } else {
                &["staged", "idle", "available", "reboot-pending"]
            };
            let state = follow(&p, wanted).await?;
            match state.as_str() {
                "failed" => return Err(last_error(&p).await),
                "idle" => println!("up to date"),
                "available" => println!(
                    "available but not downloaded: {}",
                    z(p.available_version().await)?
                ),
                "downloaded" => println!(
                    "downloaded and verified: {} (basaltctl update to stage it)",
                    z(p.staged_version().await)?
                ),
                _ => {
                    println!(
                        "staged: {} (boots at the next reboot)",
                        z(p.staged_version().await)?
                    );
                    if reboot {
                        let r = basalt_updater::reboot::SystemdReboot::new(conn.clone());
                        use basalt_updater::reboot::Reboot as _;
                        r.reboot("basaltctl update --reboot")
                            .await
                            .map_err(|e| Failure {
                                code: 1,
                                message: e.to_string(),
                            })?;
                        println!("rebooting");
                    }
                }
            }
        }
        Cmd::Cancel => {
            z(p.cancel().await)?;
            println!("cancelling; the inactive slot is withdrawn");
        }
        Cmd::Rollback => {
            z(p.rollback().await)?;
            println!("rollback requested; the other slot boots next");
        }
        Cmd::MarkGood => {
            z(p.mark_good().await)?;
            println!("marked good");
        }
        Cmd::MarkBad => {
            z(p.mark_bad().await)?;
            println!("marked bad; rebooting into the previous slot");
        }
        Cmd::Pin => {
            z(p.pin().await)?;
            println!("pinned");
        }
        Cmd::Unpin => {
            z(p.unpin().await)?;
            println!("unpinned");
        }
        Cmd::Extensions { command } => extensions(&p, command).await?,
        Cmd::History { json } => {
            let h = z(p.get_history().await)?;
            if json {
                let v: Vec<_> = h
                    .iter()
                    .map(|(t, kind, from, to, detail)| serde_json::json!({"at": time(*t), "kind": kind, "from": from, "to": to, "detail": detail}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else if h.is_empty() {
                println!("no outcomes recorded");
            } else {
                for (t, kind, from, to, detail) in h {
                    let when = time(t).unwrap_or_default();
                    let arrow = match (from.is_empty(), to.is_empty()) {
                        (true, true) => String::new(),
                        (true, false) => to.clone(),
                        (false, true) => from.clone(),
                        (false, false) => format!("{from} → {to}"),
                    };
                    println!(
                        "{when}  {kind:<11} {arrow}{}",
                        if detail.is_empty() {
                            String::new()
                        } else {
                            format!("  {detail}")
                        }
                    );
                }
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = basalt_log::init() {
        eprintln!("basaltctl: {e}");
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("basaltctl: starting the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("basaltctl: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::progress_line;

    #[test]
    fn a_progress_line_says_each_thing_once() {
        assert_eq!(
            progress_line("downloading", "downloading", 3 << 20, 171 << 20),
            "downloading 2% (3 / 171 MiB)"
        );
        assert_eq!(
            progress_line("verifying", "usr", 1 << 20, 4 << 20),
            "verifying: usr 25% (1 / 4 MiB)"
        );
        assert_eq!(progress_line("staging", "staging", 0, 0), "staging");
        assert_eq!(progress_line("checking", "", 0, 0), "checking");
    }
}
