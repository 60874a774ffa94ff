//! The production agent, assembled: validated [`Settings`] plus what the node says about itself
//! (`/run/basalt/boot.env`, `/usr/lib/os-release`, the kernel command line) become the
//! pipeline's [`EngineConfig`], the release [`Source`] and the HTTP clients of the fleet lock
//! and the health checks. `basalt-updated` calls these functions and nothing else to build its
//! parts, so every decision about where a value comes from is here, tested, in one place.
//!
//! Owns: the precedence of each value (configuration key → what the node says → built-in
//! default), the start-up checks that can only be made on the node (a trust root that does not
//! load, a CA file that is not PEM, a boot disk nobody named), and their errors, which name the
//! configuration key, the file that set it (or "the built-in default") and the file read.
//! Does not own: the configuration format (`config`), what the engine does (`pipeline`), the
//! HTTP client (`http`).
//!
//! Where each engine value comes from:
//!
//! | value | from |
//! |---|---|
//! | disk | `boot.disk`, else `BASALT_DISK` of `boot.env` (basalt-init writes it every boot) |
//! | OS name | `repository.os`, else `ID` of `os-release` |
//! | architecture | `repository.arch`, else the one this binary was built for |
//! | channel | `repository.channel`, else `BASALT_CHANNEL` of `os-release`, else `stable` |
//! | ESP | `boot.esp` (a mounted folder), else the FAT inside the disk's ESP partition, raw |
//! | kernel options | `boot.kernel_options`, else the running kernel's options minus what names one slot or is added by the boot loader ([`carried_kernel_options`]) |
//! | trust root | `repository.trust_root` (the generation shipped in `/usr`) |
//! | source | `repository.url`: `http(s)://` → [`HttpSource`], `file:///…` or `/…` → [`FileSource`]; `[server]` set → [`OfferedSource`] (the fleet server's offers, see `fleet`); none → [`NoRepository`] |
//!
//! Why the os-release defaults: the image definition's `[os]` table writes `ID` and
//! `BASALT_CHANNEL` into `/usr/lib/os-release`, so an image built for the `beta` channel
//! follows `beta` without a configuration file, and a node follows what its `/usr` says it is
//! (Flatcar reads its group from `/usr` the same way). The configuration wins when set.
//!
//! Why the kernel options carry over by default: releases do not carry a command line (the
//! manifest names kernel, initrd and `/usr`), and the options a node was booted with (console,
//! `systemd.verity=no`, a pinned boot disk) are the node's, not the release's. Anyone who can
//! edit the boot entry can already make the node boot with other options; carrying them over
//! adds no power. `usrhash=`, `verity.usrhash=` and `basalt.slot=` name one slot's image (the
//! boot backend writes them for the staged slot), `initrd=` and `BOOT_IMAGE=` are added by
//! boot loaders: those never carry over.
//!
//! Proxies come from the environment (`https_proxy`, `http_proxy`, `no_proxy`, as curl reads
//! them; a unit drop-in's `Environment=` sets them); loopback addresses and `localhost` always
//! bypass a proxy, because a health check of `http://127.0.0.1:…` through a corporate proxy
//! would fail and roll a healthy node back.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{self, RepositoryLocation, Settings};
use crate::envfile;
use crate::fleet::FleetClient;
use crate::fleetlock::FleetLock;
use crate::http::{HttpClient, HttpConfig, ProxyConfig, ProxyError, Roots};
use crate::pipeline::{BackendKind, EngineConfig, EspLocation, NodeEngine};
use crate::source::http::HttpSource;
use crate::source::offered::OfferedSource;
use crate::source::{FileSource, NoRepository, Source};

/// The node files the agent reads at start (tests point them at a folder).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPaths {
    /// `/proc/cmdline`: the running kernel's `usrhash=` names the booted slot.
    pub cmdline: PathBuf,
    /// `/run/basalt/boot.env`, written by basalt-init.
    pub boot_env: PathBuf,
    /// `/usr/lib/os-release`.
    pub os_release: PathBuf,
    /// `/proc/self/mountinfo` (a mounted ESP is never written raw).
    pub mountinfo: PathBuf,
    /// `/sys` (the ESP partition's device numbers).
    pub sysfs: PathBuf,
    /// `/var/lib/basalt`: the engine's trust roots, download journal and staged files (the
    /// daemon's status lives in its `updater/` folder).
    pub state_dir: PathBuf,
    /// `/.basalt-extensions`: the extension set the node image was installed with, adopted
    /// into the store at the first boot (`basalt_sysext::store`).
    pub extension_seed: PathBuf,
}

