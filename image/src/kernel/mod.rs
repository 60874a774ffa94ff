//! The Debian kernel Basalt boots: fetched once with apt, unpacked, depmod'ed and cached for
//! every image build and test. (The test harness `basalt-tests` re-exports this module.)
//!
//! Steps, all with the system tools (nothing is installed into the host):
//! `apt-cache depends linux-image-amd64` names the current image package
//! (`linux-image-6.1.0-NN-amd64`) → `apt-get download` (≈70 MB) → `dpkg-deb -x` → `depmod -b`
//! (the .deb ships no `modules.dep`) → the uncompressed `vmlinux` is cut out of the bzImage (the
//! xz stream starting at the magic `FD 37 7A 58 5A 00`, decompressed with
//! `xz -dc --single-stream`) and checked to be an ELF64 with a PVH entry note, because QEMU
//! boots that directly ≈2× faster than the bzImage.
//!
//! Cache layout: `<cache>/<package>/` appears only complete, by an atomic rename of a finished
//! `<cache>/.fetch-*` folder; an exclusive `flock` on `<cache>/.lock` makes concurrent test
//! processes (and threads) fetch at most once. The `.deb` is deleted once unpacked, and trees of
//! superseded kernel packages are removed when a new one is in place.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Stdio;

pub mod elf;
mod error;

pub use basalt_initramfs::modules::ModulesDep;
pub use error::{KernelError, Result};

use crate::tool::{APT_CACHE, APT_GET, DEPMOD, DPKG_DEB, TAR, XZ};
use elf::Elf64;
use error::KernelError as Error;

/// The Debian meta package that depends on the current kernel image package.
pub const META_PACKAGE: &str = "linux-image-amd64";
/// The xz stream magic (`FD 37 7A 58 5A 00`), the start of the payload inside the bzImage.
const XZ_MAGIC: [u8; 6] = [0xfd, b'7', b'z', b'X', b'Z', 0x00];
/// Environment variable overriding the cache folder.
pub const CACHE_ENV: &str = "BASALT_KERNEL_CACHE";

/// What the kernel `.deb` was, as apt fetched it (for the release's SBOM): kept next to the
/// tree as `<cache>/<package>.deb.json`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DebFacts {
    pub name: String,
    pub version: String,
    pub arch: String,
    pub source: String,
    pub source_version: String,
    /// SHA-256 of the `.deb` file apt downloaded (and checked against the signed index).
    pub sha256: String,
}

fn deb_facts_path(cache_dir: &Path, package: &str) -> PathBuf {
    cache_dir.join(format!("{package}.deb.json"))
}

fn write_facts(path: &Path, facts: &DebFacts) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(facts).map_err(|e| Error::WriteFile {
        path: path.to_path_buf(),
        source: e.into(),
    })?;
    basalt_fsutil::write_atomic(path, &bytes, 0o644).map_err(|e| Error::WriteFile {
        path: e.path,
        source: e.source,
    })
}

/// An unpacked, depmod'ed Debian kernel package with its uncompressed `vmlinux`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelTree {
    /// The Debian package, e.g. `linux-image-6.1.0-57-amd64`.
    pub package: String,
    /// The kernel release (`uname -r`), e.g. `6.1.0-57-amd64`.
    pub version: String,
    /// The unpacked package root (holds `boot/` and `lib/modules/`).
    pub root: PathBuf,
    /// `boot/vmlinuz-VER`: the bzImage with EFI stub (what systemd-boot starts).
    pub vmlinuz: PathBuf,
    /// The uncompressed ELF kernel, bootable by QEMU through its PVH entry.
    pub vmlinux: PathBuf,
    /// `lib/modules/VER`, with `modules.dep` generated.
    pub modules_dir: PathBuf,
    /// `boot/System.map-VER`.
    pub system_map: PathBuf,
}

impl KernelTree {
    /// The default cache: `$BASALT_KERNEL_CACHE`, else `<workspace>/build/cache/kernel`.
    pub fn default_cache_dir() -> PathBuf {
        std::env::var_os(CACHE_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| crate::cache_root().join("kernel"))
    }

    /// The current Debian kernel from the default cache, fetching it on first use.
    pub fn shared() -> Result<Self> {
        Self::fetch_or_cached(&Self::default_cache_dir())
    }

