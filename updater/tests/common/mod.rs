//! Shared fixtures of the pipeline tests: a release repository published with the real
//! publisher (`basalt_image::release`, synthetic payloads), a node disk image with slot A
//! installed and blessed on either boot-control backend, an engine configured for it, and
//! the safety checks every failure test applies.

#![allow(dead_code, clippy::unwrap_used)]

pub mod faulty;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use basalt_disk::esp::format_esp;
use basalt_disk::{
    BlsBackend, BootControl, BootStatus, BootTarget, DirEsp, FatImageEsp, GptPrio, Inventory,
    LayoutSpec, Slot, SlotPart, SlotState,
};
use basalt_image::release::synthetic::{synthetic_release, SyntheticRelease, SyntheticSpec};
use basalt_image::release::{
    publish, publish_root, CompressOptions, PublishReport, PublishRequest,
};
use basalt_manifest::chrono::{TimeDelta, Utc};
use basalt_manifest::{sign_trust_root, Digest, SigningKey, TrustRootDocument};
use basalt_updater::pipeline::{BackendKind, EngineConfig, EspLocation, NodeEngine};
use basalt_updater::source::{FileSource, Source};

pub const MIB: u64 = 1 << 20;

pub fn key(n: u8) -> SigningKey {
    SigningKey::from_seed(&[n; 32]).unwrap()
}

/// A repository whose trust root is 2-of-3 (keys 1, 2, 3; releases signed by 1 and 2).
pub struct World {
    pub tmp: tempfile::TempDir,
    pub dir: PathBuf,
    pub repo: PathBuf,
    pub keys: Vec<SigningKey>,
    /// The generation-1 root as shipped on the node.
    pub anchor: PathBuf,
    /// Uncompressed bytes per frame used by [`World::publish`].
    pub frame_len: u32,
}

impl World {
    pub fn new() -> World {
        World::new_in(&std::env::temp_dir())
    }

    /// A world in a temporary folder under `parent` (e.g. `/dev/shm`, where fsync is free:
    /// the crash sweep replays hundreds of updates).
    pub fn new_in(parent: &Path) -> World {
        let tmp = tempfile::tempdir_in(parent).unwrap();
        let dir = tmp.path().to_path_buf();
        let keys: Vec<SigningKey> = (1..=3).map(key).collect();
        let publics: Vec<_> = keys.iter().map(SigningKey::public_key).collect();
        let root = sign_trust_root(
            &TrustRootDocument::new(1, 2, &publics, None),
            &[&keys[0], &keys[1]],
        )
        .unwrap();
        let anchor = dir.join("trust.json");
        std::fs::write(&anchor, &root).unwrap();
        let repo = dir.join("repo");
        publish_root(&repo, &anchor, &root).unwrap();
        World {
            tmp,
            dir,
            repo,
            keys,
            anchor,
            frame_len: 256 << 10,
        }
    }

    /// A synthetic release of `version` with `usr_len` bytes of /usr, signed by keys 1+2.
    pub fn release(&self, version: &str, usr_len: u64) -> SyntheticRelease {
        let mut spec = SyntheticSpec::small(version, Utc::now()).unwrap();
        spec.usr_len = usr_len;
        spec.kernel_len = 300 << 10;
        spec.initrd_len = 200 << 10;
        synthetic_release(
            &self.dir.join(format!("release-{version}")),
            &spec,
            &[&self.keys[0], &self.keys[1]],
        )
        .unwrap()
    }

    /// A synthetic release of `version` (1 MiB of /usr) of `sysext_level`, listing the
    /// extension images `images` (issue 10), signed by keys 1+2.
    pub fn release_with_extensions(
        &self,
        version: &str,
        sysext_level: Option<&str>,
        images: Vec<PathBuf>,
    ) -> SyntheticRelease {
        let mut spec = SyntheticSpec::small(version, Utc::now()).unwrap();
        spec.usr_len = MIB;
        spec.sysext_level = sysext_level.map(Into::into);
        spec.extensions = images;
        synthetic_release(
            &self.dir.join(format!("release-{version}")),
            &spec,
            &[&self.keys[0], &self.keys[1]],
        )
        .unwrap()
    }

    /// Publish `rel` on `stable` (frames of `frame_len`, zstd 3).
    pub fn publish(&self, rel: &SyntheticRelease, sequence: Option<u64>) -> PublishReport {
        self.publish_on(rel, "stable", sequence, false).unwrap()
    }

