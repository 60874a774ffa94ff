//! `basalt sysext build|verify|inspect`: system extension images from a directory tree or
//! from Debian packages.
//!
//! ```text
//! tree DIR  ─┐
//!            ├─▶ staging/ (usr/… and opt/… only) + usr/lib/extension-release.d/extension-release.NAME
//! packages ──┘    (apt-get download, cached by file name → dpkg-deb -x; /lib, /bin, … moved
//!                  under usr/ as on a merged-/usr system; docs pruned; any other file outside
//!                  usr/ or opt/ refused, naming the package)
//!   ─▶ erofs (build::erofs::pack: reproducible, lz4hc) ─▶ verity superblock + tree appended
//!   (build::image::append_verity) ─▶ signed sysext statement block appended
//!   (append_statement_block) ─▶ OUT/NAME.raw, checked right away with basalt_sysext::verify_image
//! ```
//!
//! One sealing path for `/usr` and extensions (the same layout, block codec and verity code);
//! only the statement differs (`basalt_manifest::sysext`). Packages are taken as listed, not
//! dependency-resolved: an extension overlays a known base image, so its definition names
//! the packages the base lacks (for `tools`: `strace libunwind8 jq libjq1 libonig5`).

use std::fs;
use std::path::{Path, PathBuf};

use basalt_manifest::semver::Version;
use basalt_manifest::{sign_sysext, SigningKey, SysextStatement};
use basalt_sysext::compat::release_path;

use crate::build::erofs::{self, Compression};
use crate::build::image::{append_statement_block, append_verity};
use crate::tool::{Tool, ToolError, APT_CACHE, APT_GET, DPKG_DEB};

/// `cp` (package `coreutils`), to copy a tree with its links and modes.
const CP: Tool = Tool::new("cp", "coreutils");

/// Top-level folders an extension may carry (what systemd-sysext merges).
pub const ALLOWED_TOP: [&str; 2] = ["usr", "opt"];

/// Top-level folders of Debian packages that live under `/usr` on a merged-/usr system
/// (Basalt's root has `bin sbin lib lib64` → `usr/…` links, as Debian 12 with usrmerge): their
/// content is moved there, as usrmerge does.
pub const MERGED_TOP: [&str; 6] = ["bin", "sbin", "lib", "lib32", "lib64", "libx32"];

/// Package content dropped from extensions built from Debian packages (documentation).
pub const PRUNED: [&str; 5] = [
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/lintian",
    "usr/share/bug",
];