    /// The current Debian kernel (as named by apt's package lists) from `cache_dir`, fetched
    /// and prepared there first if absent. Safe to call from many threads and processes.
    pub fn fetch_or_cached(cache_dir: &Path) -> Result<Self> {
        let package = current_package_cached(cache_dir)?;
        let final_dir = cache_dir.join(&package);
        if let Ok(tree) = Self::open(&package, &final_dir) {
            return Ok(tree);
        }
        fs::create_dir_all(cache_dir).map_err(|source| Error::CreateDir {
            path: cache_dir.to_path_buf(),
            source,
        })?;
        let _lock = CacheLock::acquire(&cache_dir.join(".lock"))?;
        // Another process may have finished while we waited for the lock.
        if let Ok(tree) = Self::open(&package, &final_dir) {
            return Ok(tree);
        }
        remove_stale(cache_dir, &final_dir)?;
        let work = tempfile::Builder::new()
            .prefix(".fetch-")
            .tempdir_in(cache_dir)
            .map_err(|source| Error::CreateDir {
                path: cache_dir.to_path_buf(),
                source,
            })?;
        let facts = prepare(&package, work.path())?;
        let staged = work.keep();
        fs::rename(&staged, &final_dir).map_err(|source| Error::Rename {
            from: staged.clone(),
            to: final_dir.clone(),
            source,
        })?;
        write_facts(&deb_facts_path(cache_dir, &package), &facts)?;
        remove_superseded(cache_dir, &package)?;
        Self::open(&package, &final_dir)
    }

    /// Opens an already prepared tree of `package` at `root`, checking every part is there.
    pub fn open(package: &str, root: &Path) -> Result<Self> {
        let invalid = |problem: String| Error::KernelTreeInvalid {
            package: package.to_string(),
            dir: root.to_path_buf(),
            problem,
        };
        let version = kernel_release(root).map_err(invalid)?;
        let tree = Self {
            package: package.to_string(),
            root: root.to_path_buf(),
            vmlinuz: root.join("boot").join(format!("vmlinuz-{version}")),
            vmlinux: root.join("vmlinux"),
            modules_dir: root.join("lib/modules").join(&version),
            system_map: root.join("boot").join(format!("System.map-{version}")),
            version,
        };
        for part in [
            &tree.vmlinuz,
            &tree.vmlinux,
            &tree.system_map,
            &tree.modules_dir.join("modules.dep"),
        ] {
            if !part.is_file() {
                return Err(invalid(format!("{} is missing", part.display())));
            }
        }
        Ok(tree)
    }

    /// What the `.deb` of this tree was ([`DebFacts`]). Trees fetched before these facts
    /// were kept get them now: the `.deb` is downloaded again (apt checks it against the
    /// signed index), its kernel compared with the tree's `vmlinuz` byte for byte (a
    /// different upload of the same package name is refused), hashed, and recorded.
    pub fn deb_facts(&self) -> Result<DebFacts> {
        let cache_dir = self.root.parent().unwrap_or(Path::new("/")).to_path_buf();
        let path = deb_facts_path(&cache_dir, &self.package);
        let read = |path: &Path| -> Option<DebFacts> {
            serde_json::from_slice(&fs::read(path).ok()?).ok()
        };
        if let Some(facts) = read(&path) {
            return Ok(facts);
        }
        let _lock = CacheLock::acquire(&cache_dir.join(".lock"))?;
        if let Some(facts) = read(&path) {
            return Ok(facts);
        }
        let work = tempfile::Builder::new()
            .prefix(".deb-")
            .tempdir_in(&cache_dir)
            .map_err(|source| Error::CreateDir {
                path: cache_dir.clone(),
                source,
            })?;
        let mut download = APT_GET.command()?;
        download.current_dir(work.path()).args([
            "download",
            "-q",
            "-o",
            "APT::Sandbox::User=root",
            &self.package,
        ]);
        APT_GET
            .run(&mut download)
            .map_err(|e| Error::KernelDownload {
                package: self.package.clone(),
                dir: work.path().to_path_buf(),
                source: e,
            })?;
        let deb = find_deb(work.path(), &self.package)?;
        let facts = read_deb_facts(&deb)?;
        let member = format!("./boot/vmlinuz-{}", self.version);
        let inside = deb_member_sha256(&deb, &member)?;
        let ours = file_sha256(&self.vmlinuz)?;
        if inside != ours {
            return Err(Error::KernelTreeInvalid {
                package: self.package.clone(),
                dir: self.root.clone(),
                problem: format!(
                    "the archive's {} {} has another kernel than the cached tree (sha256 {inside} vs {ours}): remove the cached tree to fetch the new upload",
                    facts.name, facts.version
                ),
            });
        }
        write_facts(&path, &facts)?;
        Ok(facts)
    }

