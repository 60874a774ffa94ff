//! Stable failure reasons of `basalt-init`: one per failure class, printed as
//! `BASALT-INIT FAILED reason=<reason>: <error chain>` before the reboot. Tests (and the QEMU
//! scenarios) match on these strings, so they never change meaning.

use std::fmt;

use crate::error::Error;

/// Why the boot failed (a failure class, not the detailed cause).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Not running as PID 1 (refused before doing anything).
    NotPid1,
    /// Mounting /dev, /proc, /sys or /run failed.
    EarlyMounts,
    /// The command line has no `usrhash=`.
    UsrhashMissing,
    /// The command line has an invalid option (including a malformed `usrhash=`).
    CmdlineInvalid,
    /// A required kernel module did not load.
    ModuleLoad,
    /// No disk with a GPT appeared in time.
    NoBootDisk,
    /// Several disks claim to be the boot disk (the loader's ESP, or without one the `/usr`
    /// slot, is on more than one): refused rather than guessed.
    BootDiskAmbiguous,
    /// No disk has the usr data partition named by `usrhash=` (or the boot disk lacks it).
    UsrPartitionNotFound,
    /// The disk has the usr data partition but not its verity partition.
    VerityPartitionNotFound,
    /// The root partition is missing or ambiguous.
    RootPartitionNotFound,
    /// A GPT entry has no matching kernel partition device.
    PartitionDevice,
    /// The verity superblock is unreadable or does not fit the partitions.
    SuperblockInvalid,
    /// The root hash is not signed by the trust root in the initramfs.
    UsrhashNotSigned,
    /// A dm-verity parameter of the slot (salt, data blocks, …) is not the signed one.
    VerityNotSigned,
    /// The usr-hash statement is for another OS than this initramfs boots.
    UsrWrongOs,
    /// The signed `/usr` version is below the floor (policy or `BasaltUsrFloor`).
    UsrBelowFloor,
    /// A device-mapper ioctl failed.
    DmSetup,
    /// Mounting `/usr` (erofs on dm-verity) failed.
    MountUsr,
    /// Mounting the root partition failed (including a present but corrupted ext4, which
    /// is never reformatted).
    MountRoot,
    /// The root partition is neither ext2/3/4 nor blank: refused, never formatted.
    RootUnrecognised,
    /// Creating ext4 on the blank root partition failed (no mke2fs, error, timeout).
    MkfsRoot,
    /// Creating the root's skeleton (merged-/usr links, top-level directories) or its
    /// `/var` from `/usr/share/factory/var` failed.
    PopulateRoot,
    /// Populating `/etc` from `/usr/share/factory/etc` failed.
    PopulateEtc,
    /// `init=` does not resolve to an executable file on the verified `/usr`.
    InitNotVerified,
    /// An entry of the root partition that decides what `/usr`, `/bin`, `/sbin`, `/lib`,
    /// `/lib64` or an API mount point resolves to could not be repaired.
    RootEntries,
    /// The boot policy packed into the initramfs is unreadable or malformed.
    BootPolicy,
    /// `switch_root` or exec of the real init failed.
    SwitchRoot,
    /// `basalt-init` panicked (a bug).
    Panic,
}

impl Reason {
    /// Every reason, for tests and docs.
    pub const ALL: [Reason; 28] = [
        Reason::NotPid1,
        Reason::EarlyMounts,
        Reason::UsrhashMissing,
        Reason::CmdlineInvalid,
        Reason::ModuleLoad,
        Reason::NoBootDisk,
        Reason::BootDiskAmbiguous,
        Reason::UsrPartitionNotFound,
        Reason::VerityPartitionNotFound,
        Reason::RootPartitionNotFound,
        Reason::PartitionDevice,
        Reason::SuperblockInvalid,
        Reason::UsrhashNotSigned,
        Reason::VerityNotSigned,
        Reason::UsrWrongOs,
        Reason::UsrBelowFloor,
        Reason::DmSetup,
        Reason::MountUsr,
        Reason::MountRoot,
        Reason::RootUnrecognised,
        Reason::MkfsRoot,
        Reason::PopulateRoot,
        Reason::PopulateEtc,
        Reason::InitNotVerified,
        Reason::RootEntries,
        Reason::BootPolicy,
        Reason::SwitchRoot,
        Reason::Panic,
    ];

