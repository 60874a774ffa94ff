//! The GPT reader against util-linux `fdisk` (package `fdisk`), the peer that writes and
//! lists tables for both logical sector sizes (`-b 512`, `-b 4096`): every partition fdisk
//! lists is read back with the same extent, type, UUID and name.

use std::io::Cursor;
use std::path::Path;
use std::process::{Command, Stdio};

use basalt_identity::{gpt, types, Guid};

const FDISK: &str = "fdisk";

/// Run fdisk on `img` with `args`, feeding `input`; fail naming the package when missing.
fn fdisk(img: &Path, args: &[&str], input: &str) -> String {
    use std::io::Write;
    let mut child = Command::new(FDISK)
        .args(args)
        .arg(img)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {FDISK} ({e}): apt-get install fdisk"));
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(input.as_bytes())
        .expect("write fdisk commands");
    let out = child.wait_with_output().expect("wait for fdisk");
    assert!(
        out.status.success(),
        "fdisk {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn partitions_fdisk_writes_read_back_at_512_and_4096() {
    let dir = std::env::temp_dir().join(format!("basalt-identity-peer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let usr_uuid = "00112233-4455-6677-8899-aabbccddeeff";
    for ss in [512u64, 4096] {
        let img = dir.join(format!("disk-{ss}.img"));
        let f = std::fs::File::create(&img).unwrap();
        f.set_len(32 << 20).unwrap();
        drop(f);
        // g: new GPT; three partitions; types (ESP, usr, root); a UUID and names (expert mode).
        let script = format!(
            "g\nn\n1\n\n+2M\nn\n2\n\n+4M\nn\n3\n\n+8M\n\
             t\n1\n{esp}\nt\n2\n{usr}\nt\n3\n{root}\n\
             x\nu\n2\n{usr_uuid}\nn\n1\nesp\nn\n2\nbasalt_1.0.0\nn\n3\nroot\nr\nw\n",
            esp = types::ESP,
            usr = types::USR_X86_64,
            root = types::ROOT_X86_64,
        );
        let b = ss.to_string();
        fdisk(&img, &["-b", &b], &script);
        let listing = fdisk(
            &img,
            &["-b", &b, "-l", "-o", "Device,Start,End,Type-UUID,UUID,Name"],
            "",
        );
        let peer: Vec<Vec<String>> = listing
            .lines()
            .filter(|l| l.starts_with(img.to_str().unwrap()))
            .map(|l| l.split_whitespace().map(str::to_owned).collect())
            .collect();
        assert_eq!(peer.len(), 3, "fdisk listing:\n{listing}");

        let bytes = std::fs::read(&img).unwrap();
        let table = gpt::read(&mut Cursor::new(&bytes), bytes.len() as u64).unwrap();
        assert_eq!(table.sector_size, ss);
        assert!(table.primary.is_ok() && table.backup.is_ok());
        assert!(!table.copies_differ());
        let ours: Vec<_> = table.copy().unwrap().used().collect();
        assert_eq!(ours.len(), 3);
        for ((number, e), cols) in ours.into_iter().zip(&peer) {
            assert!(cols[0].ends_with(&number.to_string()), "{cols:?}");
            assert_eq!(e.first_lba.to_string(), cols[1], "start of {number}");
            assert_eq!(e.last_lba.to_string(), cols[2], "end of {number}");
            assert_eq!(Guid::parse(&cols[3]).unwrap(), e.type_guid);
            assert_eq!(Guid::parse(&cols[4]).unwrap(), e.unique_guid);
            assert_eq!(cols.get(5).map(String::as_str).unwrap_or(""), e.name());
        }
        let usr = &table.copy().unwrap().entries[1];
        assert_eq!(usr.unique_guid.to_string(), usr_uuid);
        assert_eq!(usr.name(), "basalt_1.0.0");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
