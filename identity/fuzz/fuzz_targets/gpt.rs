//! The GPT reader PID 1 runs on every disk it sees. Random bytes rarely pass the signature
//! and CRC checks, so the input can also patch a valid template's primary header and entry
//! array and recompute the CRCs, which reaches every field check. Whatever the bytes: no
//! panic, no allocation beyond the bound, and an accepted copy keeps the invariants callers
//! rely on (used entries inside the usable range and the disk, unique partition GUIDs).
#![no_main]

use std::io::Cursor;
use std::sync::OnceLock;

use basalt_identity::gpt::{self, crc32, MAX_ARRAY_BYTES};
use libfuzzer_sys::fuzz_target;

const SECTOR: usize = 512;
const LEN: usize = 1 << 20;

/// A 1 MiB disk with a two-partition GPT, both copies.
fn template() -> &'static Vec<u8> {
    static T: OnceLock<Vec<u8>> = OnceLock::new();
    T.get_or_init(|| {
        let sectors = (LEN / SECTOR) as u64;
        let mut array = vec![0u8; 128 * 128];
        for (i, (first, last)) in [(34u64, 100u64), (101, 1000)].iter().enumerate() {
            let e = &mut array[i * 128..];
            e[0] = 0x28 + i as u8; // any non-nil type
            e[16] = 1 + i as u8; // distinct unique GUIDs
            e[32..40].copy_from_slice(&first.to_le_bytes());
            e[40..48].copy_from_slice(&last.to_le_bytes());
        }
        let mut d = vec![0u8; LEN];
        let header = |lba: u64, alt: u64, arr: u64| {
            let mut h = vec![0u8; 92];
            h[0..8].copy_from_slice(b"EFI PART");
            h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
            h[12..16].copy_from_slice(&92u32.to_le_bytes());
            h[24..32].copy_from_slice(&lba.to_le_bytes());
            h[32..40].copy_from_slice(&alt.to_le_bytes());
            h[40..48].copy_from_slice(&34u64.to_le_bytes());
            h[48..56].copy_from_slice(&(sectors - 34).to_le_bytes());
            h[72..80].copy_from_slice(&arr.to_le_bytes());
            h[80..84].copy_from_slice(&128u32.to_le_bytes());
            h[84..88].copy_from_slice(&128u32.to_le_bytes());
            h[88..92].copy_from_slice(&crc32(&array).to_le_bytes());
            let c = crc32(&h);
            h[16..20].copy_from_slice(&c.to_le_bytes());
            h
        };
        d[SECTOR..SECTOR + 92].copy_from_slice(&header(1, sectors - 1, 2));
        d[2 * SECTOR..2 * SECTOR + array.len()].copy_from_slice(&array);
        let back_arr = (sectors - 33) as usize;
        d[back_arr * SECTOR..back_arr * SECTOR + array.len()].copy_from_slice(&array);
        let last = LEN - SECTOR;
        d[last..last + 92].copy_from_slice(&header(sectors - 1, 1, sectors - 33));
        d
    })
}

fn check(disk: &[u8], claimed_len: u64) {
    let Ok(t) = gpt::read(&mut Cursor::new(disk), claimed_len) else {
        return;
    };
    for copy in [&t.primary, &t.backup].into_iter().flatten() {
        let h = &copy.header;
        assert!(u64::from(h.entry_count) * u64::from(h.entry_size) <= MAX_ARRAY_BYTES);
        assert_eq!(copy.entries.len(), h.entry_count as usize);
        let mut guids = Vec::new();
        for (_, e) in copy.used() {
            assert!(h.first_usable_lba <= e.first_lba && e.first_lba <= e.last_lba);
            assert!(e.last_lba <= h.last_usable_lba);
            let (start, len) = e.byte_range(t.sector_size).expect("validated extent");
            assert!(start + len <= claimed_len);
            guids.push(e.unique_guid);
        }
        guids.sort_unstable();
        assert!(guids.windows(2).all(|w| w[0] != w[1]));
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    if flags & 1 == 0 {
        // Raw bytes, with a claimed length that may exceed them (a truncated device).
        let claimed = if flags & 2 == 0 { rest.len() as u64 } else { u64::MAX / 2 };
        check(rest, claimed);
        return;
    }
    let mut d = template().clone();
    let (h, e) = rest.split_at(rest.len().min(92));
    d[SECTOR..SECTOR + h.len()].copy_from_slice(h);
    let e = &e[..e.len().min(128 * 128)];
    d[2 * SECTOR..2 * SECTOR + e.len()].copy_from_slice(e);
    if flags & 2 != 0 {
        let arr = crc32(&d[2 * SECTOR..2 * SECTOR + 128 * 128]);
        d[SECTOR + 88..SECTOR + 92].copy_from_slice(&arr.to_le_bytes());
    }
    if flags & 4 != 0 {
        d[SECTOR + 16..SECTOR + 20].fill(0);
        let size = u32::from_le_bytes([d[SECTOR + 12], d[SECTOR + 13], d[SECTOR + 14], d[SECTOR + 15]]);
        let size = (size as usize).clamp(92, SECTOR);
        let c = crc32(&d[SECTOR..SECTOR + size]);
        d[SECTOR + 16..SECTOR + 20].copy_from_slice(&c.to_le_bytes());
    }
    if flags & 8 != 0 {
        // No backup: the primary alone decides.
        d[LEN - SECTOR..LEN - SECTOR + 8].fill(0);
    }
    check(&d, LEN as u64);
});
