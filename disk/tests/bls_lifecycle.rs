//! The BLS backend's life cycle on a directory ESP: every transition as do / undo / redo, bad
//! input, and a property test against an independent model of systemd-boot's choice.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod bls_common;

use std::path::Path;

use basalt_disk::bls::{self, BlsBackend, Unloadable, ENTRIES_DIR};
use basalt_disk::{BootControl, BootStatus, DirEsp, Error, Slot, SlotBoot};
use bls_common::*;
use proptest::prelude::*;

fn backend(root: &Path) -> BlsBackend<DirEsp> {
    BlsBackend::new(DirEsp::new(root))
}

fn entry_names(root: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(root.join(ENTRIES_DIR))
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn slot_of(b: &BlsBackend<DirEsp>, s: Slot) -> SlotBoot {
    b.status().unwrap().slot(s).clone()
}

fn trying(left: u32, done: u32) -> BootStatus {
    BootStatus::Trying {
        tries_left: left,
        tries_done: done,
    }
}

/// A good slot A with 1.0, as an installed image has it.
fn installed(root: &Path, host: &Path) -> BlsBackend<DirEsp> {
    let mut b = backend(root);
    b.stage(Slot::A, &target(host, "1.0.0"), 3).unwrap();
    b.mark_good(Slot::A).unwrap();
    b
}

#[test]
fn empty_esp_and_missing_loader_dir() {
    let esp = tempfile::tempdir().unwrap();
    let b = backend(esp.path());
    let st = b.status().unwrap();
    assert_eq!(st.next, None);
    assert!(st.slots.iter().all(|s| s.status == BootStatus::Absent));
    std::fs::create_dir_all(esp.path().join("loader")).unwrap();
    assert_eq!(b.status().unwrap().next, None);
}

#[test]
fn install_writes_the_documented_layout() {
    let (esp, host) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let b = installed(esp.path(), host.path());
    assert_eq!(entry_names(esp.path()), ["basalt-1.0.0.conf"]);
    let text =
        std::fs::read_to_string(esp.path().join("loader/entries/basalt-1.0.0.conf")).unwrap();
    let t = target(host.path(), "1.0.0");
    assert_eq!(
        text,
        format!(
            "title Basalt 1.0.0 (slot A)\nsort-key 99999999-basalt\nversion 1.0.0\n\
             linux /basalt/1.0.0/vmlinuz\ninitrd /basalt/1.0.0/initrd\n\
             options usrhash={} basalt.slot=a console=ttyS0\n",
            t.usr_hash
        )
    );
    assert_eq!(
        std::fs::read(esp.path().join("basalt/1.0.0/vmlinuz")).unwrap(),
        kernel_bytes("1.0.0")
    );
    assert_eq!(
        std::fs::read(esp.path().join("basalt/1.0.0/initrd")).unwrap(),
        initrd_bytes("1.0.0")
    );
    let conf = std::fs::read_to_string(esp.path().join("loader/loader.conf")).unwrap();
    assert!(conf.contains("timeout 0\n") && conf.contains("editor no\n"));
    assert!(!conf.lines().any(|l| l.starts_with("default")));
    let st = b.status().unwrap();
    assert_eq!(st.next, Some(Slot::A));
    assert_eq!(st.slot(Slot::A).version.as_deref(), Some("1.0.0"));
    assert_eq!(st.slot(Slot::A).status, BootStatus::Good);
}

#[test]
fn stage_cancel_restage() {
    let (esp, host) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut b = installed(esp.path(), host.path());
    let before = snapshot(esp.path());
    let a = slot_of(&b, Slot::A);

    // do
    b.stage(Slot::B, &target(host.path(), "1.1.0"), 3).unwrap();
    let st = b.status().unwrap();
    assert_eq!(st.next, Some(Slot::B));
    assert_eq!(st.slot(Slot::B).status, trying(3, 0));
    assert_eq!(st.slot(Slot::A), &a);
    let staged = snapshot(esp.path());
    // undo: exactly the state before, kernels of 1.1 gone
    b.cancel(Slot::B).unwrap();
    assert_eq!(snapshot(esp.path()), before);
    assert_eq!(slot_of(&b, Slot::B).status, BootStatus::Absent);
    b.cancel(Slot::B).unwrap(); // idempotent
    assert_eq!(snapshot(esp.path()), before);
    // redo
    b.stage(Slot::B, &target(host.path(), "1.1.0"), 3).unwrap();
    assert_eq!(snapshot(esp.path()), staged);
    b.stage(Slot::B, &target(host.path(), "1.1.0"), 3).unwrap();
    assert_eq!(
        snapshot(esp.path()),
        staged,
        "staging twice is the same as once"
    );
}

#[test]
fn boot_attempts_exhaust_and_fall_back() {
    let (esp, host) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut b = installed(esp.path(), host.path());
    let a = slot_of(&b, Slot::A);
    b.stage(Slot::B, &target(host.path(), "1.1.0"), 3).unwrap();
    let mut names = vec![];
    for _ in 0..3 {
        assert_eq!(b.boot_attempt().unwrap(), Some(Slot::B));
        names.push(entry_names(esp.path()));
        assert_eq!(slot_of(&b, Slot::A), a);
    }
    assert_eq!(
        names,
        [
            ["basalt-1.0.0.conf", "basalt-1.1.0+2-1.conf"],
            ["basalt-1.0.0.conf", "basalt-1.1.0+1-2.conf"],
            ["basalt-1.0.0.conf", "basalt-1.1.0+0-3.conf"]
        ]
    );
    let st = b.status().unwrap();
    assert_eq!(st.slot(Slot::B).status, BootStatus::Bad);
    assert_eq!(st.next, Some(Slot::A));
    assert_eq!(b.boot_attempt().unwrap(), Some(Slot::A));
    assert_eq!(
        slot_of(&b, Slot::A),
        a,
        "booting a good entry renames nothing"
    );
    // undo the failed update: cancel removes it, A untouched
    b.cancel(Slot::B).unwrap();
    assert_eq!(slot_of(&b, Slot::B).status, BootStatus::Absent);
    assert_eq!(slot_of(&b, Slot::A), a);
    // redo
    b.stage(Slot::B, &target(host.path(), "1.1.0"), 2).unwrap();
    assert_eq!(slot_of(&b, Slot::B).status, trying(2, 0));
}

#[test]
fn mark_good_then_mark_bad_then_restage() {
    let (esp, host) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut b = installed(esp.path(), host.path());
    let a = slot_of(&b, Slot::A);
    b.stage(Slot::B, &target(host.path(), "1.1.0"), 3).unwrap();
    assert_eq!(b.boot_attempt().unwrap(), Some(Slot::B));
    b.mark_good(Slot::B).unwrap();
    assert_eq!(
        entry_names(esp.path()),
        ["basalt-1.0.0.conf", "basalt-1.1.0.conf"]
    );
    let st = b.status().unwrap();
    assert_eq!(st.slot(Slot::B).status, BootStatus::Good);
    assert_eq!(st.next, Some(Slot::B));
    assert_eq!(st.slot(Slot::A), &a);
    let good = snapshot(esp.path());
    b.mark_good(Slot::B).unwrap(); // redo is a no-op
    assert_eq!(snapshot(esp.path()), good);

    b.mark_bad(Slot::B).unwrap();
    assert_eq!(
        entry_names(esp.path()),
        ["basalt-1.0.0.conf", "basalt-1.1.0+0.conf"]
    );
    let st = b.status().unwrap();
    assert_eq!(st.slot(Slot::B).status, BootStatus::Bad);
    assert_eq!(st.next, Some(Slot::A));
    assert_eq!(st.slot(Slot::A), &a);
    b.mark_bad(Slot::B).unwrap(); // redo is a no-op
    assert_eq!(
        entry_names(esp.path()),
        ["basalt-1.0.0.conf", "basalt-1.1.0+0.conf"]
    );
    assert!(matches!(
        b.mark_good(Slot::B),
        Err(Error::IllegalTransition { .. })
    ));
    // undo of mark_bad: stage again
    b.stage(Slot::B, &target(host.path(), "1.1.0"), 3).unwrap();
    assert_eq!(
        entry_names(esp.path()),
        ["basalt-1.0.0.conf", "basalt-1.1.0+3.conf"]
    );
    assert_eq!(b.status().unwrap().next, Some(Slot::B));
}

#[test]
fn mark_bad_keeps_tries_done() {
    let (esp, host) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut b = installed(esp.path(), host.path());
    b.stage(Slot::B, &target(host.path(), "1.1.0"), 3).unwrap();
    b.boot_attempt().unwrap();
    b.mark_bad(Slot::B).unwrap();
    assert_eq!(
        entry_names(esp.path()),
        ["basalt-1.0.0.conf", "basalt-1.1.0+0-1.conf"]
    );
}

#[test]
fn rollback_do_undo_redo() {
    let (esp, host) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut b = installed(esp.path(), host.path());
    b.stage(Slot::B, &target(host.path(), "1.1.0"), 3).unwrap();
    b.boot_attempt().unwrap();
    b.mark_good(Slot::B).unwrap();
    assert_eq!(b.status().unwrap().next, Some(Slot::B));
    // do
    b.rollback(Slot::A).unwrap();
    let st = b.status().unwrap();
    assert_eq!(st.next, Some(Slot::A));
    assert_eq!(st.slot(Slot::A).status, BootStatus::Good);
    assert_eq!(st.slot(Slot::B).status, BootStatus::Bad);
    // redo: same state
    let rolled = snapshot(esp.path());
    b.rollback(Slot::A).unwrap();
    assert_eq!(snapshot(esp.path()), rolled);
    // rolling "back" to the bad slot is refused, nothing changes
    assert!(matches!(
        b.rollback(Slot::B),
        Err(Error::IllegalTransition { .. })
    ));
    assert_eq!(snapshot(esp.path()), rolled);
    // undo: re-stage B and bless it
    b.stage(Slot::B, &target(host.path(), "1.1.0"), 3).unwrap();
    b.boot_attempt().unwrap();
    b.mark_good(Slot::B).unwrap();
    assert_eq!(b.status().unwrap().next, Some(Slot::B));
}

/// Bottlerocket #949: cancelling the staged slot must not touch the other slot's tries.
#[test]
fn cancel_never_touches_the_other_slots_tries() {
    let (esp, host) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut b = backend(esp.path());
    b.stage(Slot::A, &target(host.path(), "1.0.0"), 3).unwrap();
    assert_eq!(b.boot_attempt().unwrap(), Some(Slot::A));
    let a = slot_of(&b, Slot::A);
    assert_eq!(a.status, trying(2, 1));
    b.stage(Slot::B, &target(host.path(), "1.1.0"), 3).unwrap();
    assert_eq!(slot_of(&b, Slot::A), a);
    b.cancel(Slot::B).unwrap();
    assert_eq!(slot_of(&b, Slot::A), a);
    assert_eq!(b.status().unwrap().next, Some(Slot::A));
    // and a bad slot stays bad when the other is cancelled
    b.mark_bad(Slot::A).unwrap();
    b.stage(Slot::B, &target(host.path(), "1.1.0"), 3).unwrap();
    b.cancel(Slot::B).unwrap();
    assert_eq!(slot_of(&b, Slot::A).status, BootStatus::Bad);
}

#[test]
fn refused_requests_change_nothing() {
    let (esp, host) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut b = installed(esp.path(), host.path());
    let before = snapshot(esp.path());
    let t = target(host.path(), "1.1.0");
    for tries in [0, 100] {
        assert!(matches!(
            b.stage(Slot::B, &t, tries),
            Err(Error::BlsTarget { .. })
        ));
    }
    // The other slot holds 1.0.0: same names, refused (see `version_name_clashes_...`).
    let same = target(host.path(), "1.0.0");
    let err = b.stage(Slot::B, &same, 3).unwrap_err();
    assert!(
        matches!(&err, Error::BlsTarget { reason, .. } if reason.contains("slot A")),
        "{err}"
    );
    // Not semver, too long, or characters no semver has: typed refusals naming the version.
    let long = format!("1.0.0-{}", "a".repeat(59));
    for bad in [
        "1.1+x",
        "1.1",
        "1.1.0/..",
        "1.1.0_b",
        "1.1.0~rc.1",
        "v1.1.0",
        "01.1.0",
        "1.1.0-",
        "1.1.0+",
        "1.1.0 ",
        "1.1.0\n",
        "UPPER",
        "",
        long.as_str(),
    ] {
        let mut t = target(host.path(), "1.1.0");
        t.version = bad.into();
        let err = b.stage(Slot::B, &t, 3).unwrap_err();
        assert!(
            matches!(&err, Error::BlsTarget { version, .. } if version == bad),
            "{bad:?}: {err}"
        );
    }
    let mut t = target(host.path(), "1.1.0");
    t.usr_hash = "xyz".into();
    assert!(matches!(
        b.stage(Slot::B, &t, 3),
        Err(Error::BlsTarget { .. })
    ));
    let mut t = target(host.path(), "1.1.0");
    t.kernel = None;
    assert!(matches!(
        b.stage(Slot::B, &t, 3),
        Err(Error::BlsTarget { .. })
    ));
    let mut t = target(host.path(), "1.1.0");
    t.kernel = Some(host.path().join("does-not-exist"));
    assert!(matches!(b.stage(Slot::B, &t, 3), Err(Error::Io { .. })));
    assert!(matches!(
        b.mark_good(Slot::B),
        Err(Error::IllegalTransition { .. })
    ));
    assert!(matches!(
        b.cancel(Slot::A),
        Err(Error::IllegalTransition { .. })
    ));
    assert!(matches!(
        b.rollback(Slot::B),
        Err(Error::IllegalTransition { .. })
    ));
    b.mark_bad(Slot::B).unwrap(); // Absent: nothing to do
    assert_eq!(snapshot(esp.path()), before);
}

/// The slot the caller stages is the next boot, whatever the two versions are: an upgrade,
/// a downgrade, a pre-release after its final and the reverse, another build of the same
/// version, a version systemd's order ranks lower. The other slot is never touched.
#[test]
fn any_version_relation_boots_the_staged_slot() {
    let cases = [
        ("1.0.0", "2.0.0", "upgrade"),
        ("2.0.0", "1.0.0", "operator-approved downgrade"),
        ("1.2.0", "1.2.0-rc.1", "pre-release after its final"),
        ("1.2.0-rc.1", "1.2.0", "final after its pre-release"),
        ("1.2.0-rc.2", "1.2.0-rc.10", "numeric pre-release order"),
        (
            "1.2.0+build.5",
            "1.2.0+build.6",
            "another build, same precedence",
        ),
        ("1.2.0+build.6", "1.2.0+build.5", "an older build"),
        ("1.10.0", "1.9.0", "systemd's order ranks it lower too"),
        ("1.2.0-1", "1.2.0", "systemd ranks `-1` newer, semver older"),
    ];
    for (good, staged, what) in cases {
        let (esp, host) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut b = backend(esp.path());
        b.stage(Slot::A, &target(host.path(), good), 3).unwrap();
        b.boot_attempt().unwrap();
        b.mark_good(Slot::A).unwrap();
        let a = slot_of(&b, Slot::A);
        let a_files = entry_names(esp.path());
        b.stage(Slot::B, &target(host.path(), staged), 3)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let st = b.status().unwrap();
        assert_eq!(st.next, Some(Slot::B), "{what}");
        assert_eq!(st.slot(Slot::A), &a, "{what}: slot A changed");
        assert_eq!(st.slot(Slot::B).version.as_deref(), Some(staged), "{what}");
        assert_eq!(st.slot(Slot::B).status, trying(3, 0), "{what}");
        assert!(entry_names(esp.path()).iter().any(|n| a_files.contains(n)));
        // The independent model agrees, on every boot until the tries run out.
        for left in (0..3).rev() {
            let want = model_choice(&model_entries(esp.path())).and_then(|e| e.slot);
            assert_eq!(want, Some('b'), "{what}");
            assert_eq!(b.boot_attempt().unwrap(), Some(Slot::B), "{what}");
            if left > 0 {
                assert_eq!(b.status().unwrap().next, Some(Slot::B), "{what}");
            }
        }
        // Tries exhausted: the good slot boots again, untouched.
        let st = b.status().unwrap();
        assert_eq!(st.next, Some(Slot::A), "{what}");
        assert_eq!(st.slot(Slot::A), &a, "{what}");
        assert_eq!(st.slot(Slot::B).status, BootStatus::Bad, "{what}");
    }
}

#[test]
fn entry_names_and_lines_follow_the_mapping() {
    let (esp, host) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut b = installed(esp.path(), host.path());
    let v = "1.2.0-rc.1+build.5";
    b.stage(Slot::B, &target(host.path(), v), 4).unwrap();
    assert_eq!(
        entry_names(esp.path()),
        ["basalt-1.0.0.conf", "basalt-1.2.0-rc.1_build.5+4.conf"]
    );
    let text = std::fs::read_to_string(
        esp.path()
            .join(ENTRIES_DIR)
            .join("basalt-1.2.0-rc.1_build.5+4.conf"),
    )
    .unwrap();
    let lines: Vec<&str> = text.lines().take(3).collect();
    assert_eq!(
        lines,
        [
            "title Basalt 1.2.0-rc.1+build.5 (slot B)",
            "sort-key 99999998-basalt",
            "version 1.2.0~rc.1^build.5"
        ]
    );
    assert!(text.contains("linux /basalt/1.2.0-rc.1_build.5/vmlinuz\n"));
    assert_eq!(
        std::fs::read(esp.path().join("basalt/1.2.0-rc.1_build.5/initrd")).unwrap(),
        initrd_bytes(v)
    );
    let st = b.status().unwrap();
    assert_eq!(st.slot(Slot::B).version.as_deref(), Some(v));
    // The file name has exactly one `+`: the boot counter's.
    for n in entry_names(esp.path()) {
        assert!(n.matches('+').count() <= 1, "{n}");
    }
}

fn sort_key_of(root: &Path, slot: char) -> String {
    let e = model_entries(root)
        .into_iter()
        .find(|e| e.slot == Some(slot))
        .unwrap();
    e.sort_key.unwrap()
}

#[test]
fn stage_keys_count_down_and_a_restage_keeps_its_key() {
    let (esp, host) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut b = installed(esp.path(), host.path());
    assert_eq!(sort_key_of(esp.path(), 'a'), "99999999-basalt");
    let mut expect = 99_999_999u32;
    for (i, v) in ["1.1.0", "0.9.0", "1.1.0-rc.1", "3.0.0"].iter().enumerate() {
        let s = if i % 2 == 0 { Slot::B } else { Slot::A };
        expect -= 1;
        b.stage(s, &target(host.path(), v), 2).unwrap();
        let key = sort_key_of(esp.path(), if s == Slot::A { 'a' } else { 'b' });
        assert_eq!(key, format!("{expect:08}-basalt"), "stage {i} of {v}");
        assert_eq!(b.status().unwrap().next, Some(s));
        // Staging the same slot again (same or another version) keeps the key: it only
        // depends on the entries that stay.
        b.stage(s, &target(host.path(), v), 3).unwrap();
        assert_eq!(
            sort_key_of(esp.path(), if s == Slot::A { 'a' } else { 'b' }),
            key
        );
        b.boot_attempt().unwrap();
        b.mark_good(s).unwrap();
    }
}

/// An ESP written before stage keys: `sort-key basalt`, the raw semver in `version`.
fn legacy_entry(root: &Path, host: &Path, slot: char, version: &str, counter: &str) {
    let t = target(host, version);
    let dir = root.join("basalt").join(version);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(t.kernel.unwrap(), dir.join("vmlinuz")).unwrap();
    std::fs::copy(t.initrd.unwrap(), dir.join("initrd")).unwrap();
    std::fs::create_dir_all(root.join(ENTRIES_DIR)).unwrap();
    let text = format!(
        "title Basalt {version} (slot {s})\nsort-key basalt\nversion {version}\n\
         linux /basalt/{version}/vmlinuz\ninitrd /basalt/{version}/initrd\n\
         options usrhash={} basalt.slot={slot} console=ttyS0\n",
        t.usr_hash,
        s = slot.to_ascii_uppercase()
    );
    std::fs::write(
        root.join(ENTRIES_DIR)
            .join(format!("basalt-{version}{counter}.conf")),
        text,
    )
    .unwrap();
}

#[test]
fn entries_written_by_older_code_are_understood() {
    let (esp, host) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    legacy_entry(esp.path(), host.path(), 'a', "2.0.0-rc.1", "");
    let mut b = backend(esp.path());
    let st = b.status().unwrap();
    assert_eq!(st.next, Some(Slot::A));
    assert_eq!(st.slot(Slot::A).status, BootStatus::Good);
    assert_eq!(st.slot(Slot::A).version.as_deref(), Some("2.0.0-rc.1"));
    let legacy_file = esp.path().join(ENTRIES_DIR).join("basalt-2.0.0-rc.1.conf");
    let legacy_text = std::fs::read(&legacy_file).unwrap();

    // A downgrade staged over it boots next (any stage key sorts before `basalt`); the old
    // entry and its kernel stay as they were.
    b.stage(Slot::B, &target(host.path(), "1.0.0"), 3).unwrap();
    assert_eq!(sort_key_of(esp.path(), 'b'), "99999999-basalt");
    assert_eq!(b.status().unwrap().next, Some(Slot::B));
    assert_eq!(std::fs::read(&legacy_file).unwrap(), legacy_text);
    assert!(esp.path().join("basalt/2.0.0-rc.1/vmlinuz").is_file());
    assert_eq!(
        model_choice(&model_entries(esp.path())).and_then(|e| e.slot),
        Some('b')
    );
    // Falling back, rolling back and marking bad work on the old entry too.
    b.cancel(Slot::B).unwrap();
    assert_eq!(b.status().unwrap().next, Some(Slot::A));
    b.stage(Slot::B, &target(host.path(), "1.0.0"), 3).unwrap();
    b.boot_attempt().unwrap();
    b.mark_good(Slot::B).unwrap();
    b.rollback(Slot::A).unwrap();
    let st = b.status().unwrap();
    assert_eq!(
        (st.next, st.slot(Slot::B).status),
        (Some(Slot::A), BootStatus::Bad)
    );
    b.mark_bad(Slot::A).unwrap();
    assert_eq!(slot_of(&b, Slot::A).status, BootStatus::Bad);
    // Restaging the slot of an old entry replaces it with a new-style one.
    b.stage(Slot::A, &target(host.path(), "2.0.0"), 3).unwrap();
    assert!(!legacy_file.exists());
    assert!(!esp.path().join("basalt/2.0.0-rc.1").exists());
    assert_eq!(b.status().unwrap().next, Some(Slot::A));

    // A counting old entry on the other slot (an update staged by older code) is not
    // touched either; the new stage boots first.
    let (esp, host) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    legacy_entry(esp.path(), host.path(), 'a', "1.0.0", "+2-1");
    let mut b = backend(esp.path());
    assert_eq!(slot_of(&b, Slot::A).status, trying(2, 1));
    let a = slot_of(&b, Slot::A);
    b.stage(Slot::B, &target(host.path(), "0.1.0"), 3).unwrap();
    assert_eq!(b.status().unwrap().next, Some(Slot::B));
    assert_eq!(slot_of(&b, Slot::A), a);
}

#[test]
fn version_name_clashes_are_refused_before_any_write() {
    let (esp, host) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut b = backend(esp.path());
    b.stage(Slot::A, &target(host.path(), "2.0.0-RC.1+B.7"), 3)
        .unwrap();
    let before = snapshot(esp.path());
    // FAT names ignore case: these would share A's entry name and kernel directory.
    for v in ["2.0.0-RC.1+B.7", "2.0.0-rc.1+b.7", "2.0.0-Rc.1+b.7"] {
        let err = b.stage(Slot::B, &target(host.path(), v), 3).unwrap_err();
        assert!(matches!(err, Error::BlsTarget { .. }), "{v}: {err}");
        assert_eq!(snapshot(esp.path()), before, "{v}");
    }
    // Differing only in the build metadata or the pre-release is another image.
    for v in ["2.0.0-RC.1+B.8", "2.0.0-RC.1", "2.0.0+B.7", "2.0.0"] {
        b.stage(Slot::B, &target(host.path(), v), 3).unwrap();
        assert_eq!(b.status().unwrap().next, Some(Slot::B), "{v}");
    }
    // A foreign entry using our kernel directory is not overwritten either.
    std::fs::write(
        esp.path().join(ENTRIES_DIR).join("other-os.conf"),
        "title Other\nlinux /basalt/3.0.0/vmlinuz\n",
    )
    .unwrap();
    let err = b
        .stage(Slot::B, &target(host.path(), "3.0.0"), 3)
        .unwrap_err();
    assert!(
        matches!(&err, Error::BlsTarget { reason, .. } if reason.contains("other-os.conf")),
        "{err}"
    );
}

#[test]
fn a_foreign_entry_sorting_first_is_refused_and_ours_are_not_counted() {
    let (esp, host) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut b = installed(esp.path(), host.path());
    let dir = esp.path().join(ENTRIES_DIR);
    std::fs::create_dir_all(esp.path().join("other")).unwrap();
    std::fs::write(esp.path().join("other/linux"), b"k").unwrap();
    // No sort-key, or a larger one: sorts after Basalt's, staging works.
    std::fs::write(dir.join("other.conf"), "title O\nlinux /other/linux\n").unwrap();
    std::fs::write(
        dir.join("debian.conf"),
        "title D\nsort-key debian\nversion 99\nlinux /other/linux\n",
    )
    .unwrap();
    b.stage(Slot::B, &target(host.path(), "0.5.0"), 3).unwrap();
    assert_eq!(b.status().unwrap().next, Some(Slot::B));
    // A foreign entry that uses our key format counts like ours: the new key goes below.
    std::fs::write(
        dir.join("weird.conf"),
        "title W\nsort-key 00000100-basalt\nlinux /other/linux\n",
    )
    .unwrap();
    b.stage(Slot::B, &target(host.path(), "0.5.0"), 3).unwrap();
    assert_eq!(sort_key_of(esp.path(), 'b'), "00000099-basalt");
    assert_eq!(b.status().unwrap().next, Some(Slot::B));
    // One that sorts before any stage key: refused, nothing written.
    std::fs::write(
        dir.join("zero.conf"),
        "title Z\nsort-key 0\nlinux /other/linux\n",
    )
    .unwrap();
    let before = snapshot(esp.path());
    let err = b
        .stage(Slot::A, &target(host.path(), "0.6.0"), 3)
        .unwrap_err();
    assert!(
        matches!(&err, Error::BlsTarget { reason, .. } if reason.contains("zero.conf")),
        "{err}"
    );
    assert_eq!(snapshot(esp.path()), before);
    // And when no key is left below the smallest, the refusal says so.
    std::fs::remove_file(dir.join("zero.conf")).unwrap();
    std::fs::write(
        dir.join("weird.conf"),
        "title W\nsort-key 00000000-basalt\nlinux /other/linux\n",
    )
    .unwrap();
    let before = snapshot(esp.path());
    let err = b
        .stage(Slot::A, &target(host.path(), "0.6.0"), 3)
        .unwrap_err();
    assert!(
        matches!(&err, Error::BlsTarget { reason, .. } if reason.contains("no stage key")),
        "{err}"
    );
    assert_eq!(snapshot(esp.path()), before);
}

/// Issue 7's third case: an explicit rollback to the slot with the *older* version.
#[test]
fn rollback_to_the_older_slot_boots_it_and_marks_the_other_bad() {
    let (esp, host) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut b = installed(esp.path(), host.path());
    b.stage(Slot::B, &target(host.path(), "2.0.0"), 3).unwrap();
    assert_eq!(b.boot_attempt().unwrap(), Some(Slot::B));
    b.mark_good(Slot::B).unwrap();
    let a = slot_of(&b, Slot::A);
    b.rollback(Slot::A).unwrap();
    let st = b.status().unwrap();
    assert_eq!(st.next, Some(Slot::A));
    assert_eq!(st.slot(Slot::A), &a);
    assert_eq!(st.slot(Slot::B).status, BootStatus::Bad);
    assert_eq!(st.slot(Slot::B).version.as_deref(), Some("2.0.0"));
    assert_eq!(b.boot_attempt().unwrap(), Some(Slot::A));
    assert_eq!(
        entry_names(esp.path()),
        ["basalt-1.0.0.conf", "basalt-2.0.0+0.conf"]
    );
    // Rolling forward again is a new stage of B, which then boots first.
    b.stage(Slot::B, &target(host.path(), "2.0.0"), 3).unwrap();
    assert_eq!(b.status().unwrap().next, Some(Slot::B));
}

#[test]
fn garbage_entries_are_ignored_like_systemd_boot_does() {
    let (esp, host) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut b = installed(esp.path(), host.path());
    let dir = esp.path().join(ENTRIES_DIR);
    std::fs::write(dir.join("basalt-9.9.conf"), b"\x00\xff\xfegarbage\nlinux").unwrap();
    std::fs::write(
        dir.join("basalt-9.8+x-1.conf"),
        b"version 9.8\nlinux /nope\n",
    )
    .unwrap();
    std::fs::write(dir.join(".basalt-9.7.conf.tmp"), b"half").unwrap();
    let st = b.status().unwrap();
    assert_eq!(st.next, Some(Slot::A));
    let ents = b.entries().unwrap();
    let g = ents.iter().find(|e| e.file == "basalt-9.9.conf").unwrap();
    assert_eq!(g.unloadable, Some(Unloadable::NoLoader));
    // Staging cleans them all up.
    b.stage(Slot::B, &target(host.path(), "1.1.0"), 3).unwrap();
    assert_eq!(
        entry_names(esp.path()),
        ["basalt-1.0.0.conf", "basalt-1.1.0+3.conf"]
    );
}

#[test]
fn loadable_but_invalid_basalt_entries_are_typed_errors() {
    let (esp, host) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let b = installed(esp.path(), host.path());
    let dir = esp.path().join(ENTRIES_DIR);
    let k = "linux /basalt/1.0.0/vmlinuz\nversion 9\n";
    std::fs::write(dir.join("basalt-9.conf"), k).unwrap();
    assert!(matches!(b.status(), Err(Error::BlsEntryParse { .. })));
    std::fs::remove_file(dir.join("basalt-9.conf")).unwrap();
    std::fs::write(
        dir.join("basalt-9+x-1.conf"),
        format!("{k}options basalt.slot=b\n"),
    )
    .unwrap();
    assert!(matches!(b.status(), Err(Error::BlsEntryName { .. })));
    std::fs::remove_file(dir.join("basalt-9+x-1.conf")).unwrap();
    assert_eq!(b.status().unwrap().next, Some(Slot::A));
}

#[test]
fn entry_with_missing_kernel_is_not_bootable() {
    let (esp, host) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut b = installed(esp.path(), host.path());
    b.stage(Slot::B, &target(host.path(), "1.1.0"), 3).unwrap();
    std::fs::remove_file(esp.path().join("basalt/1.1.0/vmlinuz")).unwrap();
    let st = b.status().unwrap();
    assert_eq!(st.slot(Slot::B).status, BootStatus::Absent);
    assert_eq!(st.next, Some(Slot::A));
    assert_eq!(b.boot_attempt().unwrap(), Some(Slot::A));
    let e = b
        .entries()
        .unwrap()
        .into_iter()
        .find(|e| e.file.contains("1.1.0"))
        .unwrap();
    assert!(matches!(e.unloadable, Some(Unloadable::LoaderMissing(_))));
    // Recovery: stage again.
    b.stage(Slot::B, &target(host.path(), "1.1.0"), 3).unwrap();
    assert_eq!(b.status().unwrap().next, Some(Slot::B));
}

#[test]
fn booted_slot_from_efivars() {
    let (esp, host) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut b = installed(esp.path(), host.path());
    b.stage(Slot::B, &target(host.path(), "1.1.0"), 3).unwrap();
    b.boot_attempt().unwrap();
    let var = |s: &str| {
        let mut v = vec![6, 0, 0, 0];
        v.extend(s.encode_utf16().chain([0]).flat_map(u16::to_le_bytes));
        v
    };
    let path = var("\\loader\\entries\\basalt-1.1.0+2-1.conf");
    let file = bls::booted_entry_file(Some(&path), None).unwrap().unwrap();
    assert_eq!(b.slot_of_entry(&file).unwrap(), Some(Slot::B));
    let sel = var("basalt-1.1.0+3.conf"); // LoaderEntrySelected: the id before the rename
    let file = bls::booted_entry_file(None, Some(&sel)).unwrap().unwrap();
    assert_eq!(b.slot_of_entry(&file).unwrap(), Some(Slot::B));
    let file = bls::booted_entry_file(None, Some(&var("basalt-1.0.0.conf")))
        .unwrap()
        .unwrap();
    assert_eq!(b.slot_of_entry(&file).unwrap(), Some(Slot::A));
}

// ---- Property test ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    Stage(Slot, String, u32),
    Boot,
    Good(Slot),
    Bad(Slot),
    Cancel(Slot),
    Rollback(Slot),
}

