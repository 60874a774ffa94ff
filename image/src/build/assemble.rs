//! The cached part of a build: `/usr` → `usr.img`, kernel, initramfs, `disk.img`,
//! `build.json` in a work folder that [`super::image::build`] publishes as a cache entry.
//! Nothing here depends on the time of the request.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use basalt_disk::bls::install_boot_esp;
use basalt_disk::esp::SYSTEMD_BOOT_EFI;
use basalt_disk::gpt::Guid;
use basalt_disk::{BootTarget, Inventory, Slot};
use basalt_manifest::{Digest, SigningKey};

use super::config::{ImageConfig, Profile};
use super::debian::{self, StagedPackage};
use super::erofs::{self, Compression};
use super::error::{disk_err, io, BuildError};
use super::image::{
    boot_policy, derived_bytes, derived_uuid, file_len, kernel_cmdline, layout_for, seal_usr_image,
    sha256_file, write_usr_slot, BasaltFile, BuildFacts, BuildRequest, BUILDER_VERSION, BUILD_JSON,
    DISK_IMG, INITRD_IMG, INITRD_MODULES, INITRD_OPTIONAL_MODULES, USR_IMG, VMLINUZ,
};
use super::inputs::{Inputs, BUSYBOX, INITRD_MKE2FS};
use super::rootfs::{self, ContainerHostInput};
use super::rootpart;
use super::variant::Variant;

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

/// What staging `/usr` found out, for `build.json` and the SBOM.
struct StagedUsr {
    packages: Vec<StagedPackage>,
    modules: Vec<String>,
    trimmed_bytes: u64,
    staging_key: Option<String>,
    /// Host files in `/usr`: (location, host path).
    host_files: Vec<(String, PathBuf)>,
}

/// Build everything of the cache entry into `work`; returns the facts written as
/// `build.json`.
pub(crate) fn build_into(
    req: &BuildRequest,
    inputs: &Inputs,
    key: &str,
    work: &Path,
    log: &mut dyn FnMut(&str),
) -> Result<BuildFacts, BuildError> {
    let config = &inputs.config;
    let kernel = &inputs.kernel;
    let mut steps = Steps::new();

    // 1. /usr
    let staging = work.join("staging");
    fs::create_dir_all(&staging).map_err(io("create", &staging))?;
    let staged = stage_usr(req, inputs, &staging, log)?;
    let usr_tree_bytes = tree_bytes(&staging.join("usr"))?;
    steps.mark("stage-usr");

    // 2. erofs, then the verity hash area and the signed statement appended.
    let usr = work.join(USR_IMG);
    let uuid = erofs::derived_uuid(&format!("{} {}", config.os.name, config.os.version));
    log(&format!(
        "erofs: packing /usr ({} MiB of files, lz4hc)",
        usr_tree_bytes >> 20
    ));
    erofs::pack(&staging.join("usr"), &usr, &uuid, Compression::Lz4hc)?;
    let erofs_len = file_len(&usr)?;
    steps.mark("erofs");
    let mut verity_uuid = [0u8; 16];
    verity_uuid.copy_from_slice(&derived_bytes("verity-uuid", config)[..16]);
    verity_uuid[6] = (verity_uuid[6] & 0x0f) | 0x40;
    verity_uuid[8] = (verity_uuid[8] & 0x3f) | 0x80;
    let key_refs: Vec<&SigningKey> = inputs.keys.iter().collect();
    // One set of verity parameters: the manifest's usr artifact (from build.json's facts) and
    // the signed statement basalt-init checks carry the same (seal_usr_image returns it).
    let (_, verity) = seal_usr_image(
        &usr,
        erofs_len,
        derived_bytes("verity-salt", config).to_vec(),
        verity_uuid,
        &config.os.name,
        &config.os.version,
        &key_refs,
    )?;
    let root_hash = verity.root_hash;
    let usr_len = file_len(&usr)?;
    steps.mark("verity-and-statement");

    // 3. Kernel and initramfs.
    let vmlinuz = work.join(VMLINUZ);
    fs::copy(&kernel.vmlinuz, &vmlinuz).map_err(io("copy kernel", &kernel.vmlinuz))?;
    let initrd = work.join(INITRD_IMG);
    let built = build_initramfs(req, inputs, work, &initrd)?;
    steps.mark("initramfs");

    // 4. The disk image.
    let disk = work.join(DISK_IMG);
    let cmdline = kernel_cmdline(config);
    let image = DiskContent {
        usr: &usr,
        hash_offset: erofs_len,
        usr_len,
        root_hash: &root_hash,
        vmlinuz: &vmlinuz,
        initrd: &initrd,
        cmdline: &cmdline,
        factory: &staging.join("usr/share/factory"),
    };
    write_disk(&disk, config, req.variant, &image)?;
    fs::remove_dir_all(&staging).map_err(io("remove", &staging))?;
    steps.mark("disk");

    // 5. What is in it: host files by package, Basalt programs.
    let mut host_files: Vec<(String, PathBuf, String)> = Vec::new();
    for (location, path) in staged.host_files {
        let sum = sha256_file(&path)?.to_hex();
        host_files.push((location, path, sum));
    }
    for (file, _) in &built.binaries {
        let sum = sha256_file(&file.path)?.to_hex();
        host_files.push((
            format!("{INITRD_IMG}:{}", file.path.display()),
            file.path.clone(),
            sum,
        ));
    }
    let (host_packages, unowned) = debian::host_packages(&host_files)?;
    if let Some(path) = unowned.into_iter().next() {
        return Err(BuildError::HostFileUnowned { path });
    }
    let mut basalt_files = vec![BasaltFile {
        name: "basalt-init".into(),
        location: format!("{INITRD_IMG}:/init"),
        sha256: hex::encode(ring::digest::digest(
            &ring::digest::SHA256,
            &inputs.init_bytes,
        )),
    }];
    for b in &inputs.binaries {
        basalt_files.push(BasaltFile {
            name: b.name.clone(),
            location: b.dest.clone(),
            sha256: hex::encode(ring::digest::digest(&ring::digest::SHA256, &b.bytes)),
        });
    }

    let facts = BuildFacts {
        builder: BUILDER_VERSION.to_owned(),
        cache_key: key.to_owned(),
        os: config.os.name.clone(),
        version: config.os.version.to_string(),
        profile: config.profile.as_str().to_owned(),
        variant: req.variant,
        kernel_package: kernel.package.clone(),
        kernel_version: kernel.version.clone(),
        root_hash: verity.root_hash.to_hex(),
        salt: verity.salt.clone(),
        data_blocks: verity.data_blocks,
        hash_offset: verity.hash_offset,
        usr_img_bytes: usr_len,
        usr_tree_bytes,
        vmlinuz_bytes: file_len(&vmlinuz)?,
        initrd_bytes: file_len(&initrd)?,
        initrd_modules: built
            .resolution
            .modules
            .iter()
            .map(|m| m.name.clone())
            .collect(),
        usr_modules: staged.modules,
        trimmed_bytes: staged.trimmed_bytes,
        disk_bytes: file_len(&disk)?,
        cmdline,
        staging_key: staged.staging_key,
        packages: staged.packages,
        host_packages,
        kernel_deb: inputs.kernel_deb.clone(),
        basalt_files,
        durations_ms: steps.done,
    };
    let facts_path = work.join(BUILD_JSON);
    let text = serde_json::to_vec_pretty(&facts).map_err(|e| BuildError::Io {
        op: "serialise",
        path: facts_path.clone(),
        source: e.into(),
    })?;
    fs::write(&facts_path, text).map_err(io("write", &facts_path))?;
    Ok(facts)
}

