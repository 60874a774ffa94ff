//! The on-disk heart of Basalt: GPT layout, A/B slot inventory, partition-range I/O and the
//! boot-control backends (systemd-boot BLS boot counting, GPT priority bits).
//!
//! Owns: partition tables, slot state on disk, ESP boot entries. Does not own: the update
//! policy (the updater decides *when*), the verity format (`basalt-verity`).

pub mod bls;
pub mod boot;
mod error;
pub mod esp;

pub use bls::BlsBackend;
pub use boot::{BootControl, BootState, BootStatus, BootTarget, Slot, SlotBoot};
pub use error::Error;
pub use esp::{DirEsp, Esp, FatImageEsp};
