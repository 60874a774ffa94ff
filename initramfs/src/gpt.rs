//! Finding Basalt's partitions in a disk's GPT. The table is read by `basalt_identity::gpt`
//! (the one reader, bounded and fuzzed: PID 1 runs it on every disk it sees, hostile ones
//! included); this module adds what the boot needs on top: partitions as byte ranges, the
//! `/usr` slot named by a root hash, the root partition.
//!
//! The `/usr` slot is found the systemd way (Discoverable Partitions Specification): the
//! data partition's UUID is the first 128 bits of the dm-verity root hash, the verity (hash)
//! partition's UUID the last 128 bits (`basalt_identity::RootHash::partition_uuids`).
//! A slot is therefore selected by its content: the kernel command line's `usrhash=` names
//! exactly one pair of partitions, whatever slot letter they carry.

use std::io::{Read, Seek};
use std::path::{Path, PathBuf};

use basalt_identity::gpt as idgpt;
use basalt_identity::{types, Guid, RootHash};

use crate::cmdline::RootSpec;
use crate::error::{Error, Result};

/// Type GUID of the writable root partition: the Discoverable Partitions "Root Partition
/// (x86-64)". Used when the command line has no `basalt.root=`.
pub const ROOT_TYPE_GUID: Guid = types::ROOT_X86_64;
/// Discoverable Partitions "/usr Partition (x86-64)".
pub const USR_TYPE_GUID: Guid = types::USR_X86_64;
/// Discoverable Partitions "/usr Verity Partition (x86-64)".
pub const USR_VERITY_TYPE_GUID: Guid = types::USR_VERITY_X86_64;

/// One used GPT entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// GPT partition number (1-based), the kernel's partition number too.
    pub number: u32,
    /// Unique partition GUID (`PARTUUID`).
    pub uuid: Guid,
    /// Partition type GUID.
    pub type_guid: Guid,
    /// Partition name (`PARTLABEL`).
    pub label: String,
    /// First byte on the disk.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
}

/// The partitions of one disk.
#[derive(Debug, Clone)]
pub struct DiskTable {
    /// The device or image the table was read from.
    pub device: PathBuf,
    /// Logical sector size the GPT was found with.
    pub sector_size: u64,
    /// Used entries, by partition number.
    pub partitions: Vec<Partition>,
}

/// The `/usr` slot's two partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsrPartitions {
    /// The erofs data partition.
    pub data: Partition,
    /// The verity hash partition.
    pub verity: Partition,
}

impl DiskTable {
    /// Read the GPT of a disk of `len` bytes: with the kernel's logical sector size when
    /// known, else trying 512 and 4096; the primary copy, else the backup. Nothing the disk
    /// claims is trusted before it is checked (see `basalt_identity::gpt`).
    pub fn read<R: Read + Seek>(
        reader: &mut R,
        device: &Path,
        len: u64,
        sector_size: Option<u64>,
    ) -> Result<Self> {
        let gpt_err = |source| Error::ReadGpt {
            device: device.to_owned(),
            source,
        };
        let table = match sector_size {
            Some(ss) if idgpt::SECTOR_SIZES.contains(&ss) => {
                idgpt::read_with_sector_size(reader, ss, len)
            }
            _ => idgpt::read(reader, len),
        }
        .map_err(gpt_err)?;
        let ss = table.sector_size;
        let copy = table
            .copy()
            .ok_or_else(|| gpt_err(basalt_identity::GptError::NoGpt))?;
        let partitions = copy
            .used()
            .filter_map(|(number, e)| {
                // A validated copy has no reversed or overflowing extents.
                let (start, len) = e.byte_range(ss)?;
                Some(Partition {
                    number,
                    uuid: e.unique_guid,
                    type_guid: e.type_guid,
                    label: e.name(),
                    start,
                    len,
                })
            })
            .collect();
        Ok(Self {
            device: device.to_owned(),
            sector_size: ss,
            partitions,
        })
    }

