//! Which disk is the boot disk, and the `/usr` slot and root partition on it.
//!
//! The slot's partitions are found by UUIDs derived from a *public* root hash, so any disk
//! can carry copies of them: a USB stick, a re-attached old disk. Such a disk, enumerated
//! first, used to win — and its own root partition then supplied `/etc` and `/var`. The rule
//! now, in order:
//!
//! 1. **Pinned**: when the boot loader said which ESP it started from (systemd-boot's
//!    `LoaderDevicePartUUID`, read by the caller from efivarfs) — or, for direct kernel boot,
//!    `basalt.bootdisk=PARTUUID=` — the boot disk is the one disk holding that partition.
//!    Usr, verity and root are taken from it only; copies elsewhere are ignored (logged). The
//!    partition on two disks (a cloned disk) is ambiguous: refused.
//! 2. **Unpinned**: the boot disk is the one disk holding the slot's data partition; on two
//!    or more disks it is ambiguous: refused, never guessed.
//!
//! A disk whose table does not parse is skipped and logged once — it never stops the scan
//! (the reader, `basalt_identity::gpt`, bounds everything a table claims). Missing disks or
//! partition devices are waited for, up to `basalt.wait`; an ambiguity is final at once.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use basalt_identity::Guid;

use crate::blockdev::{BlockRoots, Disk};
use crate::cmdline::Cmdline;
use crate::error::{Error, Result};
use crate::gpt::{DiskTable, Partition, UsrPartitions};

const POLL: Duration = Duration::from_millis(100);

/// Who named the boot disk, and by which partition (the ESP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pin {
    /// systemd-boot's `LoaderDevicePartUUID` EFI variable.
    Loader(Guid),
    /// `basalt.bootdisk=PARTUUID=` on the command line.
    Cmdline(Guid),
}

impl Pin {
    /// The partition UUID.
    pub fn uuid(self) -> Guid {
        match self {
            Pin::Loader(u) | Pin::Cmdline(u) => u,
        }
    }

    /// What named it, for messages.
    pub fn named_by(self) -> &'static str {
        match self {
            Pin::Loader(_) => "LoaderDevicePartUUID",
            Pin::Cmdline(_) => "basalt.bootdisk=",
        }
    }
}

/// The boot disk with the slot's partitions resolved to device nodes.
#[derive(Debug)]
pub struct Located {
    /// The boot disk.
    pub disk: Disk,
    /// The slot's data and verity partitions.
    pub usr: UsrPartitions,
    /// The writable root partition.
    pub root: Partition,
    /// Device node of the data partition.
    pub data_node: PathBuf,
    /// Device node of the verity partition.
    pub hash_node: PathBuf,
    /// Device node of the root partition.
    pub root_node: PathBuf,
}

/// Log lines, each printed once however often the disks are polled.
#[derive(Debug, Default)]
pub struct Notes {
    seen: BTreeSet<String>,
    /// New lines since the last [`Notes::take`].
    pending: Vec<String>,
}

impl Notes {
    fn note(&mut self, line: String) {
        if self.seen.insert(line.clone()) {
            self.pending.push(line);
        }
    }

    /// The lines not yet handed out.
    pub fn take(&mut self) -> Vec<String> {
        std::mem::take(&mut self.pending)
    }
}

/// One poll's decision.
enum Step {
    Found(Disk, UsrPartitions, DiskTable),
    /// Nothing decisive yet: the error to report if the wait runs out.
    Wait(Error),
    /// Final.
    Fail(Error),
}

/// The disks with a readable GPT; the others are noted and skipped.
fn scan(roots: &BlockRoots, notes: &mut Notes) -> Result<Vec<(Disk, DiskTable)>> {
    let mut out = Vec::new();
    for disk in roots.disks()? {
        match DiskTable::read_path(&disk.node, disk.sector_size) {
            Ok(t) => out.push((disk, t)),
            Err(Error::ReadGpt {
                source: basalt_identity::GptError::NoGpt,
                ..
            }) => notes.note(format!("{}: no GPT, not a boot disk", disk.node.display())),
            Err(e) => notes.note(format!("skipping {}: {e}", disk.node.display())),
        }
    }
    Ok(out)
}

