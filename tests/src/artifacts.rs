//! Built inputs the scenarios share, each made once per process and cached across runs:
//! the static `basalt-init` ([`basalt_init`]), the `basalt` CLI ([`basalt_cli`]), fixed
//! test signing keys with their trust root ([`test_keys`]) and the `minimal` images
//! ([`minimal_image`]: one per version, built by `basalt_image::build` into its input-hash
//! cache, so a second run only copies files) and the `container-host` images of
//! `image/definitions/container-host.toml` ([`container_host`]: product or test variant, any
//! version).
//!
//! Concurrency: a process-wide mutex per artifact makes parallel tests of one binary wait for
//! the first builder; across processes, cargo's own lock (for the binaries) and the image
//! cache's per-key `flock` do the same.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use basalt_image::build::image::copy_sparse;
use basalt_image::build::workspace::{find_or_build_init, Program};
use basalt_image::build::{build, build_with_progress, BuildReport, BuildRequest, Variant};
use basalt_manifest::{sign_trust_root, SigningKey, TrustRootDocument};

use crate::error::{Error, Result};
use crate::tool::{Tool, CARGO};

/// The target triple basalt-init is built for (static glibc; the musl target is absent).
pub use basalt_image::build::workspace::INIT_TARGET;

static INIT: Mutex<Option<Program>> = Mutex::new(None);
static CLI: Mutex<Option<PathBuf>> = Mutex::new(None);
static KEYS: Mutex<Option<TestKeys>> = Mutex::new(None);
static IMAGES: Mutex<Option<HashMap<String, MinimalImage>>> = Mutex::new(None);
static CONTAINER_HOST: Mutex<Option<HashMap<String, MinimalImage>>> = Mutex::new(None);

/// The static, stripped `basalt-init` (release), built by the image library's own finder
/// (`basalt_image::build::workspace::find_or_build_init`: cargo into
/// `<workspace>/build/target-init`, its own target folder, so it never waits for the test
/// build's lock), with the git revision it was built from. Cargo makes a repeated call a
/// quick no-op.
pub fn basalt_init_program() -> Result<Program> {
    let mut done = INIT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(program) = done.as_ref() {
        return Ok(program.clone());
    }
    let ws = crate::workspace_root();
    let program = find_or_build_init(None, &ws, &ws.join("basalt"), &mut |_| {})
        .map_err(|e| Error::Build(e.into()))?;
    *done = Some(program.clone());
    Ok(program)
}

/// The path of [`basalt_init_program`].
pub fn basalt_init() -> Result<PathBuf> {
    Ok(basalt_init_program()?.path)
}

/// Names the folder holding the workspace's freshly built debug binaries (`basalt`,
/// `basalt-rollout`): set by `cargo xtask test`, whose `cargo test --workspace` build makes
/// them (a package's integration tests need its binaries) before any test runs. Unset (a
/// single `cargo test -p basalt-tests …`), the scenarios build what they need themselves.
pub const PREBUILT_BIN_DIR_ENV: &str = "BASALT_TEST_BIN_DIR";

/// `name` from [`PREBUILT_BIN_DIR_ENV`]'s folder, when that is set and holds it.
pub fn prebuilt(name: &str) -> Option<PathBuf> {
    let dir = std::env::var_os(PREBUILT_BIN_DIR_ENV)?;
    let path = PathBuf::from(dir).join(name);
    path.is_file().then_some(path)
}

/// The `basalt` CLI (debug): the workspace's own build ([`prebuilt`]) or else built into
/// `<workspace>/build/target-cli`. Its own target folder: building one binary of
/// `basalt-image` in the test build's folder unifies dependency features differently and
/// would make the next `cargo test` rebuild half the workspace.
pub fn basalt_cli() -> Result<PathBuf> {
    let mut done = CLI.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(path) = done.as_ref() {
        return Ok(path.clone());
    }
    if let Some(path) = prebuilt("basalt") {
        *done = Some(path.clone());
        return Ok(path);
    }
    let target_dir = crate::workspace_root().join("build").join("target-cli");
    let mut cmd = CARGO.command()?;
    cmd.current_dir(crate::workspace_root())
        .env("CARGO_TARGET_DIR", &target_dir)
        .args(["build", "--quiet", "-p", "basalt-image", "--bin", "basalt"]);
    CARGO.run(&mut cmd)?;
    let path = target_dir.join("debug").join("basalt");
    *done = Some(path.clone());
    Ok(path)
}

