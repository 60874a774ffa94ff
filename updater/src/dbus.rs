//! The D-Bus API, `org.basalt.Updater1` at `/org/basalt/Updater1` on the system bus: the
//! server side ([`Updater1`], served by `basalt-updated`) and, generated from the same
//! definition, the client proxy ([`Updater1Proxy`], used by `basaltctl` and the tests).
//!
//! Owns: names, signatures, the error names, the mapping from the daemon's [`View`] to
//! properties, `PropertiesChanged` emission. Does not own: what the methods do (the daemon's
//! owning task decides; a method only sends it a message and waits for the reply).
//!
//! Methods answer when the daemon accepted the request; long work (download, verify, stage,
//! cancel, rollback) goes on and is followed through the `State`, `Progress` and `LastError`
//! properties. `Check` is the exception: it answers with the result (the available version, or
//! an empty string when up to date). Refusals and failures are D-Bus errors
//! `org.basalt.Updater1.Error.<Name>` ([`UpdaterError`]), one per class. Who may call what is
//! the bus policy's job (`dist/dbus/org.basalt.Updater1.conf`): root and the `basalt-update`
//! group may call the mutating methods, anyone may read properties and `GetHistory`.
//!
//! The committed introspection XML (`dist/dbus/org.basalt.Updater1.xml`) is compared with what
//! this code serves by `updater/tests/dbus_api.rs`.

use std::collections::HashMap;

use zbus::message::Header;
use zbus::zvariant::{OwnedValue, Value};

use crate::daemon::{error_name, Accepted, ApiError, ExtensionRequest, Handle, View};
use crate::engine::ErrorClass;
use crate::engine::ExtensionsView;
use crate::machine::{Command, Origin, Refusal};

/// The well-known bus name.
pub const BUS_NAME: &str = "org.basalt.Updater1";
/// The object path.
pub const OBJECT_PATH: &str = "/org/basalt/Updater1";
/// The interface name.
pub const INTERFACE: &str = "org.basalt.Updater1";
/// The option key of Download/Apply that allows an older release.
pub const ALLOW_DOWNGRADE: &str = "allow-downgrade";

/// Every error the API returns: `org.basalt.Updater1.Error.<Variant>`.
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.basalt.Updater1.Error")]
pub enum UpdaterError {
    #[zbus(error)]
    ZBus(zbus::Error),
    /// Work is running that this request cannot interrupt.
    Busy(String),
    /// Nothing is running or staged that could be cancelled.
    NothingToCancel(String),
    /// An update is downloaded or staged: apply (reboot) or cancel it first.
    UpdatePending(String),
    /// The node is pinned to its version.
    Pinned(String),
    /// mark-good / mark-bad need a freshly booted update awaiting its verdict.
    NotPendingHealth(String),
    /// A reboot into the other slot is already due.
    RebootPending(String),
    /// The release is older than the booted one and allow-downgrade was not given.
    DowngradeNotAllowed(String),
    /// An argument or option is not understood.
    InvalidArgument(String),
    /// The repository could not be reached or answered wrongly.
    Network(String),
    /// Bytes did not match what was signed.
    Integrity(String),
    /// A verified release was refused by policy (expired, replayed, downgrade, wrong channel).
    Policy(String),
    /// Reading or writing the disk failed.
    Disk(String),
    /// The boot-control backend failed.
    BootControl(String),
    /// The operation was cancelled.
    Cancelled(String),
    /// The configuration or persisted state is unusable.
    Config(String),
    /// A bug; the message says where.
    Internal(String),
    /// The daemon is stopping.
    ShuttingDown(String),
    /// No staged extension set holds an extension of that name.
    UnknownExtension(String),
    /// That version of the extension is not staged (the message lists the staged ones).
    ExtensionNotStaged(String),
    /// The extension does not fit the booted OS (the message names both levels or versions).
    ExtensionIncompatible(String),
}

impl UpdaterError {
    /// The error for an engine failure class.
    pub fn from_class(class: ErrorClass, message: String) -> Self {
        match class {
            ErrorClass::Network => Self::Network(message),
            ErrorClass::Integrity => Self::Integrity(message),
            ErrorClass::Policy => Self::Policy(message),
            ErrorClass::Disk => Self::Disk(message),
            ErrorClass::BootControl => Self::BootControl(message),
            ErrorClass::Cancelled => Self::Cancelled(message),
            ErrorClass::Config => Self::Config(message),
            ErrorClass::Internal => Self::Internal(message),
        }
    }
}

