//! `basalt-image`: the build side of Basalt, as a library the `basalt` binary drives.
//!
//! Owns: turning an image definition (`IMAGE.toml`) into a release — the `/usr` tree (from
//! busybox for the `minimal` profile, from Debian packages via mmdebstrap for
//! `container-host`), the erofs image, its verity tree, the kernel and initramfs, the signed
//! manifest and a bootable disk image — with a cache keyed by the inputs' hash ([`build`]);
//! the Debian kernel those images boot, fetched and cached once ([`kernel`]); running the
//! system tools the build needs ([`tool`]); publishing releases into a static repository
//! and listing it ([`release`]); system extension images from a tree or Debian packages
//! ([`sysext`]).
//! Does not own: the formats themselves (`basalt-verity`, `basalt-manifest`, `basalt-disk`,
//! `basalt-initramfs`), which it calls.

pub mod build;
pub mod kernel;
mod lock;
pub mod release;
pub mod sysext;
pub mod tool;

use std::path::PathBuf;

/// The workspace root (the parent of this crate's folder), resolved at compile time. Only
/// used for default cache locations of a development checkout.
pub fn workspace_root() -> PathBuf {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(PathBuf::from)
        .unwrap_or(manifest_dir)
}

/// `<workspace>/build/cache`: downloads and built images shared by every build and test run
/// (git-ignored via `/build`).
pub fn cache_root() -> PathBuf {
    workspace_root().join("build").join("cache")
}