/// Fixed signing keys and their trust root, as files. Fixed (from constant seeds) so image
/// cache keys stay the same from run to run; test-only, never for a real release.
#[derive(Debug, Clone)]
pub struct TestKeys {
    /// The private key file (`release.key`).
    pub key: PathBuf,
    /// The public key file (`release.pub`).
    pub public: PathBuf,
    /// The generation-1 trust root (threshold 1, this key), `trust.json`.
    pub trust: PathBuf,
}

/// Write (once) the test key files under `<workspace>/build/cache/test-keys`.
pub fn test_keys() -> Result<TestKeys> {
    let mut done = KEYS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(keys) = done.as_ref() {
        return Ok(keys.clone());
    }
    let dir = crate::cache_root().join("test-keys");
    fs::create_dir_all(&dir).map_err(|source| Error::CreateDir {
        path: dir.clone(),
        source,
    })?;
    let key = SigningKey::from_seed(&[0x5a; 32]).map_err(Error::Manifest)?;
    let doc = TrustRootDocument::new(1, 1, &[key.public_key()], None);
    let trust = sign_trust_root(&doc, &[&key]).map_err(Error::Manifest)?;
    let keys = TestKeys {
        key: dir.join("release.key"),
        public: dir.join("release.pub"),
        trust: dir.join("trust.json"),
    };
    for (path, bytes) in [
        (&keys.key, key.to_pem().into_bytes()),
        (&keys.public, key.public_key().to_pem().into_bytes()),
        (&keys.trust, trust),
    ] {
        write_if_changed(path, &bytes)?;
    }
    *done = Some(keys.clone());
    Ok(keys)
}

/// Writes `bytes` to `path` unless it already holds them (`basalt_fsutil::write_atomic`, so
/// a reader in another process never sees half a file).
pub(crate) fn write_if_changed(path: &Path, bytes: &[u8]) -> Result<()> {
    if fs::read(path).ok().as_deref() == Some(bytes) {
        return Ok(());
    }
    basalt_fsutil::write_atomic(path, bytes, 0o644).map_err(|e| Error::WriteFile {
        path: e.path,
        source: e.source,
    })
}

/// The image definition of the test `minimal` image of `version` (release sequence = major).
pub fn minimal_definition(version: &semver::Version) -> String {
    format!(
        "profile = \"minimal\"\n\n[os]\nname = \"basalt\"\nversion = \"{version}\"\n\
         channel = \"stable\"\n\n[boot]\ncmdline = \"console=ttyS0\"\ntries = 3\n\n\
         [release]\nsequence = {}\nvalid_days = 365\n",
        version.major.max(1)
    )
}

/// A built `minimal` release directory.
#[derive(Debug, Clone)]
pub struct MinimalImage {
    /// The release directory (usr.img, vmlinuz, initrd.img, release.*, disk.img, build.json).
    pub dir: PathBuf,
    /// The IMAGE.toml it was built from.
    pub definition: PathBuf,
    /// What the build reported (facts, cache folder, whether it was a cache hit).
    pub report: BuildReport,
    /// The keys it is signed with.
    pub keys: TestKeys,
}

impl MinimalImage {
    /// A file of the release directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A private copy of `disk.img` at `to` (sparse), for a scenario that boots and changes it.
    pub fn copy_disk(&self, to: &Path) -> Result<()> {
        copy_sparse(&self.file("disk.img"), to).map_err(Error::Build)
    }
}

/// The request that builds the test `minimal` image of `version` into `out`.
pub fn minimal_request(version: &semver::Version, out: &Path) -> Result<BuildRequest> {
    let keys = test_keys()?;
    let root = crate::workspace_root()
        .join("build")
        .join("test-images")
        .join(format!("minimal-{version}"));
    fs::create_dir_all(&root).map_err(|source| Error::CreateDir {
        path: root.clone(),
        source,
    })?;
    let definition = root.join("IMAGE.toml");
    write_if_changed(&definition, minimal_definition(version).as_bytes())?;
    let init = basalt_init_program()?;
    let mut req = BuildRequest::new(
        definition,
        vec![keys.key],
        keys.trust,
        init.path,
        out.to_path_buf(),
    );
    req.init_revision = init.revision;
    Ok(req)
}

