//! Resolving a Debian package selection to exact versions before anything is installed, with
//! a private apt state: the host's apt sources (never a mirror name written in the project),
//! the archive's signed indexes (apt checks `InRelease` against the keyring of each source's
//! `signed-by`), and an empty dpkg status, so the answer is "what a fresh minbase system with
//! these packages gets from the archive today".
//!
//! Why: the image cache key must change when the archive does (a security update of any
//! package in the image), and stay the same when it does not. The resolution is cheap (an
//! `apt-get update` that mostly re-reads `InRelease`, then two queries: ≈5–15 s) next to a
//! staging run (mmdebstrap, ≈1 min), and the staging then installs from a snapshot of the
//! very index files that were resolved against (`mmdebstrap --skip=update`), so what was
//! resolved is what gets installed — checked again after the install
//! ([`super::debian`]).
//!
//! State lives in `<cache>/apt/<hash of sources + arch>/` (lists, pkgcache), shared by every
//! build on the machine under an exclusive `flock`; the host's own apt state is not touched.
//! The host's apt configuration (`/etc/apt/apt.conf.d`, e.g. a proxy) still applies: only the
//! `Dir::*` locations, the architecture and the sandbox user are set here.
//!
//! The selection is mmdebstrap's `minbase` variant: every `Essential: yes` package, `apt`,
//! every `Priority: required` package, plus the definition's `include` list, without
//! Recommends.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::tool::{ToolError, APT_CACHE, APT_GET};

/// Errors of the private apt state.
#[derive(Debug, thiserror::Error)]
pub enum AptError {
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("apt ({what}) with the state in {dir}")]
    Tool {
        what: &'static str,
        dir: PathBuf,
        #[source]
        source: Box<ToolError>,
    },
    #[error("apt ({what}) printed a line this build does not understand: {line:?}")]
    Parse { what: &'static str, line: String },
    #[error("the archive index has no SHA256 for {package} {version} ({arch}) (apt-cache show in {dir})")]
    NoIndexEntry {
        package: String,
        version: String,
        arch: String,
        dir: PathBuf,
    },
    #[error(
        "the package lists in {dir} are missing: run without offline mode once (apt-get update)"
    )]
    NoLists { dir: PathBuf },
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> AptError {
    let path = path.to_owned();
    move |source| AptError::Io { op, path, source }
}

/// One package of a resolved selection, with what the signed archive index says about it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ResolvedPackage {
    pub name: String,
    pub version: String,
    pub arch: String,
    /// SHA-256 of the `.deb`, from the archive index (`Packages`, covered by `InRelease`).
    pub sha256: String,
    pub size: u64,
    /// Where apt downloads it from (the host's mirror).
    pub uri: String,
    /// The source package and its version (`Source:` of the index, else the package itself).
    pub source: String,
    pub source_version: String,
}

impl ResolvedPackage {
    /// The file name apt gives the `.deb` in its archive cache: `NAME_VERSION_ARCH.deb`, the
    /// epoch colon written `%3a`.
    pub fn deb_file_name(&self) -> String {
        format!(
            "{}_{}_{}.deb",
            self.name,
            self.version.replace(':', "%3a"),
            self.arch
        )
    }
}

/// A private apt state for one set of sources and one architecture.
#[derive(Debug, Clone)]
pub struct AptEnv {
    dir: PathBuf,
    arch: String,
}

