//! Basalt's test support for the VM tier: the Debian guest kernel, fetched once and cached
//! ([`kernel`]), the QEMU harness every VM scenario drives ([`vm`]), and small fixture builders
//! that assemble guest inputs with the real system tools ([`fixture`]).
//!
//! Owns: how QEMU is started (TCG only, no network, OVMF or direct kernel boot), how the serial
//! console is captured and matched, how a guest is killed, and where the guest kernel comes
//! from. Does not own: the production initramfs (`initramfs/`), the production disk layout
//! (`disk/`) or the image builder (`image/`) — scenarios use those crates and only borrow the
//! harness to boot what they built.
//!
//! The scenarios themselves live in `tests/tests/`; see `tests/README.md`.

pub mod elf;
pub mod error;
pub mod fixture;
pub mod kernel;
pub mod tool;
pub mod vm;

pub use error::{Error, Result};

use std::path::PathBuf;

/// The workspace root (the parent of this crate's folder), resolved at compile time.
pub fn workspace_root() -> PathBuf {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(PathBuf::from)
        .unwrap_or(manifest_dir)
}

/// `<workspace>/build/cache`: downloads shared by every test run (git-ignored via `/build`).
pub fn cache_root() -> PathBuf {
    workspace_root().join("build").join("cache")
}
