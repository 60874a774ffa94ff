//! The image definition, `IMAGE.toml`: what goes into an image, and nothing about who signs it.
//!
//! ```toml
//! profile = "container-host"     # or "minimal" (busybox, for boot-chain tests)
//!
//! [os]
//! name = "basalt"
//! version = "1.0.0"              # semver (`basalt image build --version` overrides it)
//! channel = "stable"
//! arch = "x86_64"                # the only architecture built today
//! sysext_level = "1"             # os-release SYSEXT_LEVEL= (default: the major version)
//!
//! [packages]                     # container-host only: what mmdebstrap installs
//! suite = "bookworm"
//! include = ["systemd", "systemd-sysv", "dbus", "udev", "kmod", "containerd", "runc", "iproute2"]
//! list = "container-host.packages" # optional: the exact package set (see below)
//!                                # include entries may pin: "containerd=1.6.20~ds1-1+deb12u2"
//!
//! [kernel]                       # container-host only
//! modules = ["virtio_net", "nvme", "overlay"]  # shipped in /usr/lib/modules, + dependencies
//!
//! [[files]]                      # any number: a file of the build host → a path in /usr
//! source = "../../dist/systemd/basalt-updated.service"   # relative to this file
//! dest = "/usr/lib/systemd/system/basalt-updated.service"
//! mode = 0o644                   # default 0o644
//! replaces = "cd95…"             # optional: the SHA-256 of the packaged file at dest this
//!                                # one replaces; the build stops if the packages changed it
//!
//! [[binaries]]                   # any number: a program of this Cargo workspace, built
//! package = "basalt-updater"     # (release) by the build and listed in the SBOM with the
//! bin = "basalt-updated"         # git revision it was built from
//! dest = "/usr/libexec/basalt/basalt-updated"
//! static = false                 # true: static glibc (for the minimal profile's busybox /usr)
//!
//! [units]                        # container-host only; applied to /usr/lib/systemd/system
//! enable = ["basalt-updated.service"]        # links from each [Install] WantedBy=/RequiredBy=
//! mask = ["systemd-bless-boot.service"]      # the unit becomes a link to /dev/null
//!
//! [trust]
//! install = "/usr/share/basalt/trust-root.json"  # optional: ship the build's trust root here
//!
//! [[extensions]]                 # any number: system extensions that belong to this release
//! definition = "extensions/tools.toml"  # a sysext definition (relative to this file), see
//!                                # `crate::sysext::SysextDefinition`; built, signed and listed
//!                                # as `sysext` artifacts of the release
//!
//! [boot]
//! cmdline = "console=ttyS0"      # extra kernel options (usrhash= is added by the build)
//! tries = 3                      # boot-counting tries for a staged entry
//!
//! [release]
//! sequence = 1                   # strictly increasing per channel (`--sequence` overrides)
//! valid_days = 365
//! ```
//!
//! Signing keys never appear in the file: they are passed on the command line. Whether the
//! build is the product or the test variant of the definition is a build option too
//! ([`super::variant::Variant`]): one definition, two images, the same Debian packages. The
//! variant is also the one switch for kernel options that weaken verification
//! (`basalt.verity=eio|logging`): only a test image's initramfs honours them, so a definition
//! never sets them (it describes the product; a test passes them on its boot's command line).
//!
//! # The package list
//!
//! `packages.list` names a file (relative to the definition) with the package set the image
//! must resolve to, one `NAME` or `NAME=VERSION` per line (`#` comments): every package
//! Debian installs (`include`, their dependencies, the `Essential: yes` and `Priority:
//! required` set of a minbase system). The build resolves the set against the archive
//! before anything is installed and fails, naming the packages added, removed or of another
//! version, when it differs — so a new dependency or a vanished package is a reviewed change
//! of the definition, never a surprise in a release. Names only follow the archive's security
//! updates; `NAME=VERSION` pins (and fails once the archive moves on).
//!
//! # `sysext_level` and `[[extensions]]`
//!
//! `os.sysext_level` is the extension ABI level of the OS: os-release `SYSEXT_LEVEL=` and
//! the manifest's `sysext_level` (one value, written twice by the build). An extension built
//! for level `1` stays compatible across every OS version that keeps level `1` (a patch or
//! minor update), so a node-image-only update can keep it; a release that breaks what
//! extensions link against raises the level. Default: the OS's major version.
//!
//! `[[extensions]]` name the extensions that ship *with* this OS version: `basalt image
//! build` builds each (its version is what its definition says; `ID=` is `os.name`;
//! `SYSEXT_LEVEL=` defaults to `os.sysext_level`), checks it against the release's OS, and
//! lists it in the manifest; the agent stages them before the slot flip.
//!
//! # Why `[units]` acts on `/usr`, not `/etc`
//!
//! `/etc` is copied from the factory tree only on a node's first boot; a unit masked or
//! enabled there would never reach nodes that update. Links in `/usr/lib/systemd/system` come
//! with every release (an admin can still override in `/etc`).

