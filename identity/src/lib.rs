//! Who is who on a Basalt disk, written once: the facts `basalt-init` (PID 1 of the
//! initramfs), `basalt-disk` and the updater must agree on to find the same partitions.
//!
//! Owns:
//! - [`hex`]: the one hex codec of the partition-identity code.
//! - [`Guid`] in text order with the GPT's mixed-endian form at the boundary, and the
//!   Discoverable Partitions Specification type GUIDs ([`types`]).
//! - [`RootHash`]: a dm-verity (SHA-256) root hash and systemd's rule that names the `/usr`
//!   partitions after it (first 128 bits → data partition UUID, last 128 bits → verity
//!   partition UUID, bytes verbatim).
//! - [`cmdline`]: the kernel command line split the way the kernel's `next_arg()` does,
//!   and the one `usrhash=` reader.
//! - [`gpt`]: a GPT reader for disks nobody vouched for — every size read from the disk is
//!   bounded before anything is allocated or read, both copies are checked.
//! - [`efivar`]: reading EFI variables from efivarfs (`LoaderDevicePartUUID`, the `/usr`
//!   version floor) with a size cap.
//! - [`osrelease`]: the one `os-release(5)` / `extension-release` reader (which OS is booted,
//!   which OS an extension is for).
//! - [`pe`]: the bounded PE32+ section reader, and the `usrhash=` a unified kernel image's
//!   signed `.cmdline` names (what the updater checks before it stages a UKI).
//!
//! Does not own: writing partition tables or slots (`basalt-disk`), the verity format
//! (`basalt-verity`), signatures and version policy (`basalt-manifest`), the boot sequence
//! (`basalt-initramfs`).
//!
//! Why one std-only crate: these facts used to be written twice, with different rules (two
//! GPT readers, one of them unfuzzed and run by PID 1; two root-hash types, one accepting an
//! all-zero hash; two `usrhash=` parsers, one ignoring the kernel's quoting). No
//! dependencies means nothing here can allocate on a disk's say-so behind our back, and the
//! whole crate is small enough to fuzz as one unit (`fuzz/`).

pub mod cmdline;
pub mod efivar;
mod error;
pub mod gpt;
mod guid;
pub mod hex;
pub mod osrelease;
pub mod pe;
mod roothash;

pub use error::{Error, GptError};
pub use guid::{types, Guid};
pub use roothash::{RootHash, UsrUuids};
