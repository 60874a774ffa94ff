//! GPT interoperability with the real tools: sgdisk (package `gdisk`) and sfdisk (package
//! `fdisk`) accept and decode every table we write, and we read tables sgdisk wrote.
//! Plus the bad-input cases: corrupt copies, foreign layouts, garbage.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod gpt_util;

use std::path::Path;

use basalt_disk::gpt::{types, CopyHealth, TableSource};
use basalt_disk::gptprio::Prio;
use basalt_disk::slots::open_rw;
use basalt_disk::{BootControl, BootTarget, Error, GptPrio, Inventory, Slot, SlotState};
use gpt_util::{fake_hash, put_image, run, run_ok, tiny_image_file};

fn sgdisk(args: &[&str]) -> String {
    run_ok("sgdisk", "gdisk", args)
}

fn assert_sgdisk_clean(img: &Path) {
    let out = sgdisk(&["-v", img.to_str().unwrap()]);
    assert!(out.contains("No problems found"), "sgdisk -v: {out}");
}

/// sfdisk --json agrees with our inventory on types, UUIDs, labels and positions.
fn assert_sfdisk_agrees(img: &Path) {
    let out = run_ok("sfdisk", "fdisk", &["--json", img.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let parts = v["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .clone();
    let inv = Inventory::read_path(img, None).unwrap();
    let mut ours = vec![inv.esp.clone(), inv.root.clone()];
    for s in &inv.slots {
        ours.push(s.data.clone());
        ours.push(s.verity.clone());
    }
    ours.sort_by_key(|p| p.number);
    assert_eq!(parts.len(), ours.len());
    for (theirs, ours) in parts.iter().zip(&ours) {
        assert_eq!(
            theirs["type"].as_str().unwrap().to_lowercase(),
            ours.type_guid.to_string()
        );
        assert_eq!(
            theirs["uuid"].as_str().unwrap().to_lowercase(),
            ours.uuid.to_string()
        );
        assert_eq!(theirs["name"].as_str().unwrap(), ours.label);
        assert_eq!(theirs["start"].as_u64().unwrap() * 512, ours.offset);
        assert_eq!(theirs["size"].as_u64().unwrap() * 512, ours.size);
    }
}

fn target() -> BootTarget {
    BootTarget {
        version: String::new(),
        usr_hash: String::new(),
        kernel: None,
        initrd: None,
        options: String::new(),
    }
}

#[test]
fn every_table_we_write_passes_sgdisk_and_sfdisk() {
    let dir = tempfile::tempdir().unwrap();
    let img = tiny_image_file(dir.path(), "d.img");
    type Step = Box<dyn Fn(&Path)>;
    let steps: Vec<Step> = vec![
        Box::new(|_| {}),
        Box::new(|p| {
            put_image(&mut open_rw(p).unwrap(), p, Slot::A, "1.0.0", 1, None).unwrap();
        }),
        Box::new(|p| {
            GptPrio::new(open_rw(p).unwrap(), p)
                .mark_good(Slot::A)
                .unwrap()
        }),
        Box::new(|p| {
            put_image(&mut open_rw(p).unwrap(), p, Slot::B, "2.0.0-rc.1", 2, None).unwrap();
        }),
        Box::new(|p| {
            GptPrio::new(open_rw(p).unwrap(), p)
                .stage(Slot::B, &target(), 3)
                .unwrap()
        }),
        Box::new(|p| {
            GptPrio::new(open_rw(p).unwrap(), p).boot_attempt().unwrap();
        }),
        Box::new(|p| {
            GptPrio::new(open_rw(p).unwrap(), p)
                .mark_good(Slot::B)
                .unwrap()
        }),
        Box::new(|p| {
            GptPrio::new(open_rw(p).unwrap(), p)
                .rollback(Slot::A)
                .unwrap()
        }),
        Box::new(|p| {
            basalt_disk::slots::mark_slot_bad(&mut open_rw(p).unwrap(), p, Slot::B, None).unwrap()
        }),
    ];
    for step in steps {
        step(&img);
        assert_sgdisk_clean(&img);
        let printed = sgdisk(&["-p", img.to_str().unwrap()]);
        assert!(
            printed.contains("esp") && printed.contains("root"),
            "{printed}"
        );
        assert_sfdisk_agrees(&img);
        // sgdisk's view of the usr attribute bits is ours.
        let inv = Inventory::read_path(&img, None).unwrap();
        for s in &inv.slots {
            let info = sgdisk(&["-i", &s.data.number.to_string(), img.to_str().unwrap()]);
            let want = format!("Attribute flags: {:016X}", s.data.attributes);
            assert!(info.contains(&want), "{want} not in {info}");
        }
    }
    // The final state, as sgdisk prints it.
    let inv = Inventory::read_path(&img, None).unwrap();
    assert_eq!(inv.slot(Slot::A).state, SlotState::Valid);
    assert_eq!(inv.slot(Slot::B).state, SlotState::Bad);
    assert_eq!(inv.slot(Slot::B).version.as_deref(), Some("2.0.0-rc.1"));
}

#[test]
fn we_read_a_table_sgdisk_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("sg.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let h = fake_hash(9);
    let (du, vu) = (h.data_uuid().to_string(), h.verity_uuid().to_string());
    let (usr, ver) = (
        types::USR_X86_64.to_string(),
        types::USR_VERITY_X86_64.to_string(),
    );
    let root = types::ROOT_X86_64.to_string();
    let i = img.to_str().unwrap();
    sgdisk(&[
        "-o",
        "-n",
        "1:2048:+1M",
        "-t",
        "1:ef00",
        "-c",
        "1:esp",
        "-n",
        "2:0:+1M",
        "-t",
        &format!("2:{usr}"),
        "-u",
        &format!("2:{du}"),
        "-c",
        "2:basalt_2.0.0",
        "-n",
        "3:0:+64K",
        "-t",
        &format!("3:{ver}"),
        "-u",
        &format!("3:{vu}"),
        "-c",
        "3:basalt_2.0.0_verity",
        "-n",
        "4:0:+1M",
        "-t",
        &format!("4:{usr}"),
        "-c",
        "4:_empty",
        "-n",
        "5:0:+64K",
        "-t",
        &format!("5:{ver}"),
        "-c",
        "5:_empty",
        "-n",
        "6:0:0",
        "-t",
        &format!("6:{root}"),
        "-c",
        "6:root",
        // gptprio on USR-A: priority 3 (bits 48, 49), tries 1 (bit 52), successful (bit 56).
        "-A",
        "2:set:48",
        "-A",
        "2:set:49",
        "-A",
        "2:set:52",
        "-A",
        "2:set:56",
        i,
    ]);
    let cmdline = format!("ro usrhash={}", h.to_hex());
    let inv = Inventory::read_path(&img, Some(&cmdline)).unwrap();
    assert!(inv.health.is_clean());
    let a = inv.slot(Slot::A);
    assert_eq!(a.state, SlotState::Active);
    assert_eq!(a.version.as_deref(), Some("2.0.0"));
    assert_eq!(a.root_hash, Some(h));
    assert_eq!(inv.booted, Some(Slot::A));
    assert_eq!(inv.slot(Slot::B).state, SlotState::Empty);
    assert_eq!(inv.esp.offset, 2048 * 512);
    let gp = GptPrio::new(open_rw(&img).unwrap(), &img);
    assert_eq!(
        gp.fields().unwrap()[0],
        Prio {
            priority: 3,
            tries: 1,
            successful: true
        }
    );
    assert_eq!(gp.status().unwrap().next, Some(Slot::A));
}

fn corrupt(img: &Path, offset: u64) {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut f = open_rw(img).unwrap();
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.read_exact(&mut b).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(&[b[0] ^ 0xa5]).unwrap();
}

#[test]
fn corrupt_copies_are_reported_used_and_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let len = basalt_disk::LayoutSpec::tiny().disk_size;
    // (what, byte to corrupt, which copy must be reported)
    let cases = [
        ("primary header", 512 + 40, true),
        ("primary entries", 1024 + 130, true),
        ("backup header", len - 512 + 40, false),
        ("backup entries", len - 33 * 512 + 5, false),
    ];
    for (n, (what, off, primary)) in cases.into_iter().enumerate() {
        let img = tiny_image_file(dir.path(), &format!("c{n}.img"));
        put_image(&mut open_rw(&img).unwrap(), &img, Slot::A, "1.0.0", 1, None).unwrap();
        corrupt(&img, off);
        let inv = Inventory::read_path(&img, None).unwrap();
        let (bad, good) = if primary {
            (&inv.health.primary, &inv.health.backup)
        } else {
            (&inv.health.backup, &inv.health.primary)
        };
        assert!(
            matches!(bad, CopyHealth::Corrupt(_)),
            "{what}: {:?}",
            inv.health
        );
        assert_eq!(good, &CopyHealth::Valid, "{what}");
        let want = if primary {
            TableSource::Backup
        } else {
            TableSource::Primary
        };
        assert_eq!(inv.health.source, want, "{what}");
        assert_eq!(inv.health.warnings().len(), 1, "{what}");
        assert_eq!(
            inv.slot(Slot::A).version.as_deref(),
            Some("1.0.0"),
            "{what}"
        );
        // sgdisk sees the damage too ...
        let v = run("sgdisk", "gdisk", &["-v", img.to_str().unwrap()]);
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&v.stdout),
            String::from_utf8_lossy(&v.stderr)
        )
        .to_lowercase();
        assert!(
            said.contains("error") || said.contains("corrupt"),
            "{what}: {said}"
        );
        // ... and the next write repairs it.
        GptPrio::new(open_rw(&img).unwrap(), &img)
            .mark_good(Slot::A)
            .unwrap();
        assert_sgdisk_clean(&img);
        assert!(
            Inventory::read_path(&img, None).unwrap().health.is_clean(),
            "{what}"
        );
    }
    // Both copies corrupt: a typed error, and no write happens.
    let img = tiny_image_file(dir.path(), "both.img");
    corrupt(&img, 512 + 40);
    corrupt(&img, len - 512 + 40);
    let before = std::fs::read(&img).unwrap();
    assert!(matches!(
        Inventory::read_path(&img, None),
        Err(Error::GptCorrupt { .. })
    ));
    let mut gp = GptPrio::new(open_rw(&img).unwrap(), &img);
    assert!(matches!(
        gp.mark_bad(Slot::A),
        Err(Error::GptCorrupt { .. })
    ));
    assert_eq!(std::fs::read(&img).unwrap(), before);
}

