//! `basalt-image`: the build side of Basalt, as a library the `basalt` binary drives.
//!
//! Owns: turning an image definition (`IMAGE.toml`) into a release — the `/usr` tree (from
//! busybox for the `minimal` profile, from Debian packages via mmdebstrap for
//! `container-host`), the erofs image, its verity tree, the kernel and initramfs, the signed
//! manifest and a bootable disk image — with a cache keyed by the inputs' hash.
//! Does not own: the formats themselves (`basalt-verity`, `basalt-manifest`, `basalt-disk`,
//! `basalt-initramfs`), which it calls.

pub mod build;