    pub fn publish_on(
        &self,
        rel: &SyntheticRelease,
        channel: &str,
        sequence: Option<u64>,
        allow_downgrade: bool,
    ) -> Result<PublishReport, basalt_image::release::ReleaseError> {
        let keys = [key(1), key(2)];
        publish(&PublishRequest {
            release_dir: &rel.dir,
            repo: &self.repo,
            channel,
            keys: &keys,
            sequence,
            allow_downgrade,
            now: Utc::now(),
            valid_for: Some(TimeDelta::days(30)),
            compress: CompressOptions {
                level: 3,
                frame_len: self.frame_len,
                threads: 2,
            },
        })
    }

    pub fn source(&self) -> FileSource {
        FileSource::new(&self.repo)
    }
}

/// Which ESP a BLS node uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EspKind {
    /// The FAT inside the disk image's ESP partition (raw access).
    Fat,
    /// A folder standing for a mounted ESP.
    Dir,
}

/// The test disk: 48 MiB, 8 MiB ESP, 8 MiB usr, 512 KiB verity per slot.
pub fn spec() -> LayoutSpec {
    LayoutSpec {
        disk_size: 48 * MIB,
        esp_size: 8 * MIB,
        usr_size: 8 * MIB,
        verity_size: 512 << 10,
        slot_reserve: MIB,
        root_size: None,
        align: MIB,
    }
}

/// A node: slot A holds 1.0.0, blessed; booted from A.
pub struct Node {
    pub dir: PathBuf,
    pub config: EngineConfig,
    pub backend: BackendKind,
    pub esp_kind: EspKind,
    pub v1: SyntheticRelease,
}

pub fn boot_target(rel: &SyntheticRelease) -> BootTarget {
    BootTarget {
        version: rel.manifest.version.to_string(),
        usr_hash: rel.root_hash.to_hex(),
        kernel: Some(rel.dir.join("vmlinuz")),
        initrd: Some(rel.dir.join("initrd.img")),
        options: "console=ttyS0".into(),
    }
}

impl Node {
    pub fn new(world: &World, name: &str, backend: BackendKind, esp_kind: EspKind) -> Node {
        Node::with_spec(world, name, backend, esp_kind, &spec())
    }

    pub fn with_spec(
        world: &World,
        name: &str,
        backend: BackendKind,
        esp_kind: EspKind,
        spec: &LayoutSpec,
    ) -> Node {
        let dir = world.dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let disk = dir.join("disk.img");
        basalt_disk::create_image(&disk, spec).unwrap();
        let v1 = world.release("1.0.0", MIB);
        let usr = v1.dir.join("usr.img");
        let usr_len = std::fs::metadata(&usr).unwrap().len();
        basalt_image::build::image::write_usr_slot(
            &disk,
            Slot::A,
            &usr,
            v1.hash_offset,
            usr_len,
            &v1.root_hash,
            "basalt",
            "1.0.0",
        )
        .unwrap();
        let inv = Inventory::read_path(&disk, None).unwrap();
        let esp_dir = dir.join("esp");
        let esp = match esp_kind {
            EspKind::Fat => EspLocation::Partition,
            EspKind::Dir => EspLocation::Mounted(esp_dir.clone()),
        };
        match backend {
            BackendKind::Bls => match esp_kind {
                EspKind::Fat => {
                    format_esp(&disk, inv.esp.offset, inv.esp.size).unwrap();
                    let mut b = BlsBackend::new(
                        FatImageEsp::open(&disk, inv.esp.offset, inv.esp.size).unwrap(),
                    );
                    b.stage(Slot::A, &boot_target(&v1), 1).unwrap();
                    b.mark_good(Slot::A).unwrap();
                }
                EspKind::Dir => {
                    std::fs::create_dir_all(&esp_dir).unwrap();
                    let mut b = BlsBackend::new(DirEsp::new(&esp_dir));
                    b.stage(Slot::A, &boot_target(&v1), 1).unwrap();
                    b.mark_good(Slot::A).unwrap();
                }
            },
            BackendKind::GptPrio => {
                let mut g = GptPrio::new(basalt_disk::slots::open_rw(&disk).unwrap(), &disk);
                g.mark_good(Slot::A).unwrap();
            }
        }
        let cmdline = dir.join("cmdline");
        std::fs::write(
            &cmdline,
            format!(
                "console=ttyS0 usrhash={} basalt.slot=a\n",
                v1.root_hash.to_hex()
            ),
        )
        .unwrap();
        let mut config = EngineConfig::new(&disk, "basalt", "x86_64", "stable");
        config.backend = backend;
        config.esp = esp;
        config.state_dir = dir.join("state");
        config.trust_root = world.anchor.clone();
        config.kernel_options = "console=ttyS0".into();
        config.cmdline = cmdline;
        config.boot_env = dir.join("boot.env");
        config.checkpoint_bytes = 512 << 10;
        Node {
            dir,
            config,
            backend,
            esp_kind,
            v1,
        }
    }