/// The test `minimal` image of `version` (e.g. "1.0.0", "2.0.0"), built once per process into
/// `<workspace>/build/test-images/minimal-<version>/out` (from the image cache when the inputs
/// were built before). Treat its files as read-only; copy `disk.img` to boot it.
pub fn minimal_image(version: &str) -> Result<MinimalImage> {
    let parsed = semver::Version::parse(version).map_err(|e| Error::VmConfig {
        problem: format!("image version {version:?}: {e}"),
    })?;
    let mut images = IMAGES.lock().unwrap_or_else(|e| e.into_inner());
    let images = images.get_or_insert_with(HashMap::new);
    if let Some(image) = images.get(version) {
        return Ok(image.clone());
    }
    let out = crate::workspace_root()
        .join("build")
        .join("test-images")
        .join(format!("minimal-{version}"))
        .join("out");
    let req = minimal_request(&parsed, &out)?;
    let report = build(&req)?;
    let image = MinimalImage {
        dir: out,
        definition: req.config.clone(),
        report,
        keys: test_keys()?,
    };
    images.insert(version.to_string(), image.clone());
    Ok(image)
}

/// The product image definition, `image/definitions/container-host.toml`.
pub fn container_host_definition() -> PathBuf {
    crate::workspace_root()
        .join("image")
        .join("definitions")
        .join("container-host.toml")
}

/// The request that builds `variant` of the container-host definition at `version` (release
/// sequence = major version) into `out`, with the test keys.
pub fn container_host_request(
    variant: Variant,
    version: &semver::Version,
    out: &Path,
) -> Result<BuildRequest> {
    let keys = test_keys()?;
    let init = basalt_init_program()?;
    let mut req = BuildRequest::new(
        container_host_definition(),
        vec![keys.key],
        keys.trust,
        init.path,
        out.to_path_buf(),
    );
    req.init_revision = init.revision;
    req.variant = variant;
    req.version = Some(version.clone());
    req.sequence = Some(version.major.max(1));
    Ok(req)
}

/// `variant` of the container-host image ([`container_host_definition`]) at `version`
/// (e.g. "1.0.0", "2.0.0"; release sequence = major), built once per process with the test
/// keys into `<workspace>/build/test-images/container-host-<variant>-<version>/out`. Every
/// version and both variants share one Debian staging (mmdebstrap runs once per resolved
/// package set, ≈1 min; the build after it ≈1 min; a cache hit copies files and re-signs).
/// The [`Variant::Test`] image has the boot report and a root shell on ttyS0
/// ([`crate::vm::Vm::shell`]); the product has neither. Treat its files as read-only.
pub fn container_host(variant: Variant, version: &str) -> Result<MinimalImage> {
    container_host_with_progress(variant, version, &mut |_| {})
}

/// [`container_host`], telling `log` about the build's slow steps as they start (cargo
/// builds, apt, mmdebstrap, erofs): the demo shows them, so a first run that takes minutes
/// says what it is doing.
pub fn container_host_with_progress(
    variant: Variant,
    version: &str,
    log: &mut dyn FnMut(&str),
) -> Result<MinimalImage> {
    let parsed = semver::Version::parse(version).map_err(|e| Error::VmConfig {
        problem: format!("image version {version:?}: {e}"),
    })?;
    let mut images = CONTAINER_HOST.lock().unwrap_or_else(|e| e.into_inner());
    let images = images.get_or_insert_with(HashMap::new);
    let name = format!("container-host-{}-{version}", variant.as_str());
    if let Some(image) = images.get(&name) {
        return Ok(image.clone());
    }
    let out = crate::workspace_root()
        .join("build")
        .join("test-images")
        .join(&name)
        .join("out");
    let req = container_host_request(variant, &parsed, &out)?;
    let report = build_with_progress(&req, log)?;
    let image = MinimalImage {
        dir: out,
        definition: req.config,
        report,
        keys: test_keys()?,
    };
    images.insert(name, image.clone());
    Ok(image)
}

/// The product container-host image 1.0.0 ([`container_host`]).
pub fn container_host_image() -> Result<MinimalImage> {
    container_host(Variant::Product, "1.0.0")
}

