//! Is an extension for the booted OS? The rules of systemd 252's `systemd-sysext`
//! (`extension_release_validate`), with Basalt's refusals on top, so that nothing Basalt
//! mounts is then silently skipped by `systemd-sysext refresh`.
//!
//! In order, each failure its own reason in [`Error::Incompatible`]:
//!
//! 1. `ID=` must be present and equal the host's `ID=`. `ID=_any` (accepted by systemd) is
//!    refused: a Basalt extension names the OS it extends, so an OS update can decide whether
//!    it still fits.
//! 2. `SYSEXT_SCOPE=`, when present, must list `system` (systemd: `initrd`/`portable`-only
//!    images are not merged into the running system).
//! 3. `ARCHITECTURE=`, when present and not `_any`, must equal the host's architecture in
//!    systemd's naming (`x86-64`, `arm64`, …: [`native_architecture`]).
//! 4. When both the extension and the host declare `SYSEXT_LEVEL=`, they must be equal;
//!    otherwise the extension's `VERSION_ID=` must be present and equal the host's (systemd
//!    would accept an extension without either on a host without `VERSION_ID`; Basalt's
//!    hosts always carry one, and an unversioned extension is refused).
//!
//! Empty values count as absent (as in systemd). Comparison is exact (no version ranges: the
//! level is the range — an OS keeps its `SYSEXT_LEVEL` as long as its extension ABI holds).

use std::path::Path;

use basalt_identity::osrelease::Release;

use crate::error::{Error, Result};

/// Where an extension keeps its release file, relative to the image root.
pub fn release_path(name: &str) -> String {
    format!("usr/lib/extension-release.d/extension-release.{name}")
}

/// The host's architecture in systemd's naming (`ConditionArchitecture=`), as extension
/// release files write it.
pub fn native_architecture() -> &'static str {
    architecture_name(std::env::consts::ARCH)
}

/// systemd's name for a Rust target architecture (`std::env::consts::ARCH`); unknown ones
/// are returned unchanged.
pub fn architecture_name(rust_arch: &'static str) -> &'static str {
    match rust_arch {
        "x86_64" => "x86-64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64",
        "loongarch64" => "loongarch64",
        other => other,
    }
}

/// What the booted OS says about itself: its os-release facts and architecture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostOs {
    /// `ID=`.
    pub id: String,
    /// `VERSION_ID=`.
    pub version_id: Option<String>,
    /// `SYSEXT_LEVEL=`.
    pub sysext_level: Option<String>,
    /// The architecture in systemd's naming.
    pub architecture: String,
}

impl HostOs {
    /// From the text of the host's os-release (read from `path`, named in errors).
    pub fn from_os_release(text: &str, path: &Path, architecture: &str) -> Result<Self> {
        let r = Release::parse(text);
        let id = r.get("ID").ok_or_else(|| Error::HostRelease {
            path: path.to_path_buf(),
            reason: "no ID=".into(),
        })?;
        let version_id = r.get("VERSION_ID").map(str::to_owned);
        let sysext_level = r.get("SYSEXT_LEVEL").map(str::to_owned);
        if version_id.is_none() && sysext_level.is_none() {
            return Err(Error::HostRelease {
                path: path.to_path_buf(),
                reason: "neither VERSION_ID= nor SYSEXT_LEVEL=: no extension can be tied to it"
                    .into(),
            });
        }
        Ok(Self {
            id: id.to_owned(),
            version_id,
            sysext_level,
            architecture: architecture.to_owned(),
        })
    }

    /// Reads and parses the host's os-release file.
    pub fn read(path: &Path, architecture: &str) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(crate::error::io("read", path))?;
        Self::from_os_release(&text, path, architecture)
    }

    /// The OS a signed release will boot, as its os-release will say: `ID=` = the
    /// manifest's `os`, `VERSION_ID=` = its version, `SYSEXT_LEVEL=` = its `sysext_level`
    /// (the image build writes both from one definition), the architecture in systemd's
    /// naming. What the agent checks extensions against *before* the slot flip, without
    /// reading the new `/usr`.
    pub fn of_release(manifest: &basalt_manifest::Manifest) -> Self {
        Self {
            id: manifest.os.clone(),
            version_id: Some(manifest.version.to_string()),
            sysext_level: manifest.sysext_level.clone(),
            architecture: release_architecture(&manifest.arch),
        }
    }
}

/// systemd's name for a manifest's `arch` (Rust / Debian-style names); unknown ones are
/// returned unchanged.
pub fn release_architecture(arch: &str) -> String {
    match arch {
        "x86_64" | "amd64" => "x86-64".to_owned(),
        "aarch64" | "arm64" => "arm64".to_owned(),
        "powerpc64" => "ppc64".to_owned(),
        other => other.to_owned(),
    }
}

