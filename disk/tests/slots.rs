//! Slot writes and partition-range I/O on image files: an image written with `write_slot`
//! verifies with `veritysetup` (package `cryptsetup-bin`) when read back through the range
//! reader; the booted slot, oversize images, duplicate hashes and failed copies are refused or
//! left recoverable, and nothing outside the target slot changes.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod gpt_util;

use std::io::{self, Read};
use std::path::Path;

use basalt_disk::gpt::Guid;
use basalt_disk::slots::{
    begin_install, finish_install, mark_slot_bad, open_rw, write_slot, InstallPlan, SlotImage,
};
use basalt_disk::{
    BootControl, BootStatus, Error, GptPrio, Inventory, RootHash, Slot, SlotPart, SlotState,
};
use gpt_util::{fake_hash, put_image, run_ok, tiny_image_file};

fn veritysetup(args: &[&str]) -> String {
    run_ok("veritysetup", "cryptsetup-bin", args)
}

#[test]
fn written_slot_verifies_with_veritysetup_through_the_range_reader() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let img = tiny_image_file(d, "d.img");
    // 192 KiB of non-trivial data and its tree.
    let data: Vec<u8> = (0..192 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(d.join("usr.img"), &data).unwrap();
    let out = veritysetup(&[
        "format",
        d.join("usr.img").to_str().unwrap(),
        d.join("usr.verity").to_str().unwrap(),
    ]);
    let hex = out
        .lines()
        .find_map(|l| l.strip_prefix("Root hash:"))
        .unwrap()
        .trim()
        .to_string();
    let hash = RootHash::parse(&hex).unwrap();
    let verity = std::fs::read(d.join("usr.verity")).unwrap();
    write_slot(
        &mut open_rw(&img).unwrap(),
        &img,
        Slot::B,
        None,
        SlotImage {
            data: &mut &data[..],
            data_path: Path::new("usr.img"),
            data_len: data.len() as u64,
            verity: &mut &verity[..],
            verity_path: Path::new("usr.verity"),
            verity_len: verity.len() as u64,
            root_hash: hash,
            os: "basalt",
            version: "1.2.3",
        },
    )
    .unwrap();
    let inv = Inventory::read_path(&img, Some(&format!("usrhash={hex}"))).unwrap();
    let b = inv.slot(Slot::B);
    assert_eq!(b.state, SlotState::Active);
    assert_eq!(b.root_hash, Some(hash));
    assert_eq!(b.data.label, "basalt_1.2.3");
    assert_eq!(b.verity.label, "basalt_1.2.3_verity");
    assert_eq!(b.data.uuid.to_string().replace('-', ""), hex[..32]);
    assert_eq!(b.verity.uuid.to_string().replace('-', ""), hex[32..]);
    // Read both partitions back through the range reader, as the updater will.
    for (part, name) in [
        (SlotPart::Data, "data.part"),
        (SlotPart::Verity, "verity.part"),
    ] {
        let mut r = inv.slot_range(Slot::B, part).open_read().unwrap();
        let mut buf = Vec::new();
        r.read_to_end(&mut buf).unwrap();
        assert_eq!(buf.len() as u64, inv.slot_range(Slot::B, part).len);
        std::fs::write(d.join(name), buf).unwrap();
    }
    veritysetup(&[
        "verify",
        d.join("data.part").to_str().unwrap(),
        d.join("verity.part").to_str().unwrap(),
        &hex,
    ]);
}

#[test]
fn the_booted_slot_is_never_written() {
    let dir = tempfile::tempdir().unwrap();
    let img = tiny_image_file(dir.path(), "d.img");
    let hash = put_image(&mut open_rw(&img).unwrap(), &img, Slot::A, "1.0.0", 1, None).unwrap();
    let cmdline = format!("console=ttyS0 usrhash={} rw", hash.to_hex());
    let before = std::fs::read(&img).unwrap();
    let r = put_image(
        &mut open_rw(&img).unwrap(),
        &img,
        Slot::A,
        "2.0.0",
        2,
        Some(&cmdline),
    );
    assert!(
        matches!(r, Err(Error::BootedSlot { slot: Slot::A })),
        "{r:?}"
    );
    let r = mark_slot_bad(&mut open_rw(&img).unwrap(), &img, Slot::A, Some(&cmdline));
    assert!(
        matches!(r, Err(Error::BootedSlot { slot: Slot::A })),
        "{r:?}"
    );
    let inv = Inventory::read_path(&img, Some(&cmdline)).unwrap();
    for part in [SlotPart::Data, SlotPart::Verity] {
        let r = inv.slot_writer(open_rw(&img).unwrap(), Slot::A, part);
        assert!(matches!(r, Err(Error::BootedSlot { slot: Slot::A })));
    }
    assert_eq!(
        std::fs::read(&img).unwrap(),
        before,
        "booted slot refusals wrote something"
    );
    // The other slot is writable while A is booted.
    put_image(
        &mut open_rw(&img).unwrap(),
        &img,
        Slot::B,
        "2.0.0",
        2,
        Some(&cmdline),
    )
    .unwrap();
    let inv = Inventory::read_path(&img, Some(&cmdline)).unwrap();
    assert_eq!(inv.booted, Some(Slot::A));
    assert_eq!(inv.slot(Slot::A).state, SlotState::Active);
    assert_eq!(inv.slot(Slot::B).state, SlotState::Valid);
}