fn slot() -> impl Strategy<Value = Slot> {
    prop_oneof![Just(Slot::A), Just(Slot::B)]
}

/// Random semver: few distinct cores so that equal cores, pre-releases of a final, builds
/// of one version and downgrades all come up; identifiers in both cases.
fn version() -> impl Strategy<Value = String> {
    let pre = prop::option::of(prop_oneof![
        Just("rc.1"),
        Just("rc.2"),
        Just("rc.10"),
        Just("alpha"),
        Just("RC.1"),
        Just("0"),
        Just("beta-2.x")
    ]);
    let build = prop::option::of(prop_oneof![
        Just("build.5"),
        Just("build.6"),
        Just("B.5"),
        Just("001"),
        Just("x-y")
    ]);
    (0u64..3, 0u64..3, 0u64..2, pre, build).prop_map(|(ma, mi, pa, pre, build)| {
        let mut v = format!("{ma}.{mi}.{pa}");
        if let Some(p) = pre {
            v = format!("{v}-{p}");
        }
        if let Some(b) = build {
            v = format!("{v}+{b}");
        }
        v
    })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (slot(), version(), 1u32..4).prop_map(|(s, v, t)| Op::Stage(s, v, t)),
        3 => Just(Op::Boot),
        1 => slot().prop_map(Op::Good),
        1 => slot().prop_map(Op::Bad),
        1 => slot().prop_map(Op::Cancel),
        1 => slot().prop_map(Op::Rollback),
    ]
}