    /// The parsed `modules.dep` (and `modules.builtin`) of this kernel: the resolver of
    /// `basalt-initramfs`, the one implementation of module dependency order.
    pub fn modules_dep(&self) -> Result<ModulesDep> {
        ModulesDep::load(&self.modules_dir).map_err(|source| Error::ModulesDep {
            dir: self.modules_dir.clone(),
            source,
        })
    }

    /// The module files (relative to [`KernelTree::modules_dir`]) to load, in order, for
    /// `names` (`-` and `_` equivalent), dependencies first, each once.
    pub fn load_order(&self, names: &[&str]) -> Result<Vec<String>> {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let resolution =
            self.modules_dep()?
                .resolve(&names, &[])
                .map_err(|source| Error::ModulesDep {
                    dir: self.modules_dir.clone(),
                    source,
                })?;
        Ok(resolution.modules.into_iter().map(|m| m.path).collect())
    }
}

/// The kernel image package the meta package currently depends on.
pub fn current_package() -> Result<String> {
    let mut cmd = APT_CACHE.command()?;
    cmd.args(["depends", META_PACKAGE]);
    let output = APT_CACHE.run(&mut cmd)?;
    let text = String::from_utf8_lossy(&output.stdout);
    parse_depends(&text).ok_or_else(|| Error::KernelPackageUnknown {
        meta: META_PACKAGE,
        output: text.trim().to_string(),
    })
}

/// Where apt keeps its package lists: their folder's mtime changes on every `apt-get update`
/// that changes a list (apt renames the new files into place).
const APT_LISTS: &str = "/var/lib/apt/lists";
/// File in the cache folder remembering apt's answer: `<lists mtime ns>\n<package>\n`.
const CURRENT_FILE: &str = ".current-package";

/// [`current_package`], remembered in `cache_dir` until apt's package lists change: asking
/// `apt-cache` costs ≈1 s, which would dominate a cached image build.
pub fn current_package_cached(cache_dir: &Path) -> Result<String> {
    let stamp = fs::metadata(APT_LISTS)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos().to_string());
    let record = cache_dir.join(CURRENT_FILE);
    if let (Some(stamp), Ok(text)) = (&stamp, fs::read_to_string(&record)) {
        let mut lines = text.lines();
        if lines.next() == Some(stamp.as_str()) {
            if let Some(pkg) = lines.next().filter(|p| p.starts_with("linux-image-")) {
                return Ok(pkg.to_string());
            }
        }
    }
    let package = current_package()?;
    if let Some(stamp) = stamp {
        // Best effort: a failed write only costs the next caller another apt-cache run.
        if fs::create_dir_all(cache_dir).is_ok() {
            let tmp = cache_dir.join(format!("{CURRENT_FILE}.{}", std::process::id()));
            if fs::write(&tmp, format!("{stamp}\n{package}\n")).is_ok() {
                let _ = fs::rename(&tmp, &record);
            }
        }
    }
    Ok(package)
}

/// Picks `linux-image-…` from `apt-cache depends` output (`  Depends: linux-image-6.1.0-57-amd64`).
fn parse_depends(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("Depends:"))
        .map(str::trim)
        .find(|pkg| pkg.starts_with("linux-image-") && !pkg.contains(['<', ' ']))
        .map(str::to_string)
}

/// The single folder name under `lib/modules`: the kernel release. The error is the problem,
/// for [`Error::KernelTreeInvalid`].
fn kernel_release(root: &Path) -> Result<String, String> {
    let dir = root.join("lib/modules");
    let entries = fs::read_dir(&dir).map_err(|e| format!("reading {}: {e}", dir.display()))?;
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    match names.len() {
        1 => Ok(names.remove(0)),
        n => Err(format!(
            "expected one kernel release folder in {}, found {n}: {names:?}",
            dir.display()
        )),
    }
}

