//! Basalt's initramfs: `basalt-init`, PID 1 of the initramfs, and the builder that packs it.
//!
//! Owns: the boot-time path from kernel to the real root — kernel command line
//! ([`cmdline`]), kernel modules ([`modules`]), finding the `/usr` slot by its
//! hash-derived partition UUIDs ([`gpt`], [`blockdev`]), the superblock fit check and the
//! verity table ([`slot`]), the signed usr-hash statement stored after the hash tree and its
//! check ([`usrsig`]), issuing the device-mapper ioctls (`dm`), first boot on a blank root
//! partition (blank detection, `mke2fs`, the root skeleton and `/var`: [`rootfs`]), mounting,
//! first-boot `/etc` ([`factory`]) and `switch_root`, in order in `boot`, with one stable
//! failure reason per class ([`reason`]), left for the next boot in an EFI variable
//! ([`failrec`]) — and the reproducible cpio/initramfs builder
//! ([`cpio`], [`builder`]), which can add host executables with their shared-library
//! closure ([`elf`]).
//!
//! Does not own: the verity on-disk format and the bytes of DM requests (`basalt-verity`),
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
pub mod modules;

pub use error::{Error, Result};
#[cfg(target_os = "linux")]
pub mod boot;
#[cfg(target_os = "linux")]
pub mod dm;
pub mod factory;
pub mod failrec;
pub mod reason;
pub mod rootfs;
pub mod slot;
#[cfg(target_os = "linux")]
pub mod switch_root;
#[cfg(target_os = "linux")]
pub mod sys;
pub mod usrsig;