    pub fn disk(&self) -> &Path {
        &self.config.disk
    }

    pub fn engine(&self, source: Box<dyn Source>) -> NodeEngine {
        NodeEngine::new(self.config.clone(), source)
    }

    pub fn boot_control(&self) -> Box<dyn BootControl> {
        let disk = self.disk().to_path_buf();
        match (self.backend, &self.config.esp) {
            (BackendKind::GptPrio, _) => Box::new(GptPrio::new(
                basalt_disk::slots::open_rw(&disk).unwrap(),
                &disk,
            )),
            (BackendKind::Bls, EspLocation::Mounted(d)) => {
                Box::new(BlsBackend::new(DirEsp::new(d)))
            }
            (BackendKind::Bls, EspLocation::Partition) => {
                let inv = Inventory::read_path(&disk, None).unwrap();
                Box::new(BlsBackend::new(
                    FatImageEsp::open(&disk, inv.esp.offset, inv.esp.size).unwrap(),
                ))
            }
        }
    }

    /// The content state of `slot` (from the GPT).
    pub fn state(&self, slot: Slot) -> SlotState {
        self.inventory().slot(slot).state
    }

    pub fn inventory(&self) -> Inventory {
        Inventory::read_path(self.disk(), None).unwrap()
    }

    /// SHA-256 of a slot partition's first `len` bytes (all of it when `None`).
    pub fn part_sha(&self, slot: Slot, part: SlotPart) -> Digest {
        let inv = self.inventory();
        let mut r = inv.slot_range(slot, part).open_read().unwrap();
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut buf = vec![0u8; MIB as usize];
        loop {
            let n = r.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            ctx.update(&buf[..n]);
        }
        let mut d = [0u8; 32];
        d.copy_from_slice(ctx.finish().as_ref());
        Digest(d)
    }

    /// What must not change when an update of slot B fails.
    pub fn snapshot(&self) -> Snapshot {
        self.snapshot_of(Slot::A)
    }

    /// What must not change in the booted slot `booted` when an update fails.
    pub fn snapshot_of(&self, booted: Slot) -> Snapshot {
        Snapshot {
            a_data: self.part_sha(booted, SlotPart::Data),
            a_verity: self.part_sha(booted, SlotPart::Verity),
            a_boot: self.boot_control().status().unwrap().slot(booted).status,
            a_label: self.inventory().slot(booted).data.label.clone(),
        }
    }

    /// The failure checks: A's bytes, label and boot state are exactly as before; B cannot
    /// boot (no valid image or no boot entry/priority); A boots next.
    pub fn assert_safe(&self, before: &Snapshot, ctx: &str) {
        self.assert_safe_for(Slot::A, before, ctx)
    }

    /// [`Node::assert_safe`] with `booted` as the booted slot.
    pub fn assert_safe_for(&self, booted: Slot, before: &Snapshot, ctx: &str) {
        let now = self.snapshot_of(booted);
        assert_eq!(now, *before, "{ctx}: the booted slot {booted} changed");
        let st = self.boot_control().status().unwrap();
        assert_eq!(st.next, Some(booted), "{ctx}: {booted} does not boot next");
        let other = !booted;
        let b = st.slot(other).status;
        let inv = self.inventory();
        let b_state = inv.slot(other).state;
        assert!(
            !matches!(b, BootStatus::Trying { .. } | BootStatus::Good),
            "{ctx}: slot {other} has a live boot entry ({b:?}, {b_state:?})"
        );
    }