/// Errors building or checking an extension.
#[derive(Debug, thiserror::Error)]
pub enum SysextError {
    /// A file operation.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The system error.
        #[source]
        source: std::io::Error,
    },
    /// The definition is unusable.
    #[error("extension definition: {reason}")]
    Spec {
        /// What is wrong.
        reason: String,
    },
    /// A system tool failed (names the Debian package when it is missing).
    #[error(transparent)]
    Tool(#[from] ToolError),
    /// A file the extension would carry lies outside `usr/` and `opt/`.
    #[error("{source_name}: {path} lies outside usr/ and opt/ (systemd-sysext merges only those)")]
    OutsideUsr {
        /// The package or tree it came from.
        source_name: String,
        /// The path inside the extension.
        path: String,
    },
    /// The tree already has an extension-release file that differs from the definition's.
    #[error("{path}: differs from the extension-release the definition makes:\n{expected}")]
    ReleaseConflict {
        /// The file in the tree.
        path: PathBuf,
        /// What the definition makes.
        expected: String,
    },
    /// mkfs.erofs.
    #[error(transparent)]
    Erofs(#[from] erofs::ErofsError),
    /// Verity or statement sealing.
    #[error("sealing {path}: {source}")]
    Seal {
        /// The image.
        path: PathBuf,
        /// The failure.
        #[source]
        source: Box<crate::build::BuildError>,
    },
    /// Signing the statement.
    #[error("signing the extension statement: {0}")]
    Sign(#[source] Box<basalt_manifest::Error>),
    /// The built image did not verify against the trust root given.
    #[error("the built image does not verify: {0}")]
    Verify(#[source] Box<basalt_sysext::Error>),
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SysextError {
    let path = path.to_path_buf();
    move |source| SysextError::Io { op, path, source }
}

/// Where the extension's files come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A directory holding `usr/` (and/or `opt/`).
    Tree(PathBuf),
    /// Debian packages, taken as listed (`apt-get download` with the host's apt lists).
    Debian(Vec<String>),
}

/// An extension definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysextSpec {
    /// Extension name (`[a-z0-9][a-z0-9._-]*`).
    pub name: String,
    /// Extension version.
    pub version: Version,
    /// The OS `ID=` it extends.
    pub os: String,
    /// `SYSEXT_LEVEL=` it needs (preferred: survives OS updates that keep the level).
    pub sysext_level: Option<String>,
    /// `VERSION_ID=` it needs (ties it to one OS version).
    pub version_id: Option<String>,
    /// `ARCHITECTURE=` (systemd naming, e.g. `x86-64`).
    pub architecture: Option<String>,
    /// Its files.
    pub source: Source,
}

impl SysextSpec {
    /// The `extension-release.NAME` text this definition makes.
    pub fn extension_release(&self) -> Result<String, SysextError> {
        if !basalt_manifest::valid_extension_name(&self.name) {
            return Err(SysextError::Spec {
                reason: format!(
                    "name {:?} must be 1-64 characters of [a-z0-9._-], starting with [a-z0-9]",
                    self.name
                ),
            });
        }
        if self.sysext_level.is_none() && self.version_id.is_none() {
            return Err(SysextError::Spec {
                reason: "give SYSEXT_LEVEL (--sysext-level) or VERSION_ID (--version-id): an \
                         extension is tied to the OS releases it fits"
                    .into(),
            });
        }
        let mut text = format!("ID={}\n", self.os);
        for (key, value) in [
            ("SYSEXT_LEVEL", &self.sysext_level),
            ("VERSION_ID", &self.version_id),
            ("ARCHITECTURE", &self.architecture),
        ] {
            if let Some(v) = value {
                if v.is_empty()
                    || !v
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-+~".contains(&b))
                {
                    return Err(SysextError::Spec {
                        reason: format!("{key}={v:?}: use [A-Za-z0-9._+~-]"),
                    });
                }
                text.push_str(&format!("{key}={v}\n"));
            }
        }
        text.push_str(&format!("BASALT_SYSEXT_VERSION={}\n", self.version));
        Ok(text)
    }
}

/// A sysext definition file (`image/definitions/extensions/NAME.toml`), what an image
/// definition's `[[extensions]]` names:
///
/// ```toml
/// name = "tools"
/// version = "1.0.0"
/// packages = ["strace", "libunwind8", "jq", "libjq1", "libonig5"]  # or: tree = "dir"
/// # sysext_level = "1"     # default: the image's os.sysext_level
/// # version_id = "1.0.0"   # instead: tie it to one OS version
/// # architecture = "x86-64"
/// ```
///
/// `ID=` is always the image's `os.name`: an extension that ships with a release is for
/// that OS.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SysextDefinition {
    /// Extension name.
    pub name: String,
    /// Extension version.
    pub version: Version,
    /// Debian packages (taken as listed).
    #[serde(default)]
    pub packages: Vec<String>,
    /// A tree holding `usr/` (relative to the definition file).
    #[serde(default)]
    pub tree: Option<PathBuf>,
    /// `SYSEXT_LEVEL=` (default: the OS's).
    #[serde(default)]
    pub sysext_level: Option<String>,
    /// `VERSION_ID=` instead of a level.
    #[serde(default)]
    pub version_id: Option<String>,
    /// `ARCHITECTURE=` (systemd naming).
    #[serde(default)]
    pub architecture: Option<String>,
}

impl SysextDefinition {
    /// Reads `path` (named in errors).
    pub fn load(path: &Path) -> Result<Self, SysextError> {
        let text = fs::read_to_string(path).map_err(io("read", path))?;
        toml::from_str(&text).map_err(|e| SysextError::Spec {
            reason: format!("{}: {e}", path.display()),
        })
    }

    /// The build spec for OS `os` whose `SYSEXT_LEVEL=` is `os_level`; `path` is where
    /// the definition was read from (a relative `tree` is relative to it).
    pub fn spec(&self, path: &Path, os: &str, os_level: &str) -> Result<SysextSpec, SysextError> {
        let source = match (&self.tree, self.packages.is_empty()) {
            (Some(tree), true) => Source::Tree(if tree.is_absolute() {
                tree.clone()
            } else {
                path.parent().unwrap_or(Path::new(".")).join(tree)
            }),
            (None, false) => Source::Debian(self.packages.clone()),
            _ => {
                return Err(SysextError::Spec {
                    reason: format!(
                        "{}: give exactly one of packages = [...] and tree = \"DIR\"",
                        path.display()
                    ),
                })
            }
        };
        let sysext_level = match (&self.sysext_level, &self.version_id) {
            (Some(l), _) => Some(l.clone()),
            (None, Some(_)) => None,
            (None, None) => Some(os_level.to_owned()),
        };
        Ok(SysextSpec {
            name: self.name.clone(),
            version: self.version.clone(),
            os: os.to_owned(),
            sysext_level,
            version_id: self.version_id.clone(),
            architecture: self.architecture.clone(),
            source,
        })
    }
}

/// A built extension image.
#[derive(Debug, Clone)]
pub struct Built {
    /// `OUT/NAME.raw`.
    pub path: PathBuf,
    /// The signed statement.
    pub statement: SysextStatement,
    /// The image size.
    pub bytes: u64,
    /// Packages and their versions (Debian source), in definition order.
    pub packages: Vec<(String, String)>,
}

/// Builds `spec` into `out/NAME.raw`, signed by `keys`; `deb_cache` keeps downloaded
/// packages (by file name, which carries the version). When `trust` is given the result is
/// verified against it before returning.
pub fn build(
    spec: &SysextSpec,
    keys: &[&SigningKey],
    out: &Path,
    deb_cache: &Path,
    trust: Option<&basalt_manifest::TrustRoot>,
) -> Result<Built, SysextError> {
    let release = spec.extension_release()?;
    fs::create_dir_all(out).map_err(io("create", out))?;
    let work = tempfile::Builder::new()
        .prefix(".sysext-")
        .tempdir_in(out)
        .map_err(io("create a work folder in", out))?;
    let staging = work.path().join("tree");
    fs::create_dir_all(&staging).map_err(io("create", &staging))?;
    let mut packages = Vec::new();
    let origin = match &spec.source {
        Source::Tree(dir) => {
            let mut cp = CP.command()?;
            cp.arg("-a").arg(dir.join(".")).arg(&staging);
            CP.run(&mut cp)?;
            check_tree(&staging, &dir.display().to_string())?;
            dir.display().to_string()
        }
        Source::Debian(list) => {
            if list.is_empty() {
                return Err(SysextError::Spec {
                    reason: "no packages given".into(),
                });
            }
            for package in list {
                let (version, deb) = fetch_deb(package, deb_cache)?;
                let unpacked = work.path().join(format!("deb-{package}"));
                let mut x = DPKG_DEB.command()?;
                x.arg("-x").arg(&deb).arg(&unpacked);
                DPKG_DEB.run(&mut x)?;
                merge_usr(&unpacked)?;
                for pruned in PRUNED {
                    let p = unpacked.join(pruned);
                    if p.exists() {
                        fs::remove_dir_all(&p).map_err(io("remove", &p))?;
                    }
                }
                check_tree(&unpacked, &format!("package {package} {version}"))?;
                let mut cp = CP.command()?;
                cp.arg("-a").arg(unpacked.join(".")).arg(&staging);
                CP.run(&mut cp)?;
                packages.push((package.clone(), version));
            }
            format!("Debian packages {}", list.join(" "))
        }
    };
    let rel = staging.join(release_path(&spec.name));
    match fs::read_to_string(&rel) {
        Ok(existing) if existing != release => {
            return Err(SysextError::ReleaseConflict {
                path: rel,
                expected: release,
            })
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let dir = rel.parent().unwrap_or(&staging).to_path_buf();
            fs::create_dir_all(&dir).map_err(io("create", &dir))?;
            fs::write(&rel, &release).map_err(io("write", &rel))?;
        }
        Err(e) => return Err(io("read", &rel)(e)),
    }
    tracing::info!(name = %spec.name, version = %spec.version, origin = %origin, "staged extension");

    let image = work.path().join(format!("{}.raw", spec.name));
    let seed = format!("basalt-sysext {} {} {}", spec.os, spec.name, spec.version);
    erofs::pack(
        &staging,
        &image,
        &erofs::derived_uuid(&seed),
        Compression::Lz4hc,
    )?;
    let data_len = fs::metadata(&image).map_err(io("stat", &image))?.len();
    let data_len = data_len.div_ceil(4096) * 4096;
    {
        let f = fs::OpenOptions::new()
            .write(true)
            .open(&image)
            .map_err(io("open", &image))?;
        f.set_len(data_len).map_err(io("pad", &image))?;
    }
    // Reproducible: salt and superblock UUID derived from the definition.
    let d = ring::digest::digest(&ring::digest::SHA256, seed.as_bytes());
    let salt = d.as_ref().to_vec();
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&salt[..16]);
    uuid[6] = (uuid[6] & 0x0f) | 0x40;
    uuid[8] = (uuid[8] & 0x3f) | 0x80;
    let seal = |source| SysextError::Seal {
        path: image.clone(),
        source: Box::new(source),
    };
    let (_, verity) = append_verity(&image, data_len, salt, uuid).map_err(seal)?;
    let statement = SysextStatement {
        name: spec.name.clone(),
        version: spec.version.clone(),
        os: spec.os.clone(),
        extension_release: release,
        verity: verity.clone(),
    };
    let envelope = sign_sysext(&statement, keys).map_err(|e| SysextError::Sign(Box::new(e)))?;
    append_statement_block(&image, &verity, &envelope).map_err(|source| SysextError::Seal {
        path: image.clone(),
        source: Box::new(source),
    })?;
    if let Some(root) = trust {
        basalt_sysext::verify_image(&image, root, Some(&spec.name))
            .map_err(|e| SysextError::Verify(Box::new(e)))?;
    }
    let path = out.join(format!("{}.raw", spec.name));
    fs::rename(&image, &path).map_err(io("move the image to", &path))?;
    let bytes = fs::metadata(&path).map_err(io("stat", &path))?.len();
    Ok(Built {
        path,
        statement,
        bytes,
        packages,
    })
}

