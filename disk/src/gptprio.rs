//! GPT-priority boot control: the ChromeOS / Flatcar scheme, bit-compatible with `cgpt` and
//! GRUB's `gptprio.next`.
//!
//! The state lives in the attribute bits of each slot's `/usr` *data* partition:
//!
//! ```text
//!   bit 56      successful   the slot booted and was blessed
//!   bits 52–55  tries        boot attempts left while not successful (0–15)
//!   bits 48–51  priority     0 = never boot, 15 = highest
//! ```
//!
//! Selection rule (cgpt `GptNextKernelEntry`): among the slots with priority > 0 and
//! (successful or tries > 0), the highest priority wins; on a tie the earlier partition in the
//! table (slot A) wins. A boot attempt (cgpt `GptUpdateKernelEntry(TRY)`): a successful slot is
//! left alone; otherwise tries > 1 → tries − 1, and the last try (tries ≤ 1) clears priority
//! and tries, so the slot boots this once and — unless blessed during this boot — is bad from
//! then on. A slot with priority > 0, tries 0 and not successful is never chosen: bad.
//!
//! Mapping to [`BootStatus`]: successful with priority > 0 → `Good`; not successful, tries > 0
//! and priority > 0 → `Trying`; anything else → `Bad` if the slot holds an image, `Absent` if
//! it is empty. GPT bits do not record how many tries were used: `tries_done` is always 0.
//!
//! Transitions, each one read → change bits in memory → one ordered table write (see
//! [`crate::gpt`]): the other slot's tries and successful bit are never touched except by
//! `rollback`; its priority only moves to keep the order the caller asked for — lowered from
//! 15 to 14 when the staged slot needs the top, raised from 1 to 2 when a slot blessed on its
//! last try must go back *below* a slot staged after it.
//!
//! Versions never enter the selection: `stage(slot)` makes `slot` the next boot whatever the
//! two slots' versions are (upgrade, downgrade, pre-release, another build), and it stays the
//! next boot while it has tries left, until it is marked bad, cancelled, rolled away from, or
//! the other slot is staged. `mark_good` does not reorder: blessing a slot never outranks a
//! slot staged after it (the BLS backend behaves the same; `tests/gptprio_lifecycle.rs`
//! checks both properties over random operation sequences).
//!
//! One difference from the BLS backend, forced by the bits: a slot whose last try was used
//! (cgpt clears its fields) looks exactly like one marked bad or rolled away from (Basalt
//! clears them, as Bottlerocket's signpost does). `mark_good` must rescue the first — a slot
//! blessed on its last try — so it also revives the second, and puts it on top unless the
//! other slot is staged and waiting. The BLS backend refuses to bless a bad entry. Callers
//! must not bless a slot they rolled away from.

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use crate::boot::{BootControl, BootState, BootStatus, BootTarget, Slot, SlotBoot};
use crate::gpt::{read_table, write_table, DiskIo, Guid, Table, TableHealth};
use crate::layout::Layout;
use crate::slots::{parse_data_label, DataLabel, RootHash};
use crate::Error;

pub use crate::layout::PRIO_MASK;
use crate::layout::{PRIORITY_SHIFT, SUCCESSFUL_BIT, TRIES_SHIFT};
/// Highest priority and try count the 4-bit fields hold.
pub const MAX_FIELD: u8 = 15;

/// The three gptprio fields of one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Prio {
    pub priority: u8,
    pub tries: u8,
    pub successful: bool,
}

impl Prio {
    /// Decode from the 64 attribute bits.
    pub fn from_attributes(bits: u64) -> Prio {
        Prio {
            priority: ((bits >> PRIORITY_SHIFT) & 0xf) as u8,
            tries: ((bits >> TRIES_SHIFT) & 0xf) as u8,
            successful: (bits >> SUCCESSFUL_BIT) & 1 == 1,
        }
    }

    /// Encode into `bits`, preserving every bit outside 48–56.
    pub fn apply(self, bits: u64) -> u64 {
        (bits & !PRIO_MASK)
            | (u64::from(self.priority.min(MAX_FIELD)) << PRIORITY_SHIFT)
            | (u64::from(self.tries.min(MAX_FIELD)) << TRIES_SHIFT)
            | (u64::from(self.successful) << SUCCESSFUL_BIT)
    }