/// Downloads, unpacks, depmods `package` into the empty folder `work`, and writes `vmlinux`;
/// returns what the `.deb` was (for the SBOM).
fn prepare(package: &str, work: &Path) -> Result<DebFacts> {
    let mut download = APT_GET.command()?;
    // The sandbox user `_apt` cannot write into our private temp folder; downloading as root
    // is what apt falls back to anyway (with a warning).
    download
        .current_dir(work)
        .args(["download", "-q", "-o", "APT::Sandbox::User=root", package]);
    APT_GET
        .run(&mut download)
        .map_err(|e| Error::KernelDownload {
            package: package.to_string(),
            dir: work.to_path_buf(),
            source: e,
        })?;
    let deb = find_deb(work, package)?;
    let facts = read_deb_facts(&deb)?;
    let mut extract = DPKG_DEB.command()?;
    extract.arg("-x").arg(&deb).arg(work);
    DPKG_DEB.run(&mut extract)?;
    fs::remove_file(&deb).map_err(|source| Error::Remove {
        path: deb.clone(),
        source,
    })?;
    let version = kernel_release(work).map_err(|problem| Error::KernelTreeInvalid {
        package: package.to_string(),
        dir: work.to_path_buf(),
        problem,
    })?;
    let mut depmod = DEPMOD.command()?;
    depmod
        .arg("-b")
        .arg(work)
        .arg("-F")
        .arg(work.join("boot").join(format!("System.map-{version}")))
        .arg(&version);
    DEPMOD.run(&mut depmod)?;
    extract_vmlinux(
        &work.join("boot").join(format!("vmlinuz-{version}")),
        &work.join("vmlinux"),
    )?;
    Ok(facts)
}

/// The control fields and SHA-256 of a `.deb`.
fn read_deb_facts(deb: &Path) -> Result<DebFacts> {
    let mut cmd = DPKG_DEB.command()?;
    cmd.arg("-f")
        .arg(deb)
        .args(["Package", "Version", "Architecture", "Source"]);
    let out = DPKG_DEB.run(&mut cmd)?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .map(|v| v.trim().to_owned())
    };
    let invalid = |problem: String| Error::KernelTreeInvalid {
        package: deb.display().to_string(),
        dir: deb.parent().map(Path::to_path_buf).unwrap_or_default(),
        problem,
    };
    let name = field("Package").ok_or_else(|| invalid("the .deb has no Package field".into()))?;
    let version =
        field("Version").ok_or_else(|| invalid("the .deb has no Version field".into()))?;
    let arch = field("Architecture").unwrap_or_else(|| "amd64".into());
    // `Source: linux-signed-amd64 (6.1.158+1)`; absent: the package is its own source.
    let (source, source_version) = match field("Source") {
        None => (name.clone(), version.clone()),
        Some(s) => match s.split_once(' ') {
            Some((n, v)) => (
                n.to_owned(),
                v.trim_matches(|c| c == '(' || c == ')' || c == ' ')
                    .to_owned(),
            ),
            None => (s, version.clone()),
        },
    };
    let mut file = File::open(deb).map_err(|source| Error::ReadFile {
        path: deb.to_path_buf(),
        source,
    })?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|source| Error::ReadFile {
            path: deb.to_path_buf(),
            source,
        })?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(DebFacts {
        name,
        version,
        arch,
        source,
        source_version,
        sha256: hex::encode(ctx.finish().as_ref()),
    })
}

fn file_sha256(path: &Path) -> Result<String> {
    let mut file = File::open(path).map_err(|source| Error::ReadFile {
        path: path.to_path_buf(),
        source,
    })?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|source| Error::ReadFile {
            path: path.to_path_buf(),
            source,
        })?;
        if n == 0 {
            return Ok(hex::encode(ctx.finish().as_ref()));
        }
        ctx.update(&buf[..n]);
    }
}