/// Moves the [`MERGED_TOP`] folders of an unpacked package under `usr/`.
fn merge_usr(unpacked: &Path) -> Result<(), SysextError> {
    for top in MERGED_TOP {
        let from = unpacked.join(top);
        let is_dir = fs::symlink_metadata(&from).is_ok_and(|m| m.is_dir());
        if !is_dir {
            continue;
        }
        let to = unpacked.join("usr").join(top);
        fs::create_dir_all(&to).map_err(io("create", &to))?;
        let mut cp = CP.command()?;
        cp.arg("-a").arg(from.join(".")).arg(&to);
        CP.run(&mut cp)?;
        fs::remove_dir_all(&from).map_err(io("remove", &from))?;
    }
    Ok(())
}

/// Refuses a tree with anything at the top other than `usr/` and `opt/` (directories).
pub fn check_tree(tree: &Path, source_name: &str) -> Result<(), SysextError> {
    for entry in fs::read_dir(tree).map_err(io("list", tree))? {
        let entry = entry.map_err(io("list", tree))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_dir = entry
            .file_type()
            .map_err(io("stat", &entry.path()))?
            .is_dir();
        if !(is_dir && ALLOWED_TOP.contains(&name.as_str())) {
            let inner = first_file(&entry.path()).unwrap_or_default();
            return Err(SysextError::OutsideUsr {
                source_name: source_name.to_owned(),
                path: if inner.is_empty() {
                    name
                } else {
                    format!("{name}/{inner}")
                },
            });
        }
    }
    Ok(())
}

