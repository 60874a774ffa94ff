//! `basalt-updated`'s configuration: TOML drop-ins, merged with systemd's rules, validated into
//! [`Settings`].
//!
//! Owns: the file layout, the fragment schema, merging and validation. Does not own: what the
//! settings do (the daemon, the engine, the health gate read them).
//!
//! Layout (like systemd's `*.conf.d` and coreos/zincati `config.d`): `*.toml` files in
//! [`CONFIG_DIRS`], `/usr/lib/basalt/updater.d/` (the image's defaults, e.g.
//! `dist/updater.d/00-defaults.toml`) → `/etc/basalt/updater.d/` (the administrator) →
//! `/run/basalt/updater.d/` (runtime). A file in a later directory replaces the file with the
//! same name in an earlier one (a symlink to `/dev/null` or an empty file masks it); the
//! remaining files are applied in lexical order of their names, each key overriding what an
//! earlier file set. Every key is optional in a fragment; after the merge the result is
//! validated. Unknown keys and tables are refused (a typo must not silently keep a default);
//! every error names the file and the key.
//!
//! Durations are whole seconds (`*_secs`) or minutes (`*_minutes`): no unit parser to get
//! wrong. The maintenance window's time zone is always explicit (never the node's local time):
//! `UTC`, a fixed offset (`+01:00`), or an IANA name (`Europe/Berlin`, read from the node's
//! `/usr/share/zoneinfo` when the configuration is loaded, so daylight saving time is followed).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use basalt_manifest::chrono::{FixedOffset, NaiveTime, Weekday};
use serde::Deserialize;

/// The drop-in directories, earliest first.
pub const CONFIG_DIRS: [&str; 3] = [
    "/usr/lib/basalt/updater.d",
    "/etc/basalt/updater.d",
    "/run/basalt/updater.d",
];

/// The trust root shipped in `/usr` when `repository.trust_root` is not set.
pub const DEFAULT_TRUST_ROOT: &str = "/usr/lib/basalt/trust/root.json";
/// The channel when neither `repository.channel` nor os-release's `BASALT_CHANNEL` names one.
pub const DEFAULT_CHANNEL: &str = "stable";

/// A drop-in larger than this is refused before parsing.
pub const MAX_FRAGMENT_BYTES: u64 = 64 * 1024;