impl Default for HostPaths {
    fn default() -> Self {
        HostPaths {
            cmdline: PathBuf::from("/proc/cmdline"),
            boot_env: PathBuf::from("/run/basalt/boot.env"),
            os_release: PathBuf::from("/usr/lib/os-release"),
            mountinfo: PathBuf::from("/proc/self/mountinfo"),
            sysfs: PathBuf::from("/sys"),
            state_dir: PathBuf::from("/var/lib/basalt"),
            extension_seed: PathBuf::from(basalt_sysext::store::DEFAULT_SEED),
        }
    }
}

/// What the node says about itself, read once at start. A missing file reads as empty: the
/// value it would have given is then reported missing by the function that needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeFacts {
    /// `KEY=value` pairs of `boot.env`.
    pub boot_env: Vec<(String, String)>,
    /// `KEY=value` pairs of `os-release` (values unquoted).
    pub os_release: Vec<(String, String)>,
    /// The kernel command line.
    pub cmdline: String,
}

impl NodeFacts {
    /// Read the files of `paths`.
    pub fn read(paths: &HostPaths) -> NodeFacts {
        NodeFacts {
            boot_env: read_env_file(&paths.boot_env).unwrap_or_default(),
            os_release: read_env_file(&paths.os_release).unwrap_or_default(),
            cmdline: std::fs::read_to_string(&paths.cmdline)
                .map(|s| s.trim().to_owned())
                .unwrap_or_default(),
        }
    }

    /// A value of `boot.env`.
    pub fn boot_env(&self, key: &str) -> Option<&str> {
        envfile::get(&self.boot_env, key)
    }

    /// A value of `os-release`.
    pub fn os_release(&self, key: &str) -> Option<&str> {
        envfile::get(&self.os_release, key)
    }
}

pub use crate::envfile::read as read_env_file;

/// Why the agent cannot be built from its configuration on this node. Each names the
/// configuration key and where it was set, or the node file that was read.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("no boot disk: configuration key boot.disk is set in no file and {boot_env} names none (BASALT_DISK=, written by basalt-init at every boot)")]
    NoDisk { boot_env: PathBuf },
    #[error(
        "no OS name: configuration key repository.os is set in no file and {os_release} has no ID="
    )]
    NoOs { os_release: PathBuf },
    #[error("{os_release}: {key}={value:?} is not usable as the {what} (use lower-case letters, digits, '-', '_', '.'); set repository.{what} in a configuration file")]
    OsRelease {
        os_release: PathBuf,
        key: &'static str,
        value: String,
        what: &'static str,
    },
    /// A configured value that cannot work on this node.
    #[error("configuration key {key} (set in {file}): {detail}")]
    Unusable {
        key: &'static str,
        file: String,
        detail: String,
    },
    /// A proxy variable of the environment is not a proxy URL.
    #[error("proxy from the environment: {0}")]
    Proxy(#[from] ProxyError),
}

fn unusable(settings: &Settings, key: &'static str, detail: impl ToString) -> AgentError {
    AgentError::Unusable {
        key,
        file: settings.origin(key),
        detail: detail.to_string(),
    }
}

/// The running kernel's options that carry over into a staged entry (see the module docs).
pub fn carried_kernel_options(cmdline: &str) -> String {
    let mut out = Vec::new();
    for token in cmdline.split_ascii_whitespace() {
        if token == "--" {
            // What follows is for init, not for the kernel or basalt-init: keep it as it is.
            out.extend(cmdline.split_ascii_whitespace().skip_while(|t| *t != "--"));
            break;
        }
        let per_boot = config::is_slot_option(token)
            || token.starts_with("initrd=")
            || token.starts_with("BOOT_IMAGE=");
        if !per_boot {
            out.push(token);
        }
    }
    out.join(" ")
}