    /// Open and read the GPT of a device node or image file.
    pub fn read_path(device: &Path, sector_size: Option<u64>) -> Result<Self> {
        let mut f = std::fs::File::open(device).map_err(|source| Error::OpenDevice {
            device: device.to_owned(),
            source,
        })?;
        let len = idgpt::disk_len(&mut f).map_err(|source| Error::ReadGpt {
            device: device.to_owned(),
            source,
        })?;
        Self::read(&mut f, device, len, sector_size)
    }

    /// The partition with this unique GUID (the reader refuses tables where two share one).
    pub fn by_uuid(&self, uuid: Guid) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.uuid == uuid)
    }

    /// The `/usr` slot named by `hash`: `Ok(None)` if this disk does not hold its data
    /// partition, an error if it holds the data partition but not the verity partition.
    pub fn find_usr(&self, hash: &RootHash) -> Result<Option<UsrPartitions>> {
        let ids = hash.partition_uuids();
        let Some(data) = self.by_uuid(ids.data) else {
            return Ok(None);
        };
        let verity = self
            .by_uuid(ids.verity)
            .ok_or_else(|| Error::VerityPartitionNotFound {
                device: self.device.clone(),
                uuid: ids.verity,
            })?;
        Ok(Some(UsrPartitions {
            data: data.clone(),
            verity: verity.clone(),
        }))
    }

    /// The writable root partition. By type, exactly one partition must match.
    pub fn find_root(&self, spec: &RootSpec) -> Result<&Partition> {
        let matches: Vec<&Partition> = self
            .partitions
            .iter()
            .filter(|p| match spec {
                RootSpec::ByType => p.type_guid == ROOT_TYPE_GUID,
                RootSpec::PartUuid(u) => p.uuid == *u,
                RootSpec::PartLabel(l) => p.label == *l,
            })
            .collect();
        match matches.as_slice() {
            [one] => Ok(one),
            [] => Err(Error::RootPartitionNotFound {
                device: self.device.clone(),
                spec: spec.to_string(),
            }),
            _ => Err(Error::RootPartitionNotFound {
                device: self.device.clone(),
                spec: format!("{spec} (ambiguous: {} partitions match)", matches.len()),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    const MIB: u64 = 1024 * 1024;

    fn guid(n: u8) -> Guid {
        Guid([n; 16])
    }

    fn read(img: &[u8], sector_size: Option<u64>) -> Result<DiskTable> {
        DiskTable::read(
            &mut Cursor::new(img),
            Path::new("img"),
            img.len() as u64,
            sector_size,
        )
    }

    fn hash() -> RootHash {
        let mut b = [0u8; 32];
        for (i, x) in b.iter_mut().enumerate() {
            *x = (i as u8).wrapping_mul(37).wrapping_add(11);
        }
        RootHash(b)
    }

    fn other_hash() -> RootHash {
        let mut b = [0xab; 32];
        b[20] = 0;
        RootHash(b)
    }

    /// A 64 MiB disk image with a GPT written by gptman: ESP, usr A (data+verity), usr B
    /// (data+verity of another hash), root.
    fn image(h: &RootHash, other: &RootHash, sector: u64) -> Vec<u8> {
        let mut disk = Cursor::new(vec![0u8; 64 * MIB as usize]);
        let mut gpt = gptman::GPT::new_from(&mut disk, sector, [7u8; 16]).unwrap();
        let a = h.partition_uuids();
        let b = other.partition_uuids();
        let parts = [
            (types::ESP, guid(1), "esp"),
            (USR_TYPE_GUID, a.data, "usr-a"),
            (USR_VERITY_TYPE_GUID, a.verity, "usr-a-verity"),
            (USR_TYPE_GUID, b.data, "usr-b"),
            (USR_VERITY_TYPE_GUID, b.verity, "usr-b-verity"),
            (ROOT_TYPE_GUID, guid(2), "root"),
        ];
        let per = 4 * MIB / sector;
        for (i, (ty, id, name)) in parts.iter().enumerate() {
            let start = 2048 * 512 / sector + i as u64 * per;
            gpt[(i + 1) as u32] = gptman::GPTPartitionEntry {
                partition_type_guid: ty.to_gpt_bytes(),
                unique_partition_guid: id.to_gpt_bytes(),
                starting_lba: start,
                ending_lba: start + per - 1,
                attribute_bits: 0,
                partition_name: (*name).into(),
            };
        }
        gpt.write_into(&mut disk).unwrap();
        gptman::GPT::write_protective_mbr_into(&mut disk, sector).unwrap();
        disk.into_inner()
    }

    #[test]
    fn finds_usr_pair_and_root_by_hash() {
        let other = other_hash();
        for sector in [512, 4096] {
            let img = image(&hash(), &other, sector);
            let t = read(&img, None).unwrap();
            assert_eq!(t.sector_size, sector);
            let u = t.find_usr(&hash()).unwrap().unwrap();
            assert_eq!((u.data.number, u.verity.number), (2, 3));
            assert_eq!(u.data.label, "usr-a");
            assert_eq!(u.data.start, 1024 * 1024 + 4 * MIB);
            assert_eq!(u.data.len, 4 * MIB);
            let u = t.find_usr(&other).unwrap().unwrap();
            assert_eq!((u.data.number, u.verity.number), (4, 5));
            assert_eq!(t.find_root(&RootSpec::ByType).unwrap().number, 6);
            assert_eq!(
                t.find_root(&RootSpec::PartLabel("usr-b".into()))
                    .unwrap()
                    .number,
                4
            );
            assert_eq!(t.find_root(&RootSpec::PartUuid(guid(2))).unwrap().number, 6);
            assert!(t.find_root(&RootSpec::PartLabel("nope".into())).is_err());
        }
    }

    #[test]
    fn unknown_hash_is_none_and_half_match_is_an_error() {
        let img = image(&hash(), &other_hash(), 512);
        let t = read(&img, None).unwrap();
        assert_eq!(t.find_usr(&RootHash([0xcd; 32])).unwrap(), None);
        // Same first half (data UUID) as the slot A hash, different second half.
        let mut half = hash();
        half.0[31] ^= 1;
        assert!(matches!(
            t.find_usr(&half),
            Err(Error::VerityPartitionNotFound { .. })
        ));
    }

    #[test]
    fn no_gpt_is_an_error() {
        let blank = vec![0u8; 4 * MIB as usize];
        assert!(matches!(read(&blank, None), Err(Error::ReadGpt { .. })));
    }

    #[test]
    fn the_kernels_sector_size_decides() {
        let img = image(&hash(), &other_hash(), 4096);
        assert_eq!(read(&img, Some(4096)).unwrap().sector_size, 4096);
        assert!(read(&img, Some(512)).is_err());
        // An odd size from sysfs: both standard ones are tried.
        assert_eq!(read(&img, Some(520)).unwrap().sector_size, 4096);
    }

    /// The header that made the old reader allocate what it claimed: 2^32-1 entries, with
    /// valid CRCs. Refused from the header alone, without reading or allocating the array.
    #[test]
    fn absurd_entry_count_is_refused_unread() {
        let mut img = image(&hash(), &other_hash(), 512);
        let n = img.len();
        for h in [512, n - 512] {
            img[h + 80..h + 84].copy_from_slice(&u32::MAX.to_le_bytes());
            img[h + 16..h + 20].fill(0);
            let crc = basalt_identity::gpt::crc32(&img[h..h + 92]);
            img[h + 16..h + 20].copy_from_slice(&crc.to_le_bytes());
        }
        let err = read(&img, None).unwrap_err().to_string();
        assert!(err.contains("4294967295 entries"), "{err}");
    }

    #[test]
    fn ambiguous_root_type_is_refused() {
        let mut img = image(&hash(), &other_hash(), 512);
        let mut disk = Cursor::new(&mut img);
        let mut gpt = gptman::GPT::find_from(&mut disk).unwrap();
        gpt[4].partition_type_guid = ROOT_TYPE_GUID.to_gpt_bytes();
        gpt.write_into(&mut disk).unwrap();
        let t = read(&img, None).unwrap();
        assert!(t.find_root(&RootSpec::ByType).is_err());
    }
}