/// What is wrong with the configuration. Every variant names the file and/or key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading configuration directory {path}: {source}")]
    ReadDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading configuration file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("configuration file {path} is larger than {MAX_FRAGMENT_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("configuration file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// A merged value is out of range or inconsistent.
    #[error("configuration key {key} (set in {file}): {message}")]
    Invalid {
        key: &'static str,
        file: String,
        message: String,
    },
    /// A required key is set nowhere.
    #[error("configuration key {key} is required (strategy {context}) but set in no file")]
    Missing { key: &'static str, context: String },
}

// ───────────────────────────── fragments (all optional) ─────────────────────────────

/// One drop-in file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Fragment {
    pub repository: Option<RepositoryFragment>,
    pub check: Option<CheckFragment>,
    pub update: Option<UpdateFragment>,
    pub reboot: Option<RebootFragment>,
    pub health: Option<HealthFragment>,
    pub boot: Option<BootFragment>,
    pub metrics: Option<MetricsFragment>,
    pub http: Option<HttpFragment>,
    pub server: Option<ServerFragment>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RepositoryFragment {
    pub url: Option<String>,
    pub channel: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub trust_root: Option<PathBuf>,
    pub os: Option<String>,
    pub arch: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CheckFragment {
    pub interval_secs: Option<u64>,
    pub jitter_secs: Option<u64>,
    pub initial_delay_secs: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpdateFragment {
    pub auto_download: Option<bool>,
    pub auto_apply: Option<bool>,
    pub tries: Option<u32>,
    pub node_image_only: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RebootFragment {
    pub strategy: Option<String>,
    pub window: Option<WindowFragment>,
    pub fleet_lock: Option<FleetLockFragment>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WindowFragment {
    pub days: Option<Vec<String>>,
    pub start: Option<String>,
    pub length_minutes: Option<u32>,
    pub time_zone: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FleetLockFragment {
    pub url: Option<String>,
    pub group: Option<String>,
    pub id: Option<String>,
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HealthFragment {
    pub deadline_secs: Option<u64>,
    pub interval_secs: Option<u64>,
    pub boot_complete: Option<bool>,
    pub units: Option<Vec<String>>,
    pub commands: Option<Vec<Vec<String>>>,
    pub http: Option<Vec<String>>,
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BootFragment {
    pub backend: Option<String>,
    pub disk: Option<PathBuf>,
    pub esp: Option<PathBuf>,
    pub kernel_options: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MetricsFragment {
    pub listen: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpFragment {
    pub connect_timeout_secs: Option<u64>,
    pub read_timeout_secs: Option<u64>,
}

/// `[server]`: the fleet server (`basalt-rollout`) this node checks in with.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerFragment {
    pub url: Option<String>,
    pub pool: Option<String>,
    pub enroll_token_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub node_id: Option<String>,
    pub pre_reboot: Option<Vec<String>>,
}

impl Fragment {
    /// Parse one drop-in's text. `path` is for messages only.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().replace('\n', " "),
        })
    }
}

// ───────────────────────────── settings (validated) ─────────────────────────────

/// Where releases come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepositoryLocation {
    /// `http://` or `https://`.
    Http(String),
    /// A local folder (`file:///…` or an absolute path).
    Folder(PathBuf),
    /// Server mode (`[server]` is set, `repository.url` is not): the fleet server names the
    /// release and its repository in each `update` directive (see `fleet`).
    Server,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepositorySettings {
    pub location: RepositoryLocation,
    /// The channel followed; `None`: `BASALT_CHANNEL` of `/usr/lib/os-release`, else
    /// `stable` (resolved by `agent`, which reads the node).
    pub channel: Option<String>,
    /// The OS name releases must carry; `None`: `ID` of `/usr/lib/os-release`.
    pub os: Option<String>,
    /// The architecture releases must carry; `None`: the one this binary was built for.
    pub arch: Option<String>,
    /// A PEM bundle that replaces the system roots for HTTPS.
    pub ca_file: Option<PathBuf>,
    /// The trust root shipped in `/usr` (newer generations live under the state directory).
    pub trust_root: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckSettings {
    pub interval_secs: u64,
    /// Each wait is `interval` plus a uniform random part in `[0, jitter]`.
    pub jitter_secs: u64,
    /// Wait before the first check after start.
    pub initial_delay_secs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpdateSettings {
    pub auto_download: bool,
    /// Implies `auto_download`.
    pub auto_apply: bool,
    /// Boot attempts of a staged slot before the boot loader falls back.
    pub tries: u32,
    /// Node-image-only updates: the OS moves, the node keeps its extension set (checked
    /// against the new OS, refused when it does not fit); the release's own extensions are
    /// not taken. Default `false`: OS and extensions move together.
    pub node_image_only: bool,
}

/// A weekly maintenance window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// Days on which the window opens (it may run into the next day).
    pub days: Vec<Weekday>,
    pub start: NaiveTime,
    pub length_minutes: u32,
    pub zone: Zone,
}

/// The time zone of a maintenance window.
#[derive(Debug, Clone)]
pub enum Zone {
    /// `UTC` or `±HH:MM`.
    Fixed(FixedOffset),
    /// An IANA name (`Europe/Berlin`), read from the node's tz database when the configuration
    /// is loaded: the window follows daylight saving time.
    Named {
        name: String,
        tz: std::sync::Arc<tz::TimeZone>,
    },
}

impl PartialEq for Zone {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Zone::Fixed(a), Zone::Fixed(b)) => a == b,
            (Zone::Named { name: a, .. }, Zone::Named { name: b, .. }) => a == b,
            _ => false,
        }
    }
}

impl Eq for Zone {}

impl Zone {
    /// Seconds east of UTC in force at `unix` (seconds).
    pub fn offset_at(&self, unix: i64) -> i32 {
        match self {
            Zone::Fixed(o) => o.local_minus_utc(),
            // A time outside the zone data's range: fall back to UTC rather than fail a reboot
            // decision (validation already read the file).
            Zone::Named { tz, .. } => tz.find_local_time_type(unix).map_or(0, |t| t.ut_offset()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetLockSettings {
    pub url: String,
    pub group: String,
    /// `None`: derived from `/etc/machine-id` (see `fleetlock`).
    pub id: Option<String>,
    /// A PEM bundle that replaces the system roots for an `https://` lock server.
    pub ca_file: Option<PathBuf>,
}

/// `[server]`: check in with a fleet server (`basalt-rollout`) instead of polling a
/// repository on a timer. The server decides *when*; the node still verifies *what* (the
/// offered release against its own trust root, sequence and downgrade rules).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    /// `http://` or `https://` base URL of the fleet server.
    pub url: String,
    /// The node pool this node enrols in (the rule of channel names).
    pub pool: String,
    /// The pool's enrolment token, read at the first check-in only (the node token the
    /// server answers is kept under the state directory, mode 0600).
    pub enroll_token_file: PathBuf,
    /// A PEM bundle that replaces the system roots for an `https://` server.
    pub ca_file: Option<PathBuf>,
    /// `None`: the app-specific id derived from `/etc/machine-id` (as for FleetLock).
    pub node_id: Option<String>,
    /// The pre-reboot (drain) command, argv, run before a server-ordered reboot and bounded
    /// by the directive's drain timeout; `None`: reboot without one.
    pub pre_reboot: Option<Vec<String>>,
}

/// When a staged update (or a rollback) reboots the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RebootStrategy {
    /// Never: an operator reboots.
    Off,
    /// As soon as the update is staged.
    Immediate,
    /// Only inside the maintenance window.
    Window(Window),
    /// After taking a FleetLock semaphore slot (the protocol Zincati speaks).
    FleetLock(FleetLockSettings),
}

impl RebootStrategy {
    pub fn name(&self) -> &'static str {
        match self {
            RebootStrategy::Off => "off",
            RebootStrategy::Immediate => "immediate",
            RebootStrategy::Window(_) => "window",
            RebootStrategy::FleetLock(_) => "fleet-lock",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSettings {
    /// Every check must pass within this time after the gate starts.
    pub deadline_secs: u64,
    /// Pause between rounds of checks.
    pub interval_secs: u64,
    /// Wait for systemd's `boot-complete.target`.
    pub boot_complete: bool,
    /// Units that must be active.
    pub units: Vec<String>,
    /// Commands (argv, absolute program path) that must exit 0.
    pub commands: Vec<Vec<String>>,
    /// URLs that must answer 2xx.
    pub http: Vec<String>,
    /// A PEM bundle that replaces the system roots for `https://` health URLs.
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootBackend {
    /// systemd-boot BLS entries with boot counting.
    Bls,
    /// ChromeOS/Flatcar GPT priority bits.
    GptPrio,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootSettings {
    pub backend: BootBackend,
    /// The boot disk; `None`: the disk named in `/run/basalt/boot.env`.
    pub disk: Option<PathBuf>,
    /// The ESP mounted at this folder; `None`: the FAT inside the boot disk's ESP partition,
    /// written raw (refused while that partition is mounted).
    pub esp: Option<PathBuf>,
    /// Kernel command-line options of staged boot entries (besides `usrhash=` and
    /// `basalt.slot=`, which the boot backend adds); `None`: the running kernel's options
    /// carry over (see `agent::carried_kernel_options`).
    pub kernel_options: Option<String>,
}

/// The HTTP(S) client's limits, for every request the agent makes (repository, fleet lock,
/// health checks). Proxies come from the environment (`https_proxy`, `http_proxy`,
/// `no_proxy`; set them with a unit drop-in's `Environment=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpSettings {
    /// DNS + TCP + proxy tunnel + TLS handshake.
    pub connect_timeout_secs: u64,
    /// The response head, then each wait for body bytes.
    pub read_timeout_secs: u64,
}

/// Where metrics are served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricsListen {
    Off,
    /// A loopback TCP address.
    Tcp(SocketAddr),
    /// A unix socket path.
    Unix(PathBuf),
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `None`: no repository configured; checks are refused with a configuration error.
    pub repository: Option<RepositorySettings>,
    pub check: CheckSettings,
    pub update: UpdateSettings,
    pub reboot: RebootStrategy,
    pub health: HealthSettings,
    pub boot: BootSettings,
    pub metrics: MetricsListen,
    pub http: HttpSettings,
    /// `None`: no fleet server; the node polls its repository (if any) on its timer.
    pub server: Option<ServerSettings>,
    /// The files that were applied, in order.
    pub files: Vec<PathBuf>,
    /// For each key set by a file, that file (for messages about values that are only
    /// checked against the node later, e.g. a trust root that cannot be read).
    pub origins: BTreeMap<&'static str, String>,
}

impl Settings {
    /// The file that set `key`, or `the built-in default`.
    pub fn origin(&self, key: &str) -> String {
        self.origins
            .get(key)
            .cloned()
            .unwrap_or_else(|| "the built-in default".to_owned())
    }
}

// ───────────────────────────── loading and merging ─────────────────────────────

/// The drop-in files to apply, in order: later directories replace same-named files of
/// earlier ones, then lexical order of names. Missing directories are fine.
pub fn drop_in_files(dirs: &[PathBuf]) -> Result<Vec<PathBuf>, ConfigError> {
    let mut by_name: BTreeMap<String, PathBuf> = BTreeMap::new();
    for dir in dirs {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(ConfigError::ReadDir {
                    path: dir.clone(),
                    source,
                })
            }
        };
        for entry in entries {
            let entry = entry.map_err(|source| ConfigError::ReadDir {
                path: dir.clone(),
                source,
            })?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.ends_with(".toml") || name.starts_with('.') {
                continue;
            }
            by_name.insert(name, entry.path());
        }
    }
    Ok(by_name.into_values().collect())
}

/// A file that masks: a symlink to `/dev/null` or an empty file.
fn is_masked(path: &Path) -> Result<bool, ConfigError> {
    if let Ok(target) = std::fs::read_link(path) {
        if target == Path::new("/dev/null") {
            return Ok(true);
        }
    }
    let meta = std::fs::metadata(path).map_err(|source| ConfigError::ReadFile {
        path: path.to_owned(),
        source,
    })?;
    Ok(meta.len() == 0)
}

/// Read and parse the drop-ins of `dirs` (earliest first), merge, validate.
pub fn load(dirs: &[PathBuf]) -> Result<Settings, ConfigError> {
    let mut merged = Merged::default();
    let mut files = Vec::new();
    for path in drop_in_files(dirs)? {
        if is_masked(&path)? {
            continue;
        }
        let meta = std::fs::metadata(&path).map_err(|source| ConfigError::ReadFile {
            path: path.clone(),
            source,
        })?;
        if meta.len() > MAX_FRAGMENT_BYTES {
            return Err(ConfigError::TooLarge { path });
        }
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::ReadFile {
            path: path.clone(),
            source,
        })?;
        merged.apply(Fragment::parse(&text, &path)?, &path);
        files.push(path);
    }
    let mut settings = merged.validate()?;
    settings.files = files;
    settings.origins = merged.origin;
    Ok(settings)
}

/// The default directories, optionally under a root (tests).
pub fn default_dirs(root: Option<&Path>) -> Vec<PathBuf> {
    CONFIG_DIRS
        .iter()
        .map(|d| match root {
            Some(r) => r.join(d.trim_start_matches('/')),
            None => PathBuf::from(d),
        })
        .collect()
}

/// The merge of all fragments, each value with the file that set it last.
#[derive(Debug, Default)]
pub struct Merged {
    values: Fragment,
    origin: BTreeMap<&'static str, String>,
}

macro_rules! take {
    ($self:ident, $path:ident, $frag:expr, $table:ident, $key:ident, $name:expr) => {
        if let Some(v) = $frag.$key {
            $self
                .values
                .$table
                .get_or_insert_with(Default::default)
                .$key = Some(v);
            $self.origin.insert($name, $path.display().to_string());
        }
    };
}

impl Merged {
    /// Apply one fragment over what is merged so far.
    pub fn apply(&mut self, f: Fragment, path: &Path) {
        if let Some(r) = f.repository {
            take!(self, path, r, repository, url, "repository.url");
            take!(self, path, r, repository, channel, "repository.channel");
            take!(self, path, r, repository, ca_file, "repository.ca_file");
            take!(
                self,
                path,
                r,
                repository,
                trust_root,
                "repository.trust_root"
            );
            take!(self, path, r, repository, os, "repository.os");
            take!(self, path, r, repository, arch, "repository.arch");
        }
        if let Some(c) = f.check {
            take!(self, path, c, check, interval_secs, "check.interval_secs");
            take!(self, path, c, check, jitter_secs, "check.jitter_secs");
            take!(
                self,
                path,
                c,
                check,
                initial_delay_secs,
                "check.initial_delay_secs"
            );
        }
        if let Some(u) = f.update {
            take!(self, path, u, update, auto_download, "update.auto_download");
            take!(self, path, u, update, auto_apply, "update.auto_apply");
            take!(self, path, u, update, tries, "update.tries");
            take!(
                self,
                path,
                u,
                update,
                node_image_only,
                "update.node_image_only"
            );
        }
        if let Some(r) = f.reboot {
            take!(self, path, r, reboot, strategy, "reboot.strategy");
            let reboot = self.values.reboot.get_or_insert_with(Default::default);
            if let Some(w) = r.window {
                let dst = reboot.window.get_or_insert_with(Default::default);
                for (set, name) in [
                    (w.days.map(|v| dst.days = Some(v)), "reboot.window.days"),
                    (w.start.map(|v| dst.start = Some(v)), "reboot.window.start"),
                    (
                        w.length_minutes.map(|v| dst.length_minutes = Some(v)),
                        "reboot.window.length_minutes",
                    ),
                    (
                        w.time_zone.map(|v| dst.time_zone = Some(v)),
                        "reboot.window.time_zone",
                    ),
                ] {
                    if set.is_some() {
                        self.origin.insert(name, path.display().to_string());
                    }
                }
            }
            if let Some(l) = r.fleet_lock {
                let dst = reboot.fleet_lock.get_or_insert_with(Default::default);
                for (set, name) in [
                    (l.url.map(|v| dst.url = Some(v)), "reboot.fleet_lock.url"),
                    (
                        l.group.map(|v| dst.group = Some(v)),
                        "reboot.fleet_lock.group",
                    ),
                    (l.id.map(|v| dst.id = Some(v)), "reboot.fleet_lock.id"),
                    (
                        l.ca_file.map(|v| dst.ca_file = Some(v)),
                        "reboot.fleet_lock.ca_file",
                    ),
                ] {
                    if set.is_some() {
                        self.origin.insert(name, path.display().to_string());
                    }
                }
            }
        }
        if let Some(h) = f.health {
            take!(self, path, h, health, deadline_secs, "health.deadline_secs");
            take!(self, path, h, health, interval_secs, "health.interval_secs");
            take!(self, path, h, health, boot_complete, "health.boot_complete");
            take!(self, path, h, health, units, "health.units");
            take!(self, path, h, health, commands, "health.commands");
            take!(self, path, h, health, http, "health.http");
            take!(self, path, h, health, ca_file, "health.ca_file");
        }
        if let Some(b) = f.boot {
            take!(self, path, b, boot, backend, "boot.backend");
            take!(self, path, b, boot, disk, "boot.disk");
            take!(self, path, b, boot, esp, "boot.esp");
            take!(self, path, b, boot, kernel_options, "boot.kernel_options");
        }
        if let Some(m) = f.metrics {
            take!(self, path, m, metrics, listen, "metrics.listen");
        }
        if let Some(v) = f.server {
            take!(self, path, v, server, url, "server.url");
            take!(self, path, v, server, pool, "server.pool");
            take!(
                self,
                path,
                v,
                server,
                enroll_token_file,
                "server.enroll_token_file"
            );
            take!(self, path, v, server, ca_file, "server.ca_file");
            take!(self, path, v, server, node_id, "server.node_id");
            take!(self, path, v, server, pre_reboot, "server.pre_reboot");
        }
        if let Some(h) = f.http {
            take!(
                self,
                path,
                h,
                http,
                connect_timeout_secs,
                "http.connect_timeout_secs"
            );
            take!(
                self,
                path,
                h,
                http,
                read_timeout_secs,
                "http.read_timeout_secs"
            );
        }
    }

    fn invalid(&self, key: &'static str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            key,
            file: self
                .origin
                .get(key)
                .cloned()
                .unwrap_or_else(|| "the built-in default".to_owned()),
            message: message.into(),
        }
    }

    /// Validate the merged values into settings (built-in defaults for unset keys).
    pub fn validate(&self) -> Result<Settings, ConfigError> {
        let v = &self.values;
        let repo = v.repository.clone().unwrap_or_default();
        let server = self.validate_server()?;
        let repository = match (repo.url, &server) {
            (None, None) => None,
            (Some(_), Some(_)) => {
                return Err(self.invalid(
                    "repository.url",
                    "cannot be set together with [server]: in server mode the fleet server names the repository of each release it offers (remove one of the two)",
                ))
            }
            (url, _) => {
                let location = match url {
                    Some(url) => parse_repository_url(&url)
                        .map_err(|m| self.invalid("repository.url", m))?,
                    None => RepositoryLocation::Server,
                };
                for (key, value) in [
                    ("repository.channel", &repo.channel),
                    ("repository.os", &repo.os),
                    ("repository.arch", &repo.arch),
                ] {
                    if let Some(v) = value {
                        if !is_name(v) {
                            return Err(self.invalid(
                                key,
                                format!("{v:?}: use lower-case letters, digits, '-', '_', '.'"),
                            ));
                        }
                    }
                }
                self.absolute("repository.ca_file", repo.ca_file.as_deref())?;
                let trust_root = repo
                    .trust_root
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_TRUST_ROOT));
                if !trust_root.is_absolute() {
                    return Err(self.invalid("repository.trust_root", "must be an absolute path"));
                }
                Some(RepositorySettings {
                    location,
                    channel: repo.channel,
                    os: repo.os,
                    arch: repo.arch,
                    ca_file: repo.ca_file,
                    trust_root,
                })
            }
        };

        let c = v.check.clone().unwrap_or_default();
        let check = CheckSettings {
            interval_secs: c.interval_secs.unwrap_or(3600),
            jitter_secs: c.jitter_secs.unwrap_or(300),
            initial_delay_secs: c.initial_delay_secs.unwrap_or(60),
        };
        if !(60..=7 * 86400).contains(&check.interval_secs) {
            return Err(self.invalid(
                "check.interval_secs",
                format!(
                    "{} is outside 60 ..= 604800 (one minute to one week)",
                    check.interval_secs
                ),
            ));
        }
        if check.jitter_secs > check.interval_secs {
            return Err(self.invalid(
                "check.jitter_secs",
                format!(
                    "{} is larger than check.interval_secs ({})",
                    check.jitter_secs, check.interval_secs
                ),
            ));
        }
        if check.initial_delay_secs > 86400 {
            return Err(self.invalid("check.initial_delay_secs", "more than one day"));
        }

        let u = v.update.clone().unwrap_or_default();
        let auto_apply = u.auto_apply.unwrap_or(true);
        let auto_download = u.auto_download.unwrap_or(true);
        if auto_apply && !auto_download {
            // Blame the key that was set explicitly (the other is the default).
            return Err(if self.origin.contains_key("update.auto_apply") {
                self.invalid(
                    "update.auto_apply",
                    "true needs update.auto_download = true (an update is downloaded before it is applied)",
                )
            } else {
                self.invalid(
                    "update.auto_download",
                    "false needs update.auto_apply = false too (an update is downloaded before it is applied)",
                )
            });
        }
        let tries = u.tries.unwrap_or(3);
        // The GPT priority backend stores tries in 4 bits.
        if !(1..=15).contains(&tries) {
            return Err(self.invalid("update.tries", format!("{tries} is outside 1 ..= 15")));
        }
        let update = UpdateSettings {
            auto_download,
            auto_apply,
            tries,
            node_image_only: u.node_image_only.unwrap_or(false),
        };

        let reboot = self.validate_reboot()?;
        let health = self.validate_health()?;

        let b = v.boot.clone().unwrap_or_default();
        let backend = match b.backend.as_deref().unwrap_or("bls") {
            "bls" => BootBackend::Bls,
            "gptprio" => BootBackend::GptPrio,
            other => {
                return Err(self.invalid(
                    "boot.backend",
                    format!("{other:?}: expected \"bls\" or \"gptprio\""),
                ))
            }
        };
        self.absolute("boot.disk", b.disk.as_deref())?;
        self.absolute("boot.esp", b.esp.as_deref())?;
        if let Some(o) = &b.kernel_options {
            check_kernel_options(o).map_err(|m| self.invalid("boot.kernel_options", m))?;
        }
        let boot = BootSettings {
            backend,
            disk: b.disk,
            esp: b.esp,
            kernel_options: b.kernel_options,
        };

        let listen = v
            .metrics
            .clone()
            .and_then(|m| m.listen)
            .unwrap_or_else(|| "127.0.0.1:9259".to_owned());
        let metrics =
            parse_metrics_listen(&listen).map_err(|m| self.invalid("metrics.listen", m))?;

        let h = v.http.clone().unwrap_or_default();
        let http = HttpSettings {
            connect_timeout_secs: h.connect_timeout_secs.unwrap_or(15),
            read_timeout_secs: h.read_timeout_secs.unwrap_or(30),
        };
        for (key, secs) in [
            ("http.connect_timeout_secs", http.connect_timeout_secs),
            ("http.read_timeout_secs", http.read_timeout_secs),
        ] {
            if !(1..=3600).contains(&secs) {
                return Err(self.invalid(key, format!("{secs} is outside 1 ..= 3600")));
            }
        }

        Ok(Settings {
            repository,
            check,
            update,
            reboot,
            health,
            boot,
            metrics,
            http,
            server,
            files: Vec::new(),
            origins: BTreeMap::new(),
        })
    }

    fn validate_server(&self) -> Result<Option<ServerSettings>, ConfigError> {
        let Some(v) = self.values.server.clone() else {
            return Ok(None);
        };
        let url = v.url.ok_or_else(|| ConfigError::Missing {
            key: "server.url",
            context: "server".into(),
        })?;
        match parse_repository_url(&url) {
            Ok(RepositoryLocation::Http(_)) => {}
            Ok(_) => {
                return Err(self.invalid(
                    "server.url",
                    format!("{url:?}: expected https:// or http://"),
                ))
            }
            Err(m) => return Err(self.invalid("server.url", m)),
        }
        let pool = v.pool.ok_or_else(|| ConfigError::Missing {
            key: "server.pool",
            context: "server".into(),
        })?;
        if !basalt_manifest::valid_label(&pool) || pool.is_empty() {
            return Err(self.invalid(
                "server.pool",
                format!("{pool:?}: 1-64 characters of [a-z0-9._-], starting with [a-z0-9]"),
            ));
        }
        let enroll_token_file = v.enroll_token_file.ok_or_else(|| ConfigError::Missing {
            key: "server.enroll_token_file",
            context: "server".into(),
        })?;
        self.absolute("server.enroll_token_file", Some(&enroll_token_file))?;
        self.absolute("server.ca_file", v.ca_file.as_deref())?;
        if let Some(id) = &v.node_id {
            basalt_rollout_wire::NodeId::new(id).map_err(|m| self.invalid("server.node_id", m))?;
        }
        if let Some(argv) = &v.pre_reboot {
            match argv.first() {
                Some(p) if Path::new(p).is_absolute() => {}
                _ => {
                    return Err(self.invalid(
                        "server.pre_reboot",
                        "must be a non-empty list whose first element is an absolute path",
                    ))
                }
            }
        }
        Ok(Some(ServerSettings {
            url,
            pool,
            enroll_token_file,
            ca_file: v.ca_file,
            node_id: v.node_id,
            pre_reboot: v.pre_reboot,
        }))
    }

    /// A path key that must be absolute when set.
    fn absolute(&self, key: &'static str, path: Option<&Path>) -> Result<(), ConfigError> {
        match path {
            Some(p) if !p.is_absolute() => Err(self.invalid(key, "must be an absolute path")),
            _ => Ok(()),
        }
    }

    fn validate_reboot(&self) -> Result<RebootStrategy, ConfigError> {
        let r = self.values.reboot.clone().unwrap_or_default();
        let strategy = r.strategy.unwrap_or_else(|| "immediate".to_owned());
        match strategy.as_str() {
            "off" => Ok(RebootStrategy::Off),
            "immediate" => Ok(RebootStrategy::Immediate),
            "window" => {
                let w = r.window.unwrap_or_default();
                let missing = |key| ConfigError::Missing {
                    key,
                    context: "window".to_owned(),
                };
                let days_raw = w.days.ok_or_else(|| missing("reboot.window.days"))?;
                if days_raw.is_empty() {
                    return Err(self.invalid("reboot.window.days", "names no day"));
                }
                let mut days = Vec::new();
                for d in &days_raw {
                    let day = parse_weekday(d).ok_or_else(|| {
                        self.invalid(
                            "reboot.window.days",
                            format!("{d:?} is not a weekday (mon … sun)"),
                        )
                    })?;
                    if !days.contains(&day) {
                        days.push(day);
                    }
                }
                let start_raw = w.start.ok_or_else(|| missing("reboot.window.start"))?;
                let start = NaiveTime::parse_from_str(&start_raw, "%H:%M").map_err(|_| {
                    self.invalid(
                        "reboot.window.start",
                        format!("{start_raw:?} is not HH:MM (24 h)"),
                    )
                })?;
                let length_minutes = w
                    .length_minutes
                    .ok_or_else(|| missing("reboot.window.length_minutes"))?;
                if !(1..=7 * 24 * 60).contains(&length_minutes) {
                    return Err(self.invalid(
                        "reboot.window.length_minutes",
                        format!("{length_minutes} is outside 1 ..= 10080 (one week)"),
                    ));
                }
                let tz = w
                    .time_zone
                    .ok_or_else(|| missing("reboot.window.time_zone"))?;
                let zone = parse_zone(&tz, Path::new(ZONEINFO))
                    .map_err(|m| self.invalid("reboot.window.time_zone", m))?;
                Ok(RebootStrategy::Window(Window {
                    days,
                    start,
                    length_minutes,
                    zone,
                }))
            }
            "fleet-lock" => {
                let l = r.fleet_lock.unwrap_or_default();
                let url = l.url.ok_or_else(|| ConfigError::Missing {
                    key: "reboot.fleet_lock.url",
                    context: "fleet-lock".to_owned(),
                })?;
                if !(url.starts_with("http://") || url.starts_with("https://"))
                    || url.contains(char::is_whitespace)
                {
                    return Err(self.invalid(
                        "reboot.fleet_lock.url",
                        format!("{url:?} is not an http(s) URL"),
                    ));
                }
                let group = l.group.unwrap_or_else(|| "default".to_owned());
                if !is_name(&group) {
                    return Err(self.invalid(
                        "reboot.fleet_lock.group",
                        format!("{group:?}: use lower-case letters, digits, '-', '_', '.'"),
                    ));
                }
                if let Some(id) = &l.id {
                    if id.is_empty() || id.len() > 128 || !id.chars().all(|c| c.is_ascii_graphic())
                    {
                        return Err(self.invalid(
                            "reboot.fleet_lock.id",
                            "must be 1-128 printable ASCII characters",
                        ));
                    }
                }
                self.absolute("reboot.fleet_lock.ca_file", l.ca_file.as_deref())?;
                Ok(RebootStrategy::FleetLock(FleetLockSettings {
                    url,
                    group,
                    id: l.id,
                    ca_file: l.ca_file,
                }))
            }
            other => Err(self.invalid(
                "reboot.strategy",
                format!("{other:?}: expected \"off\", \"immediate\", \"window\" or \"fleet-lock\""),
            )),
        }
    }

    fn validate_health(&self) -> Result<HealthSettings, ConfigError> {
        let h = self.values.health.clone().unwrap_or_default();
        let health = HealthSettings {
            deadline_secs: h.deadline_secs.unwrap_or(300),
            interval_secs: h.interval_secs.unwrap_or(5),
            boot_complete: h.boot_complete.unwrap_or(true),
            units: h.units.unwrap_or_default(),
            commands: h.commands.unwrap_or_default(),
            http: h.http.unwrap_or_default(),
            ca_file: h.ca_file,
        };
        self.absolute("health.ca_file", health.ca_file.as_deref())?;
        if !(10..=86400).contains(&health.deadline_secs) {
            return Err(self.invalid(
                "health.deadline_secs",
                format!("{} is outside 10 ..= 86400", health.deadline_secs),
            ));
        }
        if health.interval_secs == 0 || health.interval_secs > health.deadline_secs {
            return Err(self.invalid(
                "health.interval_secs",
                format!(
                    "{} must be 1 ..= health.deadline_secs",
                    health.interval_secs
                ),
            ));
        }
        for u in &health.units {
            let ok = u.contains('.')
                && !u.starts_with('.')
                && u.len() <= 255
                && u.chars()
                    .all(|c| c.is_ascii_alphanumeric() || ":-_.\\@".contains(c));
            if !ok {
                return Err(self.invalid(
                    "health.units",
                    format!("{u:?} is not a systemd unit name (e.g. containerd.service)"),
                ));
            }
        }
        for argv in &health.commands {
            match argv.first() {
                Some(p) if Path::new(p).is_absolute() => {}
                _ => {
                    return Err(self.invalid(
                        "health.commands",
                        format!("{argv:?}: the first element must be an absolute program path"),
                    ))
                }
            }
        }
        for url in &health.http {
            if !(url.starts_with("http://") || url.starts_with("https://"))
                || url.contains(char::is_whitespace)
            {
                return Err(self.invalid("health.http", format!("{url:?} is not an http(s) URL")));
            }
        }
        Ok(health)
    }
}

/// Options written into boot entries: one line of printable ASCII, bounded, and without the
/// options the boot backend adds per slot (two `usrhash=` would make the entry ambiguous).
fn check_kernel_options(o: &str) -> Result<(), String> {
    if o.len() > 1024 {
        return Err("longer than 1024 bytes".into());
    }
    if !o.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err("use printable ASCII on one line".into());
    }
    if let Some(bad) = o.split_ascii_whitespace().find(|t| is_slot_option(t)) {
        return Err(format!(
            "{bad:?}: usrhash= and basalt.slot= are written by the boot backend for each slot"
        ));
    }
    Ok(())
}

/// Options that name one slot's image: the boot backend writes them, they never carry over.
pub fn is_slot_option(token: &str) -> bool {
    ["usrhash=", "verity.usrhash=", "basalt.slot="]
        .iter()
        .any(|p| token.starts_with(p))
}

/// A channel, OS or architecture name: lower-case letters, digits, `-`, `_`, `.`.
pub fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
}

