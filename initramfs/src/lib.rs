//! Basalt's initramfs: `basalt-init`, PID 1 of the initramfs, and the builder that packs it.
//!
//! Owns: the boot-time path from kernel to the real root — kernel command line
//! ([`cmdline`]), the boot policy packed at build time ([`policy`]), kernel modules
//! ([`modules`]), choosing the boot disk and finding the `/usr` slot on it by its
//! hash-derived partition UUIDs ([`locate`], [`gpt`], [`blockdev`]), the superblock fit check and the
//! verity table ([`slot`]), the signed usr-hash statement stored after the hash tree and its
//! check ([`usrsig`]), issuing the device-mapper ioctls (`dm`), first boot on a blank root
//! partition (blank detection, `mke2fs`, the root skeleton and `/var`: [`rootfs`]), mounting,
//! first-boot `/etc` ([`factory`]) and `switch_root`, in order in `boot`, with one stable
//! failure reason per class ([`reason`]), left for the next boot in an EFI variable
//! ([`failrec`]) — and the reproducible cpio/initramfs builder
//! ([`cpio`], [`builder`]), which can add host executables with their shared-library
//! closure ([`elf`]).
//!
//! Does not own: partition identity — GUIDs, the root hash → partition UUID rule, the GPT
//! reader, `usrhash=` splitting, EFI variables (`basalt-identity`, shared with `basalt-disk`
//! and the updater); the verity on-disk format and the bytes of DM requests (`basalt-verity`),
//! the partition layout written at image build time (`basalt-disk`), signature policy
//! (`basalt-manifest`), or choosing which slot boots (systemd-boot boot counting).
//!
//! `basalt-init` is synchronous, uses only `std` + `libc` for system calls, and is linked
//! statically; everything that can run on the host is in pure modules with unit tests.

pub mod blockdev;
pub mod builder;
pub mod cmdline;
pub mod cpio;
pub mod elf;
mod error;
pub mod gpt;
pub mod locate;
pub mod modules;
pub mod policy;

pub use error::{Error, Result};
#[cfg(target_os = "linux")]
pub mod boot;
#[cfg(target_os = "linux")]
pub mod dm;
pub mod factory;
pub mod failrec;
#[cfg(target_os = "linux")]
pub mod floor;
pub mod reason;
pub mod rootfs;
pub mod slot;
#[cfg(target_os = "linux")]
pub mod switch_root;
#[cfg(target_os = "linux")]
pub mod sys;
pub mod usrsig;
