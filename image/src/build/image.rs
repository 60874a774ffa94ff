//! `basalt image build`: an image definition → a release directory and a bootable disk.
//!
//! ```text
//! IMAGE.toml ─► stage /usr (profile; + kernel modules for container-host)
//!   ─► erofs (reproducible) ─► usr.img = erofs ‖ verity superblock + tree ‖ signed statement
//!      (OS, version and the whole verity parameter set, the manifest's own)
//!   ─► vmlinuz (Debian kernel) ─► initrd.img (basalt-init, modules, trust root, boot policy)
//!   ─► release.json / release.signed (usr with verity facts, kernel, initrd)
//!   ─► disk.img: GPT layout, slot A = usr.img split at hash_offset, slot B _empty,
//!      ESP (FAT32, systemd-boot, loader.conf, blessed slot-A entry), root ext4 skeleton
//! ```
//!
//! `usr.img` is the `usr` artifact of the manifest: the erofs bytes, then at `hash_offset`
//! (= erofs size, 4 KiB aligned) the veritysetup-format hash area (superblock + tree), then
//! the signed usr-hash statement block `basalt-init` checks. An updater writes
//! `[0, hash_offset)` to the data partition and the rest to the verity partition; the
//! statement then sits right after the tree, where `basalt_initramfs::usrsig` expects it.
//!
//! Reproducible: the verity salt and superblock UUID, the erofs UUID and timestamps are
//! derived from `os.name` + `os.version`, the initramfs is a reproducible cpio; so the same
//! inputs give byte-identical `usr.img` and `initrd.img` (the manifest carries the issue time
//! and the disk image random GUIDs).
//!
//! Cached by input hash ([`cache_key`]): a finished build lives in `<cache>/<key>/`, written
//! in a temporary folder and renamed when complete; later builds with the same inputs only
//! copy the files (sparse-aware, so the mostly empty disk image costs its data only).

use std::fs::{self, File};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use basalt_disk::bls::install_boot_esp;
use basalt_disk::esp::SYSTEMD_BOOT_EFI;
use basalt_disk::slots::{write_slot, SlotImage};
use basalt_disk::{BootTarget, Inventory, LayoutSpec, RangeReader, RootHash, Slot};
use basalt_manifest::chrono::{DateTime, Duration as ChronoDuration, TimeZone, Utc};
use basalt_manifest::{
    sign_release, sign_usr_hash, verify_release, Artifact, ArtifactKind, Digest, HashAlgorithm,
    Manifest, Policy, SigningKey, TrustRoot, UsrHashStatement, Verity, SCHEMA_VERSION,
};
use serde::Serialize;

use super::config::{ImageConfig, Profile};
use super::erofs::{self, Compression};
use super::error::{disk_err, io, BuildError};
use super::rootfs;
use crate::kernel::elf::Elf64;
use crate::kernel::KernelTree;
use crate::tool::MKE2FS;

/// Bump when the build's output for the same inputs changes: old cache entries then miss.
// 3: stage keys, efivarfs module; 4: boot policy, usr-hash statement v2 (trusted boot)
pub const BUILDER_VERSION: &str = "basalt-image-build/4";