use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

/// Errors reading or validating an image definition.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("read image definition {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parse image definition {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error("image definition {path}: {what}")]
    Invalid { path: PathBuf, what: String },
    #[error("read the package list {path} (packages.list of the image definition): {source}")]
    ReadList {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("package list {path}, line {line}: {what}")]
    BadList {
        path: PathBuf,
        line: usize,
        what: String,
    },
}

/// Which userspace goes into `/usr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    /// busybox and a tiny init script: boots in seconds, for VM tests.
    Minimal,
    /// A real Debian userspace (systemd, containerd, runc …) built with mmdebstrap.
    ContainerHost,
}

impl Profile {
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Minimal => "minimal",
            Profile::ContainerHost => "container-host",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Os {
    pub name: String,
    pub version: semver::Version,
    #[serde(default = "default_channel")]
    pub channel: String,
    #[serde(default = "default_arch")]
    pub arch: String,
    /// os-release `SYSEXT_LEVEL=` (see the module docs); [`Os::sysext_level`] applies the
    /// default.
    #[serde(default, rename = "sysext_level")]
    pub sysext_level_override: Option<String>,
}

impl Os {
    /// The OS's `SYSEXT_LEVEL=`: the definition's `sysext_level`, else the major version.
    pub fn sysext_level(&self) -> String {
        self.sysext_level_override
            .clone()
            .unwrap_or_else(|| self.version.major.to_string())
    }
}

/// A system extension that ships with the release.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtensionRef {
    /// The sysext definition (`crate::sysext::SysextDefinition`), relative to the image
    /// definition's folder (or absolute).
    pub definition: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Packages {
    #[serde(default = "default_suite")]
    pub suite: String,
    #[serde(default = "default_packages")]
    pub include: Vec<String>,
    /// The expected package set, a file relative to the definition (see the module docs).
    #[serde(default)]
    pub list: Option<PathBuf>,
}

impl Default for Packages {
    fn default() -> Self {
        Packages {
            suite: default_suite(),
            include: default_packages(),
            list: None,
        }
    }
}

/// Kernel modules shipped in `/usr/lib/modules` (the initramfs has its own, fixed set).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kernel {
    /// Module names (`-` and `_` alike); their dependencies are added. Built-in ones are
    /// accepted; a name the kernel has neither as module nor built in is an error.
    #[serde(default)]
    pub modules: Vec<String>,
}

/// A file of the build host installed into `/usr`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    /// The file on the build host, relative to the definition's folder (or absolute).
    pub source: PathBuf,
    /// Absolute path in the image, under `/usr/`.
    pub dest: String,
    /// Permission bits (default 0o644).
    #[serde(default = "default_file_mode")]
    pub mode: u32,
    /// The SHA-256 (64 hex digits) of the packaged file this one replaces. The build refuses
    /// when the packages put anything else at `dest` (or nothing): a copy made from a
    /// package's file (a unit with one line changed, say) is then compared again by a person
    /// whenever the package's file changes, instead of silently dropping what it changed.
    #[serde(default)]
    pub replaces: Option<String>,
}

