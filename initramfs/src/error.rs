//! The one error type of `basalt-initramfs`. Variants are named after the operation that
//! failed and carry the path, device or value involved.

use std::io;
use std::path::PathBuf;

/// Every failure of the initramfs builder and of `basalt-init`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // --- kernel command line -------------------------------------------------------------
    /// Reading the kernel command line failed.
    #[error("reading the kernel command line from {path}: {source}")]
    ReadCmdline {
        /// Usually `/proc/cmdline`.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The command line has no `usrhash=`.
    #[error("the kernel command line has no usrhash= (the dm-verity root hash of /usr)")]
    UsrhashMissing,
    /// `usrhash=` is not 64 hex digits.
    #[error("usrhash={value:?} is not a sha256 root hash (64 hex digits): {reason}")]
    UsrhashInvalid {
        /// The value as given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A `basalt.*` or `init=` option has a value we do not accept.
    #[error("kernel command line option {option}={value:?} is invalid: expected {expected}")]
    CmdlineOptionInvalid {
        /// The option name.
        option: String,
        /// The value as given.
        value: String,
        /// What would have been accepted.
        expected: &'static str,
    },

    // --- kernel modules ------------------------------------------------------------------
    /// Reading `modules.dep` / `modules.builtin` or a module file failed.
    #[error("reading {path}: {source}")]
    ReadKernelTree {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The kernel tree has no `lib/modules/<kver>` directory.
    #[error("no modules directory for kernel {kver} under {kernel_dir} (looked for lib/modules/{kver} and usr/lib/modules/{kver})")]
    KernelModulesDirMissing {
        /// The `--kernel-dir` given.
        kernel_dir: PathBuf,
        /// The kernel version.
        kver: String,
    },
    /// A line of `modules.dep` is malformed.
    #[error("{path}:{line}: malformed modules.dep line {content:?}")]
    ModulesDepParse {
        /// The modules.dep file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The line.
        content: String,
    },
    /// A requested module is neither in `modules.dep` nor built in.
    #[error("kernel module {name:?} is not in {modules_dep} (nor built in)")]
    ModuleNotFound {
        /// The module name as requested.
        name: String,
        /// The modules.dep that was searched.
        modules_dep: PathBuf,
    },
    /// `modules.dep` names a dependency that has no entry of its own.
    #[error("kernel module {module} depends on {dependency}, which has no entry in modules.dep")]
    ModuleDependencyMissing {
        /// The dependent module (path as in modules.dep).
        module: String,
        /// The missing dependency (path as in modules.dep).
        dependency: String,
    },
    /// `modules.dep` contains a dependency cycle.
    #[error("kernel module dependency cycle through {module}")]
    ModuleDependencyCycle {
        /// A module on the cycle.
        module: String,
    },
    /// A line of the module list file (`/etc/basalt/modules`) is malformed.
    #[error("module list line {line}: {content:?} is not \"[optional ]/absolute/path.ko\"")]
    ModuleListParse {
        /// 1-based line number.
        line: usize,
        /// The line.
        content: String,
    },
    /// `finit_module(2)` failed.
    #[error("loading kernel module {path}: {source}")]
    LoadModule {
        /// The module file.
        path: PathBuf,
        /// The error from open or finit_module.
        source: io::Error,
    },

    // --- cpio / builder ------------------------------------------------------------------
    /// A path cannot be stored in the archive.
    #[error("archive path {path:?} is invalid: {reason}")]
    ArchivePathInvalid {
        /// The path as given.
        path: String,
        /// Why.
        reason: &'static str,
    },
    /// Two entries want the same path with different kinds (e.g. a file where a directory is needed).
    #[error("archive path {path:?} is already a {existing}, cannot add a {wanted}")]
    ArchivePathConflict {
        /// The path.
        path: String,
        /// What is there.
        existing: &'static str,
        /// What was added.
        wanted: &'static str,
    },
    /// A cpio archive could not be parsed.
    #[error("cpio archive is malformed at byte {offset}: {reason}")]
    CpioParse {
        /// Offset of the bad header.
        offset: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// Compressing the archive failed.
    #[error("compressing the initramfs with {compression}: {source}")]
    Compress {
        /// The compression.
        compression: &'static str,
        /// The error.
        source: io::Error,
    },
    /// Reading a builder input (the init binary, the trust root) failed.
    #[error("reading {path}: {source}")]
    ReadInput {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },

    /// An executable for the initramfs is not an ELF file we can read.
    #[error("{path}: cannot read its dynamic-linking needs: {reason}")]
    ElfParse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A `DT_NEEDED` library of an executable for the initramfs was not found.
    #[error("{binary} needs {library}, found in none of {searched:?}")]
    ElfLibraryNotFound {
        /// The executable or library that needs it.
        binary: PathBuf,
        /// The library name.
        library: String,
        /// The directories searched.
        searched: Vec<PathBuf>,
    },

    // --- finding the disk ----------------------------------------------------------------
    /// Listing block devices in sysfs failed.
    #[error("listing block devices in {path}: {source}")]
    ListBlockDevices {
        /// The sysfs directory.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// Opening a disk or partition failed.
    #[error("opening {device}: {source}")]
    OpenDevice {
        /// The device node or image file.
        device: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The disk has no readable GPT (or one we refuse: see `basalt_identity::gpt`).
    #[error("reading the GPT of {device}: {source}")]
    ReadGpt {
        /// The device node or image file.
        device: PathBuf,
        /// Why the table was refused.
        source: basalt_identity::GptError,
    },
    /// No disk with a GPT appeared in time.
    #[error("no disk with a GPT appeared within {waited_ms} ms")]
    NoBootDisk {
        /// How long we waited.
        waited_ms: u64,
    },
    /// No disk holds a partition with the data UUID derived from `usrhash=`.
    #[error(
        "no partition with UUID {uuid} (first half of usrhash) on any disk within {waited_ms} ms"
    )]
    UsrPartitionNotFound {
        /// The expected partition UUID.
        uuid: basalt_identity::Guid,
        /// How long we waited.
        waited_ms: u64,
    },
    /// The boot disk is not unique: a partition that must be on exactly one disk (the ESP the
    /// loader booted from; without it, the `/usr` data partition) is on several.
    #[error("the boot disk is ambiguous: {what} is on {}; refusing to guess (remove the other disk, or boot through systemd-boot / basalt.bootdisk= to name it)", disks.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(" and "))]
    BootDiskAmbiguous {
        /// What was found twice.
        what: String,
        /// The disks holding it.
        disks: Vec<PathBuf>,
    },
    /// The disk named by the boot loader (or `basalt.bootdisk=`) did not appear.
    #[error("no disk holds partition {uuid} ({named_by}) within {waited_ms} ms")]
    BootDiskNotFound {
        /// The ESP partition UUID.
        uuid: basalt_identity::Guid,
        /// `LoaderDevicePartUUID` or `basalt.bootdisk=`.
        named_by: &'static str,
        /// How long we waited.
        waited_ms: u64,
    },
    /// The boot loader's statement about the boot disk cannot be trusted.
    #[error("the boot loader's boot-disk variable: {source}")]
    BootDiskVariable {
        /// What is wrong with it.
        source: basalt_identity::Error,
    },
    /// The boot disk does not hold the `/usr` slot named by `usrhash=`.
    #[error("the boot disk {disk} has no partition with UUID {uuid} (first half of usrhash) within {waited_ms} ms")]
    UsrNotOnBootDisk {
        /// The boot disk.
        disk: PathBuf,
        /// The expected partition UUID.
        uuid: basalt_identity::Guid,
        /// How long we waited.
        waited_ms: u64,
    },
    /// The disk with the usr data partition has no partition with the verity UUID.
    #[error(
        "{device} has the usr partition but no partition with UUID {uuid} (last half of usrhash)"
    )]
    VerityPartitionNotFound {
        /// The disk.
        device: PathBuf,
        /// The expected partition UUID.
        uuid: basalt_identity::Guid,
    },
    /// The root partition was not found.
    #[error("no root partition {spec} on {device}")]
    RootPartitionNotFound {
        /// The disk searched.
        device: PathBuf,
        /// What was searched for.
        spec: String,
    },
    /// A GPT partition has no matching kernel block device (or its geometry differs).
    #[error("{disk} partition {number}: {reason}")]
    PartitionDevice {
        /// The disk.
        disk: PathBuf,
        /// The GPT partition number (1-based).
        number: u32,
        /// What is wrong.
        reason: String,
    },

    // --- verity --------------------------------------------------------------------------
    /// Reading the verity superblock failed.
    #[error("reading the verity superblock from {device}: {source}")]
    ReadSuperblock {
        /// The hash partition.
        device: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The verity superblock is not acceptable.
    #[error("verity superblock on {device} is invalid: {reason}")]
    SuperblockInvalid {
        /// The hash partition.
        device: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A device-mapper ioctl failed.
    #[error("device-mapper {operation} for {name}: {source}")]
    DmIoctl {
        /// VERSION, DEV_CREATE, TABLE_LOAD, DEV_SUSPEND, ...
        operation: &'static str,
        /// The DM device name.
        name: String,
        /// The error.
        source: io::Error,
    },
    /// The DM reply could not be understood.
    #[error("device-mapper {operation} for {name}: {reason}")]
    DmReply {
        /// The request.
        operation: &'static str,
        /// The DM device name.
        name: String,
        /// What is wrong.
        reason: String,
    },

    /// The usr-hash statement block after the hash tree is missing or malformed.
    #[error("usr-hash statement block: {reason}")]
    UsrSigBlock {
        /// What is wrong.
        reason: String,
    },
    /// A dm-verity parameter of the slot differs from the signed statement's.
    #[error("the slot's {field} is {found}, the signed usr-hash statement says {signed}")]
    VerityNotSigned {
        /// Which parameter.
        field: &'static str,
        /// The signed value.
        signed: String,
        /// What the slot's superblock says.
        found: String,
    },
    /// The statement was signed for another OS than the initramfs boots.
    #[error("the usr-hash statement is for OS {signed:?}; this initramfs boots {expected:?}")]
    UsrWrongOs {
        /// The OS in the statement.
        signed: String,
        /// The OS of the boot policy.
        expected: String,
    },
    /// The signed `/usr` version is below the floor.
    #[error(
        "/usr version {version} is below the floor {floor} set by {set_by}: refusing to roll back"
    )]
    UsrBelowFloor {
        /// The statement's version.
        version: String,
        /// The floor.
        floor: String,
        /// Where the floor comes from.
        set_by: &'static str,
    },
    /// The `/usr` version floor variable cannot be read or written as expected.
    #[error("/usr version floor {path}: {reason}")]
    UsrFloor {
        /// The efivarfs file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The usr-hash statement does not verify against the trust root for this usrhash.
    #[error("usr-hash statement refused: {reason}")]
    UsrSigVerify {
        /// Why (the basalt-manifest error).
        reason: String,
    },

    // --- mounts and switch_root ----------------------------------------------------------
    /// A mount failed.
    #[error("mounting {source_name} ({fstype}) at {target}: {source}")]
    Mount {
        /// What was mounted.
        source_name: String,
        /// The file system type.
        fstype: String,
        /// The mount point.
        target: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A file system operation during the boot (mkdir, copy, unlink) failed.
    #[error("{operation} {path}: {source}")]
    Fs {
        /// What was being done.
        operation: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Reading the start of the root partition (to tell blank from formatted) failed.
    #[error("reading the start of the root partition {device}: {source}")]
    ReadRootPartition {
        /// The partition device.
        device: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The root partition holds something that is neither ext2/3/4 nor blank: never formatted.
    #[error("root partition {device} is neither ext4 nor blank ({found}): refusing to format it; zero its first MiB to have it formatted")]
    RootUnrecognised {
        /// The partition device.
        device: PathBuf,
        /// What was found.
        found: String,
    },
    /// Creating the file system on a blank root partition failed.
    #[error("creating ext4 on {device}: {reason}")]
    Mkfs {
        /// The partition device (or image file).
        device: PathBuf,
        /// What went wrong (spawn error, exit status and output, timeout).
        reason: String,
    },
    /// The init to execute does not resolve to an executable file on the verified `/usr`.
    #[error("init {path} is not a program of the verified /usr: {reason}")]
    InitNotVerified {
        /// The path inside the new root (`init=`).
        path: PathBuf,
        /// What it resolved to instead.
        reason: String,
    },
    /// An entry at the top of the root partition that decides what `/usr`, `/bin`, `/sbin`,
    /// `/lib`, `/lib64` or an API mount point resolves to could not be repaired.
    #[error("root partition entry {name}: {reason}")]
    RootEntry {
        /// The entry (`usr`, `bin`, `run`, …).
        name: String,
        /// What was found and what failed.
        reason: String,
    },
    /// The boot policy file in the initramfs is malformed.
    #[error("boot policy {path}, line {line}: {reason}")]
    PolicyInvalid {
        /// The policy file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A step of switch_root failed.
    #[error("switch_root: {step}: {source}")]
    SwitchRoot {
        /// The step.
        step: &'static str,
        /// The error.
        source: io::Error,
    },
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