#[test]
fn bad_input_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    // Empty, tiny and zero-filled files: no GPT.
    std::fs::write(p("empty"), b"").unwrap();
    std::fs::write(p("tiny"), [0x55u8; 100]).unwrap();
    std::fs::write(p("zero"), vec![0u8; 1 << 20]).unwrap();
    // Garbage: deterministic pseudo-random bytes.
    let mut x = 0x1234_5678u32;
    let garbage: Vec<u8> = (0..1 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    std::fs::write(p("garbage"), garbage).unwrap();
    for n in ["empty", "tiny", "zero", "garbage"] {
        let r = Inventory::read_path(&p(n), None);
        assert!(matches!(r, Err(Error::NoGpt { .. })), "{n}: {r:?}");
    }
    // An MBR disk made by sfdisk.
    std::fs::File::create(p("mbr"))
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    let out = std::process::Command::new("sfdisk")
        .arg(p("mbr"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(b"label: dos\n,,83\n")?;
            c.wait()
        })
        .expect("sfdisk not runnable; install the Debian package `fdisk`");
    assert!(out.success());
    assert!(matches!(
        Inventory::read_path(&p("mbr"), None),
        Err(Error::NoGpt { .. })
    ));
    // A GPT disk with someone else's layout.
    std::fs::File::create(p("foreign"))
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    sgdisk(&[
        "-o",
        "-n",
        "1:0:0",
        "-t",
        "1:8300",
        p("foreign").to_str().unwrap(),
    ]);
    assert!(matches!(
        Inventory::read_path(&p("foreign"), None),
        Err(Error::NotBasaltLayout { .. })
    ));
    // Our layout with the root partition deleted.
    let img = tiny_image_file(dir.path(), "noroot.img");
    sgdisk(&["-d", "6", img.to_str().unwrap()]);
    assert!(matches!(
        Inventory::read_path(&img, None),
        Err(Error::NotBasaltLayout { .. })
    ));
    // A missing file.
    assert!(matches!(
        Inventory::read_path(&p("absent"), None),
        Err(Error::Io { .. })
    ));
}
