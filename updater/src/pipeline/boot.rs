//! The boot-control side of the pipeline: which backend, reaching the ESP safely, and
//! withdrawing a slot before it is overwritten.

use std::path::Path;

use basalt_disk::{
    BlsBackend, BootControl, BootStatus, DirEsp, FatImageEsp, GptPrio, Inventory, Slot,
};

use super::config::{BackendKind, EngineConfig, EspLocation};
use super::error::Error;
use super::io::{BoxedEsp, NodeIo};

/// A boot-control backend, boxed (chosen at run time from the configuration).
pub type Backend = Box<dyn BootControl + Send>;

/// Open the configured backend. `for_write`: the ESP will be written, so a raw ESP must not
/// be mounted (see [`EspLocation`]).
pub fn open(config: &EngineConfig, io: &dyn NodeIo, for_write: bool) -> Result<Backend, Error> {
    match config.backend {
        BackendKind::GptPrio => {
            let dev = io
                .open_rw(&config.disk, false)
                .map_err(super::error::io("open the disk", &config.disk))?;
            Ok(Box::new(GptPrio::new(dev, &config.disk)))
        }
        BackendKind::Bls => {
            let esp: Box<dyn basalt_disk::Esp + Send> = match &config.esp {
                EspLocation::Mounted(dir) => Box::new(DirEsp::new(dir)),
                EspLocation::Partition => {
                    let inv = Inventory::read_path(&config.disk, None)
                        .map_err(super::error::disk("read the disk to find the ESP"))?;
                    if for_write {
                        refuse_mounted_esp(config, inv.esp.number)?;
                    }
                    Box::new(
                        FatImageEsp::open(&config.disk, inv.esp.offset, inv.esp.size)
                            .map_err(super::error::disk("open the ESP"))?,
                    )
                }
            };
            Ok(Box::new(BlsBackend::new(io.wrap_esp(BoxedEsp(esp)))))
        }
    }
}

/// A boot-control error of `op` on `slot`.
pub fn err(
    config: &EngineConfig,
    op: &'static str,
    slot: Slot,
) -> impl FnOnce(basalt_disk::Error) -> Error {
    let backend = config.backend.as_str();
    move |source| Error::Boot {
        backend,
        op,
        slot,
        source,
    }
}

/// Make `slot` unbootable through the backend, whatever it was (before its partitions are
/// rewritten): a blessed or bad slot is marked bad first (so `cancel`, which refuses a
/// blessed slot, can then remove its entries), then staged state is withdrawn. The other
/// slot is never touched.
pub fn withdraw(config: &EngineConfig, backend: &mut Backend, slot: Slot) -> Result<(), Error> {
    let status = backend
        .status()
        .map_err(err(config, "read the boot state of", slot))?;
    let st = status.slot(slot).status;
    if matches!(st, BootStatus::Good | BootStatus::Bad) {
        backend
            .mark_bad(slot)
            .map_err(err(config, "mark bad (withdraw)", slot))?;
    }
    if st != BootStatus::Absent {
        backend
            .cancel(slot)
            .map_err(err(config, "withdraw", slot))?;
    }
    Ok(())
}

/// Refuse raw ESP writes while the ESP partition is mounted.
fn refuse_mounted_esp(config: &EngineConfig, partition: u32) -> Result<(), Error> {
    let Some(disk_devno) = block_devno(&config.disk) else {
        // An image file: its partitions are not block devices nobody else mounts.
        return Ok(());
    };
    let Some(esp_devno) = partition_devno(&config.sysfs, disk_devno, partition) else {
        return Ok(());
    };
    let mountinfo = match std::fs::read_to_string(&config.mountinfo) {
        Ok(t) => t,
        Err(e) => {
            return Err(Error::Io {
                op: "read the mount table",
                path: config.mountinfo.clone(),
                source: e,
            })
        }
    };
    match mountpoint_of(&mountinfo, esp_devno) {
        Some(mountpoint) => Err(Error::EspMounted {
            disk: config.disk.clone(),
            partition,
            mountpoint,
        }),
        None => Ok(()),
    }
}

/// `(major, minor)` of a block device, `None` for anything else.
fn block_devno(path: &Path) -> Option<(u32, u32)> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = std::fs::metadata(path).ok()?;
    if !meta.file_type().is_block_device() {
        return None;
    }
    let rdev = meta.rdev();
    Some((libc::major(rdev), libc::minor(rdev)))
}

/// The device numbers of partition `n` of the disk `disk` (from sysfs:
/// `/sys/dev/block/MAJ:MIN/<child>/{partition,dev}`).
pub fn partition_devno(sysfs: &Path, disk: (u32, u32), n: u32) -> Option<(u32, u32)> {
    let dir = sysfs.join(format!("dev/block/{}:{}", disk.0, disk.1));
    for entry in std::fs::read_dir(&dir).ok()?.flatten() {
        let p = entry.path();
        let Ok(number) = std::fs::read_to_string(p.join("partition")) else {
            continue;
        };
        if number.trim().parse::<u32>().ok() != Some(n) {
            continue;
        }
        let dev = std::fs::read_to_string(p.join("dev")).ok()?;
        let (maj, min) = dev.trim().split_once(':')?;
        return Some((maj.parse().ok()?, min.parse().ok()?));
    }
    None
}

/// The mount point of device `devno` in a `/proc/self/mountinfo` text (field 3 is
/// `major:minor`, field 5 the mount point, octal-escaped).
pub fn mountpoint_of(mountinfo: &str, devno: (u32, u32)) -> Option<String> {
    let want = format!("{}:{}", devno.0, devno.1);
    mountinfo.lines().find_map(|line| {
        let mut fields = line.split(' ');
        let dev = fields.nth(2)?;
        let mountpoint = fields.nth(1)?;
        (dev == want).then(|| mountpoint.replace("\\040", " "))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounted_esp_is_found_in_mountinfo_and_sysfs() {
        let info = "22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda6 rw\n\
                    35 22 254:2 / /boot\\040efi rw,relatime shared:2 - vfat /dev/vda1 rw\n";
        assert_eq!(mountpoint_of(info, (254, 2)).as_deref(), Some("/boot efi"));
        assert_eq!(mountpoint_of(info, (254, 3)), None);
        assert_eq!(mountpoint_of("garbage\n\n", (1, 1)), None);
        let sys = tempfile::tempdir().unwrap();
        for (name, part, dev) in [("vda1", "1", "254:2"), ("vda6", "6", "254:1")] {
            let d = sys.path().join("dev/block/254:0").join(name);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("partition"), format!("{part}\n")).unwrap();
            std::fs::write(d.join("dev"), format!("{dev}\n")).unwrap();
        }
        std::fs::create_dir_all(sys.path().join("dev/block/254:0/queue")).unwrap();
        assert_eq!(partition_devno(sys.path(), (254, 0), 1), Some((254, 2)));
        assert_eq!(partition_devno(sys.path(), (254, 0), 6), Some((254, 1)));
        assert_eq!(partition_devno(sys.path(), (254, 0), 2), None);
        assert_eq!(partition_devno(sys.path(), (8, 0), 1), None);
    }
}