/// A program of this Cargo workspace, built by the image build and installed into `/usr`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BinarySpec {
    /// The Cargo package (`-p`).
    pub package: String,
    /// The binary target (`--bin`).
    pub bin: String,
    /// Absolute path in the image, under `/usr/`.
    pub dest: String,
    /// Link glibc statically (needed where `/usr` has no glibc: the minimal profile).
    #[serde(default, rename = "static")]
    pub static_link: bool,
}

/// systemd units switched on or off in `/usr/lib/systemd/system`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Units {
    #[serde(default)]
    pub enable: Vec<String>,
    #[serde(default)]
    pub mask: Vec<String>,
}

/// Where the build's trust root is shipped in `/usr` (for the update agent).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trust {
    pub install: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Boot {
    #[serde(default = "default_cmdline")]
    pub cmdline: String,
    #[serde(default = "default_tries")]
    pub tries: u32,
}

impl Default for Boot {
    fn default() -> Self {
        Boot {
            cmdline: default_cmdline(),
            tries: default_tries(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Release {
    pub sequence: u64,
    #[serde(default = "default_valid_days")]
    pub valid_days: u32,
}

/// A validated image definition.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageConfig {
    pub profile: Profile,
    pub os: Os,
    #[serde(default)]
    pub packages: Packages,
    #[serde(default)]
    pub kernel: Kernel,
    #[serde(default)]
    pub files: Vec<FileSpec>,
    #[serde(default)]
    pub binaries: Vec<BinarySpec>,
    #[serde(default)]
    pub units: Units,
    #[serde(default)]
    pub trust: Trust,
    #[serde(default)]
    pub boot: Boot,
    pub release: Release,
    #[serde(default)]
    pub extensions: Vec<ExtensionRef>,
}

fn default_channel() -> String {
    "stable".into()
}
fn default_arch() -> String {
    "x86_64".into()
}
fn default_suite() -> String {
    "bookworm".into()
}
fn default_packages() -> Vec<String> {
    [
        "systemd",
        "systemd-sysv",
        "dbus",
        "udev",
        "kmod",
        "containerd",
        "runc",
        "iproute2",
    ]
    .map(String::from)
    .to_vec()
}
fn default_cmdline() -> String {
    "console=ttyS0".into()
}
fn default_tries() -> u32 {
    3
}
fn default_valid_days() -> u32 {
    365
}
fn default_file_mode() -> u32 {
    0o644
}

/// One line of a package list: a name, and a version when pinned.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ListedPackage {
    pub name: String,
    pub version: Option<String>,
}

/// Parse a package list (see the module docs); `path` names it in errors. Duplicates refused.
pub fn parse_package_list(text: &str, path: &Path) -> Result<Vec<ListedPackage>, ConfigError> {
    let mut out: Vec<ListedPackage> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let bad = |what: String| ConfigError::BadList {
            path: path.to_owned(),
            line: i + 1,
            what,
        };
        let (name, version) = match line.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim())),
            None => (line, None),
        };
        if !valid_package_name(name) {
            return Err(bad(format!("{name:?} is not a Debian package name")));
        }
        if let Some(v) = version {
            if !valid_package_version(v) {
                return Err(bad(format!("{v:?} is not a Debian version")));
            }
        }
        if out.iter().any(|p| p.name == name) {
            return Err(bad(format!("{name} is listed twice")));
        }
        out.push(ListedPackage {
            name: name.to_owned(),
            version: version.map(str::to_owned),
        });
    }
    out.sort();
    Ok(out)
}

/// The characters of a Debian version (policy 5.6.12: `[epoch:]upstream[-revision]`), not
/// empty. What a `NAME=VERSION` pin may carry (package lists and `include`).
pub fn valid_package_version(v: &str) -> bool {
    !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".+-~:".contains(&b))
}