fn live(s: BootStatus) -> bool {
    matches!(s, BootStatus::Good | BootStatus::Trying { .. })
}

fn letter(s: Slot) -> char {
    if s == Slot::A {
        'a'
    } else {
        'b'
    }
}

/// The test's own reading of "these names are taken": an entry of the other slot whose
/// file name without counter equals ours, ignoring case (FAT).
fn name_taken(esp: &Path, other: Slot, version: &str) -> bool {
    let ours = format!("basalt-{}", version.replace('+', "_")).to_lowercase();
    let Ok(rd) = std::fs::read_dir(esp.join(ENTRIES_DIR)) else {
        return false;
    };
    rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|f| {
            let text = std::fs::read_to_string(esp.join(ENTRIES_DIR).join(f)).unwrap_or_default();
            text.contains(&format!("basalt.slot={}", letter(other)))
        })
        .any(|f| {
            let stem = f.strip_suffix(".conf").unwrap_or(&f);
            let base = stem.rsplit_once('+').map_or(stem, |(b, _)| b);
            base.to_lowercase() == ours
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn staged_slot_boots_next_and_prediction_matches_the_model(
        // Older code refused `+` and upper case in versions.
        legacy_a in prop::option::of(version().prop_map(|v| v.split('+').next().unwrap().to_lowercase())),
        ops in proptest::collection::vec(op(), 1..25),
    ) {
        let (esp, host) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        if let Some(v) = &legacy_a {
            legacy_entry(esp.path(), host.path(), 'a', v, "");
        }
        let mut b = backend(esp.path());
        // The slot staged last, while the contract says it must boot next.
        let mut pending: Option<Slot> = None;
        for op in ops {
            let before = b.status().unwrap();
            let files_before = snapshot(esp.path());
            let res = match &op {
                Op::Stage(s, v, t) => {
                    let taken = name_taken(esp.path(), !*s, v);
                    let r = b.stage(*s, &target(host.path(), v), *t);
                    prop_assert_eq!(r.is_err(), taken, "stage {:?} {} -> {:?}", s, v, r);
                    r
                }
                Op::Boot => {
                    let expect = model_choice(&model_entries(esp.path()));
                    let got = b.boot_attempt().unwrap();
                    let slot_of = |c: char| if c == 'a' { Slot::A } else { Slot::B };
                    prop_assert_eq!(got, expect.and_then(|e| e.slot).map(slot_of));
                    Ok(())
                }
                Op::Good(s) => b.mark_good(*s),
                Op::Bad(s) => b.mark_bad(*s),
                Op::Cancel(s) => b.cancel(*s),
                Op::Rollback(s) => b.rollback(*s),
            };
            let after = b.status().unwrap();
            if res.is_err() {
                prop_assert_eq!(&files_before, &snapshot(esp.path()), "a refused {:?} changed the ESP", op);
            }
            // The contract: the slot staged last boots next while it has tries left, until it
            // is marked bad, cancelled or rolled away from, or the other slot is staged.
            match (&op, res.is_ok()) {
                (Op::Stage(s, ..), true) => pending = Some(*s),
                (Op::Bad(s) | Op::Cancel(s), true) if pending == Some(*s) => pending = None,
                (Op::Rollback(to), true) if pending == Some(!*to) => pending = None,
                _ => {}
            }
            if let Some(p) = pending {
                if live(after.slot(p).status) {
                    prop_assert_eq!(after.next, Some(p), "staged {:?} is not next after {:?}: {:?}", p, op, after);
                } else {
                    prop_assert!(matches!(op, Op::Boot), "{:?} killed the staged slot", op);
                    pending = None;
                }
            }
            if let (Op::Stage(s, v, t), true) = (&op, res.is_ok()) {
                let st = after.slot(*s);
                prop_assert_eq!(st.version.as_deref(), Some(v.as_str()));
                prop_assert_eq!(st.status, trying(*t, 0));
            }
            // The prediction equals the independent model's reading of the files.
            let expect = model_choice(&model_entries(esp.path()))
                .and_then(|e| e.slot)
                .map(|c| if c == 'a' { Slot::A } else { Slot::B });
            prop_assert_eq!(after.next, expect, "after {:?}", op);
            // The predicted boot is a live slot whenever there is one.
            if after.slots.iter().any(|s| live(s.status)) {
                let n = after.next.expect("a live slot exists");
                prop_assert!(live(after.slot(n).status), "next {:?} not live after {:?}: {:?}", n, op, after);
            }
            // An operation on one slot never changes the other (rollback(to) keeps `to`).
            let untouched: &[Slot] = match op {
                Op::Stage(s, ..) | Op::Good(s) | Op::Bad(s) | Op::Cancel(s) => &[!s][..],
                Op::Rollback(to) => &[to][..],
                Op::Boot => match before.next { Some(n) => &[!n][..], None => &[Slot::A, Slot::B][..] },
            };
            for s in untouched {
                prop_assert_eq!(before.slot(*s), after.slot(*s), "{:?} changed slot {:?}", op, s);
            }
            // A good slot stays good unless explicitly marked bad, rolled away from, or re-staged.
            for s in Slot::ALL {
                let explicit = matches!(op, Op::Bad(x) | Op::Stage(x, ..) if x == s)
                    || matches!(op, Op::Rollback(to) if to == !s && res.is_ok());
                if before.slot(s).status == BootStatus::Good && !explicit {
                    prop_assert_eq!(after.slot(s).status, BootStatus::Good, "{:?} lost good slot {:?}", op, s);
                }
            }
            // Kernels: at most the versions of the two slots' entries are kept, and no file
            // name holds a second `+`.
            let dirs = std::fs::read_dir(esp.path().join("basalt")).map(|r| r.count()).unwrap_or(0);
            prop_assert!(dirs <= 2, "{} kernel dirs after {:?}", dirs, op);
            for n in entry_names(esp.path()) {
                prop_assert!(n.matches('+').count() <= 1, "{}", n);
            }
        }
    }
}