fn parse_repository_url(url: &str) -> Result<RepositoryLocation, String> {
    if url.contains(char::is_whitespace) || url.is_empty() {
        return Err(format!("{url:?} is not a URL"));
    }
    if let Some(rest) = url.strip_prefix("file://") {
        if !rest.starts_with('/') {
            return Err(format!(
                "{url:?}: a file URL needs an absolute path (file:///srv/repo)"
            ));
        }
        return Ok(RepositoryLocation::Folder(PathBuf::from(rest)));
    }
    if url.starts_with('/') {
        return Ok(RepositoryLocation::Folder(PathBuf::from(url)));
    }
    if let Some(rest) = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
    {
        if rest.is_empty() || rest.starts_with('/') {
            return Err(format!("{url:?} names no host"));
        }
        return Ok(RepositoryLocation::Http(url.to_owned()));
    }
    Err(format!(
        "{url:?}: expected https://, http://, file:/// or an absolute path"
    ))
}

fn parse_weekday(s: &str) -> Option<Weekday> {
    Some(match s.to_ascii_lowercase().as_str() {
        "mon" | "monday" => Weekday::Mon,
        "tue" | "tuesday" => Weekday::Tue,
        "wed" | "wednesday" => Weekday::Wed,
        "thu" | "thursday" => Weekday::Thu,
        "fri" | "friday" => Weekday::Fri,
        "sat" | "saturday" => Weekday::Sat,
        "sun" | "sunday" => Weekday::Sun,
        _ => return None,
    })
}

