//! The Debian staging: one mmdebstrap run per resolved package set, cached and shared by every
//! image built from it (releases v1, v2, v3 of one definition, its product and test variants,
//! and the bench's stock reference system).
//!
//! ```text
//! resolved packages (apt.rs) ──► key = sha256(staging version, suite, include, mmdebstrap
//!                                     version, every name/version/arch/.deb sha256)
//!   hit:  <cache>/staging/<key>/{root/, packages.json}
//!   miss: mmdebstrap --variant=minbase --skip=update (a setup hook copies in the index
//!         snapshot that was resolved against), a customize hook hashes every .deb apt
//!         downloaded and verified → check: installed set (dpkg-query in the tree) == resolved
//!         set, each .deb's sha256 == the archive index's → packages.json → rename into place
//! ```
//!
//! The tree is stock Debian (no files excluded): what an image ships is decided when it is
//! built from the tree ([`super::rootfs`]), and the reference system of `cargo xtask bench`
//! is this tree as is. Owner, modes and device nodes are mmdebstrap's (it runs as root).
//!
//! Trust: apt checks the archive's `InRelease` signatures when the index is fetched
//! ([`super::apt::AptEnv::update`]) and every `.deb` against the index when it installs; the
//! checks here make sure that what the SBOM says ([`StagedPackage`]) is exactly that: the
//! packages dpkg has installed, with the hashes of the files apt verified.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde::{Deserialize, Serialize};

use super::apt::ResolvedPackage;
use crate::tool::{ToolError, DPKG_QUERY, MMDEBSTRAP};

/// Bump when the staging's output for the same inputs changes (mmdebstrap options, hooks).
pub const STAGING_VERSION: &str = "debian-staging/1";

/// Errors of the Debian staging.
#[derive(Debug, thiserror::Error)]
pub enum StagingError {
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("run {tool}")]
    Tool {
        tool: &'static str,
        #[source]
        source: Box<ToolError>,
    },
    #[error("mmdebstrap ({suite}) into {tree} failed ({status}): {stderr}")]
    Mmdebstrap {
        suite: String,
        tree: PathBuf,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("mmdebstrap installed another package set than was resolved ({tree}): {diff}")]
    InstalledDiffers { tree: PathBuf, diff: String },
    #[error(".deb of {package} {version}: sha256 {found} of the file apt installed, {expected} in the archive index")]
    DebHash {
        package: String,
        version: String,
        found: String,
        expected: String,
    },
    #[error(".deb of {package} {version} ({file}) is not among the files apt downloaded ({list})")]
    DebMissing {
        package: String,
        version: String,
        file: String,
        list: PathBuf,
    },
    #[error("{path} is missing from the staged Debian tree: {what}")]
    Missing { path: PathBuf, what: &'static str },
    #[error("parse {path}: {what}")]
    Parse { path: PathBuf, what: String },
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StagingError {
    let path = path.to_owned();
    move |source| StagingError::Io { op, path, source }
}

/// One installed Debian package, as the SBOM reports it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct StagedPackage {
    pub name: String,
    pub version: String,
    pub arch: String,
    /// SHA-256 of the `.deb` apt verified and dpkg installed (= the archive index's).
    pub sha256: String,
    pub size: u64,
    pub uri: String,
    pub source: String,
    pub source_version: String,
}

/// A Debian package of the build host some of whose files the release carries (no `.deb` at
/// hand, only the host's dpkg record).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct HostPackage {
    pub name: String,
    pub version: String,
    pub arch: String,
    pub source: String,
    pub source_version: String,
    /// Where its files are in the release (`initrd.img:/sbin/mke2fs`, `/usr/bin/busybox`),
    /// each with the file's SHA-256.
    pub files: Vec<(String, String)>,
}

