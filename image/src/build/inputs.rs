//! Everything a build depends on, loaded and checked once, and the cache key over it.
//!
//! The key is a SHA-256 over length-prefixed fields, so that the same inputs give the same key
//! and any change gives another: the builder version, the definition bytes and the request's
//! overrides (version, sequence) and variant, the kernel package and its `.deb` hash,
//! `basalt-init`, the trust root and the public keys, mke2fs; for `minimal` busybox and the
//! init script; for `container-host` the **Debian staging key** (every resolved package
//! name, version, architecture and `.deb` SHA-256: an archive update changes it), the
//! staging code's version, the test hooks; and every `[[files]]` / `[[binaries]]` byte with
//! its destination. What the key does not cover is what is signed per request (the manifest's
//! times and sequence, the SBOM): a cache hit is re-signed, never handed back.

use std::fs;
use std::path::{Path, PathBuf};

use basalt_manifest::{SigningKey, TrustRoot};

use super::apt::{AptEnv, ResolvedPackage};
use super::config::{ImageConfig, ListedPackage, Profile};
use super::debian::{self, StagingRequest};
use super::error::{io, BuildError};
use super::image::{BuildRequest, BUILDER_VERSION};
use super::rootfs;
use super::variant::Variant;
use super::workspace;
use crate::kernel::elf::Elf64;
use crate::kernel::{DebFacts, KernelTree};

/// `/bin/busybox` of the host (package busybox-static): the minimal profile's userspace.
pub(crate) const BUSYBOX: &str = "/bin/busybox";
/// Packed into every initramfs (with its libraries, at the path `basalt-init` runs it from)
/// so the root filesystem is created on first boot when the root partition is blank.
pub(crate) const INITRD_MKE2FS: &str = basalt_initramfs::rootfs::MKE2FS;

/// A `[[files]]` entry, read.
#[derive(Debug, Clone)]
pub(crate) struct FileInput {
    pub dest: String,
    pub mode: u32,
    pub bytes: Vec<u8>,
    /// The packaged file's SHA-256 it must replace (`[[files]] replaces`), validated.
    pub replaces: Option<basalt_manifest::Digest>,
}

/// A `[[binaries]]` entry, built.
#[derive(Debug, Clone)]
pub(crate) struct BinaryInput {
    pub name: String,
    pub dest: String,
    pub bytes: Vec<u8>,
    pub revision: Option<String>,
}

/// The Debian side of a container-host build: the resolution, the index files it was made
/// from (a snapshot, so a concurrent `apt-get update` cannot change what gets installed) and
/// the staging key.
#[derive(Debug)]
pub struct DebianInput {
    pub sources: String,
    pub apt: AptEnv,
    pub resolved: Vec<ResolvedPackage>,
    pub staging_key: String,
    pub lists: tempfile::TempDir,
}

impl DebianInput {
    /// The staging request of this resolution.
    pub fn staging_request<'a>(
        &'a self,
        config: &'a ImageConfig,
        cache: &'a Path,
    ) -> StagingRequest<'a> {
        StagingRequest {
            cache,
            suite: &config.packages.suite,
            include: &config.packages.include,
            resolved: &self.resolved,
            sources: &self.sources,
        }
    }
}

/// Everything the cache key covers, loaded once.
#[derive(Debug)]
pub(crate) struct Inputs {
    pub config: ImageConfig,
    pub config_bytes: Vec<u8>,
    pub keys: Vec<SigningKey>,
    pub trust_bytes: Vec<u8>,
    pub trust: TrustRoot,
    pub init_bytes: Vec<u8>,
    pub busybox_bytes: Vec<u8>,
    pub mke2fs_bytes: Vec<u8>,
    pub kernel: KernelTree,
    pub kernel_deb: DebFacts,
    pub files: Vec<FileInput>,
    pub binaries: Vec<BinaryInput>,
    pub debian: Option<DebianInput>,
}

fn read(path: &Path) -> Result<Vec<u8>, BuildError> {
    fs::read(path).map_err(io("read", path))
}

