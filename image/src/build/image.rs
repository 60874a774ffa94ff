//! `basalt image build`: an image definition → a release directory and a bootable disk.
//!
//! ```text
//! IMAGE.toml (+ --version/--sequence overrides, --variant product|test)
//!   ─► inputs: keys, trust root, basalt-init, kernel (+ its .deb facts), [[files]],
//!      [[binaries]] (built by cargo), Debian packages resolved against the archive
//!   ─► cache key ── hit ───────────────────────────────────────────────┐
//!        │ miss                                                     │
//!        ▼                                                          │
//!   stage /usr (minimal: busybox; container-host: the cached Debian │
//!   staging, trimmed, chosen kernel modules, files, units, test hooks)  │
//!   ─► erofs ─► usr.img = erofs ‖ verity superblock + tree ‖ statement  │
//!      (OS, version and the whole verity parameter set, the manifest's │
//!      own)                                                         │
//!   ─► vmlinuz ─► initrd.img (basalt-init, modules, trust root, boot    │
//!      policy: OS, version floor, test options only in the test variant)│
//!   ─► disk.img (GPT, slot A, ESP, root ext4), build.json           │
//!   ─► cache entry <cache>/<key>/ (the unsigned, reproducible part) ────┤
//!                                                                      ▼
//!   per request: sbom.spdx.json, release.json (issued now, expires after valid_days,
//!   sequence) and release.signed (signed, verified against the trust root)
//! ```
//!
//! `usr.img` is the `usr` artifact of the manifest: the erofs bytes, then at `hash_offset`
//! (= erofs size, 4 KiB aligned) the veritysetup-format hash area (superblock + tree), then
//! the signed usr-hash statement block `basalt-init` checks. An updater writes
//! `[0, hash_offset)` to the data partition and the rest to the verity partition; the
//! statement then sits right after the tree, where `basalt_initramfs::usrsig` expects it.
//!
//! **Cached: only what does not depend on the time of the request.** The manifest carries
//! `issued_at`/`expires_at` and the SBOM its creation time, so they are made and signed for
//! every request, cache hit or not: a release handed out from the cache a year later is not
//! already expired. (The usr-hash statement inside `usr.img` has no time: it is part of the
//! cached bytes, its keys part of the key.)
//!
//! **Reproducible**: the same inputs give byte-identical `usr.img`, `initrd.img` and
//! `disk.img` — the verity salt and superblock UUID, the erofs UUID and timestamps, the GPT
//! disk and partition GUIDs, the ext4 UUID, hash seed and times of the root filesystem are
//! derived from the release (name, version, variant), never drawn; the initramfs is a
//! reproducible cpio and the ESP a FAT with fixed times and serial.
//!
//! Cached by input hash ([`super::inputs`]): a finished build lives in `<cache>/<key>/`,
//! written in a temporary folder and renamed when complete; later builds with the same inputs
//! only copy the files (sparse-aware, so the mostly empty disk image costs its data only).

use std::fs::{self, File};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use basalt_disk::slots::{write_slot, SlotImage};
use basalt_disk::{BootTarget, Inventory, LayoutSpec, RangeReader, RootHash, Slot};
use basalt_manifest::chrono::{DateTime, TimeZone, Utc};
use basalt_manifest::{sign_usr_hash, Digest, HashAlgorithm, SigningKey, UsrHashStatement, Verity};
use serde::{Deserialize, Serialize};

use super::config::{ImageConfig, Profile};
use super::debian::{HostPackage, StagedPackage};
use super::error::{disk_err, io, BuildError};
use super::inputs;
use super::variant::Variant;
use crate::kernel::DebFacts;

/// Bump when the build's output for the same inputs changes: old cache entries then miss.
/// 3: stage keys, efivarfs module; 4: boot policy, usr-hash statement v2 (trusted boot) and,
/// on a parallel branch, releases signed per request, SBOM, Debian staging cache, trimmed
/// /usr, derived GUIDs; 5: both together (test options from the variant); 6: the dpkg
/// database in `/usr/lib/sysimage/dpkg` (container-host); 7: os-release `SYSEXT_LEVEL=` is
/// the definition's `os.sysext_level` (was the version); 8: erofs with `-Enoinline_data`
/// (adaptive updates); 9: the root partition carries `/etc` and `/var` from the factory trees.
pub const BUILDER_VERSION: &str = "basalt-image-build/9";