/// The file names in a release directory.
pub const USR_IMG: &str = "usr.img";
pub const VMLINUZ: &str = "vmlinuz";
pub const INITRD_IMG: &str = "initrd.img";
pub const RELEASE_JSON: &str = "release.json";
pub const RELEASE_SIGNED: &str = "release.signed";
pub const DISK_IMG: &str = "disk.img";
pub const BUILD_JSON: &str = "build.json";
/// Every file of a release directory, in the order they are copied.
pub const OUTPUT_FILES: [&str; 7] = [
    USR_IMG,
    VMLINUZ,
    INITRD_IMG,
    RELEASE_JSON,
    RELEASE_SIGNED,
    DISK_IMG,
    BUILD_JSON,
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
/// Extra optional modules for the container-host profile: systemd mounts the ESP (vfat).
pub const CONTAINER_HOST_OPTIONAL_MODULES: [&str; 3] = ["vfat", "nls_cp437", "nls_ascii"];

/// The init the `minimal` profile boots after `basalt-init`'s switch_root.
pub const MINIMAL_INIT_PATH: &str = "/usr/lib/basalt/init-minimal";
const BUSYBOX: &str = "/bin/busybox";
/// Packed into every initramfs (with its libraries, at the path `basalt-init` runs it from)
/// so the root filesystem is created on first boot when the root partition is blank.
const INITRD_MKE2FS: &str = basalt_initramfs::rootfs::MKE2FS;
const MIB: u64 = 1 << 20;

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    /// The image definition (`IMAGE.toml`).
    pub config: PathBuf,
    /// Signing keys (`NAME.key`), at least the trust root's threshold.
    pub keys: Vec<PathBuf>,
    /// The initial trust root envelope (`trust.json`), installed into the initramfs.
    pub trust: PathBuf,
    /// The statically linked `basalt-init`.
    pub init: PathBuf,
    /// Where the release directory is written (created if missing; files replaced).
    pub out: PathBuf,
    /// The image cache; `<key>/` folders go here. See [`default_cache_dir`].
    pub cache: PathBuf,
    /// Where the Debian kernel is cached (see [`KernelTree::default_cache_dir`]).
    pub kernel_cache: PathBuf,
    /// The issue time of the release (default: now; `SOURCE_DATE_EPOCH` in the CLI).
    pub issued_at: DateTime<Utc>,
}

/// `<workspace>/build/cache/images`.
pub fn default_cache_dir() -> PathBuf {
    crate::cache_root().join("images")
}

/// Facts about a build, written as `build.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct BuildFacts {
    pub builder: String,
    pub cache_key: String,
    pub os: String,
    pub version: String,
    pub profile: String,
    pub kernel_package: String,
    pub kernel_version: String,
    /// dm-verity root hash of `/usr` (what `usrhash=` carries).
    pub root_hash: String,
    pub salt: String,
    pub data_blocks: u64,
    /// Size of the erofs image = where the hash area starts in `usr.img`.
    pub hash_offset: u64,
    pub usr_img_bytes: u64,
    pub vmlinuz_bytes: u64,
    pub initrd_bytes: u64,
    pub initrd_modules: Vec<String>,
    pub disk_bytes: u64,
    /// The kernel command line of the slot-A entry, without `usrhash=` / `basalt.slot=`.
    pub cmdline: String,
    /// Milliseconds per step, in order.
    pub durations_ms: Vec<(String, u64)>,
}

/// The result of [`build`].
#[derive(Debug, Clone)]
pub struct BuildReport {
    pub facts: BuildFacts,
    /// The output was copied from the cache.
    pub from_cache: bool,
    /// The cache folder holding this build.
    pub cache_dir: PathBuf,
    /// Wall time of this call.
    pub elapsed: Duration,
}

/// Everything the cache key covers, loaded once.
struct Inputs {
    config: ImageConfig,
    config_bytes: Vec<u8>,
    keys: Vec<SigningKey>,
    trust_bytes: Vec<u8>,
    trust: TrustRoot,
    init_bytes: Vec<u8>,
    busybox_bytes: Vec<u8>,
    mke2fs_bytes: Vec<u8>,
    kernel: KernelTree,
}

/// The cache key: SHA-256 over the builder version, the definition bytes, the profile, the
/// kernel package, the basalt-init bytes, the trust root, the public keys (in the order
/// given), mke2fs (packed into the initramfs), for `minimal` the busybox binary and the init
/// script, for `container-host` the staging revision and the report unit. Other changes to
/// the builder's own code bump [`BUILDER_VERSION`]. (The Debian packages are not pinned: a
/// rebuild after an archive update needs a new definition or a cleared cache.)
/// Length-prefixed so fields cannot run into each other.
fn cache_key(inputs: &Inputs) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut field = |bytes: &[u8]| {
        ctx.update(&(bytes.len() as u64).to_le_bytes());
        ctx.update(bytes);
    };
    field(BUILDER_VERSION.as_bytes());
    field(&inputs.config_bytes);
    field(inputs.config.profile.as_str().as_bytes());
    field(inputs.kernel.package.as_bytes());
    field(&inputs.init_bytes);
    field(&inputs.trust_bytes);
    for key in &inputs.keys {
        field(key.public_key().as_bytes());
    }
    if inputs.config.profile == Profile::Minimal {
        field(&inputs.busybox_bytes);
        field(rootfs::MINIMAL_INIT.as_bytes());
    }
    if inputs.config.profile == Profile::ContainerHost {
        // The staging code's own content (report unit and script, masks).
        field(rootfs::CONTAINER_HOST_STAGING.as_bytes());
        field(rootfs::REPORT_UNIT.as_bytes());
        field(rootfs::REPORT_SCRIPT.as_bytes());
    }
    field(&inputs.mke2fs_bytes);
    hex::encode(ctx.finish().as_ref())
}

