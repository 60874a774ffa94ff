//! The on-disk heart of Basalt: GPT layout, A/B slot inventory, partition-range I/O and the
//! boot-control backends (systemd-boot BLS boot counting, GPT priority bits).
//!
//! Owns: partition tables, slot state on disk, ESP boot entries. Does not own: the update
//! policy (the updater decides *when*), the verity format (`basalt-verity`).
//!
//! - [`gpt`]: both GPT copies read with their health reported, written in crash-safe order.
//! - [`layout`]: the Basalt partition layout (DPS type GUIDs, growth reserves), creation.
//! - [`slots`]: slot inventory (labels, root hash from partition UUIDs, booted slot from the
//!   kernel command line), installing an image into a slot.
//! - [`range`]: partition-range I/O (device or file + offset + length), bounded memory.
//! - [`gptprio`]: the ChromeOS/Flatcar GPT-priority [`BootControl`] backend.

pub mod bls;
pub mod boot;
mod error;
pub mod esp;
pub mod gpt;
pub mod gptprio;
pub mod layout;
pub mod range;
pub mod slots;

pub use bls::BlsBackend;
pub use boot::{BootControl, BootState, BootStatus, BootTarget, Slot, SlotBoot, UkiTarget};
pub use error::Error;
pub use esp::{DirEsp, Esp, FatImageEsp};
pub use gptprio::GptPrio;
pub use layout::{create_image, create_image_with, Layout, LayoutSpec};
pub use range::{PartitionRange, RangeReader, RangeWriter};
pub use slots::{Inventory, RootHash, SlotInfo, SlotPart, SlotState};