/// The host packages owning `files` (`(location in the release, path on the host, sha256)`),
/// per `dpkg-query -S` (trying the merged-/usr twin and the resolved path of each file too).
/// A file no package owns is returned in the error list.
pub fn host_packages(
    files: &[(String, PathBuf, String)],
) -> Result<(Vec<HostPackage>, Vec<PathBuf>), StagingError> {
    let mut owners: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    let mut unowned = Vec::new();
    for (location, path, sum) in files {
        match host_owner(path)? {
            Some(pkg) => owners
                .entry(pkg)
                .or_default()
                .push((location.clone(), sum.clone())),
            None => unowned.push(path.clone()),
        }
    }
    if owners.is_empty() {
        return Ok((Vec::new(), unowned));
    }
    let mut cmd = DPKG_QUERY.command().map_err(tool_err("dpkg-query"))?;
    cmd.arg("-W")
        .arg("-f=${Package}\t${Version}\t${Architecture}\t${source:Package}\t${source:Version}\n")
        .args(owners.keys());
    let out = DPKG_QUERY.run(&mut cmd).map_err(tool_err("dpkg-query"))?;
    let mut found = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let f: Vec<&str> = line.split('\t').collect();
        let [name, version, arch, src, src_version] = f[..] else {
            continue;
        };
        let key = owners
            .keys()
            .find(|k| *k == name || k.strip_suffix(&format!(":{arch}")) == Some(name))
            .cloned();
        if let Some(key) = key {
            let mut files = owners.get(&key).cloned().unwrap_or_default();
            files.sort();
            found.push(HostPackage {
                name: name.to_owned(),
                version: version.to_owned(),
                arch: arch.to_owned(),
                source: src.to_owned(),
                source_version: src_version.to_owned(),
                files,
            });
        }
    }
    found.sort();
    found.dedup();
    Ok((found, unowned))
}

/// The package (`name` or `name:arch`) owning `path` on the host, if any.
fn host_owner(path: &Path) -> Result<Option<String>, StagingError> {
    let mut candidates = vec![path.to_owned()];
    let text = path.display().to_string();
    let twin = |p: &str| -> Option<PathBuf> {
        p.strip_prefix("/usr").map(PathBuf::from).or_else(|| {
            p.starts_with('/')
                .then(|| PathBuf::from(format!("/usr{p}")))
        })
    };
    candidates.extend(twin(&text));
    if let Ok(real) = fs::canonicalize(path) {
        let r = real.display().to_string();
        candidates.extend(twin(&r));
        candidates.push(real);
    }
    for candidate in candidates {
        let mut cmd = DPKG_QUERY.command().map_err(tool_err("dpkg-query"))?;
        cmd.arg("-S").arg(&candidate);
        let Ok(out) = cmd.output() else { continue };
        if !out.status.success() {
            continue;
        }
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some((pkg, p)) = line.rsplit_once(": ") {
                if Path::new(p.trim()) == candidate && !pkg.contains(',') {
                    return Ok(Some(pkg.trim().to_owned()));
                }
            }
        }
    }
    Ok(None)
}

/// `packages.json` of a staging folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagingFacts {
    pub staging_version: String,
    pub key: String,
    pub suite: String,
    pub include: Vec<String>,
    pub mmdebstrap: String,
    pub packages: Vec<StagedPackage>,
}

/// A finished staging: the tree and what is in it.
#[derive(Debug, Clone)]
pub struct Staging {
    pub dir: PathBuf,
    pub facts: StagingFacts,
    /// Whether this call found it in the cache.
    pub from_cache: bool,
}

impl Staging {
    /// The Debian root tree (`usr/`, `etc/`, `var/` …).
    pub fn tree(&self) -> PathBuf {
        self.dir.join("root")
    }
}

/// What to stage.
#[derive(Debug, Clone)]
pub struct StagingRequest<'a> {
    /// `<cache>/staging/` gets the `<key>/` folders.
    pub cache: &'a Path,
    pub suite: &'a str,
    pub include: &'a [String],
    /// The resolution (see [`super::apt::AptEnv::resolve`]).
    pub resolved: &'a [ResolvedPackage],
    /// The apt sources (one-line form) the resolution used.
    pub sources: &'a str,
}