fn read(path: &Path) -> Result<Vec<u8>, BuildError> {
    fs::read(path).map_err(io("read", path))
}

fn load_inputs(req: &BuildRequest) -> Result<Inputs, BuildError> {
    let config_bytes = read(&req.config)?;
    let text = String::from_utf8_lossy(&config_bytes);
    let config = ImageConfig::parse(&text, &req.config)?;
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
    })
}

/// Build the release directory `req.out`, from the cache when the inputs were built before.
pub fn build(req: &BuildRequest) -> Result<BuildReport, BuildError> {
    let started = Instant::now();
    let inputs = load_inputs(req)?;
    let key = cache_key(&inputs);
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
            build_into(req, &inputs, &key, work.path())?;
            let staged = work.keep();
            if entry.exists() {
                // A half-written entry from a killed run without build.json: replace it.
                fs::remove_dir_all(&entry).map_err(io("remove stale cache entry", &entry))?;
            }
            fs::rename(&staged, &entry).map_err(io("publish cache entry", &entry))?;
        }
    }
    fs::create_dir_all(&req.out).map_err(io("create output folder", &req.out))?;
    for name in OUTPUT_FILES {
        copy_sparse(&entry.join(name), &req.out.join(name))?;
    }
    let facts_path = entry.join(BUILD_JSON);
    let facts: BuildFacts =
        serde_json::from_slice(&read(&facts_path)?).map_err(|e| BuildError::Io {
            op: "parse",
            path: facts_path.clone(),
            source: e.into(),
        })?;
    Ok(BuildReport {
        facts,
        from_cache,
        cache_dir: entry,
        elapsed: started.elapsed(),
    })
}

/// A step timer for `build.json`.
struct Steps {
    last: Instant,
    done: Vec<(String, u64)>,
}

impl Steps {
    fn new() -> Self {
        Self {
            last: Instant::now(),
            done: Vec::new(),
        }
    }
    fn mark(&mut self, step: &str) {
        let now = Instant::now();
        let ms = now.duration_since(self.last).as_millis() as u64;
        self.done.push((step.to_owned(), ms));
        self.last = now;
    }
}