#[test]
fn oversize_images_and_bad_labels_are_refused_before_any_write() {
    let dir = tempfile::tempdir().unwrap();
    let img = tiny_image_file(dir.path(), "d.img");
    let before = std::fs::read(&img).unwrap();
    let inv = Inventory::read_path(&img, None).unwrap();
    let cap = inv.slot(Slot::A).data.size;
    let vcap = inv.slot(Slot::A).verity.size;
    let big = vec![1u8; cap as usize + 4096];
    let small = vec![2u8; 4096];
    let image = |data: &[u8], verity: &[u8], version: &str| {
        write_slot(
            &mut open_rw(&img).unwrap(),
            &img,
            Slot::A,
            None,
            SlotImage {
                data: &mut &data[..],
                data_path: Path::new("d"),
                data_len: data.len() as u64,
                verity: &mut &verity[..],
                verity_path: Path::new("v"),
                verity_len: verity.len() as u64,
                root_hash: fake_hash(5),
                os: "basalt",
                version,
            },
        )
    };
    let r = image(&big, &small, "1.0.0");
    assert!(
        matches!(r, Err(Error::SlotTooSmall { part: "data", capacity, .. }) if capacity == cap),
        "{r:?}"
    );
    let r = image(&small, &vec![0u8; vcap as usize + 1], "1.0.0");
    assert!(
        matches!(r, Err(Error::SlotTooSmall { part: "verity", .. })),
        "{r:?}"
    );
    let r = image(&small, &small, "1_0");
    assert!(matches!(r, Err(Error::InvalidLabel { .. })), "{r:?}");
    let r = image(&small, &small, "1.0.0-a-very-long-prerelease-tag");
    assert!(matches!(r, Err(Error::InvalidLabel { .. })), "{r:?}");
    assert_eq!(std::fs::read(&img).unwrap(), before);
    // Exactly the capacity fits.
    let exact = vec![3u8; cap as usize];
    image(&exact, &small, "1.0.0").unwrap();
}

#[test]
fn duplicate_root_hash_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let img = tiny_image_file(dir.path(), "d.img");
    put_image(&mut open_rw(&img).unwrap(), &img, Slot::A, "1.0.0", 7, None).unwrap();
    let r = put_image(&mut open_rw(&img).unwrap(), &img, Slot::B, "1.0.0", 7, None);
    assert!(
        matches!(r, Err(Error::DuplicateRootHash { other: Slot::A, .. })),
        "{r:?}"
    );
    // Rewriting the same slot with the same image is fine (idempotent retry).
    put_image(&mut open_rw(&img).unwrap(), &img, Slot::A, "1.0.0", 7, None).unwrap();
}

/// A reader that fails after `n` bytes, like a network stream dropping.
struct Failing(usize);
impl Read for Failing {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.0 == 0 {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "stream dropped",
            ));
        }
        let n = buf.len().min(self.0);
        buf[..n].fill(0x42);
        self.0 -= n;
        Ok(n)
    }
}

