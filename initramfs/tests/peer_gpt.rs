//! Finding the usr slot in a GPT written by `sgdisk` (package `gdisk`): partition UUIDs set
//! from the root hash halves the systemd way, read back with our lookup (basalt-identity's
//! GPT reader).

mod common;

use basalt_initramfs::cmdline::{RootHash, RootSpec};
use basalt_initramfs::gpt::{DiskTable, ROOT_TYPE_GUID, USR_TYPE_GUID};
use common::peer_ok;

#[test]
fn finds_slot_partitions_written_by_sgdisk() {
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("disk.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let hash = RootHash::parse("8a1f3bc2d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f")
        .unwrap();
    let ids = hash.partition_uuids();
    let img_s = img.to_str().unwrap();
    let root_uuid = "6d2f5c1e-0b7a-4a39-9e3b-1c2d3e4f5a6b";
    peer_ok(
        "sgdisk",
        "gdisk",
        &[
            "-n",
            "1:1M:+8M",
            "-t",
            "1:EF00",
            "-c",
            "1:esp",
            "-n",
            "2:0:+16M",
            "-t",
            &format!("2:{USR_TYPE_GUID}"),
            "-u",
            &format!("2:{}", ids.data),
            "-c",
            "2:usr-a",
            "-n",
            "3:0:+4M",
            "-t",
            "3:77ff5f63-e7b6-4633-acf4-1565b864c0e6",
            "-u",
            &format!("3:{}", ids.verity),
            "-c",
            "3:usr-a-verity",
            "-n",
            "4:0:0",
            "-t",
            &format!("4:{ROOT_TYPE_GUID}"),
            "-u",
            &format!("4:{root_uuid}"),
            "-c",
            "4:root",
            img_s,
        ],
        None,
    );
    let table = DiskTable::read_path(&img, None).unwrap();
    let usr = table.find_usr(&hash).unwrap().expect("slot found");
    assert_eq!((usr.data.number, usr.verity.number), (2, 3));
    // Cross-check offsets and UUIDs with sgdisk's own report.
    for p in [&usr.data, &usr.verity] {
        let info = peer_ok(
            "sgdisk",
            "gdisk",
            &["-i", &p.number.to_string(), img_s],
            None,
        );
        let first: u64 = field(&info, "First sector:")
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let last: u64 = field(&info, "Last sector:")
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(p.start, first * 512);
        assert_eq!(p.len, (last - first + 1) * 512);
        assert_eq!(
            field(&info, "Partition unique GUID:").to_lowercase(),
            p.uuid.to_string()
        );
    }
    let root = table.find_root(&RootSpec::ByType).unwrap();
    assert_eq!(
        (root.number, root.uuid.to_string()),
        (4, root_uuid.to_string())
    );
    // Another hash names no partition on this disk.
    assert!(table.find_usr(&RootHash([3; 32])).unwrap().is_none());
}

fn field<'a>(info: &'a str, key: &str) -> &'a str {
    info.lines()
        .find_map(|l| l.strip_prefix(key))
        .map(str::trim)
        .unwrap_or_else(|| panic!("sgdisk -i has no {key}: {info}"))
}
