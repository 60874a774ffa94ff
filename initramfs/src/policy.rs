//! The boot policy the image builder packs into the initramfs (`/etc/basalt/boot-policy`):
//! what this initramfs boots, decided at build time and covered by whatever covers the
//! initramfs (the signed UKI under Secure Boot), never by the kernel command line, which an
//! edited boot entry controls.
//!
//! ```text
//! # basalt-init boot policy (written by basalt image build)
//! os=basalt
//! min-usr-version=2.0.0
//! test-options=no
//! ```
//!
//! - `os`: the usr-hash statement must name this OS (release keys may sign several
//!   products; one must not boot as another).
//! - `min-usr-version`: the lowest `/usr` version this initramfs boots. The image builder
//!   sets the release's own version, so an entry edited to pair this release's kernel and
//!   initramfs with an older (signed) `/usr` is refused. The machine-wide floor that moves
//!   with blessed updates is the `BasaltUsrFloor` EFI variable (`basalt_identity::efivar`);
//!   the higher of the two applies.
//! - `test-options`: whether command-line options that weaken verification are honoured
//!   (`basalt.verity=eio|logging`). `no` unless the image definition says it is a test image;
//!   a product initramfs ignores them, logged, and keeps `restart_on_corruption`.
//!
//! Strict: unknown keys, repeated keys and bad values are refused (the file is ours; a typo
//! must not silently weaken a boot). No file at all (an initramfs built by hand) means: no OS
//! or version check, test options refused.

use std::path::Path;

use basalt_manifest::semver::Version;

use crate::cmdline::VerityErrorMode;
use crate::error::{Error, Result};

/// Where the policy lives in the initramfs.
pub const POLICY_PATH: &str = "/etc/basalt/boot-policy";

/// What this initramfs boots (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BootPolicy {
    /// The OS name usr-hash statements must carry; `None`: not checked.
    pub os: Option<String>,
    /// The lowest `/usr` version booted; `None`: no built-in floor.
    pub min_usr_version: Option<Version>,
    /// Honour `basalt.verity=eio|logging` (test images only).
    pub test_options: bool,
}

impl BootPolicy {
    /// Parse the policy file's text.
    pub fn parse(text: &str) -> Result<Self> {
        let bad = |line: usize, reason: String| Error::PolicyInvalid {
            path: POLICY_PATH.into(),
            line,
            reason,
        };
        let mut policy = BootPolicy::default();
        let mut seen: Vec<&str> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let n = i + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err(bad(n, format!("{line:?} is not key=value")));
            };
            let (key, value) = (key.trim(), value.trim());
            if seen.contains(&key) {
                return Err(bad(n, format!("{key} given twice")));
            }
            match key {
                "os" => {
                    if !valid_os(value) {
                        return Err(bad(n, format!("os {value:?} (1-64 of a-z 0-9 . _ -)")));
                    }
                    policy.os = Some(value.to_owned());
                }
                "min-usr-version" => {
                    let v = Version::parse(value)
                        .map_err(|e| bad(n, format!("min-usr-version {value:?}: {e}")))?;
                    policy.min_usr_version = Some(v);
                }
                "test-options" => {
                    policy.test_options = match value {
                        "yes" => true,
                        "no" => false,
                        _ => return Err(bad(n, format!("test-options {value:?} (yes or no)"))),
                    }
                }
                _ => return Err(bad(n, format!("unknown key {key:?}"))),
            }
            seen.push(key);
        }
        Ok(policy)
    }

    /// The file's text (what [`BootPolicy::parse`] reads back).
    pub fn render(&self) -> String {
        let mut out = String::from("# basalt-init boot policy (written by basalt image build)\n");
        if let Some(os) = &self.os {
            out.push_str(&format!("os={os}\n"));
        }
        if let Some(v) = &self.min_usr_version {
            out.push_str(&format!("min-usr-version={v}\n"));
        }
        out.push_str(if self.test_options {
            "test-options=yes\n"
        } else {
            "test-options=no\n"
        });
        out
    }

    /// Read the policy at `path`: the default (nothing checked, test options refused) when
    /// the file does not exist.
    pub fn load(path: &Path) -> Result<Option<Self>> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(Error::ReadInput {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// The dm-verity mode to use when the command line asks for `requested`, and the line
    /// to log when the request is refused: a mode that lets a corrupted block through or
    /// fails reads instead of restarting (so boot counting never falls back) is honoured in
    /// test images only.
    pub fn verity_mode(&self, requested: VerityErrorMode) -> (VerityErrorMode, Option<String>) {
        if requested.weakens() && !self.test_options {
            let why = format!(
                "ignoring basalt.verity={}: this initramfs honours options that weaken verification only in test images; using basalt.verity={}",
                requested.name(),
                VerityErrorMode::Restart.name()
            );
            (VerityErrorMode::Restart, Some(why))
        } else {
            (requested, None)
        }
    }
}

/// An OS name as release statements carry it.
fn valid_os(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_parses_back() {
        for p in [
            BootPolicy::default(),
            BootPolicy {
                os: Some("basalt".into()),
                min_usr_version: Some(Version::parse("2.0.0-rc.1").unwrap()),
                test_options: true,
            },
        ] {
            assert_eq!(BootPolicy::parse(&p.render()).unwrap(), p);
        }
    }

    #[test]
    fn strict_parsing_names_the_line() {
        for (text, needle) in [
            ("os=Basalt\n", "os \"Basalt\""),
            ("os=\n", "os \"\""),
            ("min-usr-version=2\n", "min-usr-version"),
            ("test-options=true\n", "yes or no"),
            ("test-options=yes\ntest-options=yes\n", "given twice"),
            ("verity=logging\n", "unknown key"),
            ("just words\n", "not key=value"),
        ] {
            let err = BootPolicy::parse(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text:?}: {err}");
            assert!(err.contains(POLICY_PATH), "{err}");
        }
        let err = BootPolicy::parse("# c\n\nos=basalt\nbogus=1\n").unwrap_err();
        assert!(err.to_string().contains("line 4"), "{err}");
    }

    #[test]
    fn weakening_modes_only_in_test_images() {
        let product = BootPolicy::default();
        let test = BootPolicy {
            test_options: true,
            ..BootPolicy::default()
        };
        for mode in [VerityErrorMode::Eio, VerityErrorMode::Logging] {
            let (m, why) = product.verity_mode(mode);
            assert_eq!(m, VerityErrorMode::Restart);
            let why = why.unwrap();
            assert!(
                why.contains(&format!("ignoring basalt.verity={}", mode.name())),
                "{why}"
            );
            assert_eq!(test.verity_mode(mode), (mode, None));
        }
        for mode in [VerityErrorMode::Restart, VerityErrorMode::Panic] {
            assert_eq!(product.verity_mode(mode), (mode, None));
        }
    }

    #[test]
    fn missing_file_is_none() {
        assert_eq!(
            BootPolicy::load(Path::new("/nonexistent/boot-policy")).unwrap(),
            None
        );
    }
}