/// The file names in a release directory.
pub const USR_IMG: &str = "usr.img";
pub const VMLINUZ: &str = "vmlinuz";
pub const INITRD_IMG: &str = "initrd.img";
pub const RELEASE_JSON: &str = "release.json";
pub const RELEASE_SIGNED: &str = "release.signed";
pub const DISK_IMG: &str = "disk.img";
pub const BUILD_JSON: &str = "build.json";
pub use super::sbom::SBOM_FILE;
/// The files of a cache entry (the same for every request with the same inputs).
pub const CACHED_FILES: [&str; 5] = [USR_IMG, VMLINUZ, INITRD_IMG, DISK_IMG, BUILD_JSON];
/// The files made and signed for each request.
pub const SIGNED_FILES: [&str; 3] = [SBOM_FILE, RELEASE_JSON, RELEASE_SIGNED];
/// Every file of a release directory.
pub const OUTPUT_FILES: [&str; 8] = [
    USR_IMG,
    VMLINUZ,
    INITRD_IMG,
    DISK_IMG,
    BUILD_JSON,
    SBOM_FILE,
    RELEASE_JSON,
    RELEASE_SIGNED,
];

/// Modules every image's initramfs loads (with their dependencies from modules.dep).
/// Debian builds ext4, erofs and dm-verity as modules; crc32c_generic is a soft dependency
/// of ext4 and erofs that modules.dep does not list.
pub const INITRD_MODULES: [&str; 6] = [
    "virtio_pci",
    "virtio_blk",
    "dm-verity",
    "crc32c_generic",
    "erofs",
    "ext4",
];
/// Modules loaded when present and loadable (sha256-ssse3 fails with ENODEV under TCG's
/// default CPU; efivarfs lets basalt-init read which ESP systemd-boot started from and the
/// `/usr` version floor, and record a failure for the next boot (`basalt_initramfs::failrec`)
/// — absent on a BIOS or direct kernel boot, which then go without).
pub const INITRD_OPTIONAL_MODULES: [&str; 2] = ["sha256-ssse3", "efivarfs"];
// No vfat in any initramfs: nothing mounts the ESP before the switch to `/usr` (basalt-init
// reads the EFI variables, not the ESP; a container host keeps it unmounted, see
// `systemd.gpt_auto=0` in its definition), and `/usr` ships vfat for whoever mounts it later.
// Three modules fewer to load on every boot.

/// The init the `minimal` profile boots after `basalt-init`'s switch_root.
pub const MINIMAL_INIT_PATH: &str = "/usr/lib/basalt/init-minimal";
pub(crate) const MIB: u64 = 1 << 20;

/// What to build. [`BuildRequest::new`] fills in the defaults.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    /// The image definition (`IMAGE.toml`).
    pub config: PathBuf,
    /// Signing keys (`NAME.key`), at least the trust root's threshold.
    pub keys: Vec<PathBuf>,
    /// The initial trust root envelope (`trust.json`), installed into the initramfs.
    pub trust: PathBuf,
    /// The statically linked `basalt-init` (see [`super::workspace::find_or_build_init`]).
    pub init: PathBuf,
    /// The git revision `init` was built from, for the SBOM (`None`: not known).
    pub init_revision: Option<String>,
    /// Where the release directory is written (created if missing; files replaced).
    pub out: PathBuf,
    /// The image cache; `<key>/` folders go here. See [`default_cache_dir`].
    pub cache: PathBuf,
    /// Where the Debian kernel is cached (see [`crate::kernel::KernelTree::default_cache_dir`]).
    pub kernel_cache: PathBuf,
    /// Where the private apt state (`apt/`) and the Debian stagings (`staging/`) live.
    pub debian_cache: PathBuf,
    /// The issue time of the release (default: now; `SOURCE_DATE_EPOCH` in the CLI).
    pub issued_at: DateTime<Utc>,
    /// Product or test image of the definition.
    pub variant: Variant,
    /// Overrides `os.version` of the definition (releases v1, v2 … of one definition).
    pub version: Option<semver::Version>,
    /// Overrides `release.sequence` of the definition.
    pub sequence: Option<u64>,
    /// Resolve Debian packages against the index fetched last time (no `apt-get update`).
    pub offline: bool,
    /// The Basalt source checkout the definition's `[[binaries]]` are built from.
    pub workspace: PathBuf,
    /// Sign for Secure Boot: the release then carries its signed UKI (artifact kind `uki`)
    /// and `disk.img` boots it (see [`super::uki::secure_boot_disk`]). Per request, like the
    /// release signatures: the cache entry never holds anything signed by these keys.
    pub secure_boot: Option<SecureBootSigner>,
}

