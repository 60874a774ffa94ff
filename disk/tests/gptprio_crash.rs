//! Crash sweep of the GPT-priority backend (and of slot writes): record every write an
//! operation issues, then rebuild the disk for every prefix of that write sequence — and for
//! every prefix followed by the next write torn in half — and check that the disk still parses
//! (from the primary or the backup), the table is either the old or the new one, the predicted
//! next boot is a bootable slot holding an image, and retrying the operation succeeds with the
//! same result as an uninterrupted run.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod gpt_util;

use std::io::Cursor;
use std::path::Path;

use basalt_disk::gptprio::Prio;
use basalt_disk::{BootControl, BootStatus, BootTarget, Error, GptPrio, Slot};
use gpt_util::{put_image, tiny_disk_mem, Recorder};

type Op = fn(&mut GptPrio<&mut Recorder>) -> Result<(), Error>;

fn target() -> BootTarget {
    BootTarget {
        version: "2.0.0".into(),
        usr_hash: String::new(),
        kernel: None,
        initrd: None,
        options: String::new(),
    }
}

fn mem() -> &'static Path {
    Path::new("mem")
}

/// A good, B written (not staged).
fn base_written() -> Vec<u8> {
    let mut dev = tiny_disk_mem();
    put_image(&mut dev, mem(), Slot::A, "1.0.0", 1, None).unwrap();
    put_image(&mut dev, mem(), Slot::B, "2.0.0", 2, None).unwrap();
    let mut gp = GptPrio::new(dev, mem());
    gp.mark_good(Slot::A).unwrap();
    gp.into_inner().into_inner()
}

fn with(disk: Vec<u8>, f: impl FnOnce(&mut GptPrio<Cursor<Vec<u8>>>)) -> Vec<u8> {
    let mut gp = GptPrio::new(Cursor::new(disk), mem());
    f(&mut gp);
    gp.into_inner().into_inner()
}

fn fields_of(disk: &[u8]) -> Result<[Prio; 2], Error> {
    GptPrio::new(Cursor::new(disk.to_vec()), mem()).fields()
}

/// Run the sweep for one operation; returns the number of crash points checked.
fn sweep(name: &str, base: Vec<u8>, op: Op) -> usize {
    let old = fields_of(&base).unwrap();
    let mut rec = Recorder::new(base.clone());
    {
        let mut gp = GptPrio::new(&mut rec, mem());
        op(&mut gp).unwrap_or_else(|e| panic!("{name}: uninterrupted run failed: {e}"));
    }
    let writes = rec.writes();
    let done = rec.inner.get_ref().clone();
    let new = fields_of(&done).unwrap();
    assert!(!writes.is_empty(), "{name}: the operation wrote nothing");
    let mut points = 0;
    for k in 0..=writes.len() {
        for cut in torn_cuts(writes.get(k).map(|w| w.1.len())) {
            let mut disk = base.clone();
            let mut apply = |off: u64, data: &[u8]| {
                let off = off as usize;
                disk[off..off + data.len()].copy_from_slice(data);
            };
            for (off, data) in &writes[..k] {
                apply(*off, data);
            }
            if let Some(cut) = cut {
                let (off, data) = &writes[k];
                apply(*off, &data[..cut]);
            }
            let ctx = format!("{name}: crash after {k} writes + {cut:?} bytes of the next");
            // 1. Parses, and is the old or the new table.
            let now = fields_of(&disk).unwrap_or_else(|e| panic!("{ctx}: unreadable: {e}"));
            assert!(
                now == old || now == new,
                "{ctx}: neither old nor new: {now:?}"
            );
            // 2. The next boot is a bootable slot that holds an image.
            let gp = GptPrio::new(Cursor::new(disk), mem());
            let st = gp.status().unwrap();
            let next = st.next.unwrap_or_else(|| panic!("{ctx}: nothing bootable"));
            assert!(
                matches!(
                    st.slot(next).status,
                    BootStatus::Good | BootStatus::Trying { .. }
                ),
                "{ctx}: next boot {next} is {:?}",
                st.slot(next).status
            );
            // 3. Retrying succeeds and converges to the uninterrupted result, both copies clean.
            let mut rec = Recorder::new(gp.into_inner().into_inner());
            {
                let mut gp = GptPrio::new(&mut rec, mem());
                op(&mut gp).unwrap_or_else(|e| panic!("{ctx}: retry failed: {e}"));
                assert!(gp.table_health().unwrap().is_clean(), "{ctx}: not repaired");
            }
            assert_eq!(
                fields_of(rec.inner.get_ref()).unwrap(),
                new,
                "{ctx}: retry diverged"
            );
            points += 1;
        }
    }
    eprintln!("{name}: {} writes, {points} crash points", writes.len());
    points
}