fn choose(
    seen: Vec<(Disk, DiskTable)>,
    cmd: &Cmdline,
    pin: Option<Pin>,
    waited_ms: u64,
    notes: &mut Notes,
) -> Step {
    let data_uuid = cmd.usrhash.partition_uuids().data;
    let key = pin.map_or(data_uuid, Pin::uuid);
    let (mut holders, others): (Vec<_>, Vec<_>) = seen
        .into_iter()
        .partition(|(_, t)| t.by_uuid(key).is_some());
    if holders.len() > 1 {
        let what = match pin {
            Some(p) => format!("partition {} named by {}", p.uuid(), p.named_by()),
            None => format!("the /usr data partition {data_uuid} (first half of usrhash)"),
        };
        return Step::Fail(Error::BootDiskAmbiguous {
            what,
            disks: holders.iter().map(|(d, _)| d.node.clone()).collect(),
        });
    }
    let Some((disk, table)) = holders.pop() else {
        return Step::Wait(match pin {
            Some(p) => Error::BootDiskNotFound {
                uuid: p.uuid(),
                named_by: p.named_by(),
                waited_ms,
            },
            None if others.is_empty() => Error::NoBootDisk { waited_ms },
            None => Error::UsrPartitionNotFound {
                uuid: data_uuid,
                waited_ms,
            },
        });
    };
    for (d, t) in &others {
        if t.by_uuid(data_uuid).is_some() {
            notes.note(format!(
                "ignoring {}: it holds a copy of the /usr slot but is not the boot disk {}",
                d.node.display(),
                disk.node.display()
            ));
        }
    }
    match table.find_usr(&cmd.usrhash) {
        Ok(Some(usr)) => Step::Found(disk, usr, table),
        Ok(None) => Step::Wait(Error::UsrNotOnBootDisk {
            disk: disk.node.clone(),
            uuid: data_uuid,
            waited_ms,
        }),
        Err(e) => Step::Fail(e),
    }
}