/// An `include` entry: a package name, or `NAME=VERSION` (apt's and mmdebstrap's syntax) to
/// install a version the archive still carries instead of its newest, e.g. to rebuild an
/// older release or one update behind (`cargo xtask bench --only adaptive` does).
pub fn valid_include_entry(entry: &str) -> bool {
    match entry.split_once('=') {
        Some((name, version)) => valid_package_name(name) && valid_package_version(version),
        None => valid_package_name(entry),
    }
}

/// Debian policy 5.6.1: lowercase letters, digits, `+ - .`, at least two characters,
/// starting with an alphanumeric.
pub fn valid_package_name(name: &str) -> bool {
    name.len() >= 2
        && name.len() <= 128
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b))
}

/// A systemd unit name we accept: `[A-Za-z0-9:_.@\-]` with a known unit suffix.
pub fn valid_unit_name(name: &str) -> bool {
    const SUFFIXES: [&str; 8] = [
        ".service",
        ".socket",
        ".timer",
        ".target",
        ".path",
        ".mount",
        ".automount",
        ".slice",
    ];
    name.len() <= 255
        && SUFFIXES
            .iter()
            .any(|s| name.len() > s.len() && name.ends_with(s))
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b":_.@-".contains(&b))
}

/// `dest` is an absolute, normalised path strictly below `/usr/` (no `.`, `..`, `//`, no
/// trailing `/`).
pub fn valid_usr_dest(dest: &str) -> bool {
    let Some(rest) = dest.strip_prefix("/usr/") else {
        return false;
    };
    !rest.is_empty()
        && !rest.ends_with('/')
        && Path::new(rest)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
        && !rest.contains("//")
        && !dest.bytes().any(|b| b.is_ascii_control())
}

fn valid_cargo_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b))
}