/// The Secure Boot db key and certificate a request signs its UKI and systemd-boot with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecureBootSigner {
    /// Private key, PEM, unencrypted.
    pub key: PathBuf,
    /// Its certificate, PEM (the one enrolled in the machines' db).
    pub cert: PathBuf,
}

impl BuildRequest {
    /// A request with the default caches (under `<workspace>/build/cache`), issued now, the
    /// product variant, no overrides.
    pub fn new(
        config: PathBuf,
        keys: Vec<PathBuf>,
        trust: PathBuf,
        init: PathBuf,
        out: PathBuf,
    ) -> Self {
        Self {
            config,
            keys,
            trust,
            init,
            init_revision: None,
            out,
            cache: default_cache_dir(),
            kernel_cache: crate::kernel::KernelTree::default_cache_dir(),
            debian_cache: crate::cache_root(),
            issued_at: Utc::now(),
            variant: Variant::Product,
            version: None,
            sequence: None,
            offline: false,
            workspace: crate::workspace_root(),
            secure_boot: None,
        }
    }
}

/// `<workspace>/build/cache/images`.
pub fn default_cache_dir() -> PathBuf {
    crate::cache_root().join("images")
}

/// A Basalt program in the image (its revision is per request: see the SBOM).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BasaltFile {
    pub name: String,
    /// `initrd.img:/init` or the path in `/usr`.
    pub location: String,
    pub sha256: String,
}

/// Facts about a build, written as `build.json` (part of the cache entry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildFacts {
    pub builder: String,
    pub cache_key: String,
    pub os: String,
    pub version: String,
    pub profile: String,
    pub variant: Variant,
    pub kernel_package: String,
    pub kernel_version: String,
    /// dm-verity root hash of `/usr` (what `usrhash=` carries).
    pub root_hash: String,
    pub salt: String,
    pub data_blocks: u64,
    /// Size of the erofs image = where the hash area starts in `usr.img`.
    pub hash_offset: u64,
    pub usr_img_bytes: u64,
    /// Bytes of the files of the staged `/usr` tree (before erofs compresses them).
    pub usr_tree_bytes: u64,
    pub vmlinuz_bytes: u64,
    pub initrd_bytes: u64,
    pub initrd_modules: Vec<String>,
    /// Kernel module files shipped in `/usr/lib/modules`.
    pub usr_modules: Vec<String>,
    /// Bytes of Debian files not shipped (documentation, translations).
    pub trimmed_bytes: u64,
    pub disk_bytes: u64,
    /// The kernel command line of the slot-A entry, without `usrhash=` / `basalt.slot=`.
    pub cmdline: String,
    /// The Debian staging this `/usr` comes from (container-host).
    pub staging_key: Option<String>,
    /// Debian packages installed in `/usr`, as dpkg and the archive index say.
    pub packages: Vec<StagedPackage>,
    /// Files copied from the build host, by owning package.
    pub host_packages: Vec<HostPackage>,
    /// The kernel package.
    pub kernel_deb: DebFacts,
    /// Basalt programs in the image.
    pub basalt_files: Vec<BasaltFile>,
    /// Milliseconds per step, in order.
    pub durations_ms: Vec<(String, u64)>,
}

