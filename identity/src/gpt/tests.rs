//! The reader against tables encoded here field by field (the peer tests against sgdisk and
//! sfdisk are in `tests/gpt_peers.rs`), and against every field a hostile disk can lie in.

use std::io::Cursor;

use super::*;
use crate::types;

const MIB: u64 = 1 << 20;

/// A disk image with a GPT written by hand: `parts` are (type, unique, first, last, name).
struct Image {
    ss: u64,
    len: u64,
    count: u32,
    size: u32,
    parts: Vec<(Guid, Guid, u64, u64, &'static str)>,
}

impl Image {
    fn new(ss: u64, len: u64) -> Self {
        let first = 2048 * 512 / ss;
        Image {
            ss,
            len,
            count: 128,
            size: 128,
            parts: vec![
                (
                    types::ESP,
                    Guid([1; 16]),
                    first,
                    first + 2 * MIB / ss - 1,
                    "esp",
                ),
                (
                    types::ROOT_X86_64,
                    Guid([2; 16]),
                    first + 2 * MIB / ss,
                    first + 4 * MIB / ss - 1,
                    "root",
                ),
            ],
        }
    }

    fn array(&self) -> Vec<u8> {
        let mut a = vec![0u8; (self.count * self.size) as usize];
        for (i, (t, u, f, l, n)) in self.parts.iter().enumerate() {
            let e = &mut a[i * self.size as usize..];
            e[0..16].copy_from_slice(&t.to_gpt_bytes());
            e[16..32].copy_from_slice(&u.to_gpt_bytes());
            e[32..40].copy_from_slice(&f.to_le_bytes());
            e[40..48].copy_from_slice(&l.to_le_bytes());
            for (j, unit) in Entry::encode_name(n).iter().enumerate() {
                e[56 + 2 * j..58 + 2 * j].copy_from_slice(&unit.to_le_bytes());
            }
        }
        a
    }

    /// The header sector for the copy at `lba` with its array at `array_lba`.
    fn header(&self, lba: u64, alternate: u64, array_lba: u64, array_crc: u32) -> Vec<u8> {
        let sectors = self.len / self.ss;
        let array_sectors = u64::from(self.count * self.size).div_ceil(self.ss);
        let mut h = vec![0u8; self.ss as usize];
        h[0..8].copy_from_slice(SIGNATURE);
        h[8..12].copy_from_slice(&REVISION_1_0.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&lba.to_le_bytes());
        h[32..40].copy_from_slice(&alternate.to_le_bytes());
        h[40..48].copy_from_slice(&(2 + array_sectors).to_le_bytes());
        h[48..56].copy_from_slice(&(sectors - 2 - array_sectors).to_le_bytes());
        h[56..72].copy_from_slice(&[0x77; 16]);
        h[72..80].copy_from_slice(&array_lba.to_le_bytes());
        h[80..84].copy_from_slice(&self.count.to_le_bytes());
        h[84..88].copy_from_slice(&self.size.to_le_bytes());
        h[88..92].copy_from_slice(&array_crc.to_le_bytes());
        fix_header_crc(&mut h);
        h
    }