/// The test container-host image 1.0.0 ([`container_host`]).
pub fn container_host_test_image() -> Result<MinimalImage> {
    container_host(Variant::Test, "1.0.0")
}

/// Append `option` to the `options` line of every boot entry on the ESP of the disk image
/// `disk` (a private copy: the image's signed parts are untouched, only the ESP changes).
/// Returns the entry files changed. How a test switches on an inert test hook such as
/// `basalt.test=report` without building a second image.
pub fn add_kernel_option(disk: &Path, option: &str) -> Result<Vec<String>> {
    use basalt_disk::{Esp, FatImageEsp, Inventory};
    let disk_err = |source| Error::Disk {
        path: disk.to_path_buf(),
        source,
    };
    let inv = Inventory::read_path(disk, None).map_err(disk_err)?;
    let mut esp = FatImageEsp::open(disk, inv.esp.offset, inv.esp.size).map_err(disk_err)?;
    let dir = "loader/entries";
    let entries = esp.list(dir).map_err(disk_err)?.unwrap_or_default();
    let mut changed = Vec::new();
    for entry in entries {
        if entry.is_dir || !entry.name.ends_with(".conf") {
            continue;
        }
        let path = format!("{dir}/{}", entry.name);
        let text = String::from_utf8_lossy(&esp.read(&path).map_err(disk_err)?).into_owned();
        let mut out = String::new();
        for line in text.lines() {
            let is_options = line.split_whitespace().next() == Some("options");
            if is_options && !line.split_whitespace().any(|o| o == option) {
                out.push_str(&format!("{line} {option}\n"));
            } else {
                out.push_str(line);
                out.push('\n');
            }
        }
        if out != text {
            esp.write_atomic(&path, out.as_bytes()).map_err(disk_err)?;
            changed.push(path);
        }
    }
    Ok(changed)
}

/// `python3` with the venv module (Debian packages `python3`, `python3-venv`).
pub const PYTHON3: Tool = Tool::new("python3", "python3-venv");
/// The SPDX validator the SBOM tests run: spdx/tools-python, the SPDX project's own parser
/// and validator, pinned (installed with pip into a private venv, not the system).
pub const SPDX_TOOLS: &str = "spdx-tools==0.8.5";

/// Check an SPDX document with `pyspdxtools -i FILE` (parse + validate against the SPDX 2.3
/// specification). The validator lives in `<workspace>/build/cache/spdx-tools` (a venv made
/// once with pip; a missing `python3-venv` fails naming the package).
pub fn spdx_validate(document: &Path) -> Result<String> {
    let venv = crate::cache_root().join("spdx-tools");
    let tool = venv.join("bin").join("pyspdxtools");
    // A venv cannot be moved (its scripts name its path): made in place, then marked done.
    let done = venv.join(".complete");
    if !done.is_file() {
        fs::create_dir_all(crate::cache_root()).map_err(|source| Error::CreateDir {
            path: crate::cache_root(),
            source,
        })?;
        let lock_path = crate::cache_root().join(".spdx-tools.lock");
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|source| Error::WriteFile {
                path: lock_path.clone(),
                source,
            })?;
        // SAFETY: flock on a descriptor we own, held until `lock` is dropped.
        unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) };
        if !done.is_file() {
            if venv.exists() {
                fs::remove_dir_all(&venv).map_err(|source| Error::Remove {
                    path: venv.clone(),
                    source,
                })?;
            }
            let mut cmd = PYTHON3.command()?;
            cmd.arg("-m").arg("venv").arg(&venv);
            PYTHON3.run(&mut cmd)?;
            let pip = Tool::new("pip", "python3-venv");
            let mut cmd = std::process::Command::new(venv.join("bin").join("pip"));
            cmd.args(["install", "-q", SPDX_TOOLS]);
            pip.run(&mut cmd)?;
            fs::write(&done, SPDX_TOOLS).map_err(|source| Error::WriteFile {
                path: done.clone(),
                source,
            })?;
        }
        drop(lock);
    }
    let validator = Tool::new("pyspdxtools", "spdx-tools (pip, in build/cache/spdx-tools)");
    let mut cmd = std::process::Command::new(&tool);
    cmd.arg("-i").arg(document);
    let out = validator.run(&mut cmd)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}