/// Poll until the boot disk and its partition devices are there (at most `cmd.wait_secs`).
/// `log` receives each note once, as it happens.
pub fn locate(
    cmd: &Cmdline,
    pin: Option<Pin>,
    roots: &BlockRoots,
    log: &mut dyn FnMut(&str),
) -> Result<Located> {
    let started = Instant::now();
    let deadline = Duration::from_secs(u64::from(cmd.wait_secs));
    let mut notes = Notes::default();
    loop {
        let waited_ms = started.elapsed().as_millis() as u64;
        let step =
            scan(roots, &mut notes).map(|seen| choose(seen, cmd, pin, waited_ms, &mut notes));
        for line in notes.take() {
            log(&line);
        }
        let retry = match step? {
            Step::Fail(e) => return Err(e),
            Step::Wait(e) => e,
            Step::Found(disk, usr, table) => {
                let root = table.find_root(&cmd.root)?.clone();
                let nodes = roots.partition_node(&disk, &usr.data).and_then(|d| {
                    Ok((
                        d,
                        roots.partition_node(&disk, &usr.verity)?,
                        roots.partition_node(&disk, &root)?,
                    ))
                });
                match nodes {
                    Ok((data_node, hash_node, root_node)) => {
                        return Ok(Located {
                            disk,
                            usr,
                            root,
                            data_node,
                            hash_node,
                            root_node,
                        })
                    }
                    // Partition devices may lag behind the disk.
                    Err(e @ Error::PartitionDevice { .. }) => e,
                    Err(e) => return Err(e),
                }
            }
        };
        if started.elapsed() >= deadline {
            return Err(retry);
        }
        std::thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpt::{ROOT_TYPE_GUID, USR_TYPE_GUID, USR_VERITY_TYPE_GUID};
    use crate::reason::Reason;
    use basalt_identity::{types, RootHash};
    use std::path::Path;

    const MIB: u64 = 1 << 20;

    fn hash() -> RootHash {
        let mut b = [0u8; 32];
        for (i, x) in b.iter_mut().enumerate() {
            *x = (i as u8).wrapping_mul(29).wrapping_add(3);
        }
        RootHash(b)
    }

    const ESP_A: Guid = Guid([0xea; 16]);

    /// A fake machine: each disk is (name, ESP UUID, holds the slot, geometry right in
    /// sysfs), or a disk with raw bytes; the GPTs are written by gptman (an independent
    /// writer), sysfs describes them as the kernel would.
    struct Machine {
        roots: BlockRoots,
    }

    enum FakeDisk<'a> {
        Basalt {
            name: &'a str,
            esp: Guid,
            slot: bool,
            geometry_ok: bool,
        },
        Raw(&'a str, Vec<u8>),
    }

    impl Machine {
        fn new(dir: &Path, disks: &[FakeDisk]) -> Self {
            let dev = dir.join("dev");
            let sys = dir.join("sys/class/block");
            std::fs::create_dir_all(&dev).unwrap();
            std::fs::create_dir_all(&sys).unwrap();
            let w = |p: PathBuf, v: String| {
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(p, v).unwrap();
            };
            for d in disks {
                match d {
                    FakeDisk::Raw(name, bytes) => {
                        w(
                            sys.join(format!("{name}/size")),
                            format!("{}\n", bytes.len() / 512),
                        );
                        std::fs::write(dev.join(name), bytes).unwrap();
                    }
                    FakeDisk::Basalt {
                        name,
                        esp,
                        slot,
                        geometry_ok,
                    } => {
                        let ids = hash().partition_uuids();
                        let mut disk = std::io::Cursor::new(vec![0u8; 32 * MIB as usize]);
                        let mut gpt = gptman::GPT::new_from(&mut disk, 512, [9; 16]).unwrap();
                        let other = |n: u8| {
                            Guid([
                                n,
                                name.as_bytes()[2],
                                0,
                                0,
                                0,
                                0,
                                0,
                                0,
                                0,
                                0,
                                0,
                                0,
                                0,
                                0,
                                0,
                                1,
                            ])
                        };
                        let parts = [
                            (types::ESP, *esp),
                            (USR_TYPE_GUID, if *slot { ids.data } else { other(1) }),
                            (
                                USR_VERITY_TYPE_GUID,
                                if *slot { ids.verity } else { other(2) },
                            ),
                            (ROOT_TYPE_GUID, other(3)),
                        ];
                        w(
                            sys.join(format!("{name}/size")),
                            format!("{}\n", 32 * MIB / 512),
                        );
                        for (i, (ty, id)) in parts.iter().enumerate() {
                            let n = i as u32 + 1;
                            let start = 2048 + i as u64 * 8192;
                            gpt[n] = gptman::GPTPartitionEntry {
                                partition_type_guid: ty.to_gpt_bytes(),
                                unique_partition_guid: id.to_gpt_bytes(),
                                starting_lba: start,
                                ending_lba: start + 8191,
                                attribute_bits: 0,
                                partition_name: format!("p{n}").as_str().into(),
                            };
                            let size = if *geometry_ok { 8192 } else { 4096 };
                            let p = format!("{name}/{name}{n}");
                            w(sys.join(format!("{p}/partition")), format!("{n}\n"));
                            w(sys.join(format!("{p}/start")), format!("{start}\n"));
                            w(sys.join(format!("{p}/size")), format!("{size}\n"));
                        }
                        gpt.write_into(&mut disk).unwrap();
                        gptman::GPT::write_protective_mbr_into(&mut disk, 512).unwrap();
                        std::fs::write(dev.join(name), disk.into_inner()).unwrap();
                    }
                }
            }
            Machine {
                roots: BlockRoots {
                    sys_class_block: sys,
                    dev,
                },
            }
        }

        fn locate(&self, pin: Option<Pin>) -> (Result<Located>, Vec<String>) {
            let cmd = Cmdline::parse(&format!("usrhash={} basalt.wait=1", hash())).unwrap();
            let mut lines = Vec::new();
            let r = locate(&cmd, pin, &self.roots, &mut |l: &str| {
                lines.push(l.to_owned())
            });
            (r, lines)
        }
    }

    fn basalt(name: &str, esp: Guid, slot: bool) -> FakeDisk<'_> {
        FakeDisk::Basalt {
            name,
            esp,
            slot,
            geometry_ok: true,
        }
    }

    /// The header that killed PID 1 before: valid CRCs, 2^32-1 entries.
    fn killer_gpt() -> Vec<u8> {
        let mut d = vec![0u8; 4 * MIB as usize];
        let h = 512;
        d[h..h + 8].copy_from_slice(b"EFI PART");
        d[h + 8..h + 12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        d[h + 12..h + 16].copy_from_slice(&92u32.to_le_bytes());
        d[h + 24..h + 32].copy_from_slice(&1u64.to_le_bytes());
        d[h + 32..h + 40].copy_from_slice(&8191u64.to_le_bytes());
        d[h + 40..h + 48].copy_from_slice(&34u64.to_le_bytes());
        d[h + 48..h + 56].copy_from_slice(&8000u64.to_le_bytes());
        d[h + 72..h + 80].copy_from_slice(&2u64.to_le_bytes());
        d[h + 80..h + 84].copy_from_slice(&u32::MAX.to_le_bytes());
        d[h + 84..h + 88].copy_from_slice(&128u32.to_le_bytes());
        let crc = basalt_identity::gpt::crc32(&d[h..h + 92]);
        d[h + 16..h + 20].copy_from_slice(&crc.to_le_bytes());
        d
    }

    #[test]
    fn the_only_disk_with_the_slot_is_the_boot_disk() {
        let t = tempfile::tempdir().unwrap();
        let m = Machine::new(t.path(), &[basalt("vda", ESP_A, true)]);
        let (l, _) = m.locate(None);
        let l = l.unwrap();
        assert_eq!(l.disk.name, "vda");
        assert_eq!(l.data_node, m.roots.dev.join("vda2"));
        assert_eq!(l.hash_node, m.roots.dev.join("vda3"));
        assert_eq!(l.root_node, m.roots.dev.join("vda4"));
        assert_eq!(
            (l.usr.data.number, l.usr.verity.number, l.root.number),
            (2, 3, 4)
        );
    }

    /// The USB stick carrying copies of the release's public partitions (and its own root),
    /// enumerated first.
    #[test]
    fn a_second_disk_with_the_slot_is_ambiguous_unless_pinned() {
        let t = tempfile::tempdir().unwrap();
        let esp_b = Guid([0xeb; 16]);
        let m = Machine::new(
            t.path(),
            &[basalt("vda", ESP_A, true), basalt("vdb", esp_b, true)],
        );
        let (r, _) = m.locate(None);
        let err = r.unwrap_err();
        assert_eq!(
            Reason::of(&err, Reason::Panic),
            Reason::BootDiskAmbiguous,
            "{err}"
        );
        assert!(err.to_string().contains("vda and "), "{err}");
        for pin in [Pin::Loader(esp_b), Pin::Cmdline(esp_b)] {
            let (l, lines) = m.locate(Some(pin));
            let l = l.unwrap();
            assert_eq!(l.disk.name, "vdb");
            assert_eq!(l.root_node, m.roots.dev.join("vdb4"));
            assert!(
                lines
                    .iter()
                    .any(|l| l.starts_with("ignoring ") && l.contains("/vda")),
                "{lines:?}"
            );
        }
    }

    #[test]
    fn pinned_partition_on_two_disks_is_ambiguous_and_absent_is_not_found() {
        let t = tempfile::tempdir().unwrap();
        let m = Machine::new(
            t.path(),
            &[basalt("vda", ESP_A, false), basalt("vdb", ESP_A, true)],
        );
        let err = m.locate(Some(Pin::Loader(ESP_A))).0.unwrap_err();
        assert_eq!(
            Reason::of(&err, Reason::Panic),
            Reason::BootDiskAmbiguous,
            "{err}"
        );
        assert!(err.to_string().contains("LoaderDevicePartUUID"), "{err}");
        let err = m.locate(Some(Pin::Cmdline(Guid([1; 16])))).0.unwrap_err();
        assert!(
            matches!(
                err,
                Error::BootDiskNotFound {
                    named_by: "basalt.bootdisk=",
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(Reason::of(&err, Reason::Panic), Reason::NoBootDisk);
    }

    #[test]
    fn pinned_disk_without_the_slot_does_not_fall_back_to_another() {
        let t = tempfile::tempdir().unwrap();
        let esp_b = Guid([0xeb; 16]);
        let m = Machine::new(
            t.path(),
            &[basalt("vda", ESP_A, true), basalt("vdb", esp_b, false)],
        );
        let err = m.locate(Some(Pin::Loader(esp_b))).0.unwrap_err();
        assert!(matches!(err, Error::UsrNotOnBootDisk { .. }), "{err}");
        assert_eq!(
            Reason::of(&err, Reason::Panic),
            Reason::UsrPartitionNotFound
        );
    }

    /// One odd disk never stops the scan: it is skipped, named in one log line with what it
    /// claimed, and the boot disk is found after it.
    #[test]
    fn hostile_and_blank_disks_are_skipped_and_logged_once() {
        let t = tempfile::tempdir().unwrap();
        let m = Machine::new(
            t.path(),
            &[
                FakeDisk::Raw("vda", killer_gpt()),
                FakeDisk::Raw("vdb", vec![0u8; MIB as usize]),
                basalt("vdc", ESP_A, true),
            ],
        );
        let (l, lines) = m.locate(None);
        assert_eq!(l.unwrap().disk.name, "vdc");
        let skipped: Vec<_> = lines.iter().filter(|l| l.starts_with("skipping")).collect();
        assert_eq!(skipped.len(), 1, "{lines:?}");
        assert!(
            skipped[0].contains("/vda") && skipped[0].contains("4294967295 entries"),
            "{lines:?}"
        );
        assert!(
            lines.iter().any(|l| l.contains("/vdb: no GPT")),
            "{lines:?}"
        );
    }

    #[test]
    fn nothing_there_waits_then_names_what_was_missing() {
        let t = tempfile::tempdir().unwrap();
        let m = Machine::new(t.path(), &[]);
        let err = m.locate(None).0.unwrap_err();
        assert!(
            matches!(err, Error::NoBootDisk { waited_ms } if waited_ms >= 900),
            "{err}"
        );
        let m = Machine::new(t.path(), &[basalt("vda", ESP_A, false)]);
        let err = m.locate(None).0.unwrap_err();
        assert_eq!(
            Reason::of(&err, Reason::Panic),
            Reason::UsrPartitionNotFound,
            "{err}"
        );
    }

    #[test]
    fn bad_geometry_is_a_partition_device_error_after_the_wait() {
        let t = tempfile::tempdir().unwrap();
        let m = Machine::new(
            t.path(),
            &[FakeDisk::Basalt {
                name: "vda",
                esp: ESP_A,
                slot: true,
                geometry_ok: false,
            }],
        );
        let err = m.locate(None).0.unwrap_err();
        assert_eq!(
            Reason::of(&err, Reason::Panic),
            Reason::PartitionDevice,
            "{err}"
        );
    }
}