/// Load and check every input of `req` (building `[[binaries]]`, resolving Debian packages).
pub(crate) fn load(req: &BuildRequest, log: &mut dyn FnMut(&str)) -> Result<Inputs, BuildError> {
    let config_bytes = read(&req.config)?;
    let text = String::from_utf8_lossy(&config_bytes);
    let mut config = ImageConfig::parse(&text, &req.config)?;
    if let Some(v) = &req.version {
        config.os.version = v.clone();
    }
    if let Some(seq) = req.sequence {
        config.release.sequence = seq;
    }
    config.validate(&req.config)?;
    if req.keys.is_empty() {
        return Err(BuildError::NoKeys);
    }
    let keys = req
        .keys
        .iter()
        .map(|path| {
            let text = fs::read_to_string(path).map_err(|e| BuildError::Key {
                path: path.clone(),
                source: Box::new(e),
            })?;
            SigningKey::from_pem(&text).map_err(|e| BuildError::Key {
                path: path.clone(),
                source: Box::new(e),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let trust_bytes = fs::read(&req.trust).map_err(|e| BuildError::Trust {
        path: req.trust.clone(),
        source: Box::new(e),
    })?;
    let trust = TrustRoot::from_initial_envelope(&trust_bytes).map_err(|e| BuildError::Trust {
        path: req.trust.clone(),
        source: Box::new(e),
    })?;
    let init_bytes = fs::read(&req.init).map_err(|source| BuildError::InitMissing {
        path: req.init.clone(),
        source,
    })?;
    let elf = Elf64::open(&req.init).map_err(|e| BuildError::InitNotElf {
        path: req.init.clone(),
        source: Box::new(e),
    })?;
    if elf.has_interpreter() {
        return Err(BuildError::InitNotStatic {
            path: req.init.clone(),
        });
    }
    let busybox_bytes = if config.profile == Profile::Minimal {
        fs::read(BUSYBOX).map_err(io(
            "read the minimal profile's busybox (apt-get install busybox-static)",
            Path::new(BUSYBOX),
        ))?
    } else {
        Vec::new()
    };
    let mke2fs_bytes = fs::read(INITRD_MKE2FS).map_err(io(
        "read mke2fs for the initramfs (apt-get install e2fsprogs)",
        Path::new(INITRD_MKE2FS),
    ))?;
    let kernel = KernelTree::fetch_or_cached(&req.kernel_cache).map_err(Box::new)?;
    let kernel_deb = kernel.deb_facts().map_err(Box::new)?;
    // A module name the kernel does not have fails now, not after staging.
    if !config.kernel.modules.is_empty() {
        let resolve_err = |source| BuildError::Stage {
            profile: config.profile.as_str(),
            dir: kernel.modules_dir.clone(),
            source: super::rootfs::RootfsError::Modules(super::modules::ModulesError::Resolve {
                kernel: kernel.version.clone(),
                source: Box::new(source),
            }),
        };
        basalt_initramfs::modules::ModulesDep::load(&kernel.modules_dir)
            .and_then(|dep| dep.resolve(&config.kernel.modules, &[]))
            .map_err(resolve_err)?;
    }
    let files = config
        .files
        .iter()
        .map(|f| {
            let path = ImageConfig::resolve_path(&req.config, &f.source);
            Ok(FileInput {
                dest: f.dest.clone(),
                mode: f.mode,
                replaces: f
                    .replaces
                    .as_deref()
                    .and_then(basalt_manifest::Digest::from_hex),
                bytes: fs::read(&path).map_err(io(
                    "read a file of the image definition ([[files]] source)",
                    &path,
                ))?,
            })
        })
        .collect::<Result<Vec<_>, BuildError>>()?;
    let mut binaries = Vec::new();
    for b in &config.binaries {
        let program =
            workspace::build_binary(&req.workspace, &b.package, &b.bin, b.static_link, log)?;
        if config.profile == Profile::Minimal && !b.static_link {
            return Err(BuildError::Config(super::config::ConfigError::Invalid {
                path: req.config.clone(),
                what: format!(
                    "binaries: {} must be static = true in a minimal image (its /usr has no glibc)",
                    b.bin
                ),
            }));
        }
        binaries.push(BinaryInput {
            name: b.bin.clone(),
            dest: b.dest.clone(),
            bytes: read(&program.path)?,
            revision: program.revision,
        });
    }
    let debian = match config.profile {
        Profile::Minimal => None,
        Profile::ContainerHost => Some(resolve_debian(req, &config, log)?),
    };
    Ok(Inputs {
        config,
        config_bytes,
        keys,
        trust_bytes,
        trust,
        init_bytes,
        busybox_bytes,
        mke2fs_bytes,
        kernel,
        kernel_deb,
        files,
        binaries,
        debian,
    })
}

/// Resolve the definition's packages against the archive, check them against the
/// definition's package list, and compute the staging key.
fn resolve_debian(
    req: &BuildRequest,
    config: &ImageConfig,
    log: &mut dyn FnMut(&str),
) -> Result<DebianInput, BuildError> {
    resolve_packages(&req.config, config, &req.debian_cache, req.offline, log)
}

/// The Debian staging of the definition at `definition` (resolved now, staged or from the
/// cache under `debian_cache`): the stock Debian tree a container-host image is made from.
/// `cargo xtask bench` boots it as the reference system.
pub fn stage_definition(
    definition: &Path,
    debian_cache: &Path,
    offline: bool,
    log: &mut dyn FnMut(&str),
) -> Result<(ImageConfig, debian::Staging), BuildError> {
    let config = ImageConfig::load(definition)?;
    let input = resolve_packages(definition, &config, debian_cache, offline, log)?;
    let staging = debian::stage(
        &input.staging_request(&config, debian_cache),
        input.lists.path(),
        log,
    )?;
    Ok((config, staging))
}

fn resolve_packages(
    definition: &Path,
    config: &ImageConfig,
    debian_cache: &Path,
    offline: bool,
    log: &mut dyn FnMut(&str),
) -> Result<DebianInput, BuildError> {
    if config.profile != Profile::ContainerHost {
        return Err(BuildError::Config(super::config::ConfigError::Invalid {
            path: definition.to_owned(),
            what: "only a container-host definition installs Debian packages".into(),
        }));
    }
    let sources = rootfs::apt_sources_from_host(Path::new("/etc/apt"), &config.packages.suite)
        .map_err(|source| BuildError::Stage {
            profile: config.profile.as_str(),
            dir: PathBuf::from("/etc/apt"),
            source,
        })?;
    let apt = AptEnv::open(debian_cache, &sources, &config.os.arch)?;
    let lists = tempfile::Builder::new()
        .prefix(".lists-")
        .tempdir_in(apt.dir())
        .map_err(io("create a folder in", apt.dir()))?;
    let resolved = {
        let _lock = apt.lock()?;
        if offline {
            log("packages: resolving against the archive index of the last update (offline)");
        } else {
            log("packages: apt-get update (the archive's signed index), then resolving");
            apt.update()?;
        }
        let resolved = apt.resolve(&config.packages.include)?;
        apt.snapshot_lists(lists.path())?;
        resolved
    };
    if let Some(list) = config.package_list(definition)? {
        check_list(&list, &resolved, definition)?;
    }
    let mmdebstrap = debian::mmdebstrap_version()?;
    let staging_key = debian::staging_key(
        &StagingRequest {
            cache: debian_cache,
            suite: &config.packages.suite,
            include: &config.packages.include,
            resolved: &resolved,
            sources: &sources,
        },
        &mmdebstrap,
    );
    log(&format!(
        "packages: {} resolved ({}), staging key {}",
        resolved.len(),
        config.packages.suite,
        &staging_key[..16]
    ));
    Ok(DebianInput {
        sources,
        apt,
        resolved,
        staging_key,
        lists,
    })
}

/// The resolved set must be the listed one: same names, and the pinned versions.
pub(crate) fn check_list(
    list: &[ListedPackage],
    resolved: &[ResolvedPackage],
    definition: &Path,
) -> Result<(), BuildError> {
    let mut diff = Vec::new();
    for want in list {
        match resolved.iter().find(|p| p.name == want.name) {
            None => diff.push(format!("-{} (listed, not resolved)", want.name)),
            Some(got) => {
                if let Some(v) = &want.version {
                    if *v != got.version {
                        diff.push(format!("{} {} (listed {v})", got.name, got.version));
                    }
                }
            }
        }
    }
    for got in resolved {
        if !list.iter().any(|l| l.name == got.name) {
            diff.push(format!(
                "+{} {} (resolved, not listed)",
                got.name, got.version
            ));
        }
    }
    if diff.is_empty() {
        Ok(())
    } else {
        Err(BuildError::PackageListDiffers {
            definition: definition.to_owned(),
            diff: diff.join(", "),
        })
    }
}

/// The cache key (see the module docs).
pub(crate) fn cache_key(inputs: &Inputs, req: &BuildRequest) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut field = |bytes: &[u8]| {
        ctx.update(&(bytes.len() as u64).to_le_bytes());
        ctx.update(bytes);
    };
    field(BUILDER_VERSION.as_bytes());
    field(&inputs.config_bytes);
    field(inputs.config.os.version.to_string().as_bytes());
    field(&inputs.config.release.sequence.to_le_bytes());
    field(req.variant.as_str().as_bytes());
    field(inputs.config.profile.as_str().as_bytes());
    field(inputs.kernel.package.as_bytes());
    field(inputs.kernel_deb.sha256.as_bytes());
    field(&inputs.init_bytes);
    field(&inputs.trust_bytes);
    for key in &inputs.keys {
        field(key.public_key().as_bytes());
    }
    field(&inputs.mke2fs_bytes);
    match inputs.config.profile {
        Profile::Minimal => {
            field(&inputs.busybox_bytes);
            field(rootfs::MINIMAL_INIT.as_bytes());
        }
        Profile::ContainerHost => {
            field(rootfs::CONTAINER_HOST_STAGING.as_bytes());
            if let Some(d) = &inputs.debian {
                field(d.staging_key.as_bytes());
            }
        }
    }
    if req.variant == Variant::Test {
        for hook in Variant::Test.container_host_hooks() {
            field(hook.path.as_bytes());
            field(hook.content.as_bytes());
        }
    }
    for f in &inputs.files {
        field(f.dest.as_bytes());
        field(&f.mode.to_le_bytes());
        field(&f.bytes);
        field(f.replaces.map(|d| d.0).unwrap_or_default().as_slice());
    }
    for b in &inputs.binaries {
        field(b.dest.as_bytes());
        field(&b.bytes);
    }
    hex::encode(ctx.finish().as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolved(name: &str, version: &str) -> ResolvedPackage {
        ResolvedPackage {
            name: name.into(),
            version: version.into(),
            arch: "amd64".into(),
            sha256: "a".repeat(64),
            size: 1,
            uri: String::new(),
            source: name.into(),
            source_version: version.into(),
        }
    }

    #[test]
    fn a_package_list_that_differs_names_each_difference() {
        let def = Path::new("/d/IMAGE.toml");
        let list = super::super::config::parse_package_list(
            "libc6=2.36-9\nsystemd\nperl\n",
            Path::new("x"),
        )
        .unwrap();
        let same = [
            resolved("libc6", "2.36-9"),
            resolved("perl", "5"),
            resolved("systemd", "252"),
        ];
        check_list(&list, &same, def).unwrap();
        let moved = [
            resolved("libc6", "2.36-9+deb12u1"),
            resolved("systemd", "252"),
            resolved("newdep", "1"),
        ];
        let err = check_list(&list, &moved, def).unwrap_err().to_string();
        for needle in [
            "libc6 2.36-9+deb12u1 (listed 2.36-9)",
            "-perl",
            "+newdep 1",
            "/d/IMAGE.toml",
        ] {
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }
}