impl From<ApiError> for UpdaterError {
    fn from(e: ApiError) -> Self {
        let message = e.to_string();
        match e {
            ApiError::Refused(r) => match r {
                Refusal::Busy { .. } => Self::Busy(message),
                Refusal::NothingToCancel { .. } => Self::NothingToCancel(message),
                Refusal::UpdatePending { .. } => Self::UpdatePending(message),
                Refusal::Pinned { .. } => Self::Pinned(message),
                Refusal::NotPendingHealth { .. } => Self::NotPendingHealth(message),
                Refusal::RebootPending { .. } => Self::RebootPending(message),
                Refusal::DowngradeNotAllowed { .. } => Self::DowngradeNotAllowed(message),
            },
            ApiError::Failed(f) => Self::from_class(f.error.class, message),
            ApiError::ShuttingDown => Self::ShuttingDown(message),
            // The engine's kind names the refusal (pipeline::ErrorKind); other failures
            // (a verity mismatch, I/O) keep their class.
            ApiError::Extension(e) => match e.name.as_str() {
                "UnknownExtension" => Self::UnknownExtension(message),
                "ExtensionNotStaged" => Self::ExtensionNotStaged(message),
                "InvalidRelease" => Self::ExtensionIncompatible(message),
                _ => Self::from_class(e.class, message),
            },
        }
    }
}

/// Every error name the API can return (for docs, tests, `basaltctl`'s exit codes).
pub const ERROR_NAMES: [&str; 20] = [
    "Busy",
    "NothingToCancel",
    "UpdatePending",
    "Pinned",
    "NotPendingHealth",
    "RebootPending",
    "DowngradeNotAllowed",
    "InvalidArgument",
    "Network",
    "Integrity",
    "Policy",
    "Disk",
    "BootControl",
    "Cancelled",
    "Config",
    "Internal",
    "ShuttingDown",
    "UnknownExtension",
    "ExtensionNotStaged",
    "ExtensionIncompatible",
];

/// `allow-downgrade` from a method's options; anything else is refused.
fn allow_downgrade(options: &HashMap<String, OwnedValue>) -> Result<bool, UpdaterError> {
    let mut allow = false;
    for (k, v) in options {
        match k.as_str() {
            ALLOW_DOWNGRADE => {
                allow = bool::try_from(v).map_err(|_| {
                    UpdaterError::InvalidArgument(format!(
                        "option {ALLOW_DOWNGRADE} must be a boolean (b)"
                    ))
                })?;
            }
            other => {
                return Err(UpdaterError::InvalidArgument(format!(
                    "unknown option {other:?} (known: {ALLOW_DOWNGRADE})"
                )))
            }
        }
    }
    Ok(allow)
}

// The property values, one function per property: used by the getters and by the change
// signal, so both always agree.
type Slot4 = (String, String, String, u32);
type Progress5 = (String, u64, u64, u64, u64);
type HistoryEntry = (i64, String, String, String, String);
/// One staged set of `ListExtensions`: (OS version, [(name, version)]).
type StagedSet = (String, Vec<(String, String)>);
/// `ListExtensions`' three out arguments: staged sets, active names, pins (name, version).
type ExtensionsListing = (Vec<StagedSet>, Vec<String>, Vec<(String, String)>);

fn extensions_value(v: ExtensionsView) -> ExtensionsListing {
    let staged = v
        .staged
        .into_iter()
        .map(|set| {
            let exts = set
                .extensions
                .into_iter()
                .map(|(n, ver)| (n, ver.map(|x| x.to_string()).unwrap_or_default()))
                .collect();
            (set.os_version.to_string(), exts)
        })
        .collect();
    let pins = v
        .pins
        .into_iter()
        .map(|(n, ver)| (n, ver.to_string()))
        .collect();
    (staged, v.active, pins)
}

/// A pin request's extension name, checked before the daemon sees it.
fn extension_name(name: &str) -> Result<(), UpdaterError> {
    if basalt_manifest::valid_extension_name(name) {
        Ok(())
    } else {
        Err(UpdaterError::InvalidArgument(format!(
            "{name:?} is not an extension name"
        )))
    }
}