fn name_from_os_release(
    facts: &NodeFacts,
    paths: &HostPaths,
    key: &'static str,
    what: &'static str,
) -> Result<Option<String>, AgentError> {
    match facts.os_release(key) {
        None => Ok(None),
        Some(v) if config::is_name(v) => Ok(Some(v.to_owned())),
        Some(v) => Err(AgentError::OsRelease {
            os_release: paths.os_release.clone(),
            key,
            value: v.to_owned(),
            what,
        }),
    }
}

/// The pipeline's configuration (see the module docs for where each value comes from).
pub fn engine_config(
    settings: &Settings,
    facts: &NodeFacts,
    paths: &HostPaths,
) -> Result<EngineConfig, AgentError> {
    let disk = match (&settings.boot.disk, facts.boot_env(envfile::BASALT_DISK)) {
        (Some(d), _) => d.clone(),
        (None, Some(d)) if Path::new(d).is_absolute() => PathBuf::from(d),
        (None, _) => {
            return Err(AgentError::NoDisk {
                boot_env: paths.boot_env.clone(),
            })
        }
    };
    let repo = settings.repository.as_ref();
    let os = match repo.and_then(|r| r.os.clone()) {
        Some(os) => os,
        None => {
            name_from_os_release(facts, paths, "ID", "os")?.ok_or_else(|| AgentError::NoOs {
                os_release: paths.os_release.clone(),
            })?
        }
    };
    let arch = repo
        .and_then(|r| r.arch.clone())
        .unwrap_or_else(|| std::env::consts::ARCH.to_owned());
    let channel = match repo.and_then(|r| r.channel.clone()) {
        Some(c) => c,
        None => name_from_os_release(facts, paths, "BASALT_CHANNEL", "channel")?
            .unwrap_or_else(|| config::DEFAULT_CHANNEL.to_owned()),
    };
    let mut c = EngineConfig::new(disk, &os, &arch, &channel);
    c.backend = match settings.boot.backend {
        config::BootBackend::Bls => BackendKind::Bls,
        config::BootBackend::GptPrio => BackendKind::GptPrio,
    };
    c.esp = match &settings.boot.esp {
        None => EspLocation::Partition,
        Some(dir) => {
            if c.backend == BackendKind::Bls && !dir.is_dir() {
                return Err(unusable(
                    settings,
                    "boot.esp",
                    format!("{} is not a folder (the mounted ESP)", dir.display()),
                ));
            }
            EspLocation::Mounted(dir.clone())
        }
    };
    c.state_dir = paths.state_dir.clone();
    c.node_image_only = settings.update.node_image_only;
    c.os_release = paths.os_release.clone();
    c.trust_root = repo.map_or_else(
        || PathBuf::from(config::DEFAULT_TRUST_ROOT),
        |r| r.trust_root.clone(),
    );
    c.kernel_options = match &settings.boot.kernel_options {
        Some(o) => o.trim().to_owned(),
        None => carried_kernel_options(&facts.cmdline),
    };
    c.cmdline = paths.cmdline.clone();
    c.boot_env = paths.boot_env.clone();
    c.mountinfo = paths.mountinfo.clone();
    c.sysfs = paths.sysfs.clone();
    Ok(c)
}

/// The HTTP client settings for a request family whose pinned CA file is `ca_file`
/// (configuration key `ca_key`): timeouts from `[http]`, proxies from the environment with
/// loopback always direct. A CA file that cannot be used is refused here, at start.
pub fn http_config(
    settings: &Settings,
    ca_key: &'static str,
    ca_file: Option<&Path>,
) -> Result<HttpConfig, AgentError> {
    let config = HttpConfig {
        connect_timeout: Duration::from_secs(settings.http.connect_timeout_secs),
        read_timeout: Duration::from_secs(settings.http.read_timeout_secs),
        roots: ca_file.map_or(Roots::System, |p| Roots::Pinned(p.to_path_buf())),
        proxy: proxy_from_env()?,
        ..HttpConfig::default()
    };
    // Reads and parses the CA file: a bad one is a start-up error naming the key.
    crate::http::tls::client_config(&config.roots).map_err(|e| unusable(settings, ca_key, e))?;
    Ok(config)
}

