//! GPT-priority bits against ChromeOS's own tool, `cgpt` (Debian package `cgpt`): cgpt reads
//! exactly the priority/tries/successful we write, and we read exactly what `cgpt add` and
//! `cgpt prioritize` write.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod gpt_util;

use std::path::Path;

use basalt_disk::gptprio::Prio;
use basalt_disk::slots::open_rw;
use basalt_disk::{BootControl, BootTarget, GptPrio, Inventory, Slot};
use gpt_util::{put_image, run_ok, tiny_image_file};

fn cgpt(args: &[&str]) -> String {
    run_ok("cgpt", "cgpt", args)
}

fn cgpt_fields(img: &Path, n: u32) -> Prio {
    let get = |flag: &str| -> u8 {
        cgpt(&["show", "-i", &n.to_string(), flag, img.to_str().unwrap()])
            .trim()
            .parse()
            .unwrap()
    };
    Prio {
        priority: get("-P"),
        tries: get("-T"),
        successful: get("-S") == 1,
    }
}

fn ours(img: &Path) -> [Prio; 2] {
    GptPrio::new(open_rw(img).unwrap(), img).fields().unwrap()
}

fn usr_numbers(img: &Path) -> [u32; 2] {
    Inventory::read_path(img, None).unwrap().layout.usr
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
fn cgpt_reads_what_we_write() {
    let dir = tempfile::tempdir().unwrap();
    let img = tiny_image_file(dir.path(), "d.img");
    put_image(&mut open_rw(&img).unwrap(), &img, Slot::A, "1.0.0", 1, None).unwrap();
    put_image(&mut open_rw(&img).unwrap(), &img, Slot::B, "2.0.0", 2, None).unwrap();
    let nums = usr_numbers(&img);
    type Step = fn(&mut GptPrio<std::fs::File>);
    let steps: [Step; 9] = [
        |gp| gp.mark_good(Slot::A).unwrap(),
        |gp| gp.stage(Slot::B, &target(), 15).unwrap(),
        |gp| {
            gp.boot_attempt().unwrap();
        },
        |gp| gp.cancel(Slot::B).unwrap(),
        |gp| gp.stage(Slot::B, &target(), 2).unwrap(),
        |gp| {
            gp.boot_attempt().unwrap();
            gp.boot_attempt().unwrap();
        },
        |gp| gp.mark_good(Slot::B).unwrap(),
        |gp| gp.rollback(Slot::A).unwrap(),
        |gp| gp.mark_bad(Slot::A).unwrap(),
    ];
    for step in steps {
        step(&mut GptPrio::new(open_rw(&img).unwrap(), &img));
        let f = ours(&img);
        for (i, n) in nums.into_iter().enumerate() {
            assert_eq!(cgpt_fields(&img, n), f[i], "partition {n}");
        }
    }
}

#[test]
fn we_read_what_cgpt_add_writes() {
    let dir = tempfile::tempdir().unwrap();
    let img = tiny_image_file(dir.path(), "d.img");
    let i = img.to_str().unwrap();
    let [a, b] = usr_numbers(&img);
    for (pa, ta, sa, pb, tb, sb) in [
        (1, 0, 1, 2, 3, 0),
        (15, 15, 0, 0, 0, 1),
        (0, 7, 1, 9, 1, 0),
        (5, 2, 0, 5, 2, 0),
        (3, 0, 0, 14, 15, 1),
    ] {
        cgpt(&[
            "add",
            "-i",
            &a.to_string(),
            "-P",
            &pa.to_string(),
            "-T",
            &ta.to_string(),
            "-S",
            &sa.to_string(),
            i,
        ]);
        cgpt(&[
            "add",
            "-i",
            &b.to_string(),
            "-P",
            &pb.to_string(),
            "-T",
            &tb.to_string(),
            "-S",
            &sb.to_string(),
            i,
        ]);
        let want = [cgpt_fields(&img, a), cgpt_fields(&img, b)];
        assert_eq!(
            want,
            [
                Prio {
                    priority: pa,
                    tries: ta,
                    successful: sa == 1
                },
                Prio {
                    priority: pb,
                    tries: tb,
                    successful: sb == 1
                }
            ]
        );
        assert_eq!(ours(&img), want);
        // Our write after cgpt's keeps cgpt's view consistent (no bit drift).
        GptPrio::new(open_rw(&img).unwrap(), &img)
            .mark_bad(Slot::A)
            .unwrap();
        assert_eq!(cgpt_fields(&img, b), want[1]);
    }
}

/// `cgpt prioritize` only touches ChromeOS-kernel partitions: retype our usr partitions to
/// that type with sgdisk, let cgpt reorder, retype back, and read the result.
#[test]
fn we_read_what_cgpt_prioritize_writes() {
    const CROS_KERNEL: &str = "FE3A2A5D-4F32-41A7-B725-ACCC3285A309";
    let dir = tempfile::tempdir().unwrap();
    let img = tiny_image_file(dir.path(), "d.img");
    let i = img.to_str().unwrap();
    let [a, b] = usr_numbers(&img);
    put_image(&mut open_rw(&img).unwrap(), &img, Slot::A, "1.0.0", 1, None).unwrap();
    put_image(&mut open_rw(&img).unwrap(), &img, Slot::B, "2.0.0", 2, None).unwrap();
    let mut gp = GptPrio::new(open_rw(&img).unwrap(), &img);
    gp.mark_good(Slot::A).unwrap();
    gp.stage(Slot::B, &target(), 3).unwrap();
    drop(gp);
    let sg = |args: &[&str]| run_ok("sgdisk", "gdisk", args);
    sg(&[
        "-t",
        &format!("{a}:{CROS_KERNEL}"),
        "-t",
        &format!("{b}:{CROS_KERNEL}"),
        i,
    ]);
    // Make A the highest (what `chromeos-setgoodkernel` does for the running kernel).
    cgpt(&["prioritize", "-i", &a.to_string(), i]);
    let theirs = [cgpt_fields(&img, a), cgpt_fields(&img, b)];
    assert!(theirs[0].priority > theirs[1].priority, "{theirs:?}");
    let usr = basalt_disk::gpt::types::USR_X86_64.to_string();
    sg(&["-t", &format!("{a}:{usr}"), "-t", &format!("{b}:{usr}"), i]);
    assert_eq!(ours(&img), theirs);
    let gp = GptPrio::new(open_rw(&img).unwrap(), &img);
    assert_eq!(gp.status().unwrap().next, Some(Slot::A));
    // And with an explicit top priority.
    sg(&[
        "-t",
        &format!("{a}:{CROS_KERNEL}"),
        "-t",
        &format!("{b}:{CROS_KERNEL}"),
        i,
    ]);
    cgpt(&["prioritize", "-i", &b.to_string(), "-P", "9", i]);
    let theirs = [cgpt_fields(&img, a), cgpt_fields(&img, b)];
    assert_eq!(theirs[1].priority, 9);
    sg(&["-t", &format!("{a}:{usr}"), "-t", &format!("{b}:{usr}"), i]);
    assert_eq!(ours(&img), theirs);
    assert_eq!(gp.status().unwrap().next, Some(Slot::B));
}