/// A file below `dir` (for naming an example in errors).
fn first_file(dir: &Path) -> Option<String> {
    let mut entry = fs::read_dir(dir).ok()?.flatten().next()?;
    let mut rel = entry.file_name().to_string_lossy().into_owned();
    for _ in 0..16 {
        if !entry.file_type().ok()?.is_dir() {
            break;
        }
        match fs::read_dir(entry.path()).ok()?.flatten().next() {
            Some(e) => {
                rel = format!("{rel}/{}", e.file_name().to_string_lossy());
                entry = e;
            }
            None => break,
        }
    }
    Some(rel)
}

/// The candidate version and `.deb` of `package` (host apt lists), downloaded into
/// `cache` unless a file of that name is already there.
fn fetch_deb(package: &str, cache: &Path) -> Result<(String, PathBuf), SysextError> {
    if package.is_empty()
        || !package
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b))
    {
        return Err(SysextError::Spec {
            reason: format!("{package:?} is not a Debian package name"),
        });
    }
    let mut show = APT_CACHE.command()?;
    show.args(["show", "--no-all-versions", package]);
    let out = APT_CACHE.run(&mut show)?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_owned()))
    };
    let (Some(version), Some(filename)) = (field("Version:"), field("Filename:")) else {
        return Err(SysextError::Spec {
            reason: format!("apt-cache show {package}: no Version/Filename (run apt-get update?)"),
        });
    };
    let base = Path::new(&filename)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let cached = cache.join(&base);
    if cached.is_file() {
        return Ok((version, cached));
    }
    fs::create_dir_all(cache).map_err(io("create", cache))?;
    let tmp = tempfile::Builder::new()
        .prefix(".fetch-")
        .tempdir_in(cache)
        .map_err(io("create a download folder in", cache))?;
    let mut dl = APT_GET.command()?;
    dl.current_dir(tmp.path()).args([
        "download",
        "-q",
        "-o",
        "APT::Sandbox::User=root",
        &format!("{package}={version}"),
    ]);
    APT_GET.run(&mut dl)?;
    let got = tmp.path().join(&base);
    // apt-get may escape the epoch colon in the file name; take the one .deb it wrote.
    let got = if got.is_file() {
        got
    } else {
        fs::read_dir(tmp.path())
            .map_err(io("list", tmp.path()))?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .ok_or_else(|| SysextError::Spec {
                reason: format!("apt-get download {package} wrote no .deb"),
            })?
    };
    fs::rename(&got, &cached).map_err(io("move into the cache", &cached))?;
    Ok((version, cached))
}

/// The default `.deb` cache: `<workspace>/build/cache/debs`.
pub fn default_deb_cache() -> PathBuf {
    crate::cache_root().join("debs")
}