#[test]
fn failed_copy_leaves_the_slot_installing_and_unbootable() {
    let dir = tempfile::tempdir().unwrap();
    let img = tiny_image_file(dir.path(), "d.img");
    put_image(&mut open_rw(&img).unwrap(), &img, Slot::A, "1.0.0", 1, None).unwrap();
    put_image(&mut open_rw(&img).unwrap(), &img, Slot::B, "2.0.0", 2, None).unwrap();
    let mut gp = GptPrio::new(open_rw(&img).unwrap(), &img);
    gp.mark_good(Slot::A).unwrap();
    gp.stage(
        Slot::B,
        &basalt_disk::BootTarget {
            version: "2.0.0".into(),
            usr_hash: String::new(),
            kernel: None,
            initrd: None,
            options: String::new(),
        },
        3,
    )
    .unwrap();
    let a_before = gp.fields().unwrap()[0];
    drop(gp);
    let verity = vec![0u8; 4096];
    let r = write_slot(
        &mut open_rw(&img).unwrap(),
        &img,
        Slot::B,
        None,
        SlotImage {
            data: &mut Failing(100_000),
            data_path: Path::new("https://example.invalid/usr"),
            data_len: 200_000,
            verity: &mut &verity[..],
            verity_path: Path::new("v"),
            verity_len: verity.len() as u64,
            root_hash: fake_hash(3),
            os: "basalt",
            version: "3.0.0",
        },
    );
    assert!(matches!(r, Err(Error::Io { .. })), "{r:?}");
    let inv = Inventory::read_path(&img, None).unwrap();
    assert_eq!(inv.slot(Slot::B).state, SlotState::Installing);
    assert_eq!(inv.slot(Slot::B).root_hash, None);
    assert_eq!(inv.slot(Slot::A).state, SlotState::Valid);
    let gp = GptPrio::new(open_rw(&img).unwrap(), &img);
    let st = gp.status().unwrap();
    assert_eq!(
        st.slot(Slot::B).status,
        BootStatus::Absent,
        "staged bits were cleared"
    );
    assert_eq!(st.next, Some(Slot::A));
    assert_eq!(gp.fields().unwrap()[0], a_before);
}

#[test]
fn mark_slot_bad_is_recorded_in_the_label() {
    let dir = tempfile::tempdir().unwrap();
    let img = tiny_image_file(dir.path(), "d.img");
    put_image(&mut open_rw(&img).unwrap(), &img, Slot::B, "2.0.0", 2, None).unwrap();
    mark_slot_bad(&mut open_rw(&img).unwrap(), &img, Slot::B, None).unwrap();
    let inv = Inventory::read_path(&img, None).unwrap();
    assert_eq!(inv.slot(Slot::B).state, SlotState::Bad);
    assert_eq!(inv.slot(Slot::B).data.label, "basalt_2.0.0_bad");
    assert_eq!(inv.slot(Slot::B).version.as_deref(), Some("2.0.0"));
    // A bad image cannot be staged by the GPT backend.
    let mut gp = GptPrio::new(open_rw(&img).unwrap(), &img);
    let r = gp.mark_good(Slot::B);
    assert!(matches!(r, Err(Error::IllegalTransition { .. })), "{r:?}");
    // Empty slots cannot be marked bad.
    let r = mark_slot_bad(&mut open_rw(&img).unwrap(), &img, Slot::A, None);
    assert!(matches!(r, Err(Error::IllegalTransition { .. })), "{r:?}");
}

#[test]
fn malformed_usrhash_on_the_cmdline_is_an_error_not_a_guess() {
    let dir = tempfile::tempdir().unwrap();
    let img = tiny_image_file(dir.path(), "d.img");
    let r = Inventory::read_path(&img, Some("ro usrhash=12345"));
    assert!(matches!(r, Err(Error::InvalidRootHash { .. })), "{r:?}");
    let inv = Inventory::read_path(&img, Some(&format!("usrhash={}", "ab".repeat(32)))).unwrap();
    assert_eq!(
        inv.booted, None,
        "a hash matching no slot boots nothing here"
    );
    assert!(inv.cmdline_usrhash.is_some());
}

fn plan(version: &str, hash: RootHash, data_len: u64) -> InstallPlan<'_> {
    InstallPlan {
        data_len,
        verity_len: 4096,
        root_hash: hash,
        os: "basalt",
        version,
    }
}

fn scratch(n: u8) -> [Guid; 2] {
    [Guid([n; 16]), Guid([n.wrapping_add(1); 16])]
}