/// `mmdebstrap --version`, part of the key (its cleanup steps shape the tree).
pub fn mmdebstrap_version() -> Result<String, StagingError> {
    let mut cmd = MMDEBSTRAP.command().map_err(tool_err("mmdebstrap"))?;
    cmd.arg("--version");
    let out = MMDEBSTRAP.run(&mut cmd).map_err(tool_err("mmdebstrap"))?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn tool_err(tool: &'static str) -> impl FnOnce(ToolError) -> StagingError {
    move |e| StagingError::Tool {
        tool,
        source: Box::new(e),
    }
}

/// The staging key: SHA-256 over everything that decides the tree's content.
pub fn staging_key(req: &StagingRequest<'_>, mmdebstrap: &str) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut field = |bytes: &[u8]| {
        ctx.update(&(bytes.len() as u64).to_le_bytes());
        ctx.update(bytes);
    };
    field(STAGING_VERSION.as_bytes());
    field(req.suite.as_bytes());
    field(req.include.join(",").as_bytes());
    field(mmdebstrap.as_bytes());
    for p in req.resolved {
        field(format!("{} {} {} {}", p.name, p.version, p.arch, p.sha256).as_bytes());
    }
    hex::encode(ctx.finish().as_ref())
}

/// The staged tree for `req`, from the cache or made now. `lists` holds the index files the
/// resolution used (a snapshot: [`super::apt::AptEnv::snapshot_lists`]); mmdebstrap installs
/// from them. `log` hears what takes time.
pub fn stage(
    req: &StagingRequest<'_>,
    lists: &Path,
    log: &mut dyn FnMut(&str),
) -> Result<Staging, StagingError> {
    let mmdebstrap = mmdebstrap_version()?;
    let key = staging_key(req, &mmdebstrap);
    let root = req.cache.join("staging");
    fs::create_dir_all(&root).map_err(io("create", &root))?;
    let dir = root.join(&key);
    let facts_path = dir.join("packages.json");
    if let Some(facts) = read_facts(&facts_path)? {
        return Ok(Staging {
            dir,
            facts,
            from_cache: true,
        });
    }
    let lock_path = root.join(format!(".lock-{key}"));
    let _lock = crate::lock::FileLock::acquire(&lock_path).map_err(io("lock", &lock_path))?;
    if let Some(facts) = read_facts(&facts_path)? {
        return Ok(Staging {
            dir,
            facts,
            from_cache: true,
        });
    }
    let work = tempfile::Builder::new()
        .prefix(".staging-")
        .tempdir_in(&root)
        .map_err(io("create staging folder in", &root))?;
    log(&format!(
        "staging Debian {} ({} packages) with mmdebstrap: about a minute",
        req.suite,
        req.resolved.len()
    ));
    let tree = work.path().join("root");
    let debs = work.path().join("debs.sha256");
    run_mmdebstrap(req, lists, &tree, &debs)?;
    let packages = verify(req.resolved, &tree, &debs)?;
    let facts = StagingFacts {
        staging_version: STAGING_VERSION.to_owned(),
        key: key.clone(),
        suite: req.suite.to_owned(),
        include: req.include.to_vec(),
        mmdebstrap,
        packages,
    };
    let text = serde_json::to_vec_pretty(&facts).map_err(|e| StagingError::Parse {
        path: facts_path.clone(),
        what: e.to_string(),
    })?;
    let staged_facts = work.path().join("packages.json");
    fs::write(&staged_facts, text).map_err(io("write", &staged_facts))?;
    let kept = work.keep();
    if dir.exists() {
        // A folder without packages.json is the rest of a killed run.
        fs::remove_dir_all(&dir).map_err(io("remove stale staging", &dir))?;
    }
    fs::rename(&kept, &dir).map_err(io("publish staging", &dir))?;
    Ok(Staging {
        dir,
        facts,
        from_cache: false,
    })
}

fn read_facts(path: &Path) -> Result<Option<StagingFacts>, StagingError> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StagingError::Parse {
                path: path.to_owned(),
                what: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io("read", path)(e)),
    }
}

/// Single-quote `path` for the hook's `sh -c`.
fn shell_quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', "'\\''"))
}