/// Loopback never goes through a proxy (see the module docs).
const LOOPBACK: &str = "localhost,127.0.0.0/8,::1";

fn proxy_from_env() -> Result<ProxyConfig, ProxyError> {
    proxy_from_vars(|name| std::env::var(name).ok())
}

/// [`ProxyConfig::from_vars`] with loopback added to `no_proxy`.
pub fn proxy_from_vars(get: impl Fn(&str) -> Option<String>) -> Result<ProxyConfig, ProxyError> {
    let no_proxy = ["no_proxy", "NO_PROXY"]
        .iter()
        .find_map(|n| get(n).filter(|v| !v.trim().is_empty()));
    let merged = match no_proxy {
        Some(v) => format!("{v},{LOOPBACK}"),
        None => LOOPBACK.to_owned(),
    };
    ProxyConfig::from_vars(|name| match name {
        "no_proxy" | "NO_PROXY" => Some(merged.clone()),
        other => get(other),
    })
}

/// The release source of `settings` (see the module docs).
pub fn source(settings: &Settings) -> Result<Box<dyn Source>, AgentError> {
    let Some(repo) = &settings.repository else {
        return Ok(Box::new(NoRepository));
    };
    Ok(match &repo.location {
        RepositoryLocation::Folder(dir) => Box::new(FileSource::new(dir)),
        RepositoryLocation::Http(url) => {
            let config = http_config(settings, "repository.ca_file", repo.ca_file.as_deref())?;
            Box::new(
                HttpSource::new(url, config)
                    .map_err(|e| unusable(settings, "repository.url", e))?,
            )
        }
        RepositoryLocation::Server => {
            return Err(unusable(
                settings,
                "server.url",
                "in server mode the source is the fleet server's offer (built by agent::engine_and_fleet)",
            ))
        }
    })
}

/// Server mode's check-in client and the source it fills with offers, for the engine
/// configured as `config` (its channel and architecture name the head the offer stands for).
pub fn fleet_client(
    settings: &Settings,
    config: &EngineConfig,
    machine_id: &Path,
) -> Result<Option<FleetClient>, AgentError> {
    let Some(server) = &settings.server else {
        return Ok(None);
    };
    let repo_http = http_config(settings, "server.ca_file", server.ca_file.as_deref())?;
    let head = basalt_manifest::repo::head_path(&config.channel, &config.arch)
        .map_err(|e| unusable(settings, "repository.channel", e))?;
    let offered = OfferedSource::new(head, repo_http.clone());
    let client = HttpClient::new(repo_http).map_err(|e| unusable(settings, "server.url", e))?;
    FleetClient::new(server, machine_id, &config.state_dir, client, offered)
        .map(Some)
        .map_err(|e| unusable(settings, "server.url", e))
}

/// The production engine: configuration, source, and — when a repository is configured — the
/// trust root shipped in `/usr` loaded once now, so a missing or damaged one stops the start
/// with its key and path instead of failing every check later.
pub fn engine(
    settings: &Settings,
    facts: &NodeFacts,
    paths: &HostPaths,
) -> Result<NodeEngine, AgentError> {
    engine_and_fleet(settings, facts, paths, Path::new("/etc/machine-id")).map(|(e, _)| e)
}

/// [`engine`], and in server mode the check-in client whose offers are the engine's source
/// (the machine id is read only in server mode without `server.node_id`).
pub fn engine_and_fleet(
    settings: &Settings,
    facts: &NodeFacts,
    paths: &HostPaths,
    machine_id: &Path,
) -> Result<(NodeEngine, Option<FleetClient>), AgentError> {
    let config = engine_config(settings, facts, paths)?;
    if settings.repository.is_some() {
        crate::pipeline::trust::load(&config.trust_root, &config.trust_dir())
            .map_err(|e| unusable(settings, "repository.trust_root", e))?;
    }
    let fleet = fleet_client(settings, &config, machine_id)?;
    let source: Box<dyn Source> = match &fleet {
        Some(f) => Box::new(f.source().clone()),
        None => source(settings)?,
    };
    tracing::info!(
        disk = %config.disk.display(),
        os = %config.os,
        arch = %config.arch,
        channel = %config.channel,
        backend = config.backend.as_str(),
        source = ?source,
        kernel_options = %config.kernel_options,
        "update engine configured"
    );
    Ok((NodeEngine::new(config, source), fleet))
}

