//! The kernel's view of block devices, from sysfs (`/sys/class/block`), with the sysfs and
//! `/dev` roots as parameters so the logic is tested against a fake tree on the host.
//!
//! A GPT entry is matched to the kernel's partition device by number *and* geometry: sysfs
//! `start` and `size` (always in 512-byte units) must equal the entry's byte range, so a
//! stale or foreign partition table can never hand dm-verity the wrong device.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::gpt::Partition;

/// Devices never worth reading a GPT from (and where a read could block, like `sr`).
const SKIP_PREFIXES: &[&str] = &["loop", "ram", "zram", "dm-", "sr", "fd", "md", "nbd"];

/// A whole disk the kernel knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// Kernel name (`vda`, `nvme0n1`).
    pub name: String,
    /// Device node (`/dev/vda`).
    pub node: PathBuf,
    /// Logical sector size from sysfs (`queue/logical_block_size`), when readable.
    pub sector_size: Option<u64>,
}

/// Where to look: sysfs block class and the devtmpfs mount.
#[derive(Debug, Clone)]
pub struct BlockRoots {
    /// Usually `/sys/class/block`.
    pub sys_class_block: PathBuf,
    /// Usually `/dev`.
    pub dev: PathBuf,
}

impl Default for BlockRoots {
    fn default() -> Self {
        Self {
            sys_class_block: PathBuf::from("/sys/class/block"),
            dev: PathBuf::from("/dev"),
        }
    }
}

fn read_trim(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
}

/// sysfs names use `!` where the device node path has `/` (e.g. `cciss!c0d0`).
fn node_for(dev: &Path, name: &str) -> PathBuf {
    dev.join(name.replace('!', "/"))
}

impl BlockRoots {
    /// Whole disks with a non-zero size, sorted by name (virtual devices skipped).
    pub fn disks(&self) -> Result<Vec<Disk>> {
        let rd =
            std::fs::read_dir(&self.sys_class_block).map_err(|source| Error::ListBlockDevices {
                path: self.sys_class_block.clone(),
                source,
            })?;
        let mut out = Vec::new();
        for ent in rd.flatten() {
            let name = ent.file_name().to_string_lossy().into_owned();
            if SKIP_PREFIXES.iter().any(|p| name.starts_with(p)) {
                continue;
            }
            let dir = self.sys_class_block.join(&name);
            if dir.join("partition").exists() {
                continue;
            }
            let size: u64 = read_trim(&dir.join("size"))
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            if size == 0 {
                continue;
            }
            let sector_size =
                read_trim(&dir.join("queue/logical_block_size")).and_then(|s| s.parse().ok());
            out.push(Disk {
                node: node_for(&self.dev, &name),
                name,
                sector_size,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The device node of GPT partition `part` of `disk`, checked against sysfs geometry.
    pub fn partition_node(&self, disk: &Disk, part: &Partition) -> Result<PathBuf> {
        let fail = |reason: String| Error::PartitionDevice {
            disk: disk.node.clone(),
            number: part.number,
            reason,
        };
        let dir = self.sys_class_block.join(&disk.name);
        let rd =
            std::fs::read_dir(&dir).map_err(|e| fail(format!("listing {}: {e}", dir.display())))?;
        for ent in rd.flatten() {
            let p = ent.path();
            let Some(num) = read_trim(&p.join("partition")).and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if num != part.number {
                continue;
            }
            let start: Option<u64> = read_trim(&p.join("start")).and_then(|s| s.parse().ok());
            let size: Option<u64> = read_trim(&p.join("size")).and_then(|s| s.parse().ok());
            let (Some(start), Some(size)) = (start, size) else {
                return Err(fail("sysfs start/size unreadable".into()));
            };
            if start * 512 != part.start || size * 512 != part.len {
                return Err(fail(format!(
                    "kernel sees bytes {}+{}, the GPT says {}+{}",
                    start * 512,
                    size * 512,
                    part.start,
                    part.len
                )));
            }
            let name = ent.file_name().to_string_lossy().into_owned();
            return Ok(node_for(&self.dev, &name));
        }
        Err(fail("the kernel has no such partition device".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use basalt_identity::Guid;

    fn fake_sysfs(root: &Path) -> BlockRoots {
        let s = root.join("sys/class/block");
        let w = |p: PathBuf, v: &str| {
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, v).unwrap();
        };
        w(s.join("vda/size"), "131072\n");
        w(s.join("vda/queue/logical_block_size"), "4096\n");
        w(s.join("vda/vda1/partition"), "1\n");
        w(s.join("vda/vda1/start"), "2048\n");
        w(s.join("vda/vda1/size"), "8192\n");
        w(s.join("vda/vda2/partition"), "2\n");
        w(s.join("vda/vda2/start"), "10240\n");
        w(s.join("vda/vda2/size"), "8192\n");
        // sysfs also lists partitions at the top level.
        w(s.join("vda1/partition"), "1\n");
        w(s.join("loop0/size"), "100\n");
        w(s.join("vdb/size"), "0\n");
        w(s.join("nvme0n1/size"), "2048\n");
        BlockRoots {
            sys_class_block: s,
            dev: root.join("dev"),
        }
    }

    fn part(number: u32, start: u64, len: u64) -> Partition {
        Partition {
            number,
            uuid: Guid::default(),
            type_guid: Guid::default(),
            label: String::new(),
            start,
            len,
        }
    }

    #[test]
    fn lists_real_disks_only() {
        let t = tempfile::tempdir().unwrap();
        let r = fake_sysfs(t.path());
        let d = r.disks().unwrap();
        let names: Vec<&str> = d.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["nvme0n1", "vda"]);
        assert_eq!(d[1].node, t.path().join("dev/vda"));
        assert_eq!((d[0].sector_size, d[1].sector_size), (None, Some(4096)));
    }

    #[test]
    fn partition_node_checks_geometry() {
        let t = tempfile::tempdir().unwrap();
        let r = fake_sysfs(t.path());
        let vda = r.disks().unwrap().pop().unwrap();
        assert_eq!(
            r.partition_node(&vda, &part(2, 10240 * 512, 8192 * 512))
                .unwrap(),
            t.path().join("dev/vda2")
        );
        assert!(matches!(
            r.partition_node(&vda, &part(2, 10240 * 512, 4096 * 512)),
            Err(Error::PartitionDevice { number: 2, .. })
        ));
        assert!(r.partition_node(&vda, &part(3, 0, 512)).is_err());
    }

    #[test]
    fn missing_sysfs_is_an_error() {
        let r = BlockRoots {
            sys_class_block: PathBuf::from("/nonexistent/sys/class/block"),
            dev: PathBuf::from("/dev"),
        };
        assert!(matches!(r.disks(), Err(Error::ListBlockDevices { .. })));
    }
}
