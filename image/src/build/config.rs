//! The image definition, `IMAGE.toml`.
//!
//! ```toml
//! profile = "minimal"            # or "container-host"
//!
//! [os]
//! name = "basalt"
//! version = "1.0.0"              # semver
//! channel = "stable"
//! arch = "x86_64"                # the only architecture built today
//!
//! [packages]                     # container-host only: what mmdebstrap installs
//! suite = "bookworm"
//! include = ["systemd", "systemd-sysv", "dbus", "udev", "kmod", "containerd", "runc", "iproute2"]
//!
//! [boot]
//! cmdline = "console=ttyS0"      # extra kernel options (usrhash= is added by the build)
//! tries = 3                      # boot-counting tries for a staged entry
//! test_options = false           # true only for test images: the initramfs then honours
//!                                # basalt.verity=eio|logging (a product image ignores them)
//!
//! [release]
//! sequence = 1                   # strictly increasing per channel
//! valid_days = 365
//! ```
//!
//! Signing keys never appear in the file: they are passed on the command line.

use std::path::{Path, PathBuf};

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
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Packages {
    #[serde(default = "default_suite")]
    pub suite: String,
    #[serde(default = "default_packages")]
    pub include: Vec<String>,
}

impl Default for Packages {
    fn default() -> Self {
        Packages {
            suite: default_suite(),
            include: default_packages(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Boot {
    #[serde(default = "default_cmdline")]
    pub cmdline: String,
    #[serde(default = "default_tries")]
    pub tries: u32,
    /// A test image: its initramfs honours kernel options that weaken verification
    /// (`basalt.verity=eio|logging`). Never for a product image; see
    /// `basalt_initramfs::policy`.
    #[serde(default)]
    pub test_options: bool,
}

impl Default for Boot {
    fn default() -> Self {
        Boot {
            cmdline: default_cmdline(),
            tries: default_tries(),
            test_options: false,
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
    pub boot: Boot,
    pub release: Release,
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

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
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
                if matches!(mode, "eio" | "logging") && !self.boot.test_options {
                    return Err(invalid(format!(
                        "boot.cmdline sets {opt}, which weakens dm-verity: the initramfs of a \
                         product image ignores it (set boot.test_options = true for a test image)"
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
        if self.profile == Profile::ContainerHost && self.packages.include.is_empty() {
            return Err(invalid(
                "packages.include is empty: a container-host image needs systemd at least".into(),
            ));
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

    #[test]
    fn minimal_definition_gets_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.profile, Profile::Minimal);
        assert_eq!(c.os.version, semver::Version::new(1, 0, 0));
        assert_eq!(c.os.channel, "stable");
        assert_eq!(c.boot.tries, 3);
        assert_eq!(c.release.valid_days, 365);
        assert!(c.packages.include.iter().any(|p| p == "systemd"));
    }

    #[test]
    fn container_host_profile_parses() {
        let text = MINIMAL.replace("minimal", "container-host")
            + "[packages]\nsuite = \"bookworm\"\ninclude = [\"systemd\", \"containerd\"]\n";
        let c = parse(&text).unwrap();
        assert_eq!(c.profile, Profile::ContainerHost);
        assert_eq!(c.packages.include, ["systemd", "containerd"]);
    }

    #[test]
    fn test_options_default_off() {
        assert!(!parse(MINIMAL).unwrap().boot.test_options);
        let c = parse(&(MINIMAL.to_string() + "[boot]\ntest_options = true\n")).unwrap();
        assert!(c.boot.test_options);
        let test = "[boot]\ntest_options = true\ncmdline = \"basalt.verity=eio\"\n";
        assert!(parse(&(MINIMAL.to_string() + test)).is_ok());
    }

    #[test]
    fn refusals_name_the_field() {
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
                MINIMAL.to_string() + "[boot]\ncmdline = \"basalt.verity=logging\"\n",
                "boot.test_options",
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
}