/// The Debian architecture name of an [`super::config::Os::arch`].
pub fn debian_arch(arch: &str) -> &str {
    match arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

impl AptEnv {
    /// The state for `sources` (one-line `deb [signed-by=…] URI SUITE COMPONENTS` entries)
    /// under `cache/apt/`, created when missing.
    pub fn open(cache: &Path, sources: &str, arch: &str) -> Result<Self, AptError> {
        let arch = debian_arch(arch).to_owned();
        let digest = ring::digest::digest(
            &ring::digest::SHA256,
            format!("{arch}\n{sources}").as_bytes(),
        );
        let dir = cache.join("apt").join(&hex::encode(digest.as_ref())[..16]);
        for sub in ["etc/parts", "state/lists/partial", "cache/archives/partial"] {
            let p = dir.join(sub);
            fs::create_dir_all(&p).map_err(io("create", &p))?;
        }
        let list = dir.join("etc/sources.list");
        if fs::read_to_string(&list).ok().as_deref() != Some(sources) {
            fs::write(&list, sources).map_err(io("write", &list))?;
        }
        let status = dir.join("state/status");
        if !status.exists() {
            fs::write(&status, "").map_err(io("write", &status))?;
        }
        Ok(Self { dir, arch })
    }

    /// The folder of this state.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the index files are (`InRelease`, `*_Packages*`).
    pub fn lists_dir(&self) -> PathBuf {
        self.dir.join("state/lists")
    }

    /// Hold the state exclusively (update, resolve and snapshot under one lock, so another
    /// build cannot change the lists in between).
    pub(crate) fn lock(&self) -> Result<crate::lock::FileLock, AptError> {
        let path = self.dir.join(".lock");
        crate::lock::FileLock::acquire(&path).map_err(io("lock", &path))
    }

    fn command(&self, tool: &crate::tool::Tool, what: &'static str) -> Result<Command, AptError> {
        let mut cmd = tool.command().map_err(|e| self.tool_err(what, e))?;
        let d = |sub: &str| self.dir.join(sub).display().to_string();
        for (k, v) in [
            ("Dir::Etc::SourceList", d("etc/sources.list")),
            ("Dir::Etc::SourceParts", d("etc/parts")),
            ("Dir::Etc::Preferences", "/dev/null".to_owned()),
            ("Dir::Etc::PreferencesParts", d("etc/parts")),
            ("Dir::State", d("state")),
            ("Dir::State::status", d("state/status")),
            ("Dir::Cache", d("cache")),
            ("APT::Architecture", self.arch.clone()),
            ("APT::Architectures", self.arch.clone()),
            ("APT::Install-Recommends", "false".to_owned()),
            // These machines' /dev/null is not writable by the `_apt` sandbox user.
            ("APT::Sandbox::User", "root".to_owned()),
            ("Acquire::Languages", "none".to_owned()),
            ("Debug::NoLocking", "true".to_owned()),
        ] {
            cmd.arg("-o").arg(format!("{k}={v}"));
        }
        cmd.env("LC_ALL", "C");
        Ok(cmd)
    }

    fn tool_err(&self, what: &'static str, e: ToolError) -> AptError {
        AptError::Tool {
            what,
            dir: self.dir.clone(),
            source: Box::new(e),
        }
    }

    /// `apt-get update`: fetch the signed indexes (apt refuses a bad signature).
    pub fn update(&self) -> Result<(), AptError> {
        let mut cmd = self.command(&APT_GET, "update")?;
        cmd.args(["-q", "update"]);
        APT_GET
            .run(&mut cmd)
            .map_err(|e| self.tool_err("update", e))?;
        Ok(())
    }

    /// Whether index files are present (a previous update).
    pub fn has_lists(&self) -> bool {
        fs::read_dir(self.lists_dir())
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .any(|e| e.file_name().to_string_lossy().contains("_Packages"))
            })
            .unwrap_or(false)
    }

    /// Resolve the minbase selection plus `include` to exact packages, sorted by name.
    pub fn resolve(&self, include: &[String]) -> Result<Vec<ResolvedPackage>, AptError> {
        if !self.has_lists() {
            return Err(AptError::NoLists {
                dir: self.lists_dir(),
            });
        }
        let mut cmd = self.command(&APT_GET, "resolve")?;
        cmd.args(["-q", "install", "--print-uris", "?essential", "apt"])
            .arg("?priority(required)")
            .args(include);
        let out = APT_GET
            .run(&mut cmd)
            .map_err(|e| self.tool_err("install --print-uris", e))?;
        let uris = parse_print_uris(&String::from_utf8_lossy(&out.stdout))?;
        let mut show = self.command(&APT_CACHE, "show")?;
        show.arg("show")
            .args(uris.iter().map(|u| format!("{}={}", u.name, u.version)));
        let out = APT_CACHE
            .run(&mut show)
            .map_err(|e| self.tool_err("show", e))?;
        let index = parse_show(&String::from_utf8_lossy(&out.stdout))?;
        let mut resolved = Vec::with_capacity(uris.len());
        for u in uris {
            let key = (u.name.clone(), u.version.clone(), u.arch.clone());
            let Some(rec) = index.get(&key) else {
                return Err(AptError::NoIndexEntry {
                    package: u.name,
                    version: u.version,
                    arch: u.arch,
                    dir: self.dir.clone(),
                });
            };
            resolved.push(ResolvedPackage {
                name: u.name,
                version: u.version,
                arch: u.arch,
                sha256: rec.sha256.clone(),
                size: u.size,
                uri: u.uri,
                source: rec.source.clone(),
                source_version: rec.source_version.clone(),
            });
        }
        resolved.sort();
        Ok(resolved)
    }

    /// Copy the index files (`*InRelease`, `*_Packages*`) into `to` (a snapshot for one
    /// staging run).
    pub fn snapshot_lists(&self, to: &Path) -> Result<(), AptError> {
        fs::create_dir_all(to).map_err(io("create", to))?;
        let from = self.lists_dir();
        for entry in fs::read_dir(&from).map_err(io("read folder", &from))? {
            let entry = entry.map_err(io("read folder", &from))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let wanted = name.ends_with("_InRelease")
                || name.ends_with("_Release")
                || name.ends_with("_Release.gpg")
                || name.contains("_Packages");
            if wanted && entry.path().is_file() {
                let dst = to.join(&name);
                fs::copy(entry.path(), &dst).map_err(io("copy index file to", &dst))?;
            }
        }
        Ok(())
    }
}