/// A pin request's version (semver, as extension statements sign it).
fn extension_version(v: &str) -> Result<basalt_manifest::semver::Version, UpdaterError> {
    basalt_manifest::semver::Version::parse(v)
        .map_err(|e| UpdaterError::InvalidArgument(format!("extension version {v:?}: {e}")))
}

fn slot_value(v: &View, i: usize) -> Slot4 {
    let s = &v.slots[i];
    (
        s.version.clone(),
        s.state.clone(),
        s.boot.clone(),
        s.tries_left,
    )
}

fn progress_value(v: &View) -> Progress5 {
    let p = &v.progress;
    (p.phase.clone(), p.done, p.total, p.fetched, p.reused)
}

/// Every property and its value, in introspection order.
pub fn property_values(v: &View) -> Vec<(&'static str, Value<'static>)> {
    vec![
        ("AvailableVersion", Value::from(v.available_version.clone())),
        ("BootedSlot", Value::from(v.booted_slot.clone())),
        ("CurrentVersion", Value::from(v.current_version.clone())),
        ("LastCheck", Value::from(v.last_check)),
        (
            "LastError",
            Value::from((v.last_error_name.clone(), v.last_error_message.clone())),
        ),
        ("NextBootSlot", Value::from(v.next_boot_slot.clone())),
        ("NextCheck", Value::from(v.next_check)),
        ("Pinned", Value::from(v.pinned)),
        ("Progress", Value::from(progress_value(v))),
        ("RebootRequired", Value::from(v.reboot_required)),
        ("RebootStrategy", Value::from(v.reboot_strategy.clone())),
        ("SlotA", Value::from(slot_value(v, 0))),
        ("SlotB", Value::from(slot_value(v, 1))),
        ("StagedVersion", Value::from(v.staged_version.clone())),
        ("State", Value::from(v.state.clone())),
    ]
}

/// Log who asked (the unique bus name; the bus policy already decided whether they may).
fn log_caller(header: &Header<'_>, method: &str) {
    let sender = header.sender().map(|s| s.to_string()).unwrap_or_default();
    tracing::info!(method, sender, "D-Bus request {method} from {sender}");
}

/// The served object.
#[derive(Debug)]
pub struct Updater1 {
    handle: Handle,
}

impl Updater1 {
    pub fn new(handle: Handle) -> Self {
        Self { handle }
    }

    fn view(&self) -> View {
        self.handle.view().borrow().clone()
    }

    async fn command(&self, command: Command) -> Result<Accepted, UpdaterError> {
        self.handle
            .command(command)
            .await
            .map_err(UpdaterError::from)
    }
}

/// The Basalt update agent: checks for signed releases, writes them into the inactive A/B
/// slot, stages them for the next boot, and after the reboot commits or rolls back.
#[zbus::interface(
    name = "org.basalt.Updater1",
    proxy(
        default_service = "org.basalt.Updater1",
        default_path = "/org/basalt/Updater1",
        gen_blocking = false
    )
)]
impl Updater1 {
    /// Check the repository now. Returns the available version, or "" when up to date.
    async fn check(&self, #[zbus(header)] header: Header<'_>) -> Result<String, UpdaterError> {
        log_caller(&header, "check");
        match self
            .command(Command::Check {
                origin: Origin::Operator,
            })
            .await?
        {
            Accepted::Checked(v) => Ok(v),
            Accepted::Started => Ok(String::new()),
        }
    }

    /// Check if needed, then download and verify the update into the inactive slot (not
    /// staged). Options: "allow-downgrade" (b) lets an older release through (logged).
    async fn download(
        &self,
        #[zbus(header)] header: Header<'_>,
        options: HashMap<String, OwnedValue>,
    ) -> Result<(), UpdaterError> {
        log_caller(&header, "download");
        let allow = allow_downgrade(&options)?;
        self.command(Command::Download {
            origin: Origin::Operator,
            allow_downgrade: allow,
        })
        .await
        .map(|_| ())
    }

    /// Check and download if needed, then stage the update for the next boot. Options as for
    /// Download. The reboot follows the configured strategy.
    async fn apply(
        &self,
        #[zbus(header)] header: Header<'_>,
        options: HashMap<String, OwnedValue>,
    ) -> Result<(), UpdaterError> {
        log_caller(&header, "apply");
        let allow = allow_downgrade(&options)?;
        self.command(Command::Apply {
            origin: Origin::Operator,
            allow_downgrade: allow,
        })
        .await
        .map(|_| ())
    }

