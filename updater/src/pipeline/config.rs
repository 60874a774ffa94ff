//! What the production engine needs to know about the node: a plain struct the daemon fills
//! from its TOML configuration (branch `daemon` owns the file format; this is the validated
//! result it hands over).

use std::path::PathBuf;
use std::time::Duration;

/// Which boot-control backend the node uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// systemd-boot BLS entries with boot counting, on the ESP (the default).
    Bls,
    /// ChromeOS/Flatcar GPT priority bits on the slots' data partitions.
    GptPrio,
}

impl BackendKind {
    /// `bls` / `gptprio` (logs, errors).
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Bls => "bls",
            BackendKind::GptPrio => "gptprio",
        }
    }
}

/// How the ESP is reached (BLS backend only).
///
/// Decision: a node normally reaches the ESP **raw**, as the FAT file system inside the ESP
/// partition of the disk (no mount needed, the same code that builds images). Writing a FAT
/// that the kernel has mounted at the same time would corrupt it, so before any ESP write the
/// engine checks `/proc/self/mountinfo` and refuses with `EspMounted` when the partition is
/// mounted. A node that keeps its ESP mounted (systemd's `boot.automount`) configures
/// [`EspLocation::Mounted`] instead: files are then written through the kernel's vfat, with
/// fsync'ed renames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EspLocation {
    /// The FAT inside the disk's ESP partition, written raw.
    Partition,
    /// The ESP mounted at this folder (`/boot`, `/efi`).
    Mounted(PathBuf),
}

/// The engine's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// The disk holding the slots (block device, or an image file in tests).
    pub disk: PathBuf,
    /// Boot-control backend.
    pub backend: BackendKind,
    /// Where the ESP is (BLS).
    pub esp: EspLocation,
    /// The engine's state folder (`/var/lib/basalt`): persisted trust roots (`trust/`), the
    /// download journal, staged kernel and initrd (`staging/`).
    pub state_dir: PathBuf,
    /// The trust root shipped with the OS (an initial trust-root envelope), e.g.
    /// `/usr/share/basalt/trust.json`.
    pub trust_root: PathBuf,
    /// The node's OS name, architecture and channel: releases for anything else are refused.
    pub os: String,
    pub arch: String,
    pub channel: String,
    /// Kernel command-line options written into staged boot entries (besides `usrhash=` and
    /// `basalt.slot=`, which the backend adds).
    pub kernel_options: String,
    /// The running kernel's command line (`/proc/cmdline`): its `usrhash=` names the booted
    /// slot.
    pub cmdline: PathBuf,
    /// `basalt-init`'s record of the boot (`/run/basalt/boot.env`); its `BASALT_USRHASH`
    /// stands in when the command line has none. Absent file: ignored.
    pub boot_env: PathBuf,
    /// The mount table checked before raw ESP writes (`/proc/self/mountinfo`).
    pub mountinfo: PathBuf,
    /// sysfs root, to find the ESP partition's device numbers (`/sys`).
    pub sysfs: PathBuf,
    /// Allowed clock skew for a manifest's issue time.
    pub max_clock_skew: Duration,
    /// Bytes written between two durable checkpoints of the download journal (resume
    /// granularity vs. fsync cost).
    pub checkpoint_bytes: u64,
    /// Most trust-root generations walked in one check.
    pub max_trust_steps: u64,
    /// Node-image-only updates (`update.node_image_only`): keep the booted version's
    /// extension set instead of staging the release's (see `pipeline::extensions`).
    pub node_image_only: bool,
    /// The booted OS's os-release (`/usr/lib/os-release`): what a pinned extension must fit.
    pub os_release: PathBuf,
    /// Where the boot activation mounts the extensions (`/run/extensions`): the active ones.
    pub run_extensions: PathBuf,
}

impl EngineConfig {
    /// The production defaults for `disk`, with the node's identity: BLS on the raw ESP,
    /// `/var/lib/basalt`, `/usr/share/basalt/trust.json`, `/proc/cmdline`,
    /// `/run/basalt/boot.env`, 32 MiB checkpoints, at most 64 trust-root steps per check.
    pub fn new(disk: impl Into<PathBuf>, os: &str, arch: &str, channel: &str) -> Self {
        EngineConfig {
            disk: disk.into(),
            backend: BackendKind::Bls,
            esp: EspLocation::Partition,
            state_dir: PathBuf::from("/var/lib/basalt"),
            trust_root: PathBuf::from("/usr/share/basalt/trust.json"),
            os: os.into(),
            arch: arch.into(),
            channel: channel.into(),
            kernel_options: String::new(),
            cmdline: PathBuf::from("/proc/cmdline"),
            boot_env: PathBuf::from("/run/basalt/boot.env"),
            mountinfo: PathBuf::from("/proc/self/mountinfo"),
            sysfs: PathBuf::from("/sys"),
            max_clock_skew: basalt_manifest::DEFAULT_MAX_CLOCK_SKEW,
            checkpoint_bytes: 32 << 20,
            max_trust_steps: 64,
            node_image_only: false,
            os_release: PathBuf::from("/usr/lib/os-release"),
            run_extensions: PathBuf::from(basalt_sysext::activate::RUN_EXTENSIONS),
        }
    }

    /// `state_dir/trust`: trust-root generations learnt from the repository.
    pub fn trust_dir(&self) -> PathBuf {
        self.state_dir.join("trust")
    }

    /// `state_dir/download.json`: the resume journal.
    pub fn journal_path(&self) -> PathBuf {
        self.state_dir.join("download.json")
    }

    /// `state_dir/extensions`: the extension store, one set per OS version
    /// (`basalt_sysext::store`; on a node `/var/lib/basalt/extensions`).
    pub fn extensions_dir(&self) -> PathBuf {
        self.state_dir.join("extensions")
    }

    /// `state_dir/staging`: kernel and initrd of the release being installed.
    pub fn staging_dir(&self) -> PathBuf {
        self.state_dir.join("staging")
    }
}
