//! The whole update on host disk images, on both boot-control backends (BLS on the raw FAT
//! ESP inside the disk, BLS on a mounted-ESP folder, GPT priority bits): check → download
//! → apply → the boot loader's choice, checked with peers (`veritysetup verify` on the
//! written partitions, `sgdisk -v`, `cgpt show`, mtools on the ESP) and with the engine's
//! own view.

#![allow(clippy::unwrap_used)]

mod common;

use basalt_disk::{BootStatus, Slot, SlotState};
use basalt_manifest::chrono::Utc;
use basalt_updater::engine::{CancelFlag, CheckOutcome, CheckRequest, Engine, Phase};
use basalt_updater::pipeline::BackendKind;
use common::{peer, EspKind, Node, World, MIB};

fn update(world: &World, node: &Node) {
    let v2 = world.release("2.0.0", 4 * MIB + 12 * 4096);
    let report = world.publish(&v2, None);
    let before = node.snapshot();
    let mut engine = node.engine(Box::new(world.source()));

    let view = engine.node().unwrap();
    assert_eq!(view.booted, Some(Slot::A));
    assert_eq!(view.slots[0].state, SlotState::Active);
    assert_eq!(view.slots[0].version.as_ref().unwrap().to_string(), "1.0.0");
    assert_eq!(view.slots[1].state, SlotState::Empty);
    assert_eq!(view.next_boot, Some(Slot::A));

    let request = CheckRequest {
        now: Utc::now(),
        installed_version: Some("1.0.0".parse().unwrap()),
        last_seen: None,
        allow_downgrade: false,
    };
    let CheckOutcome::Available(candidate) = engine.check(&request).unwrap() else {
        panic!("no update found");
    };
    assert_eq!(candidate.release.manifest.sequence, report.sequence);

    let mut reports = Vec::new();
    let downloaded = engine
        .download(
            &candidate,
            &mut |p| reports.push(p.clone()),
            &CancelFlag::new(),
        )
        .unwrap();
    assert_eq!(downloaded.slot, Slot::B);
    assert_eq!(downloaded.usr_hash, v2.root_hash);
    assert_eq!(downloaded.reused, 0);
    // Every compressed byte once, plus the usr block index (fetched to find out that slot A,
    // an unrelated 1.0.0, shares too little for an adaptive install).
    let compressed: u64 = report
        .artifacts
        .iter()
        .map(|a| a.compressed_size + a.adaptive.as_ref().map_or(0, |x| x.block_index_size))
        .sum();
    assert_eq!(
        downloaded.fetched, compressed,
        "every compressed byte once: {downloaded:?} {report:?}"
    );
    // Progress: at least once per MiB written, monotonic within a phase, both phases.
    let total: u64 = v2.manifest.artifacts.iter().map(|a| a.size).sum();
    let dl: Vec<_> = reports
        .iter()
        .filter(|p| p.phase == Phase::Downloading)
        .collect();
    assert!(dl.len() as u64 >= total / MIB, "{} reports", dl.len());
    assert!(dl.windows(2).all(|w| w[0].done <= w[1].done));
    assert_eq!(dl.last().unwrap().done, total);
    assert!(reports
        .iter()
        .any(|p| p.phase == Phase::Verifying && p.done == p.total));

    // The slot is named and verifies with veritysetup; A untouched; B not staged yet.
    let inv = node.inventory();
    let b = inv.slot(Slot::B);
    assert_eq!(b.state, SlotState::Valid);
    assert_eq!(b.data.label, "basalt_2.0.0");
    assert_eq!(b.verity.label, "basalt_2.0.0_verity");
    assert_eq!(b.root_hash.unwrap().0, v2.root_hash.0);
    node.veritysetup_verify(Slot::B, &v2.root_hash);
    node.veritysetup_verify(Slot::A, &node.v1.root_hash);
    assert_eq!(node.snapshot(), before, "slot A changed");
    let st = node.boot_control().status().unwrap();
    // Written but not staged: BLS has no entry, GPT priority 0 (reported as Bad).
    assert!(
        matches!(
            st.slot(Slot::B).status,
            BootStatus::Absent | BootStatus::Bad
        ),
        "{:?}",
        st.slot(Slot::B)
    );
    assert_eq!(st.next, Some(Slot::A));

    // Apply: B is staged with 3 tries and boots next.
    engine.apply(&downloaded, 3).unwrap();
    let st = node.boot_control().status().unwrap();
    assert_eq!(
        st.slot(Slot::B).status,
        BootStatus::Trying {
            tries_left: 3,
            tries_done: 0
        }
    );
    assert_eq!(
        st.slot(Slot::A).status,
        before.a_boot,
        "A's boot state changed"
    );
    assert_eq!(st.next, Some(Slot::B));
    peer("sgdisk", "gdisk", &["-v", node.disk().to_str().unwrap()]);
    match (node.backend, node.esp_kind) {
        (BackendKind::GptPrio, _) => {
            let out = peer(
                "cgpt",
                "cgpt",
                &["show", "-i", "4", "-P", node.disk().to_str().unwrap()],
            );
            let prio_b: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
            let out = peer(
                "cgpt",
                "cgpt",
                &["show", "-i", "2", "-P", node.disk().to_str().unwrap()],
            );
            let prio_a: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
            assert!(prio_b > prio_a, "cgpt: B {prio_b} A {prio_a}");
            let out = peer(
                "cgpt",
                "cgpt",
                &["show", "-i", "4", "-T", node.disk().to_str().unwrap()],
            );
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "3");
        }
        (BackendKind::Bls, EspKind::Fat) => {
            let inv = node.inventory();
            let img = format!("{}@@{}", node.disk().display(), inv.esp.offset);
            let out = peer("mdir", "mtools", &["-b", "-i", &img, "::/loader/entries"]);
            let listing = String::from_utf8_lossy(&out.stdout).to_string();
            assert!(listing.contains("basalt-2.0.0+3.conf"), "{listing}");
            assert!(listing.contains("basalt-1.0.0.conf"), "{listing}");
            let out = peer(
                "mtype",
                "mtools",
                &["-i", &img, "::/loader/entries/basalt-2.0.0+3.conf"],
            );
            let entry = String::from_utf8_lossy(&out.stdout).to_string();
            assert!(
                entry.contains(&format!("usrhash={}", v2.root_hash)),
                "{entry}"
            );
            assert!(entry.contains("basalt.slot=b"), "{entry}");
            // The staged kernel on the ESP is the release's, byte for byte.
            let out = peer("mtype", "mtools", &["-i", &img, "::/basalt/2.0.0/vmlinuz"]);
            assert!(out.stdout == std::fs::read(v2.dir.join("vmlinuz")).unwrap());
        }
        (BackendKind::Bls, EspKind::Dir) => {
            let esp = node.dir.join("esp");
            let entry =
                std::fs::read_to_string(esp.join("loader/entries/basalt-2.0.0+3.conf")).unwrap();
            assert!(
                entry.contains(&format!("usrhash={}", v2.root_hash)),
                "{entry}"
            );
            assert_eq!(
                std::fs::read(esp.join("basalt/2.0.0/initrd")).unwrap(),
                std::fs::read(v2.dir.join("initrd.img")).unwrap()
            );
        }
    }

    // The boot loader picks B; the engine sees it after the "reboot".
    let mut bc = node.boot_control();
    assert_eq!(bc.boot_attempt().unwrap(), Some(Slot::B));
    drop(bc);
    std::fs::write(
        &node.config.cmdline,
        format!("usrhash={} basalt.slot=b", v2.root_hash),
    )
    .unwrap();
    let view = engine.node().unwrap();
    assert_eq!(view.booted, Some(Slot::B));
    assert_eq!(view.slots[1].state, SlotState::Active);
    assert!(matches!(view.slots[1].boot, BootStatus::Trying { .. }));
    engine.mark_good().unwrap();
    assert_eq!(engine.node().unwrap().slots[1].boot, BootStatus::Good);

    // Polling again: the same head is "up to date", not an error.
    let again = engine
        .check(&CheckRequest {
            installed_version: Some("2.0.0".parse().unwrap()),
            last_seen: Some((
                candidate.release.manifest.sequence,
                basalt_manifest::Digest(
                    ring::digest::digest(&ring::digest::SHA256, &candidate.envelope)
                        .as_ref()
                        .try_into()
                        .unwrap(),
                ),
            )),
            ..request
        })
        .unwrap();
    assert!(matches!(again, CheckOutcome::UpToDate { .. }), "{again:?}");
}

#[test]
fn update_with_bls_on_the_raw_fat_esp() {
    let world = World::new();
    let node = Node::new(&world, "bls-fat", BackendKind::Bls, EspKind::Fat);
    update(&world, &node);
}

#[test]
fn update_with_bls_on_a_mounted_esp_folder() {
    let world = World::new();
    let node = Node::new(&world, "bls-dir", BackendKind::Bls, EspKind::Dir);
    update(&world, &node);
}

#[test]
fn update_with_gpt_priority_bits() {
    let world = World::new();
    let node = Node::new(&world, "gptprio", BackendKind::GptPrio, EspKind::Dir);
    update(&world, &node);
}