/// The node's tz database.
pub const ZONEINFO: &str = "/usr/share/zoneinfo";

/// `UTC`, `±HH:MM`, or an IANA zone name found under `zoneinfo` (`Europe/Berlin`).
pub fn parse_zone(s: &str, zoneinfo: &Path) -> Result<Zone, String> {
    if s == "UTC" || s == "Z" || s.starts_with('+') || s.starts_with('-') {
        return parse_time_zone(s).map(Zone::Fixed);
    }
    let valid = !s.is_empty()
        && s.len() <= 64
        && !s.starts_with('/')
        && s.split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/_+-".contains(c));
    if !valid {
        return Err(format!(
            "{s:?} is not a time zone: use \"UTC\", a fixed offset like \"+01:00\" or an IANA name like \"Europe/Berlin\""
        ));
    }
    let path = zoneinfo.join(s);
    let bytes = std::fs::read(&path).map_err(|e| {
        format!(
            "{s:?}: reading {}: {e} (is tzdata installed?)",
            path.display()
        )
    })?;
    let tz = tz::TimeZone::from_tz_data(&bytes)
        .map_err(|e| format!("{s:?}: {} is not a time zone file: {e}", path.display()))?;
    Ok(Zone::Named {
        name: s.to_owned(),
        tz: std::sync::Arc::new(tz),
    })
}