/// How a crash can leave the next write: not started (`None`), or torn after each whole
/// sector it covers and in the middle.
fn torn_cuts(next_len: Option<usize>) -> Vec<Option<usize>> {
    let mut cuts = vec![None];
    if let Some(len) = next_len {
        let mut c: Vec<usize> = (1..len.div_ceil(512)).map(|s| s * 512).collect();
        c.push(len / 2);
        c.sort_unstable();
        c.dedup();
        cuts.extend(c.into_iter().filter(|&c| c > 0 && c < len).map(Some));
    }
    cuts
}

fn staged() -> Vec<u8> {
    with(base_written(), |gp| {
        gp.stage(Slot::B, &target(), 3).unwrap()
    })
}

fn corrupt(mut disk: Vec<u8>, primary: bool) -> Vec<u8> {
    let off = if primary {
        512 + 24
    } else {
        disk.len() - 512 + 24
    };
    disk[off] ^= 0x5a;
    disk
}

#[test]
fn crash_sweep_gptprio() {
    let mut total = 0;
    total += sweep("stage", base_written(), |gp| {
        gp.stage(Slot::B, &target(), 3)
    });
    total += sweep(
        "mark_good",
        with(staged(), |gp| {
            gp.boot_attempt().unwrap();
        }),
        |gp| gp.mark_good(Slot::B),
    );
    total += sweep(
        "rollback",
        with(staged(), |gp| {
            gp.boot_attempt().unwrap();
            gp.mark_good(Slot::B).unwrap();
        }),
        |gp| gp.rollback(Slot::A),
    );
    total += sweep("mark_bad", staged(), |gp| gp.mark_bad(Slot::B));
    total += sweep("cancel", staged(), |gp| gp.cancel(Slot::B));
    total += sweep(
        "stage, primary corrupt",
        corrupt(base_written(), true),
        |gp| gp.stage(Slot::B, &target(), 3),
    );
    total += sweep(
        "stage, backup corrupt",
        corrupt(base_written(), false),
        |gp| gp.stage(Slot::B, &target(), 3),
    );
    eprintln!("gptprio crash sweep: {total} crash points");
    assert!(total >= 7 * 9, "expected at least 4 writes per operation");
}

/// The same sweep over `write_slot` (labels → data → names): at every crash point slot A
/// still boots, and rewriting the slot succeeds.
#[test]
fn crash_sweep_write_slot() {
    let base = base_written();
    let mut rec = Recorder::new(base.clone());
    put_image(&mut rec, mem(), Slot::B, "3.0.0", 3, None).unwrap();
    let writes = rec.writes();
    let done = rec.inner.get_ref().clone();
    let mut points = 0;
    for k in 0..=writes.len() {
        for cut in torn_cuts(writes.get(k).map(|w| w.1.len())) {
            let mut disk = base.clone();
            let torn = cut.map(|c| (writes[k].0, &writes[k].1[..c]));
            for (off, data) in writes[..k].iter().map(|(o, d)| (*o, &d[..])).chain(torn) {
                let off = off as usize;
                disk[off..off + data.len()].copy_from_slice(data);
            }
            let ctx = format!("write_slot: crash after {k} writes + {cut:?} bytes of the next");
            let gp = GptPrio::new(Cursor::new(disk), mem());
            let st = gp.status().unwrap_or_else(|e| panic!("{ctx}: {e}"));
            assert_eq!(st.next, Some(Slot::A), "{ctx}");
            assert_eq!(st.slot(Slot::A).status, BootStatus::Good, "{ctx}");
            let mut dev = gp.into_inner();
            put_image(&mut dev, mem(), Slot::B, "3.0.0", 3, None)
                .unwrap_or_else(|e| panic!("{ctx}: retry failed: {e}"));
            assert_eq!(dev.get_ref(), &done, "{ctx}: retry diverged");
            points += 1;
        }
    }
    eprintln!(
        "write_slot crash sweep: {} writes, {points} crash points",
        writes.len()
    );
    assert!(points >= 9);
}