/// One line of `apt-get install --print-uris`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct UriLine {
    uri: String,
    name: String,
    version: String,
    arch: String,
    size: u64,
}

/// Parse the `'URI' NAME_VERSION_ARCH.deb SIZE HASH` lines (other lines are apt's chatter).
fn parse_print_uris(text: &str) -> Result<Vec<UriLine>, AptError> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| l.starts_with('\'')) {
        let bad = || AptError::Parse {
            what: "install --print-uris",
            line: line.to_owned(),
        };
        let rest = &line[1..];
        let (uri, rest) = rest.split_once("' ").ok_or_else(bad)?;
        let mut fields = rest.split_whitespace();
        let file = fields.next().ok_or_else(bad)?;
        let size: u64 = fields.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
        let stem = file.strip_suffix(".deb").ok_or_else(bad)?;
        // Names and versions never contain '_': NAME_VERSION_ARCH.
        let mut parts = stem.rsplitn(3, '_');
        let (arch, version, name) = (
            parts.next().ok_or_else(bad)?,
            parts.next().ok_or_else(bad)?,
            parts.next().ok_or_else(bad)?,
        );
        out.push(UriLine {
            uri: uri.to_owned(),
            name: name.to_owned(),
            version: version.replace("%3a", ":"),
            arch: arch.to_owned(),
            size,
        });
    }
    Ok(out)
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct IndexRecord {
    sha256: String,
    source: String,
    source_version: String,
}