/// Checks the text of extension `name`'s `extension-release.NAME` against `host`.
pub fn check(name: &str, extension_release: &str, host: &HostOs) -> Result<()> {
    let refuse = |reason: String| Error::Incompatible {
        name: name.to_owned(),
        reason,
    };
    let ext = Release::parse(extension_release);
    match ext.get("ID") {
        None => return Err(refuse("its extension-release has no ID=".into())),
        Some("_any") => {
            return Err(refuse(
                "ID=_any is refused: a Basalt extension names the OS it extends".into(),
            ))
        }
        Some(id) if id != host.id => {
            return Err(refuse(format!("ID={id}, the booted OS is ID={}", host.id)))
        }
        Some(_) => {}
    }
    if let Some(scope) = ext.get("SYSEXT_SCOPE") {
        if !scope.split_whitespace().any(|s| s == "system") {
            return Err(refuse(format!(
                "SYSEXT_SCOPE={scope} does not include \"system\""
            )));
        }
    }
    if let Some(arch) = ext.get("ARCHITECTURE") {
        if arch != "_any" && arch != host.architecture {
            return Err(refuse(format!(
                "ARCHITECTURE={arch}, the node is {}",
                host.architecture
            )));
        }
    }
    match (ext.get("SYSEXT_LEVEL"), host.sysext_level.as_deref()) {
        (Some(level), Some(host_level)) => {
            if level != host_level {
                return Err(refuse(format!(
                    "SYSEXT_LEVEL={level}, the booted OS has SYSEXT_LEVEL={host_level}"
                )));
            }
        }
        _ => match (ext.get("VERSION_ID"), host.version_id.as_deref()) {
            (None, _) => {
                return Err(refuse(
                    "no SYSEXT_LEVEL= matching the booted OS's and no VERSION_ID=".into(),
                ))
            }
            (Some(v), None) => {
                return Err(refuse(format!(
                    "VERSION_ID={v}, the booted OS has no VERSION_ID="
                )))
            }
            (Some(v), Some(host_v)) if v != host_v => {
                return Err(refuse(format!(
                    "VERSION_ID={v}, the booted OS is VERSION_ID={host_v}"
                )))
            }
            (Some(_), Some(_)) => {}
        },
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> HostOs {
        HostOs::from_os_release(
            "ID=basalt\nVERSION_ID=2.0.0\nSYSEXT_LEVEL=1\n",
            Path::new("/usr/lib/os-release"),
            "x86-64",
        )
        .expect("host")
    }

    fn reason(text: &str) -> String {
        match check("tools", text, &host()) {
            Err(Error::Incompatible { name, reason }) => {
                assert_eq!(name, "tools");
                reason
            }
            other => panic!("{text:?}: expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn compatible_by_level_or_by_version() {
        for ok in [
            "ID=basalt\nSYSEXT_LEVEL=1\n",
            "ID=basalt\nSYSEXT_LEVEL=1\nVERSION_ID=9\n",
            "ID=basalt\nVERSION_ID=2.0.0\n",
            "ID=basalt\nSYSEXT_LEVEL=1\nARCHITECTURE=x86-64\nSYSEXT_SCOPE=\"system portable\"\n",
            "ID=\"basalt\"\nSYSEXT_LEVEL='1'\nARCHITECTURE=_any\n",
        ] {
            check("tools", ok, &host()).unwrap_or_else(|e| panic!("{ok:?}: {e}"));
        }
    }

    #[test]
    fn each_rule_refuses_with_its_own_reason() {
        assert!(reason("SYSEXT_LEVEL=1\n").contains("no ID="));
        assert!(reason("ID=\nSYSEXT_LEVEL=1\n").contains("no ID="));
        assert!(reason("ID=_any\nSYSEXT_LEVEL=1\n").contains("_any"));
        assert!(reason("ID=debian\nSYSEXT_LEVEL=1\n").contains("ID=debian"));
        assert!(reason("ID=basalt\nSYSEXT_LEVEL=2\n").contains("SYSEXT_LEVEL=2"));
        assert!(reason("ID=basalt\nVERSION_ID=1.0.0\n").contains("VERSION_ID=1.0.0"));
        assert!(reason("ID=basalt\n").contains("no VERSION_ID="));
        assert!(reason("ID=basalt\nSYSEXT_LEVEL=1\nARCHITECTURE=arm64\n").contains("arm64"));
        assert!(reason("ID=basalt\nSYSEXT_LEVEL=1\nSYSEXT_SCOPE=initrd\n").contains("initrd"));
        assert!(reason("").contains("no ID="));
    }

    #[test]
    fn a_level_only_the_extension_has_falls_back_to_the_version() {
        let mut h = host();
        h.sysext_level = None;
        assert!(check("tools", "ID=basalt\nSYSEXT_LEVEL=1\nVERSION_ID=2.0.0\n", &h).is_ok());
        assert!(check("tools", "ID=basalt\nSYSEXT_LEVEL=1\n", &h).is_err());
        h.version_id = None;
        h.sysext_level = Some("1".into());
        assert!(check("tools", "ID=basalt\nVERSION_ID=2.0.0\n", &h).is_err());
    }

    #[test]
    fn host_release_needs_an_id_and_a_version() {
        let p = Path::new("/etc/os-release");
        assert!(matches!(
            HostOs::from_os_release("VERSION_ID=1\n", p, "x86-64"),
            Err(Error::HostRelease { .. })
        ));
        assert!(matches!(
            HostOs::from_os_release("ID=basalt\n", p, "x86-64"),
            Err(Error::HostRelease { .. })
        ));
    }

    #[test]
    fn architecture_names_follow_systemd() {
        assert_eq!(architecture_name("x86_64"), "x86-64");
        assert_eq!(architecture_name("aarch64"), "arm64");
        assert_eq!(
            release_path("tools"),
            "usr/lib/extension-release.d/extension-release.tools"
        );
    }
}