    /// Stop a download, or withdraw a downloaded or staged update. The booted slot is never
    /// touched.
    async fn cancel(&self, #[zbus(header)] header: Header<'_>) -> Result<(), UpdaterError> {
        log_caller(&header, "cancel");
        self.command(Command::Cancel).await.map(|_| ())
    }

    /// Make the other slot boot next and mark the booted one bad; the reboot follows the
    /// configured strategy.
    async fn rollback(&self, #[zbus(header)] header: Header<'_>) -> Result<(), UpdaterError> {
        log_caller(&header, "rollback");
        self.command(Command::Rollback).await.map(|_| ())
    }

    /// Declare the freshly booted update good (skips the rest of the health gate).
    async fn mark_good(&self, #[zbus(header)] header: Header<'_>) -> Result<(), UpdaterError> {
        log_caller(&header, "mark_good");
        self.command(Command::MarkGood).await.map(|_| ())
    }

    /// Declare the freshly booted update bad: it is marked bad and the node reboots into the
    /// previous slot.
    async fn mark_bad(&self, #[zbus(header)] header: Header<'_>) -> Result<(), UpdaterError> {
        log_caller(&header, "mark_bad");
        self.command(Command::MarkBad).await.map(|_| ())
    }

    /// Hold the node at its version: downloads and applies are refused until Unpin.
    async fn pin(&self, #[zbus(header)] header: Header<'_>) -> Result<(), UpdaterError> {
        log_caller(&header, "pin");
        self.command(Command::Pin).await.map(|_| ())
    }

    /// Allow updates again.
    async fn unpin(&self, #[zbus(header)] header: Header<'_>) -> Result<(), UpdaterError> {
        log_caller(&header, "unpin");
        self.command(Command::Unpin).await.map(|_| ())
    }

    /// The system extensions: the sets staged per OS version ((OS version, [(name,
    /// version)]) — version "" when an image's statement is unreadable), the active ones
    /// (mounted this boot) and the pins ((name, version)). A listing: nothing is verified.
    #[zbus(out_args("staged", "active", "pins"))]
    async fn list_extensions(
        &self,
    ) -> Result<(Vec<StagedSet>, Vec<String>, Vec<(String, String)>), UpdaterError> {
        let v = self
            .handle
            .extensions(ExtensionRequest::List)
            .await
            .map_err(UpdaterError::from)?;
        Ok(extensions_value(v))
    }

    /// Keep extension `name` at `version` across updates: a node-image-only update keeps it
    /// while it fits the new OS, a full update must ship that version. Refused when no set
    /// holds the name (UnknownExtension) or the version (ExtensionNotStaged), the image does
    /// not verify (Integrity) or does not fit the booted OS (ExtensionIncompatible), and while
    /// an update is being downloaded or waits staged (Busy, UpdatePending).
    async fn pin_extension(
        &self,
        #[zbus(header)] header: Header<'_>,
        name: String,
        version: String,
    ) -> Result<(), UpdaterError> {
        log_caller(&header, "pin_extension");
        extension_name(&name)?;
        let version = extension_version(&version)?;
        self.handle
            .extensions(ExtensionRequest::Pin { name, version })
            .await
            .map(|_| ())
            .map_err(UpdaterError::from)
    }

    /// Remove extension `name`'s pin (not an error when it is not pinned).
    async fn unpin_extension(
        &self,
        #[zbus(header)] header: Header<'_>,
        name: String,
    ) -> Result<(), UpdaterError> {
        log_caller(&header, "unpin_extension");
        extension_name(&name)?;
        self.handle
            .extensions(ExtensionRequest::Unpin { name })
            .await
            .map(|_| ())
            .map_err(UpdaterError::from)
    }

    /// The last outcomes, oldest first: (unix time, kind, from version, to version, detail);
    /// kind is committed, rolled-back, failed or cancelled.
    async fn get_history(&self) -> Result<Vec<HistoryEntry>, UpdaterError> {
        let history = self.handle.history().await.map_err(UpdaterError::from)?;
        Ok(history
            .into_iter()
            .map(|o| {
                (
                    o.at.timestamp(),
                    o.kind,
                    o.from.map(|v| v.to_string()).unwrap_or_default(),
                    o.to.map(|v| v.to_string()).unwrap_or_default(),
                    o.detail,
                )
            })
            .collect())
    }