/// Stage the profile's `/usr` in `staging/usr`, then the definition's files, binaries, trust
/// root and units.
fn stage_usr(
    req: &BuildRequest,
    inputs: &Inputs,
    staging: &Path,
    log: &mut dyn FnMut(&str),
) -> Result<StagedUsr, BuildError> {
    let config = &inputs.config;
    let stage_err = |source| BuildError::Stage {
        profile: config.profile.as_str(),
        dir: staging.to_owned(),
        source,
    };
    let mut staged = match config.profile {
        Profile::Minimal => {
            rootfs::stage_minimal(staging, &config.os, Path::new(BUSYBOX), req.variant)
                .map_err(stage_err)?;
            StagedUsr {
                packages: Vec::new(),
                modules: Vec::new(),
                trimmed_bytes: 0,
                staging_key: None,
                host_files: vec![("/usr/bin/busybox".into(), PathBuf::from(BUSYBOX))],
            }
        }
        Profile::ContainerHost => {
            let debian = inputs.debian.as_ref().ok_or_else(|| BuildError::Io {
                op: "stage",
                path: staging.to_owned(),
                source: std::io::Error::other("container-host build without Debian packages"),
            })?;
            let request = debian.staging_request(config, &req.debian_cache);
            let tree = debian::stage(&request, debian.lists.path(), log)?;
            let facts = rootfs::stage_container_host(
                staging,
                &ContainerHostInput {
                    debian_tree: &tree.tree(),
                    os: &config.os,
                    variant: req.variant,
                    kernel: &inputs.kernel,
                    modules: &config.kernel.modules,
                    enable: &config.units.enable,
                    mask: &config.units.mask,
                },
            )
            .map_err(stage_err)?;
            StagedUsr {
                packages: tree.facts.packages,
                modules: facts.modules.files,
                trimmed_bytes: facts.trimmed_bytes,
                staging_key: Some(tree.facts.key),
                host_files: Vec::new(),
            }
        }
    };
    for f in &inputs.files {
        if let Some(expected) = &f.replaces {
            rootfs::check_replaced(staging, &f.dest, expected).map_err(stage_err)?;
        }
        rootfs::install_file(staging, &f.dest, &f.bytes, f.mode).map_err(stage_err)?;
    }
    for b in &inputs.binaries {
        rootfs::install_file(staging, &b.dest, &b.bytes, 0o755).map_err(stage_err)?;
    }
    if let Some(dest) = &config.trust.install {
        rootfs::install_file(staging, dest, &inputs.trust_bytes, 0o644).map_err(stage_err)?;
    }
    if config.profile == Profile::ContainerHost {
        rootfs::finish_units(staging, &config.units.enable, &config.units.mask)
            .map_err(stage_err)?;
    }
    staged.host_files.sort();
    Ok(staged)
}