    /// cgpt's candidate test.
    pub fn bootable(self) -> bool {
        self.priority > 0 && (self.successful || self.tries > 0)
    }
}

/// The slot a cgpt/GRUB gptprio loader boots next, given both slots' fields in table order
/// (A first). `None` when nothing is bootable.
pub fn next_boot(prio: [Prio; 2]) -> Option<Slot> {
    let mut best: Option<(Slot, u8)> = None;
    for (slot, p) in Slot::ALL.into_iter().zip(prio) {
        if p.bootable() && best.is_none_or(|(_, bp)| p.priority > bp) {
            best = Some((slot, p.priority));
        }
    }
    best.map(|(s, _)| s)
}

/// What one boot attempt does to the chosen slot's fields (cgpt `GPT_UPDATE_ENTRY_TRY`).
pub fn consume_try(p: Prio) -> Prio {
    if p.successful {
        p
    } else if p.tries > 1 {
        Prio {
            tries: p.tries - 1,
            ..p
        }
    } else {
        Prio {
            priority: 0,
            tries: 0,
            successful: false,
        }
    }
}

/// The GPT-priority backend over one disk (block device or image file).
#[derive(Debug)]
pub struct GptPrio<D> {
    dev: RefCell<D>,
    path: PathBuf,
}

/// One consistent read of the disk.
struct Snapshot {
    table: Table,
    health: TableHealth,
    layout: Layout,
    prio: [Prio; 2],
    has_image: [bool; 2],
    versions: [Option<String>; 2],
    /// Root hash carried by each slot's partition UUIDs.
    hashes: [RootHash; 2],
}

impl<D: DiskIo> GptPrio<D> {
    /// Wrap `dev`; nothing is read until the first call.
    pub fn new(dev: D, path: &Path) -> Self {
        GptPrio {
            dev: RefCell::new(dev),
            path: path.to_path_buf(),
        }
    }

    /// Give the device back.
    pub fn into_inner(self) -> D {
        self.dev.into_inner()
    }

    /// The health of both GPT copies as of now (reads).
    pub fn table_health(&self) -> Result<TableHealth, Error> {
        Ok(self.snapshot()?.health)
    }

    /// The raw fields of both slots, A first (reads).
    pub fn fields(&self) -> Result<[Prio; 2], Error> {
        Ok(self.snapshot()?.prio)
    }

    fn snapshot(&self) -> Result<Snapshot, Error> {
        let mut dev = self.dev.borrow_mut();
        let (table, health) = read_table(&mut *dev, &self.path)?;
        let layout = Layout::discover(&table, &self.path)?;
        let mut prio = [Prio::default(); 2];
        let mut has_image = [false; 2];
        let mut versions = [None, None];
        let mut hashes = [RootHash([0; 32]); 2];
        for (i, slot) in Slot::ALL.into_iter().enumerate() {
            let n = layout.usr(slot);
            if let (Some(d), Some(v)) = (table.partition(n), table.partition(layout.verity(slot))) {
                hashes[i] = RootHash::from_uuids(
                    Guid::from_gpt_bytes(d.unique_partition_guid),
                    Guid::from_gpt_bytes(v.unique_partition_guid),
                );
            }
            if let Some(e) = table.partition(n) {
                prio[i] = Prio::from_attributes(e.attribute_bits);
                if let DataLabel::Image { version, bad, .. } =
                    parse_data_label(e.partition_name.as_str())
                {
                    has_image[i] = !bad;
                    versions[i] = Some(version);
                }
            }
        }
        Ok(Snapshot {
            table,
            health,
            layout,
            prio,
            has_image,
            versions,
            hashes,
        })
    }

    /// Write `new` fields for the slots that changed, one ordered table write.
    fn commit(&self, snap: Snapshot, new: [Prio; 2]) -> Result<(), Error> {
        if new == snap.prio && snap.health.is_clean() {
            return Ok(());
        }
        let mut table = snap.table;
        for (i, slot) in Slot::ALL.into_iter().enumerate() {
            let n = snap.layout.usr(slot);
            crate::slots::set_entry(&mut table, n, &self.path, |e| {
                e.attribute_bits = new[i].apply(e.attribute_bits);
            })?;
        }
        let mut dev = self.dev.borrow_mut();
        write_table(&mut *dev, &self.path, &table, &snap.health)
    }