impl BuildFacts {
    /// The `usr` artifact's verity parameter set as [`seal_usr_image`] returned it (and the
    /// usr-hash statement inside `usr.img` binds): rebuilt from the cached facts when a
    /// release is signed for a request. `path` names `build.json` in the error.
    pub fn usr_verity(&self, path: &Path) -> Result<Verity, BuildError> {
        let root_hash = Digest::from_hex(&self.root_hash).ok_or_else(|| BuildError::Io {
            op: "read the root hash of",
            path: path.to_owned(),
            source: std::io::Error::other(format!("not a SHA-256 digest: {}", self.root_hash)),
        })?;
        Ok(Verity {
            root_hash,
            salt: self.salt.clone(),
            data_blocks: self.data_blocks,
            hash_offset: self.hash_offset,
            hash_algorithm: HashAlgorithm::Sha256,
            data_block_size: basalt_verity::BLOCK_SIZE as u32,
            hash_block_size: basalt_verity::BLOCK_SIZE as u32,
        })
    }
}

/// The result of [`build`].
#[derive(Debug, Clone)]
pub struct BuildReport {
    pub facts: BuildFacts,
    /// The unsigned artifacts were copied from the cache (the release was signed now).
    pub from_cache: bool,
    /// The cache folder holding this build.
    pub cache_dir: PathBuf,
    /// Wall time of this call.
    pub elapsed: Duration,
}

/// Build the release directory `req.out`, from the cache when the inputs were built before.
pub fn build(req: &BuildRequest) -> Result<BuildReport, BuildError> {
    build_with_progress(req, &mut |_| {})
}

/// [`build`], telling `log` about the slow steps as they start (cargo builds, apt, mmdebstrap,
/// erofs).
pub fn build_with_progress(
    req: &BuildRequest,
    log: &mut dyn FnMut(&str),
) -> Result<BuildReport, BuildError> {
    let started = Instant::now();
    let inputs = inputs::load(req, log)?;
    let key = inputs::cache_key(&inputs, req);
    fs::create_dir_all(&req.cache).map_err(io("create cache folder", &req.cache))?;
    let entry = req.cache.join(&key);
    let mut from_cache = true;
    if !entry.join(BUILD_JSON).is_file() {
        // One builder per key at a time (threads and processes); the others wait, then hit.
        let lock_path = req.cache.join(format!(".lock-{key}"));
        let _lock = crate::lock::FileLock::acquire(&lock_path).map_err(io("lock", &lock_path))?;
        if !entry.join(BUILD_JSON).is_file() {
            from_cache = false;
            let work = tempfile::Builder::new()
                .prefix(".build-")
                .tempdir_in(&req.cache)
                .map_err(io("create build folder in", &req.cache))?;
            super::assemble::build_into(req, &inputs, &key, work.path(), log)?;
            let staged = work.keep();
            if entry.exists() {
                // A half-written entry from a killed run without build.json: replace it.
                fs::remove_dir_all(&entry).map_err(io("remove stale cache entry", &entry))?;
            }
            fs::rename(&staged, &entry).map_err(io("publish cache entry", &entry))?;
        }
    }
    fs::create_dir_all(&req.out).map_err(io("create output folder", &req.out))?;
    for name in CACHED_FILES {
        copy_sparse(&entry.join(name), &req.out.join(name))?;
    }
    let facts = read_facts(&entry.join(BUILD_JSON))?;
    let extensions = super::extensions::build_all(req, &inputs, log)?;
    // The node image carries its release's set from the start; written into the output
    // copy only (the cache entry's disk stays without: the set is built per request).
    let images: Vec<PathBuf> = extensions.iter().map(|e| e.path.clone()).collect();
    super::rootpart::seed_extensions(&req.out.join(DISK_IMG), &facts.version, &images)?;
    super::sign::sign_request(req, &inputs, &facts, &extensions)?;
    Ok(BuildReport {
        facts,
        from_cache,
        cache_dir: entry,
        elapsed: started.elapsed(),
    })
}

/// Read a `build.json`.
pub fn read_facts(path: &Path) -> Result<BuildFacts, BuildError> {
    let bytes = fs::read(path).map_err(io("read", path))?;
    serde_json::from_slice(&bytes).map_err(|e| BuildError::Io {
        op: "parse",
        path: path.to_owned(),
        source: e.into(),
    })
}

