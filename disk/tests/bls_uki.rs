//! The BLS backend staging a release's unified kernel image: a type #1 entry whose `efi`
//! line names the UKI (`basalt/<version>/uki.efi`), with the same stage key, boot counting,
//! blessing, rollback and cancel as a kernel + initrd entry; a UKI whose signed command line
//! names another `/usr` (or none, or a slot) is refused before anything is written; the GPT
//! priority backend refuses UKIs.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod bls_common;

use std::path::Path;

use basalt_disk::bls::entry::{BasaltEntry, LoaderType, UKI_FILE};
use basalt_disk::bls::{BlsBackend, ENTRIES_DIR};
use basalt_disk::{BootControl, BootStatus, DirEsp, Error, Slot, UkiTarget};
use bls_common::*;

fn backend(root: &Path) -> BlsBackend<DirEsp> {
    BlsBackend::new(DirEsp::new(root))
}

fn installed(root: &Path, host: &Path) -> BlsBackend<DirEsp> {
    let mut b = backend(root);
    b.stage(Slot::A, &target(host, "1.0.0"), 3).unwrap();
    b.mark_good(Slot::A).unwrap();
    b
}

fn entry_files(root: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(root.join(ENTRIES_DIR))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn a_uki_entry_counts_blesses_and_rolls_back_like_a_kernel_entry() {
    let (esp, host) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut b = installed(esp.path(), host.path());
    let t = uki_target(host.path(), "2.0.0");
    b.stage_uki(Slot::B, &t, 3).unwrap();
    assert_eq!(
        entry_files(esp.path()),
        ["basalt-1.0.0.conf", "basalt-2.0.0+3.conf"]
    );
    // The entry: `efi` names the UKI, no initrd, options = its signed line + the slot.
    let text =
        std::fs::read_to_string(esp.path().join("loader/entries/basalt-2.0.0+3.conf")).unwrap();
    let e = BasaltEntry::parse("basalt-2.0.0+3.conf", text.as_bytes()).unwrap();
    assert_eq!(e.loader, LoaderType::Efi);
    assert_eq!(e.linux, format!("/basalt/2.0.0/{UKI_FILE}"));
    assert!(e.initrd.is_empty());
    assert_eq!(
        e.options,
        format!("console=ttyS0 usrhash={} basalt.slot=b", t.usr_hash)
    );
    assert!(text.contains("\nefi /basalt/2.0.0/uki.efi\n"), "{text}");
    assert!(
        !text.contains("linux") && !text.contains("initrd"),
        "{text}"
    );
    assert_eq!(
        std::fs::read(esp.path().join("basalt/2.0.0").join(UKI_FILE)).unwrap(),
        uki_bytes("2.0.0")
    );
    assert!(
        !esp.path().join("EFI/Linux").exists(),
        "nothing where systemd-boot looks for type #2 entries (they would count twice)"
    );

    // Counting and fallback exactly as for kernel entries.
    let st = b.status().unwrap();
    assert_eq!(st.next, Some(Slot::B));
    assert_eq!(st.slot(Slot::B).version.as_deref(), Some("2.0.0"));
    for left in (0..3).rev() {
        assert_eq!(b.boot_attempt().unwrap(), Some(Slot::B));
        let s = b.status().unwrap().slot(Slot::B).status;
        if left > 0 {
            assert_eq!(
                s,
                BootStatus::Trying {
                    tries_left: left,
                    tries_done: 3 - left
                }
            );
        } else {
            assert_eq!(s, BootStatus::Bad);
        }
    }
    assert_eq!(
        b.status().unwrap().next,
        Some(Slot::A),
        "tries ran out: A boots"
    );

    // Re-stage, boot once, bless.
    b.stage_uki(Slot::B, &t, 3).unwrap();
    assert_eq!(b.boot_attempt().unwrap(), Some(Slot::B));
    b.mark_good(Slot::B).unwrap();
    assert_eq!(b.status().unwrap().slot(Slot::B).status, BootStatus::Good);
    assert_eq!(
        entry_files(esp.path()),
        ["basalt-1.0.0.conf", "basalt-2.0.0.conf"]
    );
    // A UKI over the other slot, then a rollback to the blessed UKI slot.
    b.stage_uki(Slot::A, &uki_target(host.path(), "3.0.0"), 3)
        .unwrap();
    assert_eq!(b.status().unwrap().next, Some(Slot::A));
    assert!(
        !esp.path().join("basalt/1.0.0").exists(),
        "slot A's old kernel removed"
    );
    assert!(esp.path().join("basalt/2.0.0").join(UKI_FILE).exists());
    assert_eq!(b.boot_attempt().unwrap(), Some(Slot::A));
    b.rollback(Slot::B).unwrap();
    let st = b.status().unwrap();
    assert_eq!(st.next, Some(Slot::B));
    assert_eq!(st.slot(Slot::A).status, BootStatus::Bad);
    // Cancel of a counting UKI entry removes it and its file; the other slot is untouched.
    b.stage_uki(Slot::A, &uki_target(host.path(), "3.0.1"), 3)
        .unwrap();
    let before_b = std::fs::read(esp.path().join("basalt/2.0.0").join(UKI_FILE)).unwrap();
    b.cancel(Slot::A).unwrap();
    assert_eq!(b.status().unwrap().slot(Slot::A).status, BootStatus::Absent);
    assert!(!esp.path().join("basalt/3.0.1").exists());
    assert_eq!(
        std::fs::read(esp.path().join("basalt/2.0.0").join(UKI_FILE)).unwrap(),
        before_b
    );
    assert_eq!(entry_files(esp.path()), ["basalt-2.0.0.conf"]);
}

#[test]
fn a_uki_that_boots_another_usr_or_none_is_refused_before_any_write() {
    let (esp, host) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut b = installed(esp.path(), host.path());
    let before = snapshot(esp.path());
    let other = usr_hash_of("9.9.9");
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            uki_bytes_with("2.0.0", &format!("console=ttyS0 usrhash={other}")),
            "boots usrhash=",
        ),
        (uki_bytes_with("2.0.0", "console=ttyS0"), "names no usrhash"),
        (
            pe(&[(".linux", &kernel_bytes("2.0.0"))]),
            "no .cmdline section",
        ),
        (
            uki_bytes_with(
                "2.0.0",
                &format!("usrhash={} basalt.slot=a", usr_hash_of("2.0.0")),
            ),
            "names a slot",
        ),
        (b"MZ but nothing else".to_vec(), "UKI"),
    ];
    for (bytes, want) in cases {
        let uki = host.path().join("bad.efi");
        std::fs::write(&uki, &bytes).unwrap();
        let t = UkiTarget {
            version: "2.0.0".into(),
            usr_hash: usr_hash_of("2.0.0"),
            uki,
        };
        let err = b.stage_uki(Slot::B, &t, 3).unwrap_err();
        assert!(matches!(err, Error::UkiTarget { .. }), "{want}: {err:?}");
        let text = err.to_string();
        assert!(text.contains(want), "{want}: {text}");
        assert!(text.contains("bad.efi") && text.contains("2.0.0"), "{text}");
        assert_eq!(snapshot(esp.path()), before, "{want}: the ESP changed");
    }
    let missing = UkiTarget {
        version: "2.0.0".into(),
        usr_hash: usr_hash_of("2.0.0"),
        uki: host.path().join("missing.efi"),
    };
    assert!(matches!(
        b.stage_uki(Slot::B, &missing, 3),
        Err(Error::Io { .. })
    ));
    assert_eq!(snapshot(esp.path()), before);
}

#[test]
fn the_gpt_priority_backend_refuses_a_uki() {
    use basalt_disk::GptPrio;
    let dir = tempfile::tempdir().unwrap();
    // The refusal comes before any read or write: a blank device is enough to show it.
    let mut gp = GptPrio::new(std::io::Cursor::new(vec![0u8; 4096]), Path::new("mem"));
    let err = gp
        .stage_uki(Slot::B, &uki_target(dir.path(), "2.0.0"), 3)
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::UkiUnsupported {
                backend: "gptprio",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("2.0.0"), "{err}");
}
