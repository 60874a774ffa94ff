//! The boot-control contract every backend implements (systemd-boot BLS boot counting in
//! `bls`, ChromeOS/Flatcar GPT priority bits in `gptprio`).
//!
//! Life cycle, identical for every backend:
//!
//! ```text
//!             stage(slot, tries)                 mark_good(slot)
//!   Absent/ ─────────────────────▶ Trying{n} ──────────────────────▶ Good
//!   Good/Bad                         │  ▲ each boot_attempt: n -= 1
//!                                    │  │
//!               cancel(slot) ◀───────┘  └── n == 0 ──▶ Bad (never chosen while
//!               (back to what it was                      another slot can boot)
//!                before stage: Absent/Bad,
//!                never touching the other slot)
//!   mark_bad(slot): any ──▶ Bad          rollback(to): `to` (Good) becomes next boot,
//!                                        the other slot is marked Bad
//! ```
//!
//! Invariant (the Bottlerocket #949 lesson): an operation on one slot never changes the
//! other slot's tries or validity, except `rollback`, which is explicit about it.

use std::fmt;

use crate::Error;

/// One of the two A/B slots. `!slot` is the other one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Slot {
    A,
    B,
}

impl Slot {
    /// Both slots, A first.
    pub const ALL: [Slot; 2] = [Slot::A, Slot::B];

    /// Lower-case letter used in partition labels and file names (`a` / `b`).
    pub fn letter(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }
}

impl std::ops::Not for Slot {
    type Output = Slot;
    fn not(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Slot::A => "A",
            Slot::B => "B",
        })
    }
}

/// Boot-control state of one slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootStatus {
    /// Nothing bootable is registered for this slot.
    Absent,
    /// Staged, not yet blessed: `tries_left` attempts remain, `tries_done` were used.
    Trying { tries_left: u32, tries_done: u32 },
    /// Booted and marked good: no counting.
    Good,
    /// Tries exhausted or marked bad: never chosen while another slot can boot.
    Bad,
}

/// What a backend knows about one slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotBoot {
    pub slot: Slot,
    /// The OS version registered for the slot, when the backend records one.
    pub version: Option<String>,
    pub status: BootStatus,
}

/// Both slots plus the backend's prediction of what boots next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootState {
    pub slots: [SlotBoot; 2],
    /// The slot the boot loader will pick next, by its own selection rule; `None` when no
    /// slot is bootable.
    pub next: Option<Slot>,
}

impl BootState {
    /// The entry for `slot`.
    pub fn slot(&self, slot: Slot) -> &SlotBoot {
        match slot {
            Slot::A => &self.slots[0],
            Slot::B => &self.slots[1],
        }
    }
}

/// What a staged slot boots: the backend uses what it needs (BLS writes an entry with the
/// kernel, initrd and `usrhash=`; GPT priority only flips attribute bits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootTarget {
    /// OS version (semver text) of the image in the slot.
    pub version: String,
    /// dm-verity root hash of the slot's `/usr` (lower-case hex, 64 characters).
    pub usr_hash: String,
    /// Kernel image to boot (a host path the backend copies to the ESP), when the backend
    /// stores kernels per version.
    pub kernel: Option<std::path::PathBuf>,
    /// Initrd to boot, as for `kernel`.
    pub initrd: Option<std::path::PathBuf>,
    /// Extra kernel command-line options (besides `usrhash=`).
    pub options: String,
}

/// What a staged slot boots when the release ships a signed unified kernel image: the UKI
/// holds kernel, initramfs and command line (with `usrhash=`) under one Secure Boot
/// signature, so nothing else is given — no extra options can be added to a signed line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UkiTarget {
    /// OS version (semver text) of the image in the slot.
    pub version: String,
    /// dm-verity root hash of the slot's `/usr` (lower-case hex, 64 characters); the UKI's
    /// `.cmdline` must name the same `usrhash=`, or staging is refused.
    pub usr_hash: String,
    /// The UKI (a host path the backend copies to the ESP).
    pub uki: std::path::PathBuf,
}

/// A boot-control backend. Methods that change state say so and commit to disk before
/// returning (crash-safe: see each backend for its write order).
pub trait BootControl {
    /// Read the state of both slots and predict the next boot. Reads only.
    fn status(&self) -> Result<BootState, Error>;
    /// Make `slot` the next boot with `tries` attempts before falling back. Writes.
    fn stage(&mut self, slot: Slot, target: &BootTarget, tries: u32) -> Result<(), Error>;
    /// As [`BootControl::stage`], booting the release's unified kernel image. Writes. A
    /// backend that cannot boot a UKI refuses with [`Error::UkiUnsupported`] before any
    /// write (the default).
    fn stage_uki(&mut self, slot: Slot, target: &UkiTarget, tries: u32) -> Result<(), Error> {
        let _ = (slot, tries);
        Err(Error::UkiUnsupported {
            backend: self.name(),
            version: target.version.clone(),
        })
    }
    /// The backend's name in messages (`bls`, `gptprio`).
    fn name(&self) -> &'static str {
        "boot control"
    }
    /// The running `slot` is healthy: stop counting, keep it as the default. Writes.
    fn mark_good(&mut self, slot: Slot) -> Result<(), Error>;
    /// `slot` must not be booted again until re-staged. Writes.
    fn mark_bad(&mut self, slot: Slot) -> Result<(), Error>;
    /// Withdraw a staged, not yet blessed `slot`; the other slot is left exactly as it was. Writes.
    fn cancel(&mut self, slot: Slot) -> Result<(), Error>;
    /// Make the good slot `to` the next boot and mark the other slot bad. Writes.
    fn rollback(&mut self, to: Slot) -> Result<(), Error>;
    /// Do what the boot loader does at power-on: pick the next slot by its rule and consume
    /// one try if it is counting. Returns the slot booted. Writes. (Used by tests and
    /// simulations; on a real machine the boot loader does this.)
    fn boot_attempt(&mut self) -> Result<Option<Slot>, Error>;
}