/// Bytes of the regular files under `dir` (symlinks not followed).
fn tree_bytes(dir: &Path) -> Result<u64, BuildError> {
    let mut total = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).map_err(io("read folder", &d))? {
            let entry = entry.map_err(io("read folder", &d))?;
            let meta = entry.metadata().map_err(io("stat", &entry.path()))?;
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                total += meta.len();
            }
        }
    }
    Ok(total)
}

fn build_initramfs(
    req: &BuildRequest,
    inputs: &Inputs,
    work: &Path,
    initrd: &Path,
) -> Result<basalt_initramfs::builder::Built, BuildError> {
    let trust_copy = work.join("trust.json");
    fs::write(&trust_copy, &inputs.trust_bytes).map_err(io("write", &trust_copy))?;
    let optional: Vec<String> = INITRD_OPTIONAL_MODULES.map(String::from).to_vec();
    let spec = basalt_initramfs::builder::BuildSpec {
        init: req.init.clone(),
        kernel_dir: inputs.kernel.root.clone(),
        kver: inputs.kernel.version.clone(),
        modules: INITRD_MODULES.map(String::from).to_vec(),
        optional_modules: optional,
        trust: Some(trust_copy.clone()),
        compression: basalt_initramfs::builder::Compression::Zstd,
    };
    let extras = basalt_initramfs::builder::Extras {
        binaries: vec![PathBuf::from(INITRD_MKE2FS)],
        binary_root: None,
        policy: Some(boot_policy(&inputs.config, req.variant)),
    };
    let built = basalt_initramfs::builder::build_with(&spec, &extras).map_err(|source| {
        BuildError::Initramfs {
            path: initrd.to_owned(),
            source: Box::new(source),
        }
    })?;
    fs::write(initrd, &built.bytes).map_err(io("write", initrd))?;
    fs::remove_file(&trust_copy).map_err(io("remove", &trust_copy))?;
    Ok(built)
}

/// What goes into slot A and onto the ESP.
struct DiskContent<'a> {
    usr: &'a Path,
    hash_offset: u64,
    usr_len: u64,
    root_hash: &'a Digest,
    vmlinuz: &'a Path,
    initrd: &'a Path,
    cmdline: &'a str,
    /// The staged `/usr/share/factory`: `/etc` and `/var` of the root partition.
    factory: &'a Path,
}

/// The disk image: GPT with derived GUIDs, slot A, the ESP (systemd-boot, loader.conf, the
/// blessed slot-A entry), the root filesystem with `/etc` and `/var` from the factory trees.
fn write_disk(
    disk: &Path,
    config: &ImageConfig,
    variant: Variant,
    c: &DiskContent<'_>,
) -> Result<(), BuildError> {
    // The disk GUID, then each partition's, in table order (slot A's are replaced by the
    // ones derived from the root hash when the slot is written).
    let mut n = 0u32;
    let mut next_guid = || {
        n += 1;
        Ok(Guid(derived_uuid(
            &format!("gpt-guid-{n}"),
            config,
            variant,
        )))
    };
    basalt_disk::create_image_with(disk, &layout_for(config.profile), &mut next_guid)
        .map_err(disk_err("create the GPT layout", disk))?;

    let version = config.os.version.to_string();
    write_usr_slot(
        disk,
        Slot::A,
        c.usr,
        c.hash_offset,
        c.usr_len,
        c.root_hash,
        &config.os.name,
        &version,
    )?;

    let inv = Inventory::read_path(disk, None).map_err(disk_err("read the layout", disk))?;
    let target = BootTarget {
        version: version.clone(),
        usr_hash: c.root_hash.to_hex(),
        kernel: Some(c.vmlinuz.to_owned()),
        initrd: Some(c.initrd.to_owned()),
        options: c.cmdline.to_owned(),
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
    let uuid = derived_uuid("root-fs-uuid", config, variant);
    let seed = derived_uuid("root-fs-hash-seed", config, variant);
    rootpart::format_root(disk, inv.root.offset, inv.root.size, &uuid, &seed)?;
    rootpart::seed_factory(disk, inv.root.offset, c.factory)?;
    Ok(())
}