    /// Write both partitions of `slot` to files and run `veritysetup verify` on them.
    pub fn veritysetup_verify(&self, slot: Slot, root_hash: &Digest) {
        let inv = self.inventory();
        let mut paths = Vec::new();
        for part in [SlotPart::Data, SlotPart::Verity] {
            let mut r = inv.slot_range(slot, part).open_read().unwrap();
            let mut bytes = Vec::new();
            r.read_to_end(&mut bytes).unwrap();
            let p = self
                .dir
                .join(format!("{}-{}.part", slot.letter(), part.as_str()));
            std::fs::write(&p, bytes).unwrap();
            paths.push(p);
        }
        peer(
            "veritysetup",
            "cryptsetup-bin",
            &[
                "verify",
                paths[0].to_str().unwrap(),
                paths[1].to_str().unwrap(),
                &root_hash.to_hex(),
            ],
        );
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub a_data: Digest,
    pub a_verity: Digest,
    pub a_boot: BootStatus,
    pub a_label: String,
}

/// Run a peer tool, requiring success; fails (never skips) naming the Debian package.
pub fn peer(tool: &str, package: &str, args: &[&str]) -> Output {
    let out = Command::new(tool)
        .args(args)
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .unwrap_or_else(|e| panic!("{tool} not runnable ({e}): apt-get install {package}"));
    assert!(
        out.status.success(),
        "{tool} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A check of a node that booted 1.0.0 and has seen nothing yet.
pub fn request() -> basalt_updater::engine::CheckRequest {
    basalt_updater::engine::CheckRequest {
        now: Utc::now(),
        installed_version: Some("1.0.0".parse().unwrap()),
        last_seen: None,
        allow_downgrade: false,
    }
}

/// A progress callback that ignores reports.
pub fn quiet() -> impl FnMut(&basalt_updater::engine::Progress) {
    |_| {}
}

/// How a test extension is made (issue 10).
#[derive(Debug, Clone)]
pub struct Ext {
    pub name: &'static str,
    pub version: &'static str,
    pub level: Option<&'static str>,
    pub version_id: Option<&'static str>,
    pub signers: Vec<u8>,
}

impl Ext {
    pub fn tools(version: &'static str) -> Ext {
        Ext {
            name: "tools",
            version,
            level: Some("1"),
            version_id: None,
            signers: vec![1, 2],
        }
    }
}

/// Builds `ext` into `dir/NAME.raw` from a small tree (a script naming its version).
pub fn build_ext(dir: &Path, ext: &Ext) -> PathBuf {
    let src = dir.join(format!("src-{}-{}", ext.name, ext.version));
    std::fs::create_dir_all(src.join("usr/bin")).unwrap();
    std::fs::write(
        src.join(format!("usr/bin/{}-version", ext.name)),
        format!("#!/bin/sh\necho {} {}\n", ext.name, ext.version),
    )
    .unwrap();
    std::fs::write(src.join("usr/bin/filler"), vec![0x5au8; 64 << 10]).unwrap();
    let keys: Vec<SigningKey> = ext.signers.iter().copied().map(key).collect();
    let refs: Vec<&SigningKey> = keys.iter().collect();
    let out = dir.join(format!("out-{}-{}", ext.name, ext.version));
    let built = basalt_image::sysext::build(
        &basalt_image::sysext::SysextSpec {
            name: ext.name.into(),
            version: basalt_manifest::semver::Version::parse(ext.version).unwrap(),
            os: "basalt".into(),
            sysext_level: ext.level.map(Into::into),
            version_id: ext.version_id.map(Into::into),
            architecture: Some("x86-64".into()),
            source: basalt_image::sysext::Source::Tree(src),
        },
        &refs,
        &out,
        &dir.join("debs"),
        None,
    )
    .unwrap();
    built.path
}

/// The region of 1.0.0's data the "rebuilt binary" of [`rebuilt_release`] occupies.
pub const REBUILT: std::ops::Range<usize> = 40..200;

/// `version`: slot A's 1.0.0 data with blocks 40..200 "rebuilt": their bytes shifted by one (a
/// new byte in front, the last one dropped) and a few bytes changed, so every one of those
/// 160 blocks is new while a delta against 1.0.0 is tiny, as for a recompiled binary.
pub fn rebuilt_release(world: &World, node: &Node, version: &str) -> SyntheticRelease {
    let v1 = std::fs::read(node.v1.dir.join("usr.img")).unwrap();
    let mut data = v1[..node.v1.hash_offset as usize].to_vec();
    let (a, z) = (REBUILT.start * 4096, REBUILT.end * 4096);
    let mut region = vec![0xab];
    region.extend_from_slice(&v1[a..z - 1]);
    for at in [1000, 70_000, 300_000, 600_000] {
        region[at] ^= 0x5a;
    }
    data.splice(a..z, region);
    let mut spec = SyntheticSpec::small(version, Utc::now()).unwrap();
    spec.kernel_len = 300 << 10;
    spec.initrd_len = 200 << 10;
    basalt_image::release::synthetic::synthetic_release_with_data(
        &world.dir.join(format!("release-{version}")),
        &spec,
        &data,
        &[&world.keys[0], &world.keys[1]],
    )
    .unwrap()
}