/// SHA-256 of one file inside a `.deb` (`dpkg-deb --fsys-tarfile | tar -xO MEMBER`).
fn deb_member_sha256(deb: &Path, member: &str) -> Result<String> {
    let mut fsys = DPKG_DEB.command()?;
    fsys.arg("--fsys-tarfile").arg(deb).stdout(Stdio::piped());
    let mut child = fsys
        .spawn()
        .map_err(|source| crate::tool::ToolError::Spawn {
            tool: DPKG_DEB.name,
            source,
        })?;
    let stdout = child.stdout.take();
    let mut tar = TAR.command()?;
    tar.arg("-xO").arg(member);
    if let Some(stdout) = stdout {
        tar.stdin(Stdio::from(stdout));
    }
    tar.stdout(Stdio::piped());
    let mut reader = tar
        .spawn()
        .map_err(|source| crate::tool::ToolError::Spawn {
            tool: TAR.name,
            source,
        })?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    if let Some(mut out) = reader.stdout.take() {
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = out.read(&mut buf).map_err(|source| Error::ReadFile {
                path: deb.to_path_buf(),
                source,
            })?;
            if n == 0 {
                break;
            }
            ctx.update(&buf[..n]);
        }
    }
    let tar_status = reader.wait().map_err(|source| Error::ReadFile {
        path: deb.to_path_buf(),
        source,
    })?;
    let deb_status = child.wait().map_err(|source| Error::ReadFile {
        path: deb.to_path_buf(),
        source,
    })?;
    if !tar_status.success() || !deb_status.success() {
        return Err(Error::KernelTreeInvalid {
            package: deb.display().to_string(),
            dir: deb.parent().map(Path::to_path_buf).unwrap_or_default(),
            problem: format!(
                "cannot read {member} from the .deb (dpkg-deb {deb_status}, tar {tar_status})"
            ),
        });
    }
    Ok(hex::encode(ctx.finish().as_ref()))
}

fn find_deb(dir: &Path, package: &str) -> Result<PathBuf> {
    let entries = fs::read_dir(dir).map_err(|source| Error::ReadFile {
        path: dir.to_path_buf(),
        source,
    })?;
    entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.extension().is_some_and(|x| x == "deb")
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{package}_")))
        })
        .ok_or_else(|| Error::KernelTreeInvalid {
            package: package.to_string(),
            dir: dir.to_path_buf(),
            problem: "apt-get download left no .deb".to_string(),
        })
}

/// Cuts the uncompressed kernel out of a bzImage: decompresses the xz stream that starts at the
/// first xz magic (`FD 37 7A 58 5A 00`), then checks the result is an ELF64 with a PVH entry note.
pub fn extract_vmlinux(vmlinuz: &Path, out: &Path) -> Result<()> {
    let read_err = |source| Error::ReadFile {
        path: vmlinuz.to_path_buf(),
        source,
    };
    let mut image = Vec::new();
    File::open(vmlinuz)
        .and_then(|mut f| f.read_to_end(&mut image))
        .map_err(read_err)?;
    let offset = find_subslice(&image, &XZ_MAGIC).ok_or_else(|| Error::VmlinuxNoXzStream {
        vmlinuz: vmlinuz.to_path_buf(),
    })?;
    let mut input = File::open(vmlinuz).map_err(read_err)?;
    input
        .seek(SeekFrom::Start(offset as u64))
        .map_err(read_err)?;
    let output = File::create(out).map_err(|source| Error::WriteFile {
        path: out.to_path_buf(),
        source,
    })?;
    // `--single-stream` stops at the end of the first stream and ignores the bzImage bytes
    // that follow it (without it xz reports trailing garbage).
    let mut xz = XZ.command()?;
    xz.args(["-dc", "--single-stream"])
        .stdin(Stdio::from(input))
        .stdout(Stdio::from(output));
    XZ.run(&mut xz)?;
    let mut elf = Elf64::open(out)?;
    if !elf.has_pvh_entry()? {
        return Err(Error::VmlinuxNoPvhEntry {
            vmlinux: out.to_path_buf(),
        });
    }
    Ok(())
}

fn find_subslice(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Removes a half-prepared final folder and leftovers of killed fetches. Called under the lock,
/// so no other fetch is running.
fn remove_stale(cache_dir: &Path, final_dir: &Path) -> Result<()> {
    let mut stale: Vec<PathBuf> = fs::read_dir(cache_dir)
        .map_err(|source| Error::ReadFile {
            path: cache_dir.to_path_buf(),
            source,
        })?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".fetch-"))
        .map(|e| e.path())
        .collect();
    if final_dir.exists() {
        stale.push(final_dir.to_path_buf());
    }
    for path in stale {
        fs::remove_dir_all(&path).map_err(|source| Error::Remove { path, source })?;
    }
    Ok(())
}