    fn bytes(&self) -> Vec<u8> {
        let sectors = self.len / self.ss;
        let array = self.array();
        let array_sectors = (array.len() as u64).div_ceil(self.ss);
        let crc = crc32(&array);
        let mut d = vec![0u8; self.len as usize];
        let put = |d: &mut Vec<u8>, lba: u64, b: &[u8]| {
            let at = (lba * self.ss) as usize;
            d[at..at + b.len()].copy_from_slice(b);
        };
        put(&mut d, 1, &self.header(1, sectors - 1, 2, crc));
        put(&mut d, 2, &array);
        let backup_array = sectors - 1 - array_sectors;
        put(&mut d, backup_array, &array);
        put(
            &mut d,
            sectors - 1,
            &self.header(sectors - 1, 1, backup_array, crc),
        );
        d
    }
}

/// Recompute the CRC over the header size the header claims (92 when it claims nonsense).
fn fix_header_crc(h: &mut [u8]) {
    h[16..20].fill(0);
    let size = u32::from_le_bytes([h[12], h[13], h[14], h[15]]) as usize;
    let size = if (92..=h.len()).contains(&size) {
        size
    } else {
        92
    };
    let crc = crc32(&h[..size]);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
}

fn read_bytes(d: &[u8]) -> Result<Table, GptError> {
    read(&mut Cursor::new(d), d.len() as u64)
}

#[test]
fn crc32_check_value() {
    // The CRC-32/ISO-HDLC check value.
    assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
}

#[test]
fn reads_both_copies_at_either_sector_size() {
    for ss in SECTOR_SIZES {
        let img = Image::new(ss, 16 * MIB);
        let t = read_bytes(&img.bytes()).unwrap();
        assert_eq!(t.sector_size, ss);
        let (p, b) = (t.primary.as_ref().unwrap(), t.backup.as_ref().unwrap());
        assert!(!t.copies_differ());
        assert_eq!(p.entries, b.entries);
        assert_eq!(p.header.my_lba, 1);
        assert_eq!(b.header.my_lba, 16 * MIB / ss - 1);
        let used: Vec<_> = p.used().map(|(n, e)| (n, e.name(), e.type_guid)).collect();
        assert_eq!(
            used,
            [
                (1, "esp".to_string(), types::ESP),
                (2, "root".to_string(), types::ROOT_X86_64)
            ]
        );
        let (start, len) = p.entries[1].byte_range(ss).unwrap();
        assert_eq!((start, len), (3 * MIB, 2 * MIB));
    }
}

#[test]
fn corrupt_primary_leaves_the_backup_and_says_why() {
    let img = Image::new(512, 8 * MIB);
    let mut d = img.bytes();
    d[512 + 40] ^= 1; // first usable LBA, CRC now wrong
    let t = read_bytes(&d).unwrap();
    assert!(matches!(t.primary, Err(GptError::HeaderCrc { lba: 1, .. })));
    assert_eq!(t.copy().unwrap().header.my_lba, 8 * MIB / 512 - 1);
}

#[test]
fn zeros_are_no_gpt_and_a_tiny_disk_too() {
    assert!(matches!(
        read_bytes(&vec![0u8; MIB as usize]),
        Err(GptError::NoGpt)
    ));
    assert!(matches!(read_bytes(&[0u8; 1024]), Err(GptError::NoGpt)));
    assert!(matches!(read_bytes(&[]), Err(GptError::NoGpt)));
}

/// Patch the primary header with `f`, fix its CRC, invalidate the backup, read.
fn primary_patched(f: impl Fn(&mut [u8])) -> Result<Table, GptError> {
    let img = Image::new(512, 8 * MIB);
    let mut d = img.bytes();
    let n = d.len();
    d[n - 512..n - 504].fill(0); // backup signature gone
    f(&mut d[512..1024]);
    fix_header_crc(&mut d[512..1024]);
    read_bytes(&d)
}

fn primary_error(f: impl Fn(&mut [u8])) -> GptError {
    match primary_patched(f) {
        Err(GptError::BothCopiesInvalid { primary, .. }) => *primary,
        other => panic!("expected both copies invalid, got {other:?}"),
    }
}

#[test]
fn every_lying_header_field_is_refused_by_name() {
    let set32 =
        |at: usize, v: u32| move |h: &mut [u8]| h[at..at + 4].copy_from_slice(&v.to_le_bytes());
    let set64 =
        |at: usize, v: u64| move |h: &mut [u8]| h[at..at + 8].copy_from_slice(&v.to_le_bytes());
    // The PID-1 killer of the old reader: an absurd entry count, with a valid CRC.
    assert!(matches!(
        primary_error(set32(80, u32::MAX)),
        GptError::EntryCount {
            count: u32::MAX,
            ..
        }
    ));
    assert!(matches!(
        primary_error(set32(80, 0)),
        GptError::EntryCount { .. }
    ));
    assert!(matches!(
        primary_error(set32(80, 8193)),
        GptError::EntryCount { .. }
    ));
    for size in [0, 1, 127, 129, 192, 8192, u32::MAX] {
        assert!(
            matches!(primary_error(set32(84, size)), GptError::EntrySize { .. }),
            "{size}"
        );
    }
    assert!(matches!(
        primary_error(set32(8, 0x0002_0000)),
        GptError::Revision { .. }
    ));
    for hs in [0, 91, 513, u32::MAX] {
        assert!(
            matches!(primary_error(set32(12, hs)), GptError::HeaderSize { .. }),
            "{hs}"
        );
    }
    assert!(matches!(
        primary_error(set64(24, 7)),
        GptError::Location { lba: 1, claims: 7 }
    ));
    for array_lba in [0, 1, u64::MAX, u64::MAX / 512, 8 * MIB / 512 - 1] {
        assert!(
            matches!(
                primary_error(set64(72, array_lba)),
                GptError::ArrayOutsideDisk { .. }
            ),
            "{array_lba}"
        );
    }
    for (at, v) in [
        (40, 0u64),
        (48, u64::MAX),
        (40, 9 * MIB / 512),
        (32, 0),
        (32, u64::MAX),
    ] {
        assert!(
            matches!(primary_error(set64(at, v)), GptError::UsableRange { .. }),
            "{at} {v}"
        );
    }
    assert!(matches!(
        primary_error(set32(88, 1)),
        GptError::ArrayCrc { .. }
    ));
}

#[test]
fn larger_entries_and_headers_are_read() {
    let mut img = Image::new(512, 8 * MIB);
    img.size = 256;
    img.count = 64;
    let t = read_bytes(&img.bytes()).unwrap();
    assert_eq!(t.copy().unwrap().used().count(), 2);
    let t = primary_patched(|h| h[12..16].copy_from_slice(&100u32.to_le_bytes())).unwrap();
    assert_eq!(t.primary.unwrap().header.header_size, 100);
}

#[test]
fn entries_outside_the_usable_range_or_duplicated_are_refused() {
    let sectors = 8 * MIB / 512;
    for (first, last) in [(10, 20), (3000, 2999), (2048, sectors), (2048, u64::MAX)] {
        let mut img = Image::new(512, 8 * MIB);
        img.parts[1].2 = first;
        img.parts[1].3 = last;
        assert!(
            matches!(
                read_bytes(&img.bytes()),
                Err(GptError::BothCopiesInvalid { .. })
            ),
            "{first}..={last}"
        );
        let err = read_bytes(&img.bytes()).unwrap_err().to_string();
        assert!(err.contains("partition 2"), "{err}");
    }
    let mut img = Image::new(512, 8 * MIB);
    img.parts[1].1 = img.parts[0].1;
    let err = read_bytes(&img.bytes()).unwrap_err().to_string();
    assert!(err.contains("partitions 1 and 2 share"), "{err}");
}

#[test]
fn grown_disk_finds_the_backup_at_the_old_place_and_a_moved_one_at_the_end() {
    let img = Image::new(512, 8 * MIB);
    let mut d = img.bytes();
    d.resize(12 * MIB as usize, 0);
    let t = read_bytes(&d).unwrap();
    assert_eq!(t.backup.unwrap().header.my_lba, 8 * MIB / 512 - 1);
}

#[test]
fn truncated_disk_fails_to_read_the_array_not_to_allocate() {
    let img = Image::new(512, 8 * MIB);
    let d = img.bytes();
    // The header says the disk is 8 MiB; the file ends after the primary array's first half.
    let short = &d[..(2 * 512 + 8192) as usize];
    let err = read(&mut Cursor::new(short), 8 * MIB).unwrap_err();
    assert!(matches!(err, GptError::BothCopiesInvalid { .. }), "{err}");
}

#[test]
fn names_decode_and_encode() {
    let e = Entry {
        type_guid: types::USR_X86_64,
        unique_guid: Guid([3; 16]),
        first_lba: 1,
        last_lba: 1,
        attributes: 0,
        name: Entry::encode_name("basalt_1.0.0_verity"),
    };
    assert_eq!(e.name(), "basalt_1.0.0_verity");
    let long = "x".repeat(40);
    assert_eq!(Entry::encode_name(&long)[35], u16::from(b'x'));
    let mut bad = e.clone();
    bad.name[0] = 0xd800; // unpaired surrogate
    assert!(bad.name().starts_with('\u{fffd}'));
    assert_eq!(e.byte_range(512), Some((512, 512)));
    let rev = Entry {
        first_lba: 2,
        ..e.clone()
    };
    assert_eq!(rev.byte_range(512), None);
    let huge = Entry {
        first_lba: u64::MAX,
        last_lba: u64::MAX,
        ..e
    };
    assert_eq!(huge.byte_range(512), None);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig {
        cases: 256, failure_persistence: None, ..Default::default()
    })]

    /// Any bytes written over any part of a valid image's primary header: the reader never
    /// panics, and when it accepts the primary copy its entries are the ones written.
    #[test]
    fn patched_headers_never_panic(at in 0usize..92, bytes in proptest::collection::vec(0u8.., 1..16), fix in proptest::bool::ANY) {
        let img = Image::new(512, 4 * MIB);
        let mut d = img.bytes();
        for (i, b) in bytes.iter().enumerate() {
            if at + i < 92 {
                d[512 + at + i] = *b;
            }
        }
        if fix {
            fix_header_crc(&mut d[512..1024]);
        }
        if let Ok(t) = read_bytes(&d) {
            if let Ok(p) = &t.primary {
                proptest::prop_assert_eq!(p.used().count(), 2);
            }
        }
    }

    /// Random disks of any length: no panic.
    #[test]
    fn random_disks_never_panic(d in proptest::collection::vec(0u8.., 0..8192)) {
        let _ = read_bytes(&d);
    }
}