/// 32 bytes derived from `purpose`, OS name and version: the same release always gets the
/// same salt and UUIDs, two releases never share them.
pub(crate) fn derived_bytes(purpose: &str, config: &ImageConfig) -> [u8; 32] {
    let seed = format!("basalt {purpose} {} {}", config.os.name, config.os.version);
    let d = ring::digest::digest(&ring::digest::SHA256, seed.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// A version-4-style UUID (16 bytes) derived like [`derived_bytes`], with the variant in the
/// seed too (a product and a test image of one version are different disks).
pub(crate) fn derived_uuid(purpose: &str, config: &ImageConfig, variant: Variant) -> [u8; 16] {
    let d = derived_bytes(&format!("{purpose} {}", variant.as_str()), config);
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    b
}

pub(crate) fn sha256_file(path: &Path) -> Result<Digest, BuildError> {
    let mut file = File::open(path).map_err(io("open", path))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = std::io::Read::read(&mut file, &mut buf).map_err(io("read", path))?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    let mut d = [0u8; 32];
    d.copy_from_slice(ctx.finish().as_ref());
    Ok(Digest(d))
}

pub(crate) fn file_len(path: &Path) -> Result<u64, BuildError> {
    Ok(fs::metadata(path).map_err(io("stat", path))?.len())
}

/// The kernel command line of the image (without `usrhash=`/`basalt.slot=`, which the boot
/// entry adds): `console=ttyS0 panic=-1`, the definition's `boot.cmdline` (options already
/// present are not repeated), and `init=` for the minimal profile.
pub fn kernel_cmdline(config: &ImageConfig) -> String {
    let mut opts: Vec<String> = vec!["console=ttyS0".into(), "panic=-1".into()];
    for o in config.boot.cmdline.split_whitespace() {
        if !opts.iter().any(|x| x == o) {
            opts.push(o.to_owned());
        }
    }
    if config.profile == Profile::Minimal && !opts.iter().any(|o| o.starts_with("init=")) {
        opts.push(format!("init={MINIMAL_INIT_PATH}"));
    }
    opts.join(" ")
}

/// What the image's initramfs boots: this OS only, no `/usr` older than this release (an
/// entry edited to pair this kernel and initramfs with an older signed `/usr` is refused),
/// options that weaken verification only in the test variant ([`Variant::is_test`], the one
/// switch: the product image never honours them).
pub fn boot_policy(config: &ImageConfig, variant: Variant) -> basalt_initramfs::policy::BootPolicy {
    basalt_initramfs::policy::BootPolicy {
        os: Some(config.os.name.clone()),
        min_usr_version: Some(config.os.version.clone()),
        test_options: variant.is_test(),
    }
}

/// Disk sizes: small for `minimal` (a ≈300 MiB sparse file), realistic for `container-host`.
pub fn layout_for(profile: Profile) -> LayoutSpec {
    match profile {
        Profile::Minimal => LayoutSpec {
            disk_size: 300 * MIB,
            esp_size: 96 * MIB,
            usr_size: 48 * MIB,
            verity_size: 2 * MIB,
            slot_reserve: 16 * MIB,
            root_size: None,
            align: MIB,
        },
        Profile::ContainerHost => LayoutSpec::default(),
    }
}

/// Seal a `/usr` filesystem image into the `usr.img` artifact, in place: append at
/// `hash_offset = data_len` (a non-zero multiple of 4 KiB) the veritysetup-format hash area
/// (superblock with `salt` and `uuid`, then the tree), then the usr-hash statement block
/// (`basalt_initramfs::usrsig`) signed by `keys`, right after the tree. Returns the verity
/// facts and the parameter set — the one the statement binds (v2) and the release manifest's
/// artifact carries. Used by [`build`] and by `basalt_image::release::synthetic`; system
/// extensions are sealed by the same two steps ([`append_verity`],
/// [`append_statement_block`]) with their own statement (`basalt_image::sysext`).
pub fn seal_usr_image(
    usr: &Path,
    data_len: u64,
    salt: Vec<u8>,
    uuid: [u8; 16],
    os: &str,
    version: &basalt_manifest::semver::Version,
    keys: &[&SigningKey],
) -> Result<(basalt_verity::VerityInfo, Verity), BuildError> {
    let (info, verity) = append_verity(usr, data_len, salt, uuid)?;
    let statement = UsrHashStatement {
        os: os.to_owned(),
        version: version.clone(),
        verity: verity.clone(),
    };
    let envelope = sign_usr_hash(&statement, keys).map_err(|source| BuildError::Sign {
        what: "usr-hash statement",
        source: Box::new(source),
    })?;
    append_statement_block(usr, &verity, &envelope)?;
    Ok((info, verity))
}

/// Append the veritysetup-format hash area (superblock with `salt` and `uuid`, then the tree)
/// to the filesystem image `path` at `hash_offset = data_len` (a non-zero multiple of
/// 4 KiB); returns the verity facts and the parameter set.
pub fn append_verity(
    path: &Path,
    data_len: u64,
    salt: Vec<u8>,
    uuid: [u8; 16],
) -> Result<(basalt_verity::VerityInfo, Verity), BuildError> {
    if data_len == 0 || data_len % basalt_verity::BLOCK_SIZE != 0 {
        return Err(BuildError::Io {
            op: "check the size of",
            path: path.to_path_buf(),
            source: std::io::Error::other(format!(
                "image of {data_len} bytes is not a non-empty multiple of 4096"
            )),
        });
    }
    let opts = basalt_verity::FormatOptions {
        salt,
        superblock: true,
        uuid: Some(uuid),
        hash_offset: data_len,
        threads: 0,
    };
    let data_blocks = data_len / basalt_verity::BLOCK_SIZE;
    let info =
        basalt_verity::format_path(path, path, Some(data_blocks), &opts).map_err(|source| {
            BuildError::Verity {
                path: path.to_path_buf(),
                source: Box::new(source),
            }
        })?;
    // One set of verity parameters: the manifest's artifact and the signed statement carry
    // the same.
    let verity = Verity {
        root_hash: Digest(info.root_hash),
        salt: hex::encode(&info.salt),
        data_blocks,
        hash_offset: data_len,
        hash_algorithm: HashAlgorithm::Sha256,
        data_block_size: basalt_verity::BLOCK_SIZE as u32,
        hash_block_size: basalt_verity::BLOCK_SIZE as u32,
    };
    Ok((info, verity))
}

/// Write the statement block (`basalt_initramfs::usrsig` codec) holding `envelope` right
/// after the hash tree `verity` describes; the file ends with it.
pub fn append_statement_block(
    path: &Path,
    verity: &Verity,
    envelope: &[u8],
) -> Result<(), BuildError> {
    let block = basalt_initramfs::usrsig::encode_block(envelope).map_err(|source| {
        BuildError::Initramfs {
            path: path.to_path_buf(),
            source: Box::new(source),
        }
    })?;
    // = hash_offset + superblock block + tree (usrsig::statement_offset, shifted).
    let statement_at = verity.hash_offset
        + basalt_verity::BLOCK_SIZE
        + basalt_verity::hash_tree_size(verity.data_blocks);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io("open", path))?;
    f.set_len(statement_at)
        .and_then(|()| f.seek(SeekFrom::Start(statement_at)))
        .and_then(|_| f.write_all(&block))
        .and_then(|()| f.sync_all())
        .map_err(io("append the signed statement to", path))?;
    Ok(())
}

/// Write a `usr.img` (erofs ‖ hash area ‖ statement) into `slot` of the disk image `disk`:
/// `[0, hash_offset)` to the data partition, the rest to the verity partition, then the
/// partitions are named after the root hash and `{os}_{version}` (`basalt_disk::slots::
/// write_slot`, crash-safe order).
#[allow(clippy::too_many_arguments)]
pub fn write_usr_slot(
    disk: &Path,
    slot: Slot,
    usr: &Path,
    hash_offset: u64,
    usr_len: u64,
    root_hash: &Digest,
    os: &str,
    version: &str,
) -> Result<(), BuildError> {
    let open = || File::open(usr).map_err(io("open", usr));
    let mut data = RangeReader::new(open()?, 0, hash_offset);
    let mut verity = RangeReader::new(open()?, hash_offset, usr_len - hash_offset);
    let mut dev = basalt_disk::slots::open_rw(disk).map_err(disk_err("open", disk))?;
    write_slot(
        &mut dev,
        disk,
        slot,
        None,
        SlotImage {
            data: &mut data,
            data_path: usr,
            data_len: hash_offset,
            verity: &mut verity,
            verity_path: usr,
            verity_len: usr_len - hash_offset,
            root_hash: RootHash(root_hash.0),
            os,
            version,
        },
    )
    .map_err(disk_err("write the usr slot", disk))
}

/// Install the release directory `release` (a [`build`] output) into `slot` of the Basalt
/// disk image `disk`, offline, the way an update would: write `usr.img` into the slot, then
/// stage a systemd-boot entry for it with `tries` boot-counting tries (its kernel and initrd
/// copied to the ESP). The entry's command line is the one the release was built with.
/// For tests and factory images with two slots; a running node uses the updater.
pub fn install_release(
    disk: &Path,
    slot: Slot,
    release: &Path,
    tries: u32,
) -> Result<(), BuildError> {
    use basalt_disk::BootControl;
    let facts_path = release.join(BUILD_JSON);
    let facts = read_facts(&facts_path)?;
    let usr = release.join(USR_IMG);
    let root_hash = Digest::from_hex(&facts.root_hash).ok_or_else(|| BuildError::Io {
        op: "read the root hash of",
        path: facts_path.clone(),
        source: std::io::Error::other(format!("not a SHA-256 hex digest: {}", facts.root_hash)),
    })?;
    write_usr_slot(
        disk,
        slot,
        &usr,
        facts.hash_offset,
        file_len(&usr)?,
        &root_hash,
        &facts.os,
        &facts.version,
    )?;
    let inv = Inventory::read_path(disk, None).map_err(disk_err("read the layout", disk))?;
    let esp = basalt_disk::FatImageEsp::open(disk, inv.esp.offset, inv.esp.size)
        .map_err(disk_err("open the ESP", disk))?;
    let mut bls = basalt_disk::BlsBackend::new(esp);
    let target = BootTarget {
        version: facts.version.clone(),
        usr_hash: facts.root_hash.clone(),
        kernel: Some(release.join(VMLINUZ)),
        initrd: Some(release.join(INITRD_IMG)),
        options: facts.cmdline.clone(),
    };
    bls.stage(slot, &target, tries)
        .map_err(disk_err("stage the boot entry", disk))
}

/// Copy `from` to `to` (replaced), keeping holes: only the data extents are copied
/// (`SEEK_DATA`/`SEEK_HOLE` + `copy_file_range`, which reflinks where the filesystem can), so
/// a 300 MiB sparse disk image with 20 MiB of data costs 20 MiB.
pub fn copy_sparse(from: &Path, to: &Path) -> Result<(), BuildError> {
    use std::os::fd::AsRawFd;
    let src = File::open(from).map_err(io("open", from))?;
    let len = src.metadata().map_err(io("stat", from))?.len();
    // The one atomic replace (temporary beside `to`, fsync, rename, fsync dir); only the
    // copying is ours: data extents only, so holes stay holes.
    basalt_fsutil::write_atomic_with(to, 0o644, |dst| {
        dst.set_len(len)?;
        let (sfd, dfd) = (src.as_raw_fd(), dst.as_raw_fd());
        let mut pos: i64 = 0;
        let end = len as i64;
        while pos < end {
            // SAFETY: lseek on a descriptor we own; no memory is passed.
            let data = unsafe { libc::lseek(sfd, pos, libc::SEEK_DATA) };
            if data < 0 {
                let err = std::io::Error::last_os_error();
                if err.raw_os_error() == Some(libc::ENXIO) {
                    break; // only a hole remains
                }
                return Err(err);
            }
            // SAFETY: as above.
            let hole = unsafe { libc::lseek(sfd, data, libc::SEEK_HOLE) };
            if hole < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let (mut off_in, mut off_out) = (data, data);
            while off_in < hole {
                let want = (hole - off_in) as usize;
                // SAFETY: both descriptors are open; the offsets are valid i64s we own.
                let n =
                    unsafe { libc::copy_file_range(sfd, &mut off_in, dfd, &mut off_out, want, 0) };
                if n < 0 {
                    let err = std::io::Error::last_os_error();
                    // Across file systems (EXDEV) or where the call is missing: plain copy.
                    let plain = [libc::EXDEV, libc::ENOSYS, libc::EOPNOTSUPP, libc::EINVAL];
                    if !err.raw_os_error().is_some_and(|c| plain.contains(&c)) {
                        return Err(err);
                    }
                    copy_range(&src, dst, off_in as u64, hole as u64)?;
                    break;
                }
                if n == 0 {
                    break;
                }
            }
            pos = hole;
        }
        Ok(())
    })
    .map_err(|e| BuildError::Io {
        op: "copy (sparse) into",
        path: to.to_path_buf(),
        source: std::io::Error::new(e.source.kind(), e.to_string()),
    })
}

/// Copy bytes `[from, to)` of `src` to the same offsets of `dst` with positional reads and
/// writes (1 MiB at a time).
fn copy_range(src: &File, dst: &File, from: u64, to: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 1 << 20];
    let mut at = from;
    while at < to {
        let n = buf.len().min((to - at) as usize);
        src.read_exact_at(&mut buf[..n], at)?;
        dst.write_all_at(&buf[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// The issue time from `SOURCE_DATE_EPOCH` (reproducible-builds.org), else now.
pub fn issue_time_from_env() -> DateTime<Utc> {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .and_then(|secs| Utc.timestamp_opt(secs, 0).single())
        .unwrap_or_else(Utc::now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(profile: &str, cmdline: &str) -> ImageConfig {
        let text = format!(
            "profile = \"{profile}\"\n[os]\nname = \"basalt\"\nversion = \"1.0.0\"\n\
             [boot]\ncmdline = \"{cmdline}\"\n[release]\nsequence = 1\n"
        );
        ImageConfig::parse(&text, Path::new("IMAGE.toml")).unwrap()
    }

    #[test]
    fn cmdline_adds_console_panic_and_minimal_init_once() {
        assert_eq!(
            kernel_cmdline(&config("minimal", "console=ttyS0 quiet")),
            "console=ttyS0 panic=-1 quiet init=/usr/lib/basalt/init-minimal"
        );
        assert_eq!(
            kernel_cmdline(&config("container-host", "")),
            "console=ttyS0 panic=-1"
        );
        assert_eq!(
            kernel_cmdline(&config("minimal", "init=/usr/bin/sh")),
            "console=ttyS0 panic=-1 init=/usr/bin/sh"
        );
    }

    #[test]
    fn derived_salt_depends_on_version() {
        let a = derived_bytes("verity-salt", &config("minimal", ""));
        let mut c = config("minimal", "");
        c.os.version = semver::Version::new(2, 0, 0);
        assert_ne!(a, derived_bytes("verity-salt", &c));
        assert_eq!(a, derived_bytes("verity-salt", &config("minimal", "")));
    }

    #[test]
    fn derived_uuids_depend_on_purpose_version_and_variant() {
        let c = config("minimal", "");
        let a = derived_uuid("gpt-1", &c, Variant::Product);
        assert_eq!(a, derived_uuid("gpt-1", &c, Variant::Product));
        assert_ne!(a, derived_uuid("gpt-2", &c, Variant::Product));
        assert_ne!(a, derived_uuid("gpt-1", &c, Variant::Test));
        assert_eq!(a[6] >> 4, 4);
        assert_eq!(a[8] & 0xc0, 0x80);
    }

    #[test]
    fn sparse_copy_keeps_content_and_holes() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let f = File::create(&a).unwrap();
        f.set_len(64 * MIB).unwrap();
        let mut f = fs::OpenOptions::new().write(true).open(&a).unwrap();
        f.seek(SeekFrom::Start(10 * MIB + 5)).unwrap();
        f.write_all(b"hello").unwrap();
        f.seek(SeekFrom::Start(64 * MIB - 3)).unwrap();
        f.write_all(b"end").unwrap();
        drop(f);
        copy_sparse(&a, &b).unwrap();
        assert_eq!(fs::read(&a).unwrap(), fs::read(&b).unwrap());
        use std::os::unix::fs::MetadataExt;
        assert!(fs::metadata(&b).unwrap().blocks() * 512 < 4 * MIB);
    }
}