impl ImageConfig {
    /// Read and validate `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parse and validate `text`; `path` only names the source in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: ImageConfig = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })?;
        config.validate(path)?;
        Ok(config)
    }

    /// `packages.list` and the `[[files]]` sources are relative to the definition's folder.
    pub fn resolve_path(definition: &Path, relative: &Path) -> PathBuf {
        if relative.is_absolute() {
            return relative.to_owned();
        }
        definition
            .parent()
            .unwrap_or_else(|| Path::new("."))
            .join(relative)
    }

    /// The expected package set, if the definition names one.
    pub fn package_list(
        &self,
        definition: &Path,
    ) -> Result<Option<Vec<ListedPackage>>, ConfigError> {
        let Some(list) = &self.packages.list else {
            return Ok(None);
        };
        let path = Self::resolve_path(definition, list);
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::ReadList {
            path: path.clone(),
            source,
        })?;
        parse_package_list(&text, &path).map(Some)
    }

    /// Check the rules serde cannot express; `pub(crate)` so overrides are re-checked.
    pub(crate) fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |what: String| ConfigError::Invalid {
            path: path.to_owned(),
            what,
        };
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 32
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        };
        if !name_ok(&self.os.name) {
            return Err(invalid(format!(
                "os.name {:?} must be 1-32 characters of a-z, 0-9 and '-'",
                self.os.name
            )));
        }
        if !name_ok(&self.os.channel) {
            return Err(invalid(format!(
                "os.channel {:?} must be 1-32 characters of a-z, 0-9 and '-'",
                self.os.channel
            )));
        }
        if self.os.arch != "x86_64" {
            return Err(invalid(format!(
                "os.arch {:?} is not supported (only x86_64 is built today)",
                self.os.arch
            )));
        }
        if let Some(level) = &self.os.sysext_level_override {
            if !basalt_manifest::valid_release_value(level) {
                return Err(invalid(format!(
                    "os.sysext_level {level:?} must be 1-64 characters of [A-Za-z0-9._+~-]"
                )));
            }
        }
        if !(1..=15).contains(&self.boot.tries) {
            return Err(invalid(format!(
                "boot.tries {} must be between 1 and 15",
                self.boot.tries
            )));
        }
        if self
            .boot
            .cmdline
            .split_whitespace()
            .any(|o| o.starts_with("usrhash="))
        {
            return Err(invalid(
                "boot.cmdline must not set usrhash= (the build adds the signed root hash)".into(),
            ));
        }
        for opt in self.boot.cmdline.split_whitespace() {
            if let Some(mode) = opt.strip_prefix("basalt.verity=") {
                if matches!(mode, "eio" | "logging") {
                    return Err(invalid(format!(
                        "boot.cmdline sets {opt}, which weakens dm-verity: a definition describes \
                         the product, whose initramfs ignores it; only a test-variant image \
                         (--variant test) honours it, given on that boot's command line"
                    )));
                }
            }
            if let Some(init) = opt.strip_prefix("init=") {
                if !init.starts_with("/usr/") || init.split('/').any(|c| c == "..") {
                    return Err(invalid(format!(
                        "boot.cmdline sets {opt}: init must be a program of the verified /usr \
                         (a path under /usr/ without ..)"
                    )));
                }
            }
        }
        if self.release.sequence == 0 {
            return Err(invalid("release.sequence must be at least 1".into()));
        }
        if self.release.valid_days == 0 {
            return Err(invalid("release.valid_days must be at least 1".into()));
        }
        let container_host = self.profile == Profile::ContainerHost;
        if container_host && self.packages.include.is_empty() {
            return Err(invalid(
                "packages.include is empty: a container-host image needs systemd at least".into(),
            ));
        }
        if let Some(bad) = self
            .packages
            .include
            .iter()
            .find(|p| !valid_include_entry(p))
        {
            return Err(invalid(format!(
                "packages.include: {bad:?} is not a Debian package name (or NAME=VERSION)"
            )));
        }
        if !container_host {
            if !self.kernel.modules.is_empty() {
                return Err(invalid(
                    "kernel.modules: only a container-host image ships modules in /usr".into(),
                ));
            }
            if !self.units.enable.is_empty() || !self.units.mask.is_empty() {
                return Err(invalid(
                    "units: the minimal profile has no systemd (container-host only)".into(),
                ));
            }
            if self.packages.list.is_some() {
                return Err(invalid(
                    "packages.list: the minimal profile installs no Debian packages".into(),
                ));
            }
        }
        if let Some(bad) = self
            .kernel
            .modules
            .iter()
            .find(|m| !valid_cargo_name(m) || m.len() > 56)
        {
            return Err(invalid(format!(
                "kernel.modules: {bad:?} is not a module name"
            )));
        }
        let mut dests: Vec<&str> = Vec::new();
        for f in &self.files {
            if !valid_usr_dest(&f.dest) {
                return Err(invalid(format!(
                    "files: dest {:?} must be an absolute, normalised path under /usr/",
                    f.dest
                )));
            }
            if f.mode > 0o7777 {
                return Err(invalid(format!(
                    "files: mode {:o} of {} is not a permission mode",
                    f.mode, f.dest
                )));
            }
            if let Some(r) = &f.replaces {
                if basalt_manifest::Digest::from_hex(r).is_none() {
                    return Err(invalid(format!(
                        "files: replaces {r:?} of {} is not a SHA-256 (64 lowercase hex digits)",
                        f.dest
                    )));
                }
            }
            dests.push(&f.dest);
        }
        for b in &self.binaries {
            if !valid_cargo_name(&b.package) || !valid_cargo_name(&b.bin) {
                return Err(invalid(format!(
                    "binaries: package {:?} / bin {:?} must be Cargo names",
                    b.package, b.bin
                )));
            }
            if !valid_usr_dest(&b.dest) {
                return Err(invalid(format!(
                    "binaries: dest {:?} must be an absolute, normalised path under /usr/",
                    b.dest
                )));
            }
            dests.push(&b.dest);
        }
        if let Some(dest) = &self.trust.install {
            if !valid_usr_dest(dest) {
                return Err(invalid(format!(
                    "trust.install {dest:?} must be an absolute, normalised path under /usr/"
                )));
            }
            dests.push(dest);
        }
        dests.sort_unstable();
        if let Some(w) = dests.windows(2).find(|w| w[0] == w[1]) {
            return Err(invalid(format!(
                "{} is the destination of two files or binaries",
                w[0]
            )));
        }
        for unit in self.units.enable.iter().chain(&self.units.mask) {
            if !valid_unit_name(unit) {
                return Err(invalid(format!("units: {unit:?} is not a unit name")));
            }
        }
        if let Some(both) = self
            .units
            .enable
            .iter()
            .find(|u| self.units.mask.contains(u))
        {
            return Err(invalid(format!("units: {both} is both enabled and masked")));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
profile = "minimal"
[os]
name = "basalt"
version = "1.0.0"
[release]
sequence = 1
"#;

    fn parse(text: &str) -> Result<ImageConfig, ConfigError> {
        ImageConfig::parse(text, Path::new("IMAGE.toml"))
    }

    fn container_host(extra: &str) -> String {
        MINIMAL.replace("minimal", "container-host") + extra
    }

    #[test]
    fn minimal_definition_gets_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.profile, Profile::Minimal);
        assert_eq!(c.os.version, semver::Version::new(1, 0, 0));
        assert_eq!(c.os.channel, "stable");
        assert_eq!(c.boot.tries, 3);
        assert_eq!(c.release.valid_days, 365);
        assert!(c.packages.include.iter().any(|p| p == "systemd"));
        assert!(c.files.is_empty() && c.binaries.is_empty() && c.trust.install.is_none());
    }

    #[test]
    fn container_host_profile_parses_with_extras() {
        let text = container_host(
            "[packages]\nsuite = \"bookworm\"\ninclude = [\"systemd\", \"containerd\"]\n\
             list = \"ch.packages\"\n\
             [kernel]\nmodules = [\"virtio_net\", \"dm-verity\"]\n\
             [[files]]\nsource = \"a.service\"\ndest = \"/usr/lib/systemd/system/a.service\"\n\
             [[files]]\nsource = \"/abs/tool\"\ndest = \"/usr/bin/tool\"\nmode = 0o755\n\
             [[binaries]]\npackage = \"basalt-updater\"\nbin = \"basalt-updated\"\n\
             dest = \"/usr/libexec/basalt/basalt-updated\"\n\
             [units]\nenable = [\"a.service\"]\nmask = [\"systemd-bless-boot.service\"]\n\
             [trust]\ninstall = \"/usr/share/basalt/trust-root.json\"\n",
        );
        let c = parse(&text).unwrap();
        assert_eq!(c.profile, Profile::ContainerHost);
        assert_eq!(c.packages.include, ["systemd", "containerd"]);
        assert_eq!(c.kernel.modules, ["virtio_net", "dm-verity"]);
        assert_eq!(c.files[0].mode, 0o644);
        assert_eq!(c.files[1].mode, 0o755);
        assert!(!c.binaries[0].static_link);
        assert_eq!(c.units.mask, ["systemd-bless-boot.service"]);
        let def = Path::new("/defs/IMAGE.toml");
        assert_eq!(
            ImageConfig::resolve_path(def, &c.files[0].source),
            Path::new("/defs/a.service")
        );
        assert_eq!(
            ImageConfig::resolve_path(def, &c.files[1].source),
            Path::new("/abs/tool")
        );
    }

    #[test]
    fn refusals_name_the_field() {
        let ch = |extra: &str| container_host(extra);
        let cases = [
            (MINIMAL.replace("1.0.0", "one"), "version"),
            (MINIMAL.replace("\"basalt\"", "\"Basalt OS\""), "os.name"),
            (
                MINIMAL.replace("sequence = 1", "sequence = 0"),
                "release.sequence",
            ),
            (MINIMAL.to_string() + "[boot]\ntries = 0\n", "boot.tries"),
            (
                MINIMAL.to_string() + "[boot]\ncmdline = \"usrhash=00\"\n",
                "usrhash",
            ),
            (
                MINIMAL.replace("[os]", "[os]\narch = \"aarch64\""),
                "os.arch",
            ),
            (MINIMAL.to_string() + "colour = \"blue\"\n", "colour"),
            (
                MINIMAL.to_string()
                    + "[[files]]\nsource = \"a\"\ndest = \"/usr/lib/a\"\nreplaces = \"cd95\"\n",
                "replaces \"cd95\" of /usr/lib/a",
            ),
            (
                MINIMAL.to_string() + "[boot]\ncmdline = \"basalt.verity=logging\"\n",
                "--variant test",
            ),
            (
                MINIMAL.to_string() + "[boot]\ncmdline = \"basalt.verity=eio\"\n",
                "weakens dm-verity",
            ),
            (
                // The former per-definition switch: the variant is the one switch now.
                MINIMAL.to_string() + "[boot]\ntest_options = true\n",
                "test_options",
            ),
            (
                MINIMAL.to_string() + "[boot]\ncmdline = \"init=/sbin/init\"\n",
                "verified /usr",
            ),
            (
                MINIMAL.to_string() + "[boot]\ncmdline = \"init=/usr/../evil\"\n",
                "verified /usr",
            ),
            (
                MINIMAL.replace("profile = \"minimal\"", "profile = \"tiny\""),
                "tiny",
            ),
            (
                MINIMAL.to_string() + "[kernel]\nmodules = [\"nvme\"]\n",
                "kernel.modules",
            ),
            (
                MINIMAL.to_string() + "[units]\nmask = [\"a.service\"]\n",
                "units",
            ),
            (
                ch("[packages]\ninclude = [\"Systemd\"]\n"),
                "packages.include",
            ),
            (
                ch("[packages]\ninclude = [\"containerd=\"]\n"),
                "packages.include",
            ),
            (
                ch("[packages]\ninclude = [\"containerd=1.6 --x\"]\n"),
                "packages.include",
            ),
            (ch("[kernel]\nmodules = [\"../x\"]\n"), "kernel.modules"),
            (
                ch("[[files]]\nsource = \"a\"\ndest = \"/etc/passwd\"\n"),
                "/etc/passwd",
            ),
            (
                ch("[[files]]\nsource = \"a\"\ndest = \"/usr/../etc/x\"\n"),
                "/usr/../etc/x",
            ),
            (
                ch("[[files]]\nsource = \"a\"\ndest = \"/usr/bin/x\"\nmode = 0o17777\n"),
                "mode",
            ),
            (
                ch("[[files]]\nsource = \"a\"\ndest = \"/usr/bin/x\"\n\
                    [[files]]\nsource = \"b\"\ndest = \"/usr/bin/x\"\n"),
                "two files",
            ),
            (
                ch("[[binaries]]\npackage = \"a b\"\nbin = \"x\"\ndest = \"/usr/bin/x\"\n"),
                "binaries",
            ),
            (ch("[units]\nenable = [\"evil/../x.service\"]\n"), "units"),
            (ch("[units]\nenable = [\"noext\"]\n"), "noext"),
            (
                ch("[units]\nenable = [\"a.service\"]\nmask = [\"a.service\"]\n"),
                "both enabled and masked",
            ),
            (ch("[trust]\ninstall = \"/root/x\"\n"), "trust.install"),
            (
                ch("[[files]]\nsource = \"a\"\ndest = \"/usr/x\"\nowner = \"root\"\n"),
                "owner",
            ),
        ];
        for (text, needle) in cases {
            let err = parse(&text).unwrap_err().to_string();
            let chain = match parse(&text).unwrap_err() {
                ConfigError::Parse { source, .. } => source.to_string(),
                other => other.to_string(),
            };
            assert!(
                err.contains(needle) || chain.contains(needle),
                "{needle}: {err} / {chain}"
            );
            assert!(err.contains("IMAGE.toml"), "{err}");
        }
    }

    #[test]
    fn sysext_level_defaults_to_the_major_version_and_is_checked() {
        let c = parse(&MINIMAL.replace("1.0.0", "3.4.5")).unwrap();
        assert_eq!(c.os.sysext_level(), "3");
        assert!(c.extensions.is_empty());
        let c = parse(&format!(
            "{}[[extensions]]\ndefinition = \"extensions/tools.toml\"\n",
            MINIMAL.replace("[os]", "[os]\nsysext_level = \"1.x\"")
        ))
        .unwrap();
        assert_eq!(c.os.sysext_level(), "1.x");
        assert_eq!(
            c.extensions[0].definition,
            Path::new("extensions/tools.toml")
        );
        for bad in ["", "1 2", "1\nID=x", "é"] {
            let text = MINIMAL.replace("[os]", &format!("[os]\nsysext_level = {bad:?}"));
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains("os.sysext_level"), "{bad:?}: {err}");
        }
        let err = parse(&format!("{MINIMAL}[[extensions]]\nfile = \"x\"\n")).unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
    }

    #[test]
    fn usr_destinations() {
        for ok in ["/usr/bin/x", "/usr/lib/systemd/system/a.service", "/usr/a"] {
            assert!(valid_usr_dest(ok), "{ok}");
        }
        for bad in [
            "/usr/",
            "/usr",
            "usr/bin/x",
            "/usr/bin/",
            "/usr//bin",
            "/usr/./x",
            "/usr/a/../b",
            "/etc/x",
            "/usrx/y",
            "/usr/a\nb",
        ] {
            assert!(!valid_usr_dest(bad), "{bad}");
        }
    }

    #[test]
    fn include_entries_may_pin_a_version() {
        let c = parse(&container_host(
            "[packages]\ninclude = [\"systemd\", \"containerd=1.6.20~ds1-1+deb12u2\"]\n",
        ))
        .unwrap();
        assert_eq!(
            c.packages.include,
            ["systemd", "containerd=1.6.20~ds1-1+deb12u2"]
        );
        assert!(valid_include_entry("libssl3=3.0.20-1~deb12u2"));
        assert!(valid_include_entry("jq"));
        for bad in ["jq=", "=1.0", "Jq=1", "jq=1 2", "jq=1;rm"] {
            assert!(!valid_include_entry(bad), "{bad}");
        }
    }

    #[test]
    fn package_lists_parse_and_refuse() {
        let p = Path::new("x.packages");
        let list =
            parse_package_list("# head\nsystemd\nlibc6=2.36-9+deb12u9 # pinned\n\n", p).unwrap();
        assert_eq!(
            list,
            [
                ListedPackage {
                    name: "libc6".into(),
                    version: Some("2.36-9+deb12u9".into())
                },
                ListedPackage {
                    name: "systemd".into(),
                    version: None
                },
            ]
        );
        for (bad, needle) in [
            ("Systemd\n", "line 1"),
            ("a\n", "line 1"),
            ("ok\nsystemd=\n", "line 2"),
            ("systemd\nsystemd\n", "twice"),
            ("systemd=1 2\n", "version"),
        ] {
            let err = parse_package_list(bad, p).unwrap_err().to_string();
            assert!(err.contains(needle) && err.contains("x.packages"), "{err}");
        }
    }

    #[test]
    fn unit_names() {
        for ok in [
            "a.service",
            "serial-getty@ttyS0.service",
            "multi-user.target",
        ] {
            assert!(valid_unit_name(ok), "{ok}");
        }
        for bad in [".service", "a b.service", "a/b.service", "a.conf", ""] {
            assert!(!valid_unit_name(bad), "{bad}");
        }
    }
}