fn run_mmdebstrap(
    req: &StagingRequest<'_>,
    lists: &Path,
    tree: &Path,
    debs: &Path,
) -> Result<(), StagingError> {
    let mut cmd = MMDEBSTRAP.command().map_err(tool_err("mmdebstrap"))?;
    cmd.args([
        "--variant=minbase",
        "--mode=root",
        "--quiet",
        // The sandbox user cannot write /dev/null on these machines (mode 0644).
        "--aptopt=APT::Sandbox::User \"root\"",
        // Install from the index snapshot the resolution used, nothing newer.
        "--skip=update",
        // Keep the essential .debs for the customize hook to hash.
        "--skip=essential/unlink",
    ])
    .arg(format!(
        "--setup-hook=mkdir -p \"$1/var/lib/apt/lists\" && cp {}/* \"$1/var/lib/apt/lists/\"",
        shell_quote(lists)
    ))
    .arg(format!(
        "--customize-hook=cd \"$1/var/cache/apt/archives\" && sha256sum -- *.deb > {}",
        shell_quote(debs)
    ))
    .arg(format!("--include={}", req.include.join(",")))
    .arg(req.suite)
    .arg(tree)
    .arg("-")
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| StagingError::Tool {
        tool: "mmdebstrap",
        source: Box::new(ToolError::Spawn {
            tool: "mmdebstrap",
            source,
        }),
    })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(req.sources.as_bytes())
            .map_err(io("write sources to", Path::new("mmdebstrap stdin")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(io("wait for", Path::new("mmdebstrap")))?;
    if !out.status.success() {
        return Err(StagingError::Mmdebstrap {
            suite: req.suite.to_owned(),
            tree: tree.to_owned(),
            status: out.status,
            stderr: crate::tool::tail_chars(&String::from_utf8_lossy(&out.stderr), 3000),
        });
    }
    let systemd = tree.join("usr/lib/systemd/systemd");
    if req.include.iter().any(|p| p == "systemd") && !systemd.exists() {
        return Err(StagingError::Missing {
            path: systemd,
            what: "systemd was included but is not installed",
        });
    }
    Ok(())
}

/// What dpkg says is installed in `tree`: (name, arch) → (version, source, source version).
pub fn installed(
    tree: &Path,
) -> Result<BTreeMap<(String, String), (String, String, String)>, StagingError> {
    let admin = tree.join("var/lib/dpkg");
    installed_in(&admin)
}

/// [`installed`] for a dpkg database folder (`…/var/lib/dpkg`, or the factory copy in a
/// Basalt `/usr`).
pub fn installed_in(
    admin: &Path,
) -> Result<BTreeMap<(String, String), (String, String, String)>, StagingError> {
    let mut cmd = DPKG_QUERY.command().map_err(tool_err("dpkg-query"))?;
    cmd.arg(format!("--admindir={}", admin.display()))
        .arg("-W")
        .arg("-f=${db:Status-Status}\t${Package}\t${Version}\t${Architecture}\t${source:Package}\t${source:Version}\n");
    let out = DPKG_QUERY.run(&mut cmd).map_err(tool_err("dpkg-query"))?;
    let mut map = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let f: Vec<&str> = line.split('\t').collect();
        let [status, name, version, arch, src, src_version] = f[..] else {
            return Err(StagingError::Parse {
                path: admin.to_owned(),
                what: format!("dpkg-query line {line:?}"),
            });
        };
        if status != "installed" {
            continue;
        }
        map.insert(
            (name.to_owned(), arch.to_owned()),
            (version.to_owned(), src.to_owned(), src_version.to_owned()),
        );
    }
    Ok(map)
}