    /// idle, checking, available, downloading, verifying, downloaded, staging, staged,
    /// cancelling, pending-health, committing, marking-bad, rolling-back, reboot-pending,
    /// committed, rolled-back or failed.
    #[zbus(property)]
    async fn state(&self) -> String {
        self.view().state
    }

    /// (phase, done, total, fetched, reused): phase is downloading, verifying, staging or "".
    #[zbus(property)]
    async fn progress(&self) -> Progress5 {
        progress_value(&self.view())
    }

    /// The version that runs (or was committed).
    #[zbus(property)]
    async fn current_version(&self) -> String {
        self.view().current_version
    }

    /// "A", "B" or "" when unknown.
    #[zbus(property)]
    async fn booted_slot(&self) -> String {
        self.view().booted_slot
    }

    /// The slot the boot loader picks next.
    #[zbus(property)]
    async fn next_boot_slot(&self) -> String {
        self.view().next_boot_slot
    }

    /// A verified release not yet downloaded, or "".
    #[zbus(property)]
    async fn available_version(&self) -> String {
        self.view().available_version
    }

    /// A release downloaded or staged in the inactive slot, or "".
    #[zbus(property)]
    async fn staged_version(&self) -> String {
        self.view().staged_version
    }

    #[zbus(property)]
    async fn pinned(&self) -> bool {
        self.view().pinned
    }

    /// (error name, message) of the last failure, or ("", "").
    #[zbus(property)]
    async fn last_error(&self) -> (String, String) {
        let v = self.view();
        (v.last_error_name, v.last_error_message)
    }

    /// Unix time of the end of the last check; 0 when never.
    #[zbus(property)]
    async fn last_check(&self) -> i64 {
        self.view().last_check
    }

    /// Unix time of the next periodic check; 0 when none is scheduled.
    #[zbus(property)]
    async fn next_check(&self) -> i64 {
        self.view().next_check
    }

    /// A staged update or a rollback waits for a reboot.
    #[zbus(property)]
    async fn reboot_required(&self) -> bool {
        self.view().reboot_required
    }

    /// off, immediate, window or fleet-lock.
    #[zbus(property)]
    async fn reboot_strategy(&self) -> String {
        self.view().reboot_strategy
    }

    /// Slot A: (version, content state, boot state, tries left).
    #[zbus(property)]
    async fn slot_a(&self) -> Slot4 {
        slot_value(&self.view(), 0)
    }

    /// Slot B: (version, content state, boot state, tries left).
    #[zbus(property)]
    async fn slot_b(&self) -> Slot4 {
        slot_value(&self.view(), 1)
    }
}

/// The D-Bus error name of a failure class, re-exported for clients.
pub fn class_error_name(class: ErrorClass) -> String {
    error_name(class)
}

/// Why the service could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Start(#[from] crate::daemon::StartError),
    #[error("serving {OBJECT_PATH} on the bus: {0}")]
    Serve(zbus::Error),
    #[error("owning the bus name {BUS_NAME}: {0} (is another basalt-updated running, or does the bus policy not allow this user to own it?)")]
    Name(zbus::Error),
    #[error("the bus name {BUS_NAME} is already owned (another basalt-updated is running)")]
    NameTaken,
}

/// Run the whole service on `conn` until `shutdown`: start the daemon (status, boot facts,
/// reconcile), serve the object, own [`BUS_NAME`], tell systemd `READY=1` (only now: a client
/// started after readiness finds the name), then run the owning task.
pub async fn run_service<E: crate::engine::Engine + 'static>(
    conn: zbus::Connection,
    parts: crate::daemon::Parts<E>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ServiceError> {
    let (daemon, handle) = crate::daemon::Daemon::start(parts).await?;
    let rx = handle.view();
    conn.object_server()
        .at(OBJECT_PATH, Updater1::new(handle))
        .await
        .map_err(ServiceError::Serve)?;
    let reply = conn
        .request_name_with_flags(BUS_NAME, zbus::fdo::RequestNameFlags::DoNotQueue.into())
        .await
        .map_err(ServiceError::Name)?;
    if !matches!(
        reply,
        zbus::fdo::RequestNameReply::PrimaryOwner | zbus::fdo::RequestNameReply::AlreadyOwner
    ) {
        return Err(ServiceError::NameTaken);
    }
    tracing::info!(name = BUS_NAME, "serving {BUS_NAME} at {OBJECT_PATH}");
    daemon.ready();
    let signals = emit_changes(conn.clone(), rx);
    tokio::select! {
        () = daemon.run(shutdown) => {}
        r = signals => {
            if let Err(e) = r {
                tracing::error!("property signals stopped: {e}");
            }
        }
    }
    let _ = conn.release_name(BUS_NAME).await;
    Ok(())
}

