//! The one error type of `basalt-disk`. Variants are named after the failed operation and
//! carry the path, partition or entry involved.

use std::path::PathBuf;

use crate::boot::Slot;

/// Everything that can go wrong reading or changing a Basalt disk.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O operation on a file or device failed.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A request would write to the slot the machine is running from.
    #[error("refusing to write slot {slot}: it is the booted slot")]
    BootedSlot { slot: Slot },
    /// A boot-control operation is not legal in the current state.
    #[error("cannot {op} slot {slot}: {reason}")]
    IllegalTransition {
        op: &'static str,
        slot: Slot,
        reason: String,
    },
    // --- GPT / layout / slots / range I/O (helper "disk") ---

    // --- ESP / BLS (helper "bls") ---
}