/// begin → write at any position → finish: the slot is unbootable from the first table write
/// (random UUIDs: the old image's `usrhash=` finds nothing), a second begin (a resume) writes
/// nothing, and only finish names it.
#[test]
fn stepwise_install_hides_the_slot_until_it_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let img = tiny_image_file(dir.path(), "d.img");
    let a = put_image(&mut open_rw(&img).unwrap(), &img, Slot::A, "1.0.0", 1, None).unwrap();
    let old_b = put_image(&mut open_rw(&img).unwrap(), &img, Slot::B, "1.5.0", 2, None).unwrap();
    let booted = format!("usrhash={}", a.to_hex());
    let new = fake_hash(9);
    let p = plan("2.0.0", new, 8192);
    let install = begin_install(
        &mut open_rw(&img).unwrap(),
        &img,
        Slot::B,
        Some(&booted),
        &p,
        scratch(0x31),
    )
    .unwrap();
    let inv = Inventory::read_path(&img, Some(&format!("usrhash={}", old_b.to_hex()))).unwrap();
    assert_eq!(inv.slot(Slot::B).state, SlotState::Installing);
    assert_eq!(
        inv.booted, None,
        "the old image's usrhash= still finds slot B"
    );
    assert_eq!(inv.slot(Slot::B).data.uuid, Guid([0x31; 16]));
    // A resume: nothing is written, the scratch UUIDs stay.
    let before = std::fs::read(&img).unwrap();
    let again = begin_install(
        &mut open_rw(&img).unwrap(),
        &img,
        Slot::B,
        Some(&booted),
        &p,
        scratch(0x41),
    )
    .unwrap();
    assert_eq!(again, install);
    assert_eq!(std::fs::read(&img).unwrap(), before);
    // Write the second data block first, then the first (resume order does not matter).
    let mut dev = open_rw(&img).unwrap();
    let mut w = install.writer(&mut dev, SlotPart::Data);
    w.set_position(4096).unwrap();
    w.write(&[2u8; 4096]).unwrap();
    w.set_position(0).unwrap();
    w.write(&[1u8; 4096]).unwrap();
    w.finish().unwrap();
    finish_install(
        &mut open_rw(&img).unwrap(),
        &img,
        Slot::B,
        Some(&booted),
        &p,
    )
    .unwrap();
    let inv = Inventory::read_path(&img, Some(&booted)).unwrap();
    let b = inv.slot(Slot::B);
    assert_eq!((b.state, b.root_hash), (SlotState::Valid, Some(new)));
    assert_eq!(b.data.label, "basalt_2.0.0");
    let mut r = inv.slot_range(Slot::B, SlotPart::Data).open_read().unwrap();
    let mut head = vec![0u8; 8192];
    r.read_exact(&mut head).unwrap();
    assert!(head[..4096].iter().all(|&x| x == 1) && head[4096..].iter().all(|&x| x == 2));
    // Finishing twice is refused: the slot is no longer being installed.
    let r = finish_install(
        &mut open_rw(&img).unwrap(),
        &img,
        Slot::B,
        Some(&booted),
        &p,
    );
    assert!(matches!(r, Err(Error::IllegalTransition { .. })), "{r:?}");
}

#[test]
fn stepwise_install_refusals_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let img = tiny_image_file(dir.path(), "d.img");
    let a = put_image(&mut open_rw(&img).unwrap(), &img, Slot::A, "1.0.0", 1, None).unwrap();
    let booted = format!("usrhash={}", a.to_hex());
    let before = std::fs::read(&img).unwrap();
    let begin = |slot, p: &InstallPlan<'_>, s| {
        begin_install(&mut open_rw(&img).unwrap(), &img, slot, Some(&booted), p, s)
    };
    let r = begin(Slot::A, &plan("2.0.0", fake_hash(9), 4096), scratch(1));
    assert!(
        matches!(r, Err(Error::BootedSlot { slot: Slot::A })),
        "{r:?}"
    );
    let r = begin(Slot::B, &plan("2.0.0", fake_hash(9), 64 << 20), scratch(1));
    assert!(matches!(r, Err(Error::SlotTooSmall { .. })), "{r:?}");
    let r = begin(Slot::B, &plan("2_0", fake_hash(9), 4096), scratch(1));
    assert!(matches!(r, Err(Error::InvalidLabel { .. })), "{r:?}");
    let r = begin(Slot::B, &plan("2.0.0", a, 4096), scratch(1));
    assert!(matches!(r, Err(Error::DuplicateRootHash { .. })), "{r:?}");
    let same = [Guid([5; 16]), Guid([5; 16])];
    let r = begin(Slot::B, &plan("2.0.0", fake_hash(9), 4096), same);
    assert!(matches!(r, Err(Error::InvalidLabel { .. })), "{r:?}");
    let r = finish_install(
        &mut open_rw(&img).unwrap(),
        &img,
        Slot::B,
        Some(&booted),
        &plan("2.0.0", fake_hash(9), 4096),
    );
    assert!(matches!(r, Err(Error::IllegalTransition { .. })), "{r:?}");
    assert_eq!(std::fs::read(&img).unwrap(), before);
}