/// Emit `PropertiesChanged` for every change of the view (one signal carrying every property
/// that changed), until the view's sender is gone.
pub async fn emit_changes(
    conn: zbus::Connection,
    mut rx: tokio::sync::watch::Receiver<View>,
) -> zbus::Result<()> {
    let iface = conn
        .object_server()
        .interface::<_, Updater1>(OBJECT_PATH)
        .await?;
    let mut last = property_values(&rx.borrow_and_update().clone());
    while rx.changed().await.is_ok() {
        let now = property_values(&rx.borrow_and_update().clone());
        let mut changed: HashMap<&str, Value<'_>> = HashMap::new();
        for ((name, new), (_, old)) in now.iter().zip(last.iter()) {
            if new != old {
                changed.insert(name, new.clone());
            }
        }
        if !changed.is_empty() {
            if let Err(e) = zbus::fdo::Properties::properties_changed(
                iface.signal_emitter(),
                zbus::names::InterfaceName::from_static_str_unchecked(INTERFACE),
                changed,
                std::borrow::Cow::Borrowed(&[]),
            )
            .await
            {
                tracing::warn!("emitting PropertiesChanged: {e}");
            }
        }
        last = now;
    }
    Ok(())
}

/// `basaltctl`'s exit code for a D-Bus error name (stable; documented in `basaltctl --help`).
pub fn exit_code_for_error(name: &str) -> u8 {
    let short = name
        .strip_prefix("org.basalt.Updater1.Error.")
        .unwrap_or("");
    match short {
        "Busy" => 10,
        "NothingToCancel" => 11,
        "UpdatePending" => 12,
        "Pinned" => 13,
        "NotPendingHealth" => 14,
        "RebootPending" => 15,
        "DowngradeNotAllowed" => 16,
        "InvalidArgument" => 17,
        "Network" => 20,
        "Integrity" => 21,
        "Policy" => 22,
        "Disk" => 23,
        "BootControl" => 24,
        "Cancelled" => 25,
        "Config" => 26,
        "Internal" => 27,
        "ShuttingDown" => 28,
        "UnknownExtension" => 30,
        "ExtensionNotStaged" => 31,
        "ExtensionIncompatible" => 32,
        _ => match name {
            "org.freedesktop.DBus.Error.ServiceUnknown"
            | "org.freedesktop.DBus.Error.NameHasNoOwner" => EXIT_NOT_RUNNING,
            "org.freedesktop.DBus.Error.AccessDenied" => EXIT_ACCESS_DENIED,
            _ => 1,
        },
    }
}

/// `basaltctl`: the daemon is not running.
pub const EXIT_NOT_RUNNING: u8 = 3;
/// `basaltctl`: the bus policy refused the call.
pub const EXIT_ACCESS_DENIED: u8 = 4;
/// `basaltctl`: the bus cannot be reached.
pub const EXIT_NO_BUS: u8 = 5;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_name_has_its_own_exit_code() {
        let mut codes: Vec<u8> = ERROR_NAMES
            .iter()
            .map(|n| exit_code_for_error(&format!("org.basalt.Updater1.Error.{n}")))
            .collect();
        assert!(codes.iter().all(|c| *c >= 10), "{codes:?}");
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), ERROR_NAMES.len());
        assert_eq!(
            exit_code_for_error("org.freedesktop.DBus.Error.ServiceUnknown"),
            EXIT_NOT_RUNNING
        );
        assert_eq!(
            exit_code_for_error("org.freedesktop.DBus.Error.AccessDenied"),
            EXIT_ACCESS_DENIED
        );
        assert_eq!(exit_code_for_error("org.example.Other"), 1);
        // Every engine class has a D-Bus error of the same name.
        for class in ErrorClass::ALL {
            assert!(ERROR_NAMES.contains(&class.as_str()), "{class:?}");
            let e = UpdaterError::from_class(class, String::new());
            use zbus::DBusError;
            assert_eq!(e.name().as_str(), error_name(class));
        }
    }
}
