//! Finding Basalt's partitions in a disk's GPT, read directly with `gptman` (the initramfs
//! has no udev and no blkid).
//!
//! The `/usr` slot is found the systemd way (Discoverable Partitions Specification): the
//! data partition's UUID is the first 128 bits of the dm-verity root hash, the verity (hash)
//! partition's UUID the last 128 bits. The UUID's text form spells those bytes in order;
//! GPT stores UUIDs mixed-endian, hence `Uuid::from_bytes_le` on the raw entry.
//! A slot is therefore selected by its content: the kernel command line's `usrhash=` names
//! exactly one pair of partitions, whatever slot letter they carry.

use std::io::{Read, Seek};
use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::cmdline::{RootHash, RootSpec};
use crate::error::{Error, Result};

/// Type GUID of the writable root partition: the Discoverable Partitions "Root Partition
/// (x86-64)". Used when the command line has no `basalt.root=`.
pub const ROOT_TYPE_GUID: Uuid = Uuid::from_u128(0x4f68bce3_e8cd_4db1_96e7_fbcaf984b709);
/// Discoverable Partitions "/usr Partition (x86-64)".
pub const USR_TYPE_GUID: Uuid = Uuid::from_u128(0x8484680c_9521_48c6_9c11_b0720656f69e);
/// Discoverable Partitions "/usr Verity Partition (x86-64)".
pub const USR_VERITY_TYPE_GUID: Uuid = Uuid::from_u128(0x77ff5f63_e7b6_4633_acf4_1565b864c0e6);

/// The two partition UUIDs a root hash names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsrUuids {
    /// The data (erofs) partition: first 128 bits of the root hash.
    pub data: Uuid,
    /// The verity hash partition: last 128 bits of the root hash.
    pub verity: Uuid,
}

/// The partition UUIDs derived from a root hash.
pub fn usr_partition_uuids(hash: &RootHash) -> UsrUuids {
    let b = hash.as_bytes();
    let mut first = [0u8; 16];
    let mut last = [0u8; 16];
    first.copy_from_slice(&b[..16]);
    last.copy_from_slice(&b[16..]);
    UsrUuids {
        data: Uuid::from_bytes(first),
        verity: Uuid::from_bytes(last),
    }
}

/// One used GPT entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// GPT partition number (1-based), the kernel's partition number too.
    pub number: u32,
    /// Unique partition GUID (`PARTUUID`).
    pub uuid: Uuid,
    /// Partition type GUID.
    pub type_guid: Uuid,
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
    /// Read the GPT of a disk (512- or 4096-byte sectors; primary header, else backup).
    pub fn read<R: Read + Seek>(reader: &mut R, device: &Path) -> Result<Self> {
        let gpt = gptman::GPT::find_from(reader).map_err(|source| Error::ReadGpt {
            device: device.to_owned(),
            source,
        })?;
        let ss = gpt.sector_size;
        let partitions = gpt
            .iter()
            .filter(|(_, p)| p.is_used())
            .map(|(number, p)| Partition {
                number,
                uuid: Uuid::from_bytes_le(p.unique_partition_guid),
                type_guid: Uuid::from_bytes_le(p.partition_type_guid),
                label: p.partition_name.as_str().to_owned(),
                start: p.starting_lba.saturating_mul(ss),
                len: (p.ending_lba.saturating_sub(p.starting_lba) + 1).saturating_mul(ss),
            })
            .collect();
        Ok(Self {
            device: device.to_owned(),
            sector_size: ss,
            partitions,
        })
    }

    /// Open and read the GPT of a device node or image file.
    pub fn read_path(device: &Path) -> Result<Self> {
        let mut f = std::fs::File::open(device).map_err(|source| Error::OpenDevice {
            device: device.to_owned(),
            source,
        })?;
        Self::read(&mut f, device)
    }

    /// The partition with this unique GUID.
    pub fn by_uuid(&self, uuid: Uuid) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.uuid == uuid)
    }

    /// The `/usr` slot named by `hash`: `Ok(None)` if this disk does not hold its data
    /// partition, an error if it holds the data partition but not the verity partition.
    pub fn find_usr(&self, hash: &RootHash) -> Result<Option<UsrPartitions>> {
        let ids = usr_partition_uuids(hash);
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
        let a = usr_partition_uuids(h);
        let b = usr_partition_uuids(other);
        let parts = [
            (
                Uuid::from_u128(0xc12a7328_f81f_11d2_ba4b_00a0c93ec93b),
                Uuid::from_u128(1),
                "esp",
            ),
            (USR_TYPE_GUID, a.data, "usr-a"),
            (USR_VERITY_TYPE_GUID, a.verity, "usr-a-verity"),
            (USR_TYPE_GUID, b.data, "usr-b"),
            (USR_VERITY_TYPE_GUID, b.verity, "usr-b-verity"),
            (ROOT_TYPE_GUID, Uuid::from_u128(2), "root"),
        ];
        let per = 4 * MIB / sector;
        for (i, (ty, id, name)) in parts.iter().enumerate() {
            let start = 2048 * 512 / sector + i as u64 * per;
            gpt[(i + 1) as u32] = gptman::GPTPartitionEntry {
                partition_type_guid: ty.to_bytes_le(),
                unique_partition_guid: id.to_bytes_le(),
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
    fn uuids_are_the_hash_halves_in_text_order() {
        let h = RootHash::parse("00112233445566778899aabbccddeeff0123456789abcdeffedcba9876543210")
            .unwrap();
        let ids = usr_partition_uuids(&h);
        assert_eq!(ids.data.to_string(), "00112233-4455-6677-8899-aabbccddeeff");
        assert_eq!(
            ids.verity.to_string(),
            "01234567-89ab-cdef-fedc-ba9876543210"
        );
    }

    #[test]
    fn finds_usr_pair_and_root_by_hash() {
        let other = other_hash();
        for sector in [512, 4096] {
            let img = image(&hash(), &other, sector);
            let t = DiskTable::read(&mut Cursor::new(&img), Path::new("img")).unwrap();
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
            assert_eq!(
                t.find_root(&RootSpec::PartUuid(Uuid::from_u128(2)))
                    .unwrap()
                    .number,
                6
            );
            assert!(t.find_root(&RootSpec::PartLabel("nope".into())).is_err());
        }
    }

    #[test]
    fn unknown_hash_is_none_and_half_match_is_an_error() {
        let img = image(&hash(), &other_hash(), 512);
        let t = DiskTable::read(&mut Cursor::new(&img), Path::new("img")).unwrap();
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
        assert!(matches!(
            DiskTable::read(&mut Cursor::new(&blank), Path::new("blank")),
            Err(Error::ReadGpt { .. })
        ));
    }

    #[test]
    fn ambiguous_root_type_is_refused() {
        let mut img = image(&hash(), &other_hash(), 512);
        let mut disk = Cursor::new(&mut img);
        let mut gpt = gptman::GPT::find_from(&mut disk).unwrap();
        gpt[4].partition_type_guid = ROOT_TYPE_GUID.to_bytes_le();
        gpt.write_into(&mut disk).unwrap();
        let t = DiskTable::read(&mut Cursor::new(&img), Path::new("img")).unwrap();
        assert!(t.find_root(&RootSpec::ByType).is_err());
    }
}