/// Check the tree against the resolution and the .deb hashes; the verified package facts.
fn verify(
    resolved: &[ResolvedPackage],
    tree: &Path,
    debs: &Path,
) -> Result<Vec<StagedPackage>, StagingError> {
    let installed = installed(tree)?;
    let mut diff = Vec::new();
    for p in resolved {
        match installed.get(&(p.name.clone(), p.arch.clone())) {
            None => diff.push(format!("-{} {}", p.name, p.version)),
            Some((v, _, _)) if *v != p.version => {
                diff.push(format!("{} {} (resolved {})", p.name, v, p.version))
            }
            Some(_) => {}
        }
    }
    for ((name, arch), (version, _, _)) in &installed {
        if !resolved.iter().any(|p| &p.name == name && &p.arch == arch) {
            diff.push(format!("+{name} {version}"));
        }
    }
    if !diff.is_empty() {
        return Err(StagingError::InstalledDiffers {
            tree: tree.to_owned(),
            diff: diff.join(", "),
        });
    }
    let text = fs::read_to_string(debs).map_err(io("read", debs))?;
    let mut hashes = BTreeMap::new();
    for line in text.lines() {
        let (hash, file) = line.split_once("  ").ok_or_else(|| StagingError::Parse {
            path: debs.to_owned(),
            what: format!("sha256sum line {line:?}"),
        })?;
        hashes.insert(file.trim().to_owned(), hash.to_ascii_lowercase());
    }
    let mut out = Vec::with_capacity(resolved.len());
    for p in resolved {
        let file = p.deb_file_name();
        let Some(found) = hashes.get(&file) else {
            return Err(StagingError::DebMissing {
                package: p.name.clone(),
                version: p.version.clone(),
                file,
                list: debs.to_owned(),
            });
        };
        if *found != p.sha256 {
            return Err(StagingError::DebHash {
                package: p.name.clone(),
                version: p.version.clone(),
                found: found.clone(),
                expected: p.sha256.clone(),
            });
        }
        // dpkg's own record of the source wins over the index's (they agree in practice).
        let (_, src, src_version) = &installed[&(p.name.clone(), p.arch.clone())];
        out.push(StagedPackage {
            name: p.name.clone(),
            version: p.version.clone(),
            arch: p.arch.clone(),
            sha256: p.sha256.clone(),
            size: p.size,
            uri: p.uri.clone(),
            source: src.clone(),
            source_version: src_version.clone(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkg(name: &str, version: &str, sha: char) -> ResolvedPackage {
        ResolvedPackage {
            name: name.into(),
            version: version.into(),
            arch: "amd64".into(),
            sha256: sha.to_string().repeat(64),
            size: 1,
            uri: format!("http://m/{name}.deb"),
            source: name.into(),
            source_version: version.into(),
        }
    }

    #[test]
    fn the_key_follows_every_version_and_hash() {
        let a = [pkg("libc6", "2.36-9", 'a'), pkg("systemd", "252.1", 'b')];
        let include = ["systemd".to_owned()];
        let req = |resolved| StagingRequest {
            cache: Path::new("/c"),
            suite: "bookworm",
            include: &include,
            resolved,
            sources: "deb x",
        };
        let k = staging_key(&req(&a), "mmdebstrap 1.3.5");
        assert_eq!(k, staging_key(&req(&a), "mmdebstrap 1.3.5"));
        let newer = [
            pkg("libc6", "2.36-9+deb12u1", 'a'),
            pkg("systemd", "252.1", 'b'),
        ];
        assert_ne!(k, staging_key(&req(&newer), "mmdebstrap 1.3.5"));
        let rebuilt = [pkg("libc6", "2.36-9", 'c'), pkg("systemd", "252.1", 'b')];
        assert_ne!(k, staging_key(&req(&rebuilt), "mmdebstrap 1.3.5"));
        assert_ne!(k, staging_key(&req(&a), "mmdebstrap 1.4"));
        // The mirror (sources) is not part of the key: the bytes are pinned by their hashes.
        let other = StagingRequest {
            sources: "deb y",
            ..req(&a)
        };
        assert_eq!(k, staging_key(&other, "mmdebstrap 1.3.5"));
    }

    #[test]
    fn shell_quoting_survives_quotes() {
        assert_eq!(shell_quote(Path::new("/a b/c")), "'/a b/c'");
        assert_eq!(shell_quote(Path::new("/a'b")), "'/a'\\''b'");
    }
}