/// Removes trees of other kernel packages (≈440 MB each) and their `.deb.json` facts once a
/// newer one is in place; the current package's tree and facts stay. Called under the lock;
/// every caller asks apt for the same current package, so none uses them.
fn remove_superseded(cache_dir: &Path, current: &str) -> Result<()> {
    let current_facts = deb_facts_path(cache_dir, current);
    let old: Vec<PathBuf> = fs::read_dir(cache_dir)
        .map_err(|source| Error::ReadFile {
            path: cache_dir.to_path_buf(),
            source,
        })?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("linux-image-"))
        .map(|e| e.path())
        .filter(|path| path.file_name() != Some(current.as_ref()) && *path != current_facts)
        .collect();
    for path in old {
        // Not following symlinks: a link is removed as the entry it is.
        let removed = if path.symlink_metadata().is_ok_and(|m| m.is_dir()) {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        removed.map_err(|source| Error::Remove { path, source })?;
    }
    Ok(())
}

/// The cache lock, held until drop (see [`crate::lock`]).
#[derive(Debug)]
struct CacheLock {
    _lock: crate::lock::FileLock,
}

impl CacheLock {
    fn acquire(path: &Path) -> Result<Self> {
        crate::lock::FileLock::acquire(path)
            .map(|lock| Self { _lock: lock })
            .map_err(|source| Error::Lock {
                path: path.to_path_buf(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depends_line_is_found() {
        let text = "linux-image-amd64\n  Depends: linux-image-6.1.0-57-amd64\n";
        assert_eq!(
            parse_depends(text).as_deref(),
            Some("linux-image-6.1.0-57-amd64")
        );
        assert_eq!(parse_depends("linux-image-amd64\n"), None);
        assert_eq!(
            parse_depends("  Depends: <linux-image-virtual>\n"),
            None,
            "virtual packages are not downloadable"
        );
    }

    /// Peer: apt-get itself refuses an unknown package; the error names it.
    #[test]
    fn download_failure_names_the_package() {
        let dir = tempfile::tempdir().unwrap();
        let err = prepare("linux-image-basalt-no-such-kernel", dir.path()).unwrap_err();
        assert!(matches!(err, Error::KernelDownload { .. }), "{err}");
        let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
        assert!(
            chain.contains("linux-image-basalt-no-such-kernel"),
            "{chain}"
        );
        assert!(chain.contains("apt-get"), "{chain}");
    }

    #[test]
    fn no_xz_stream_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("vmlinuz");
        fs::write(&fake, b"MZ not a kernel").unwrap();
        let err = extract_vmlinux(&fake, &dir.path().join("vmlinux")).unwrap_err();
        assert!(matches!(err, Error::VmlinuxNoXzStream { .. }), "{err}");
    }

    #[test]
    fn cache_lock_excludes_a_second_holder_until_dropped() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".lock");
        let held = CacheLock::acquire(&path).unwrap();
        let got = Arc::new(AtomicBool::new(false));
        let waiter = {
            let (path, got) = (path.clone(), got.clone());
            std::thread::spawn(move || {
                let _lock = CacheLock::acquire(&path).unwrap();
                got.store(true, Ordering::SeqCst);
            })
        };
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(!got.load(Ordering::SeqCst), "second holder got the lock");
        drop(held);
        waiter.join().unwrap();
        assert!(got.load(Ordering::SeqCst));
    }

    #[test]
    fn superseded_trees_are_removed_and_others_kept() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "linux-image-6.1.0-1-amd64",
            "linux-image-6.1.0-2-amd64",
            "notes",
        ] {
            fs::create_dir(dir.path().join(name)).unwrap();
        }
        for name in [
            "linux-image-6.1.0-1-amd64.deb.json",
            "linux-image-6.1.0-2-amd64.deb.json",
        ] {
            fs::write(dir.path().join(name), "{}").unwrap();
        }
        remove_superseded(dir.path(), "linux-image-6.1.0-2-amd64").unwrap();
        assert!(!dir.path().join("linux-image-6.1.0-1-amd64").exists());
        assert!(!dir
            .path()
            .join("linux-image-6.1.0-1-amd64.deb.json")
            .exists());
        assert!(dir.path().join("linux-image-6.1.0-2-amd64").exists());
        // The current package's facts file (the SBOM's source) is kept: a cold cache once
        // failed here by treating it as a superseded tree.
        assert!(dir
            .path()
            .join("linux-image-6.1.0-2-amd64.deb.json")
            .is_file());
        assert!(dir.path().join("notes").exists());
    }

    #[test]
    fn open_refuses_an_incomplete_tree() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("lib/modules/6.1.0-1-amd64")).unwrap();
        let err = KernelTree::open("linux-image-6.1.0-1-amd64", dir.path()).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }
}