/// Parse `apt-cache show` records into (package, version, arch) → SHA256 and source. The
/// same version listed by two suites appears twice with the same hash; a different hash for
/// the same key would be an archive inconsistency and is refused.
fn parse_show(text: &str) -> Result<BTreeMap<(String, String, String), IndexRecord>, AptError> {
    let mut out = BTreeMap::new();
    for record in text.split("\n\n") {
        let mut fields: BTreeMap<&str, &str> = BTreeMap::new();
        for line in record.lines() {
            if line.starts_with(' ') {
                continue;
            }
            if let Some((k, v)) = line.split_once(':') {
                fields.insert(k, v.trim());
            }
        }
        let (Some(name), Some(version), Some(arch)) = (
            fields.get("Package"),
            fields.get("Version"),
            fields.get("Architecture"),
        ) else {
            continue;
        };
        let bad = |what: &str| AptError::Parse {
            what: "show",
            line: format!("{name} {version}: {what}"),
        };
        let sha256 = fields
            .get("SHA256")
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| bad("no SHA256 field"))?
            .to_ascii_lowercase();
        // `Source: glibc` or `Source: glibc (2.36-9)`; absent: the source is the package.
        let (source, source_version) = match fields.get("Source") {
            None => ((*name).to_owned(), (*version).to_owned()),
            Some(s) => match s.split_once(' ') {
                Some((src, v)) => (
                    src.to_owned(),
                    v.trim()
                        .trim_start_matches('(')
                        .trim_end_matches(')')
                        .to_owned(),
                ),
                None => ((*s).to_owned(), (*version).to_owned()),
            },
        };
        let rec = IndexRecord {
            sha256,
            source,
            source_version,
        };
        let key = (
            (*name).to_owned(),
            (*version).to_owned(),
            (*arch).to_owned(),
        );
        if let Some(prev) = out.get(&key) {
            if prev != &rec {
                return Err(bad("two index records with different hashes"));
            }
        }
        out.insert(key, rec);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn print_uris_lines_are_parsed_with_epochs() {
        let text = "Reading package lists...\n\
            'http://m/debian/pool/main/g/glibc/libc6_2.36-9%2bdeb12u14_amd64.deb' libc6_2.36-9+deb12u14_amd64.deb 2759320 MD5Sum:8d98\n\
            'http://m/debian/pool/main/libc/libcap2/libcap2_2.66-4_amd64.deb' libcap2_1%3a2.66-4+deb12u3+b1_amd64.deb 27708 MD5Sum:f3\n";
        let lines = parse_print_uris(text).unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].name, "libc6");
        assert_eq!(lines[0].version, "2.36-9+deb12u14");
        assert_eq!(lines[0].arch, "amd64");
        assert_eq!(lines[0].size, 2759320);
        assert!(lines[0].uri.ends_with("libc6_2.36-9%2bdeb12u14_amd64.deb"));
        assert_eq!(lines[1].version, "1:2.66-4+deb12u3+b1");
        assert!(parse_print_uris("'http://x' nodeb 12 x\n").is_err());
    }

    #[test]
    fn show_records_give_hash_and_source() {
        let text = "Package: libc6\nVersion: 2.36-9\nArchitecture: amd64\nSource: glibc\n\
            SHA256: AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n\
            Description: x\n more\n\n\
            Package: libcap2\nVersion: 1:2.66-4+b1\nArchitecture: amd64\n\
            Source: libcap2 (1:2.66-4)\n\
            SHA256: bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb\n\n\
            Package: adduser\nVersion: 3.134\nArchitecture: all\n\
            SHA256: cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc\n";
        let idx = parse_show(text).unwrap();
        let libc = &idx[&("libc6".into(), "2.36-9".into(), "amd64".into())];
        assert_eq!(libc.sha256, "a".repeat(64));
        assert_eq!(
            (libc.source.as_str(), libc.source_version.as_str()),
            ("glibc", "2.36-9")
        );
        let cap = &idx[&("libcap2".into(), "1:2.66-4+b1".into(), "amd64".into())];
        assert_eq!(cap.source_version, "1:2.66-4");
        let add = &idx[&("adduser".into(), "3.134".into(), "all".into())];
        assert_eq!(add.source, "adduser");
        let clash = format!(
            "{text}\nPackage: adduser\nVersion: 3.134\nArchitecture: all\nSHA256: {}\n",
            "d".repeat(64)
        );
        assert!(parse_show(&clash).is_err());
        assert!(parse_show("Package: a\nVersion: 1\nArchitecture: all\n").is_err());
    }

    #[test]
    fn deb_file_names_escape_the_epoch() {
        let p = ResolvedPackage {
            name: "libcap2".into(),
            version: "1:2.66-4".into(),
            arch: "amd64".into(),
            sha256: String::new(),
            size: 1,
            uri: String::new(),
            source: String::new(),
            source_version: String::new(),
        };
        assert_eq!(p.deb_file_name(), "libcap2_1%3a2.66-4_amd64.deb");
    }
}