    /// The stable token.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NotPid1 => "not-pid1",
            Reason::EarlyMounts => "early-mounts",
            Reason::UsrhashMissing => "usrhash-missing",
            Reason::CmdlineInvalid => "cmdline-invalid",
            Reason::ModuleLoad => "module-load",
            Reason::NoBootDisk => "no-boot-disk",
            Reason::BootDiskAmbiguous => "boot-disk-ambiguous",
            Reason::UsrPartitionNotFound => "usr-partition-not-found",
            Reason::VerityPartitionNotFound => "verity-partition-not-found",
            Reason::RootPartitionNotFound => "root-partition-not-found",
            Reason::PartitionDevice => "partition-device",
            Reason::SuperblockInvalid => "superblock-invalid",
            Reason::UsrhashNotSigned => "usrhash-not-signed",
            Reason::VerityNotSigned => "verity-not-signed",
            Reason::UsrWrongOs => "usr-wrong-os",
            Reason::UsrBelowFloor => "usr-below-floor",
            Reason::DmSetup => "dm-setup",
            Reason::MountUsr => "mount-usr",
            Reason::MountRoot => "mount-root",
            Reason::RootUnrecognised => "root-unrecognised",
            Reason::MkfsRoot => "mkfs-root",
            Reason::PopulateRoot => "populate-root",
            Reason::PopulateEtc => "populate-etc",
            Reason::InitNotVerified => "init-not-verified",
            Reason::RootEntries => "root-entries",
            Reason::BootPolicy => "boot-policy",
            Reason::SwitchRoot => "switch-root",
            Reason::Panic => "panic",
        }
    }

    /// The reason of a disk-search or command-line error whose class follows from the
    /// error itself; `fallback` for all others.
    pub fn of(err: &Error, fallback: Reason) -> Reason {
        match err {
            Error::UsrhashMissing => Reason::UsrhashMissing,
            Error::UsrhashInvalid { .. } | Error::CmdlineOptionInvalid { .. } => {
                Reason::CmdlineInvalid
            }
            Error::NoBootDisk { .. }
            | Error::BootDiskNotFound { .. }
            | Error::BootDiskVariable { .. } => Reason::NoBootDisk,
            Error::BootDiskAmbiguous { .. } => Reason::BootDiskAmbiguous,
            Error::UsrPartitionNotFound { .. } | Error::UsrNotOnBootDisk { .. } => {
                Reason::UsrPartitionNotFound
            }
            Error::VerityPartitionNotFound { .. } => Reason::VerityPartitionNotFound,
            Error::RootPartitionNotFound { .. } => Reason::RootPartitionNotFound,
            Error::PartitionDevice { .. } => Reason::PartitionDevice,
            Error::RootUnrecognised { .. } => Reason::RootUnrecognised,
            Error::Mkfs { .. } => Reason::MkfsRoot,
            Error::InitNotVerified { .. } => Reason::InitNotVerified,
            Error::VerityNotSigned { .. } => Reason::VerityNotSigned,
            Error::UsrWrongOs { .. } => Reason::UsrWrongOs,
            Error::UsrBelowFloor { .. } => Reason::UsrBelowFloor,
            Error::RootEntry { .. } => Reason::RootEntries,
            Error::PolicyInvalid { .. } => Reason::BootPolicy,
            _ => fallback,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed boot: the class and the detailed error.
#[derive(Debug)]
pub struct Failure {
    /// The failure class.
    pub reason: Reason,
    /// What exactly failed.
    pub error: Error,
}

impl Failure {
    /// The console line: `BASALT-INIT FAILED reason=<reason>: <error>` (every error's
    /// message already includes its cause).
    pub fn line(&self) -> String {
        format!("BASALT-INIT FAILED reason={}: {}", self.reason, self.error)
    }
}

/// Attach a failure class to a result.
pub trait Classify<T> {
    /// `Err(e)` becomes a [`Failure`] with `reason`.
    fn class(self, reason: Reason) -> Result<T, Failure>;
}

impl<T> Classify<T> for Result<T, Error> {
    fn class(self, reason: Reason) -> Result<T, Failure> {
        self.map_err(|error| Failure { reason, error })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn tokens_are_unique_lowercase_words() {
        let set: BTreeSet<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(set.len(), Reason::ALL.len());
        for r in set {
            assert!(r
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'-' || b.is_ascii_digit()));
        }
    }

    #[test]
    fn failure_line_carries_reason_and_cause() {
        let f = Failure {
            reason: Reason::MountRoot,
            error: Error::Mount {
                source_name: "/dev/vda9".into(),
                fstype: "ext4".into(),
                target: "/sysroot".into(),
                source: std::io::Error::from_raw_os_error(libc::EINVAL),
            },
        };
        let line = f.line();
        assert!(
            line.starts_with("BASALT-INIT FAILED reason=mount-root: mounting /dev/vda9"),
            "{line}"
        );
        assert!(line.contains("Invalid argument"), "{line}");
        assert_eq!(
            Reason::of(&Error::UsrhashMissing, Reason::Panic),
            Reason::UsrhashMissing
        );
        assert_eq!(
            Reason::of(&Error::NoBootDisk { waited_ms: 1 }, Reason::Panic),
            Reason::NoBootDisk
        );
    }
}