/// `UTC` or `±HH:MM`.
pub fn parse_time_zone(s: &str) -> Result<FixedOffset, String> {
    if s == "UTC" || s == "Z" {
        return FixedOffset::east_opt(0).ok_or_else(|| "offset out of range".to_owned());
    }
    let bytes = s.as_bytes();
    let sign = match bytes.first() {
        Some(b'+') => 1,
        Some(b'-') => -1,
        _ => {
            return Err(format!(
                "{s:?}: use \"UTC\" or a fixed offset like \"+01:00\""
            ))
        }
    };
    let rest = &s[1..];
    let (h, m) = rest
        .split_once(':')
        .ok_or_else(|| format!("{s:?} is not ±HH:MM"))?;
    let digits = |x: &str| x.len() == 2 && x.bytes().all(|b| b.is_ascii_digit());
    if !digits(h) || !digits(m) {
        return Err(format!("{s:?} is not ±HH:MM"));
    }
    let (h, m): (i32, i32) = (h.parse().unwrap_or(99), m.parse().unwrap_or(99));
    if h > 14 || m > 59 {
        return Err(format!("{s:?} is out of range (±14:00)"));
    }
    FixedOffset::east_opt(sign * (h * 3600 + m * 60))
        .ok_or_else(|| format!("{s:?} is out of range"))
}

fn parse_metrics_listen(s: &str) -> Result<MetricsListen, String> {
    if s == "off" {
        return Ok(MetricsListen::Off);
    }
    if let Some(p) = s.strip_prefix("unix:") {
        if !p.starts_with('/') {
            return Err(format!("{s:?}: the socket path must be absolute"));
        }
        return Ok(MetricsListen::Unix(PathBuf::from(p)));
    }
    let addr: SocketAddr = s
        .parse()
        .map_err(|_| format!("{s:?}: expected \"off\", \"unix:/path\" or a loopback IP:PORT"))?;
    if !addr.ip().is_loopback() {
        return Err(format!(
            "{s:?}: metrics are served on loopback or a unix socket only (put an authenticating proxy in front to export them)"
        ));
    }
    Ok(MetricsListen::Tcp(addr))
}