    fn illegal(op: &'static str, slot: Slot, reason: impl Into<String>) -> Error {
        Error::IllegalTransition {
            op,
            slot,
            reason: reason.into(),
        }
    }
}

fn idx(slot: Slot) -> usize {
    crate::layout::slot_index(slot)
}

fn status_of(p: Prio, has_image: bool) -> BootStatus {
    if p.priority > 0 && p.successful {
        BootStatus::Good
    } else if p.priority > 0 && p.tries > 0 {
        BootStatus::Trying {
            tries_left: u32::from(p.tries),
            tries_done: 0,
        }
    } else if has_image {
        BootStatus::Bad
    } else {
        BootStatus::Absent
    }
}

/// Give `target` a priority strictly above `other`'s (cgpt `prioritize`-like), lowering the
/// other from 15 to 14 if needed; the other's tries and successful bit are kept.
fn top_priority(target: &mut Prio, other: &mut Prio) {
    if target.priority > other.priority && target.priority > 0 {
        return;
    }
    if other.priority >= MAX_FIELD {
        other.priority = MAX_FIELD - 1;
    }
    target.priority = (other.priority + 1).max(1);
}

impl<D: DiskIo> BootControl for GptPrio<D> {
    /// `stage_uki` is the trait's refusal: GPT priority bits choose a `/usr` partition, not
    /// a boot program, so there is nowhere to put a release's UKI (see docs/ARCHITECTURE.md).
    fn name(&self) -> &'static str {
        "gptprio"
    }

    fn status(&self) -> Result<BootState, Error> {
        let s = self.snapshot()?;
        let entry = |slot: Slot| SlotBoot {
            slot,
            version: s.versions[idx(slot)].clone(),
            status: status_of(s.prio[idx(slot)], s.has_image[idx(slot)]),
        };
        Ok(BootState {
            slots: [entry(Slot::A), entry(Slot::B)],
            next: next_boot(s.prio),
        })
    }

    /// Refuses a `target` that names another image than the slot holds (non-empty
    /// `usr_hash` or `version` that differ): staging the wrong slot is a caller bug.
    fn stage(&mut self, slot: Slot, target: &BootTarget, tries: u32) -> Result<(), Error> {
        let s = self.snapshot()?;
        if !s.has_image[idx(slot)] {
            return Err(Self::illegal("stage", slot, "it holds no valid image"));
        }
        let holds = s.hashes[idx(slot)].to_hex();
        if !target.usr_hash.is_empty() && !target.usr_hash.eq_ignore_ascii_case(&holds) {
            return Err(Self::illegal(
                "stage",
                slot,
                format!("it holds root hash {holds}, not {}", target.usr_hash),
            ));
        }
        let version = s.versions[idx(slot)].as_deref().unwrap_or_default();
        if !target.version.is_empty() && target.version != version {
            return Err(Self::illegal(
                "stage",
                slot,
                format!("it holds version {version}, not {}", target.version),
            ));
        }
        if tries == 0 || tries > u32::from(MAX_FIELD) {
            return Err(Self::illegal(
                "stage",
                slot,
                format!("tries must be 1..={MAX_FIELD}, got {tries}"),
            ));
        }
        let mut new = s.prio;
        let (mut t, mut o) = (new[idx(slot)], new[idx(!slot)]);
        t.successful = false;
        t.tries = tries as u8;
        t.priority = 0;
        top_priority(&mut t, &mut o);
        new[idx(slot)] = t;
        new[idx(!slot)] = o;
        self.commit(s, new)
    }

    /// Sets the successful bit and clears the tries. The order is kept: a slot that still
    /// has a priority keeps it; one whose priority cgpt cleared on its last try (or that was
    /// marked bad) gets one back — the top, unless the other slot is staged and waiting
    /// (Trying), which keeps its lead.
    fn mark_good(&mut self, slot: Slot) -> Result<(), Error> {
        let s = self.snapshot()?;
        if !s.has_image[idx(slot)] {
            return Err(Self::illegal("mark good", slot, "it holds no valid image"));
        }
        let mut new = s.prio;
        let (mut t, mut o) = (new[idx(slot)], new[idx(!slot)]);
        t.successful = true;
        t.tries = 0;
        if t.priority == 0 {
            let other_staged = o.priority > 0 && o.tries > 0 && !o.successful;
            if other_staged {
                o.priority = o.priority.max(2);
                t.priority = o.priority - 1;
            } else {
                top_priority(&mut t, &mut o);
            }
        }
        new[idx(slot)] = t;
        new[idx(!slot)] = o;
        self.commit(s, new)
    }

    fn mark_bad(&mut self, slot: Slot) -> Result<(), Error> {
        let s = self.snapshot()?;
        let mut new = s.prio;
        new[idx(slot)] = Prio::default();
        self.commit(s, new)
    }

    fn cancel(&mut self, slot: Slot) -> Result<(), Error> {
        let s = self.snapshot()?;
        match status_of(s.prio[idx(slot)], s.has_image[idx(slot)]) {
            BootStatus::Trying { .. } => {}
            // Already withdrawn (or never staged): nothing to do, so a cancel interrupted by a
            // crash can simply be retried.
            // (`commit` still repairs a copy left stale by the interrupted attempt.)
            BootStatus::Bad | BootStatus::Absent if s.prio[idx(slot)] == Prio::default() => {}
            other => {
                return Err(Self::illegal(
                    "cancel",
                    slot,
                    format!("it is not staged ({other:?})"),
                ))
            }
        }
        // Before `stage` the slot was not bootable (a freshly written slot has all fields 0),
        // so withdrawing it means exactly that; the other slot is not touched at all.
        let mut new = s.prio;
        new[idx(slot)] = Prio::default();
        self.commit(s, new)
    }

    fn rollback(&mut self, to: Slot) -> Result<(), Error> {
        let s = self.snapshot()?;
        let p = s.prio[idx(to)];
        if !(s.has_image[idx(to)] && p.successful) {
            return Err(Self::illegal(
                "roll back to",
                to,
                "it was never marked good",
            ));
        }
        let mut new = s.prio;
        new[idx(!to)] = Prio::default();
        new[idx(to)].priority = p.priority.max(1);
        self.commit(s, new)
    }

    fn boot_attempt(&mut self) -> Result<Option<Slot>, Error> {
        let s = self.snapshot()?;
        let Some(chosen) = next_boot(s.prio) else {
            return Ok(None);
        };
        let mut new = s.prio;
        new[idx(chosen)] = consume_try(new[idx(chosen)]);
        self.commit(s, new)?;
        Ok(Some(chosen))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(priority: u8, tries: u8, successful: bool) -> Prio {
        Prio {
            priority,
            tries,
            successful,
        }
    }

    #[test]
    fn bits_round_trip_and_preserve_others() {
        let other_bits = (1u64 << 60) | (1 << 0) | (1 << 63);
        let f = p(3, 7, true);
        let bits = f.apply(other_bits);
        assert_eq!(Prio::from_attributes(bits), f);
        assert_eq!(bits & !PRIO_MASK, other_bits);
        // ChromeOS layout: priority 48-51, tries 52-55, successful 56.
        assert_eq!(p(1, 0, false).apply(0), 1 << 48);
        assert_eq!(p(0, 1, false).apply(0), 1 << 52);
        assert_eq!(p(0, 0, true).apply(0), 1 << 56);
    }

    #[test]
    fn selection_follows_cgpt() {
        assert_eq!(next_boot([p(1, 0, true), p(2, 3, false)]), Some(Slot::B));
        // Tie → first in table.
        assert_eq!(next_boot([p(2, 0, true), p(2, 3, false)]), Some(Slot::A));
        assert_eq!(next_boot([p(2, 3, false), p(2, 0, true)]), Some(Slot::A));
        // Priority > 0, no tries, not successful: not a candidate.
        assert_eq!(next_boot([p(1, 0, true), p(5, 0, false)]), Some(Slot::A));
        // Priority 0 never boots, even when successful.
        assert_eq!(next_boot([p(0, 0, true), p(0, 5, false)]), None);
    }

    #[test]
    fn try_consumption_follows_cgpt() {
        assert_eq!(consume_try(p(2, 3, false)), p(2, 2, false));
        assert_eq!(consume_try(p(2, 1, false)), p(0, 0, false));
        assert_eq!(consume_try(p(2, 0, true)), p(2, 0, true));
        assert_eq!(consume_try(p(2, 4, true)), p(2, 4, true));
    }
}
