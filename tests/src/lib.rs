//! Basalt's test support for the VM tier: the Debian guest kernel, fetched once and cached
//! ([`kernel`]), the QEMU harness every VM scenario drives ([`vm`]), and small fixture builders
//! that assemble guest inputs with the real system tools ([`fixture`]); the built test images
//! ([`artifacts`]) and the steps the boot-chain scenarios share (install a slot, stage an
//! entry, read the ESP back: [`scenario`]). For the update agent's HTTP tests: real nginx,
//! tinyproxy and a throwaway PKI ([`web`]), and a misbehaving HTTP server ([`faulty_http`]).
//!
//! Owns: how QEMU is started (TCG only, no network, OVMF or direct kernel boot), how the serial
//! console is captured and matched, how a guest is killed, and where the guest kernel comes
//! from. Does not own: the production initramfs (`initramfs/`), the production disk layout
//! (`disk/`) or the image builder (`image/`) — scenarios use those crates and only borrow the
//! harness to boot what they built.
//!
//! The update story on a real node — releases v1, v2, v3 published, v1 booted, updated over
//! HTTP or from a disk, rolled back — is one library of steps ([`story`]) that the
//! `vm_update_*` scenarios and `cargo xtask demo` both run.
//!
//! The scenarios themselves live in `tests/tests/`; see `tests/README.md`.

pub mod artifacts;
pub mod error;
pub mod faulty_http;
pub mod fixture;
pub mod fleet;
pub mod hostile;
pub mod kernel_lines;
pub mod scenario;
pub mod secure;
pub mod story;
pub mod tool;
pub mod vm;
pub mod web;

/// The Debian guest kernel: the product's fetcher (`basalt_image::kernel`), one implementation.
pub use basalt_image::kernel;
pub use basalt_image::kernel::elf;

pub use error::{Error, Result};

use std::path::PathBuf;

/// The workspace root (the parent of this crate's folder).
pub fn workspace_root() -> PathBuf {
    basalt_image::workspace_root()
}

/// `<workspace>/build/cache`: downloads shared by every test run (git-ignored via `/build`).
pub fn cache_root() -> PathBuf {
    basalt_image::cache_root()
}