/// The FleetLock client when the reboot strategy is `fleet-lock`.
pub fn fleet_lock(settings: &Settings, machine_id: &Path) -> Result<Option<FleetLock>, AgentError> {
    let config::RebootStrategy::FleetLock(l) = &settings.reboot else {
        return Ok(None);
    };
    let http = http_config(settings, "reboot.fleet_lock.ca_file", l.ca_file.as_deref())?;
    let client = HttpClient::new(http).map_err(|e| unusable(settings, "reboot.fleet_lock", e))?;
    FleetLock::new(l, machine_id, client)
        .map(Some)
        .map_err(|e| unusable(settings, "reboot.fleet_lock.url", e))
}

/// The HTTP client of the health gate's URL checks.
pub fn health_client(settings: &Settings) -> Result<HttpClient, AgentError> {
    let http = http_config(
        settings,
        "health.ca_file",
        settings.health.ca_file.as_deref(),
    )?;
    HttpClient::new(http).map_err(|e| unusable(settings, "health.http", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_options_carry_over_without_the_per_slot_and_loader_ones() {
        let line = "initrd=\\basalt\\1.0.0\\initrd BOOT_IMAGE=/x console=ttyS0 usrhash=ab \
                    basalt.slot=a systemd.verity=no verity.usrhash=cd quiet -- single x=1";
        assert_eq!(
            carried_kernel_options(line),
            "console=ttyS0 systemd.verity=no quiet -- single x=1"
        );
        assert_eq!(carried_kernel_options(""), "");
        assert_eq!(carried_kernel_options("usrhash=ab basalt.slot=b"), "");
    }

    #[test]
    fn env_files_unquote_and_skip_comments() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("os-release");
        std::fs::write(
            &p,
            "# c\nNAME=Basalt\nID=basalt\nVERSION=\"1.0.0 (stable)\"\nBASALT_CHANNEL='beta'\n\nbroken\n",
        )
        .unwrap();
        let kv = read_env_file(&p).unwrap();
        let facts = NodeFacts {
            os_release: kv,
            ..NodeFacts::default()
        };
        assert_eq!(facts.os_release("ID"), Some("basalt"));
        assert_eq!(facts.os_release("VERSION"), Some("1.0.0 (stable)"));
        assert_eq!(facts.os_release("BASALT_CHANNEL"), Some("beta"));
        assert_eq!(facts.os_release("NAME"), Some("Basalt"));
        assert_eq!(facts.os_release("MISSING"), None);
        assert!(read_env_file(&dir.path().join("none")).is_none());
    }

    #[test]
    fn loopback_never_goes_through_a_proxy() {
        let url = |u: &str| crate::http::url::parse(u).unwrap();
        let env = |no_proxy: Option<&'static str>| {
            move |n: &str| match n {
                "https_proxy" | "http_proxy" => Some("http://proxy.corp:3128".to_owned()),
                "NO_PROXY" => no_proxy.map(str::to_owned),
                _ => None,
            }
        };
        let p = proxy_from_vars(env(None)).unwrap();
        assert!(p.for_url(&url("http://127.0.0.1:10248/healthz")).is_none());
        assert!(p.for_url(&url("http://[::1]:80/")).is_none());
        assert!(p.for_url(&url("http://localhost:8080/")).is_none());
        assert!(p.for_url(&url("https://updates.example.com/")).is_some());
        // The operator's own list still applies.
        let p = proxy_from_vars(env(Some(".corp"))).unwrap();
        assert!(p.for_url(&url("https://repo.corp/")).is_none());
        assert!(p.for_url(&url("http://127.0.0.1/")).is_none());
        assert!(p.for_url(&url("https://updates.example.com/")).is_some());
        assert!(proxy_from_vars(|n| (n == "https_proxy").then(|| "ftp://x".to_owned())).is_err());
    }
}