/// 32 bytes derived from `purpose`, OS name and version: the same release always gets the
/// same salt and UUIDs, two releases never share them.
fn derived_bytes(purpose: &str, config: &ImageConfig) -> [u8; 32] {
    let seed = format!("basalt {purpose} {} {}", config.os.name, config.os.version);
    let d = ring::digest::digest(&ring::digest::SHA256, seed.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn sha256_file(path: &Path) -> Result<Digest, BuildError> {
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

fn file_len(path: &Path) -> Result<u64, BuildError> {
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
/// options that weaken verification only when the definition says it is a test image.
pub fn boot_policy(config: &ImageConfig) -> basalt_initramfs::policy::BootPolicy {
    basalt_initramfs::policy::BootPolicy {
        os: Some(config.os.name.clone()),
        min_usr_version: Some(config.os.version.clone()),
        test_options: config.boot.test_options,
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

fn build_into(
    req: &BuildRequest,
    inputs: &Inputs,
    key: &str,
    work: &Path,
) -> Result<(), BuildError> {
    let config = &inputs.config;
    let kernel = &inputs.kernel;
    let mut steps = Steps::new();

    // 1. /usr
    let staging = work.join("staging");
    fs::create_dir_all(&staging).map_err(io("create", &staging))?;
    let stage_err = |source| BuildError::Stage {
        profile: config.profile.as_str(),
        dir: staging.clone(),
        source,
    };
    match config.profile {
        Profile::Minimal => {
            rootfs::stage_minimal(&staging, &config.os, Path::new(BUSYBOX)).map_err(stage_err)?
        }
        Profile::ContainerHost => {
            let sources =
                rootfs::apt_sources_from_host(Path::new("/etc/apt"), &config.packages.suite)
                    .map_err(stage_err)?;
            rootfs::stage_container_host(&staging, &config.os, &config.packages, &sources)
                .map_err(stage_err)?;
            // systemd's modprobe needs the modules too (not only the initramfs).
            let to = staging.join("usr/lib/modules").join(&kernel.version);
            copy_tree(&kernel.modules_dir, &to)?;
        }
    }
    steps.mark("stage-usr");

    // 2. erofs, then the verity hash area appended at hash_offset = erofs size.
    let usr = work.join(USR_IMG);
    let uuid = erofs::derived_uuid(&format!("{} {}", config.os.name, config.os.version));
    erofs::pack(&staging.join("usr"), &usr, &uuid, Compression::Lz4hc)?;
    fs::remove_dir_all(&staging).map_err(io("remove", &staging))?;
    let erofs_len = file_len(&usr)?;
    steps.mark("erofs");
    if erofs_len == 0 || erofs_len % basalt_verity::BLOCK_SIZE != 0 {
        return Err(BuildError::Io {
            op: "check the size of",
            path: usr.clone(),
            source: std::io::Error::other(format!(
                "erofs image of {erofs_len} bytes is not a non-empty multiple of 4096"
            )),
        });
    }
    let mut verity_uuid = [0u8; 16];
    verity_uuid.copy_from_slice(&derived_bytes("verity-uuid", config)[..16]);
    verity_uuid[6] = (verity_uuid[6] & 0x0f) | 0x40;
    verity_uuid[8] = (verity_uuid[8] & 0x3f) | 0x80;
    let key_refs: Vec<&SigningKey> = inputs.keys.iter().collect();
    // One set of verity parameters: the manifest's usr artifact and the signed statement
    // basalt-init checks carry the same (seal_usr_image returns it).
    let (info, verity) = seal_usr_image(
        &usr,
        erofs_len,
        derived_bytes("verity-salt", config).to_vec(),
        verity_uuid,
        &config.os.name,
        &config.os.version,
        &key_refs,
    )?;
    let root_hash = verity.root_hash;
    let data_blocks = info.data_blocks;
    steps.mark("verity");
    let usr_len = file_len(&usr)?;
    steps.mark("sign-usr-hash");

    // 4. Kernel and initramfs.
    let vmlinuz = work.join(VMLINUZ);
    fs::copy(&kernel.vmlinuz, &vmlinuz).map_err(io("copy kernel", &kernel.vmlinuz))?;
    let trust_copy = work.join("trust.json");
    fs::write(&trust_copy, &inputs.trust_bytes).map_err(io("write", &trust_copy))?;
    let mut optional: Vec<String> = INITRD_OPTIONAL_MODULES.map(String::from).to_vec();
    if config.profile == Profile::ContainerHost {
        optional.extend(CONTAINER_HOST_OPTIONAL_MODULES.map(String::from));
    }
    let initrd = work.join(INITRD_IMG);
    let spec = basalt_initramfs::builder::BuildSpec {
        init: req.init.clone(),
        kernel_dir: kernel.root.clone(),
        kver: kernel.version.clone(),
        modules: INITRD_MODULES.map(String::from).to_vec(),
        optional_modules: optional,
        trust: Some(trust_copy.clone()),
        compression: basalt_initramfs::builder::Compression::Zstd,
    };
    let extras = basalt_initramfs::builder::Extras {
        binaries: vec![PathBuf::from(INITRD_MKE2FS)],
        binary_root: None,
        policy: Some(boot_policy(config)),
    };
    let built = basalt_initramfs::builder::build_with(&spec, &extras).map_err(|source| {
        BuildError::Initramfs {
            path: initrd.clone(),
            source: Box::new(source),
        }
    })?;
    fs::write(&initrd, &built.bytes).map_err(io("write", &initrd))?;
    fs::remove_file(&trust_copy).map_err(io("remove", &trust_copy))?;
    steps.mark("initramfs");

    // 5. The release manifest, signed; checked against the trust root right away.
    let artifact = |kind, name: &str, path: &Path, verity| -> Result<Artifact, BuildError> {
        Ok(Artifact {
            kind,
            name: name.to_owned(),
            size: file_len(path)?,
            sha256: sha256_file(path)?,
            compression: None,
            verity,
        })
    };
    let manifest = Manifest {
        schema_version: SCHEMA_VERSION,
        os: config.os.name.clone(),
        version: config.os.version.clone(),
        channel: config.os.channel.clone(),
        arch: config.os.arch.clone(),
        sequence: config.release.sequence,
        issued_at: req.issued_at,
        expires_at: req.issued_at + ChronoDuration::days(i64::from(config.release.valid_days)),
        artifacts: vec![
            artifact(ArtifactKind::Usr, USR_IMG, &usr, Some(verity))?,
            artifact(ArtifactKind::Kernel, VMLINUZ, &vmlinuz, None)?,
            artifact(ArtifactKind::Initrd, INITRD_IMG, &initrd, None)?,
        ],
    };
    let release_json = work.join(RELEASE_JSON);
    let json = manifest.to_json().map_err(|source| BuildError::Sign {
        what: "release manifest (serialise)",
        source: Box::new(source),
    })?;
    fs::write(&release_json, json).map_err(io("write", &release_json))?;
    let signed = sign_release(&manifest, &key_refs).map_err(|source| BuildError::Sign {
        what: "release manifest",
        source: Box::new(source),
    })?;
    verify_release(&signed, &inputs.trust, &Policy::new(req.issued_at)).map_err(|source| {
        BuildError::KeysDoNotSatisfyTrust {
            trust: req.trust.clone(),
            source: Box::new(source),
        }
    })?;
    let release_signed = work.join(RELEASE_SIGNED);
    fs::write(&release_signed, &signed).map_err(io("write", &release_signed))?;
    steps.mark("manifest");

    // 6. The disk image.
    let disk = work.join(DISK_IMG);
    let cmdline = kernel_cmdline(config);
    write_disk(
        &disk, config, &usr, erofs_len, usr_len, &root_hash, &vmlinuz, &initrd, &cmdline,
    )?;
    steps.mark("disk");

    let facts = BuildFacts {
        builder: BUILDER_VERSION.to_owned(),
        cache_key: key.to_owned(),
        os: config.os.name.clone(),
        version: config.os.version.to_string(),
        profile: config.profile.as_str().to_owned(),
        kernel_package: kernel.package.clone(),
        kernel_version: kernel.version.clone(),
        root_hash: root_hash.to_hex(),
        salt: hex::encode(&info.salt),
        data_blocks,
        hash_offset: erofs_len,
        usr_img_bytes: usr_len,
        vmlinuz_bytes: file_len(&vmlinuz)?,
        initrd_bytes: file_len(&initrd)?,
        initrd_modules: built
            .resolution
            .modules
            .iter()
            .map(|m| m.name.clone())
            .collect(),
        disk_bytes: file_len(&disk)?,
        cmdline,
        durations_ms: steps.done,
    };
    let facts_path = work.join(BUILD_JSON);
    let text = serde_json::to_vec_pretty(&facts).map_err(|e| BuildError::Io {
        op: "serialise",
        path: facts_path.clone(),
        source: e.into(),
    })?;
    fs::write(&facts_path, text).map_err(io("write", &facts_path))?;
    Ok(())
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

#[allow(clippy::too_many_arguments)]
fn write_disk(
    disk: &Path,
    config: &ImageConfig,
    usr: &Path,
    hash_offset: u64,
    usr_len: u64,
    root_hash: &Digest,
    vmlinuz: &Path,
    initrd: &Path,
    cmdline: &str,
) -> Result<(), BuildError> {
    basalt_disk::create_image(disk, &layout_for(config.profile))
        .map_err(disk_err("create the GPT layout", disk))?;

    let version = config.os.version.to_string();
    write_usr_slot(
        disk,
        Slot::A,
        usr,
        hash_offset,
        usr_len,
        root_hash,
        &config.os.name,
        &version,
    )?;

    let inv = Inventory::read_path(disk, None).map_err(disk_err("read the layout", disk))?;
    // ESP: systemd-boot, loader.conf, the blessed slot-A entry with its kernel and initrd.
    let target = BootTarget {
        version: version.clone(),
        usr_hash: root_hash.to_hex(),
        kernel: Some(vmlinuz.to_owned()),
        initrd: Some(initrd.to_owned()),
        options: cmdline.to_owned(),
    };
    install_boot_esp(
        disk,
        inv.esp.offset,
        inv.esp.size,
        Path::new(SYSTEMD_BOOT_EFI),
        &[(Slot::A, target)],
    )
    .map_err(disk_err(
        "install systemd-boot and the slot-A entry on the ESP",
        disk,
    ))?;

    // Root: ext4 with the merged-/usr skeleton, so the first boot needs no mkfs (basalt-init
    // can create it too, when a node's root partition is blank).
    let skeleton = disk.with_file_name("root-skeleton");
    make_root_skeleton(&skeleton)?;
    let blocks = inv.root.size / 4096;
    let mut cmd = MKE2FS.command().map_err(|source| BuildError::Mkfs {
        path: disk.to_owned(),
        source: Box::new(source),
    })?;
    cmd.args(["-q", "-F", "-t", "ext4", "-b", "4096", "-L", "root", "-E"])
        .arg(format!("offset={}", inv.root.offset))
        .arg("-d")
        .arg(&skeleton)
        .arg(disk)
        .arg(blocks.to_string());
    MKE2FS.run(&mut cmd).map_err(|source| BuildError::Mkfs {
        path: disk.to_owned(),
        source: Box::new(source),
    })?;
    fs::remove_dir_all(&skeleton).map_err(io("remove", &skeleton))?;
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
    let facts: BuildFacts =
        serde_json::from_slice(&read(&facts_path)?).map_err(|e| BuildError::Io {
            op: "parse",
            path: facts_path.clone(),
            source: e.into(),
        })?;
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

/// The root partition's first content: merged-/usr symlinks and the empty top-level folders.
/// `/etc` is left out on purpose: basalt-init fills it from `/usr/share/factory/etc` on the
/// first boot.
fn make_root_skeleton(dir: &Path) -> Result<(), BuildError> {
    use std::os::unix::fs::{symlink, PermissionsExt};
    fs::create_dir_all(dir).map_err(io("create", dir))?;
    for (link, to) in [
        ("bin", "usr/bin"),
        ("sbin", "usr/sbin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
    ] {
        let path = dir.join(link);
        symlink(to, &path).map_err(io("symlink", &path))?;
    }
    for (name, mode) in [
        ("usr", 0o755),
        ("dev", 0o755),
        ("proc", 0o555),
        ("sys", 0o555),
        ("run", 0o755),
        ("tmp", 0o1777),
        ("var", 0o755),
        ("root", 0o700),
        ("home", 0o755),
        ("mnt", 0o755),
    ] {
        let path = dir.join(name);
        fs::create_dir(&path).map_err(io("create", &path))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).map_err(io("chmod", &path))?;
    }
    Ok(())
}

/// Copy a folder tree (files, folders, symlinks).
fn copy_tree(from: &Path, to: &Path) -> Result<(), BuildError> {
    fs::create_dir_all(to).map_err(io("create", to))?;
    for entry in fs::read_dir(from).map_err(io("read folder", from))? {
        let entry = entry.map_err(io("read folder", from))?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type().map_err(io("stat", &src))?;
        if kind.is_dir() {
            copy_tree(&src, &dst)?;
        } else if kind.is_symlink() {
            let target = fs::read_link(&src).map_err(io("read link", &src))?;
            std::os::unix::fs::symlink(&target, &dst).map_err(io("symlink", &dst))?;
        } else {
            fs::copy(&src, &dst).map_err(io("copy", &src))?;
        }
    }
    Ok(())
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
