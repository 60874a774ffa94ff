//! The system tools the VM tier drives. [`Tool`] (locate, run, errors naming the Debian
//! package) is the build tool's (`basalt_image::tool`); this module adds the peers only tests
//! use. A missing tool is an error, never a skip.

pub use basalt_image::tool::*;

/// GNU `cpio` (package `cpio`).
pub const CPIO: Tool = Tool::new("cpio", "cpio");
/// `sgdisk` (package `gdisk`).
pub const SGDISK: Tool = Tool::new("sgdisk", "gdisk");
/// `mkfs.vfat` (package `dosfstools`).
pub const MKFS_VFAT: Tool = Tool::new("mkfs.vfat", "dosfstools");
/// `mcopy` (package `mtools`).
pub const MCOPY: Tool = Tool::new("mcopy", "mtools");
/// `mmd` (package `mtools`).
pub const MMD: Tool = Tool::new("mmd", "mtools");
/// `mdir` (package `mtools`).
pub const MDIR: Tool = Tool::new("mdir", "mtools");
/// `qemu-system-x86_64` (package `qemu-system-x86`).
pub const QEMU: Tool = Tool::new("qemu-system-x86_64", "qemu-system-x86");
/// `veritysetup` (package `cryptsetup-bin`).
pub const VERITYSETUP: Tool = Tool::new("veritysetup", "cryptsetup-bin");
/// `nginx` (package `nginx-light`; any nginx flavour with the ssl module works).
pub const NGINX: Tool = Tool::new("nginx", "nginx-light");
/// `openssl` (package `openssl`).
pub const OPENSSL: Tool = Tool::new("openssl", "openssl");
/// `tinyproxy` (package `tinyproxy`).
pub const TINYPROXY: Tool = Tool::new("tinyproxy", "tinyproxy");
/// `curl` (package `curl`).
pub const CURL: Tool = Tool::new("curl", "curl");
