//! Peer interop with the real `veritysetup` (Debian package `cryptsetup-bin`): for many data
//! sizes, salts and layouts, our hash area and root hash must equal veritysetup's byte for
//! byte, each side must accept the other's tree, and both must reject a flipped byte.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use basalt_verity::{
    format, verify, verify_tree, Corruption, Device, Error, FormatOptions, Geometry, Level0Builder,
    VerifyOptions, HASHES_PER_BLOCK,
};

const BS: u64 = 4096;
const UUID: &str = "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0";
const UUID_BYTES: [u8; 16] = [
    0x0f, 0x1e, 0x2d, 0x3c, 0x4b, 0x5a, 0x49, 0x68, 0x87, 0x76, 0xa5, 0xb4, 0xc3, 0xd2, 0xe1, 0xf0,
];

fn veritysetup_bin() -> PathBuf {
    for p in [
        "/usr/sbin/veritysetup",
        "/sbin/veritysetup",
        "/usr/bin/veritysetup",
    ] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!("veritysetup not found: install the Debian package `cryptsetup-bin`");
}

fn veritysetup(args: &[String]) -> Output {
    Command::new(veritysetup_bin())
        .args(args)
        .output()
        .expect("running veritysetup (package cryptsetup-bin)")
}

/// Deterministic pseudo-random bytes (xorshift64*), so failures reproduce.
fn fill_random(seed: u64, buf: &mut [u8]) {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for chunk in buf.chunks_mut(8) {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let v = x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
}

fn write_random_file(path: &Path, len: u64, seed: u64) {
    let f = File::create(path).expect("create data");
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0u64;
    while off < len {
        let n = (len - off).min(buf.len() as u64) as usize;
        fill_random(seed ^ off, &mut buf[..n]);
        f.write_all_at(&buf[..n], off).expect("write data");
        off += n as u64;
    }
}

fn flip_byte(path: &Path, offset: u64) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open for flip");
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).expect("read byte");
    b[0] ^= 0x5a;
    f.write_all_at(&b, offset).expect("write byte");
}

#[derive(Debug, Clone)]
struct Case {
    /// Data file length in bytes (need not be a whole number of blocks).
    data_len: u64,
    salt: Vec<u8>,
    superblock: bool,
    /// `Some(offset)`: the tree is appended to the data file at this byte offset.
    appended: Option<u64>,
    seed: u64,
}

impl Case {
    fn data_blocks(&self) -> u64 {
        self.data_len / BS
    }

    fn salt_arg(&self) -> String {
        if self.salt.is_empty() {
            "-".into()
        } else {
            hex::encode(&self.salt)
        }
    }

    /// Common veritysetup options for format and verify.
    fn layout_args(&self) -> Vec<String> {
        let mut a = vec![format!("--data-blocks={}", self.data_blocks())];
        if let Some(off) = self.appended {
            a.push(format!("--hash-offset={off}"));
        }
        if !self.superblock {
            a.push("--no-superblock".into());
            a.push(format!("--salt={}", self.salt_arg()));
        }
        a
    }

    fn hash_offset(&self) -> u64 {
        self.appended.unwrap_or(0)
    }

    fn verify_opts(&self) -> VerifyOptions {
        VerifyOptions {
            hash_offset: self.hash_offset(),
            superblock: self.superblock,
            salt: (!self.superblock).then(|| self.salt.clone()),
            data_blocks: Some(self.data_blocks()),
            threads: 2,
        }
    }
}

struct Formatted {
    data: PathBuf,
    hash: PathBuf,
    root: [u8; 32],
}

fn theirs(case: &Case, dir: &Path) -> Formatted {
    let data = dir.join("their-data");
    write_random_file(&data, case.data_len, case.seed);
    let hash = if case.appended.is_some() {
        data.clone()
    } else {
        dir.join("their-hash")
    };
    let mut args = vec![
        "format".to_string(),
        data.display().to_string(),
        hash.display().to_string(),
        format!("--salt={}", case.salt_arg()),
        format!("--uuid={UUID}"),
    ];
    args.extend(case.layout_args());
    let out = veritysetup(&args);
    assert!(
        out.status.success(),
        "veritysetup {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let root_hex = stdout
        .lines()
        .find_map(|l| l.strip_prefix("Root hash:"))
        .unwrap_or_else(|| panic!("no root hash in veritysetup output:\n{stdout}"))
        .trim();
    let mut root = [0u8; 32];
    root.copy_from_slice(&hex::decode(root_hex).expect("hex root"));
    Formatted { data, hash, root }
}

fn ours(case: &Case, dir: &Path, threads: usize) -> Formatted {
    let data = dir.join("our-data");
    write_random_file(&data, case.data_len, case.seed);
    let hash = if case.appended.is_some() {
        data.clone()
    } else {
        dir.join("our-hash")
    };
    let data_file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&data)
        .expect("open data");
    let hash_file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&hash)
        .expect("open hash");
    let opts = FormatOptions {
        salt: case.salt.clone(),
        superblock: case.superblock,
        uuid: Some(UUID_BYTES),
        hash_offset: case.hash_offset(),
        threads,
    };
    let info = format(
        Device::new(&data_file, &data),
        0,
        case.data_blocks() * BS,
        Device::new(&hash_file, &hash),
        &opts,
    )
    .unwrap_or_else(|e| panic!("our format of {case:?}: {e}"));
    let geometry = Geometry::new(case.data_blocks()).expect("geometry");
    assert_eq!(info.hash_blocks, geometry.hash_blocks);
    assert_eq!(info.data_blocks, case.data_blocks());
    Formatted {
        data,
        hash,
        root: info.root_hash,
    }
}

fn our_verify(case: &Case, f: &Formatted) -> Result<(), Error> {
    let data_file = File::open(&f.data).expect("open data");
    let hash_file = File::open(&f.hash).expect("open hash");
    verify(
        Device::new(&data_file, &f.data),
        0,
        fs::metadata(&f.data).expect("stat").len(),
        Device::new(&hash_file, &f.hash),
        &f.root,
        &case.verify_opts(),
    )
    .map(|_| ())
}

/// [`verify_tree`] with the data hashed by a [`Level0Builder`] in windows of `window`
/// level-0 blocks (the last one shorter), as the updater does while it downloads. `None`
/// for a one-block tree (no level 0).
fn our_verify_tree(case: &Case, f: &Formatted, window: u64) -> Option<Result<(), Error>> {
    let blocks = case.data_blocks();
    if blocks < 2 {
        return None;
    }
    let data_file = File::open(&f.data).expect("open data");
    let hash_file = File::open(&f.hash).expect("open hash");
    let data = Device::new(&data_file, &f.data);
    let mut b = Level0Builder::new(&case.salt, blocks, case.seed as usize % 3);
    while b.done() < blocks {
        let n = (window * HASHES_PER_BLOCK).min(blocks - b.done());
        b.update(data, b.done() * BS, n).expect("hashing the data");
    }
    let digest = b.finish().expect("every block hashed");
    Some(
        verify_tree(
            Device::new(&hash_file, &f.hash),
            &f.root,
            &case.verify_opts(),
            &digest,
        )
        .map(|_| ()),
    )
}

fn their_verify(case: &Case, f: &Formatted) -> bool {
    let mut args = vec![
        "verify".to_string(),
        f.data.display().to_string(),
        f.hash.display().to_string(),
        hex::encode(f.root),
    ];
    args.extend(case.layout_args());
    veritysetup(&args).status.success()
}

/// Byte offset of the tree in the hash file.
fn tree_offset(case: &Case) -> u64 {
    let off = case.hash_offset();
    if case.superblock {
        (off + 512).div_ceil(BS) * BS
    } else {
        off / BS * BS
    }
}

fn check_case(case: &Case, flips: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = theirs(case, dir.path());
    let o = ours(case, dir.path(), if case.seed % 2 == 0 { 0 } else { 1 });
    assert_eq!(
        hex::encode(o.root),
        hex::encode(t.root),
        "root hash of {case:?}"
    );
    let (ob, tb) = (
        fs::read(&o.hash).expect("read"),
        fs::read(&t.hash).expect("read"),
    );
    assert_eq!(ob.len(), tb.len(), "hash file length of {case:?}");
    if let Some(pos) = ob.iter().zip(&tb).position(|(a, b)| a != b) {
        panic!("hash file of {case:?} differs from veritysetup's at byte {pos}");
    }

    assert!(
        their_verify(case, &o),
        "veritysetup rejects our tree for {case:?}"
    );
    our_verify(case, &t)
        .unwrap_or_else(|e| panic!("we reject veritysetup's tree for {case:?}: {e}"));
    our_verify(case, &o).unwrap_or_else(|e| panic!("we reject our own tree for {case:?}: {e}"));
    for window in [1, 3, 64] {
        if let Some(r) = our_verify_tree(case, &t, window) {
            r.unwrap_or_else(|e| {
                panic!("verify_tree rejects veritysetup's tree for {case:?}: {e}")
            });
        }
    }
    if !flips {
        return;
    }

    // A flipped data byte (in a block chosen from the seed): both refuse, we name the block.
    let block = case.seed % case.data_blocks();
    flip_byte(&o.data, block * BS + case.seed % BS);
    assert!(
        !their_verify(case, &o),
        "veritysetup accepts corrupted data for {case:?}"
    );
    match our_verify(case, &o) {
        Err(Error::Corrupted {
            what: Corruption::Data,
            block: b,
            ..
        }) => assert_eq!(b, block),
        other => panic!("corrupted data block {block} of {case:?}: got {other:?}"),
    }
    match our_verify_tree(case, &o, 2) {
        None | Some(Err(Error::DataDiffers { .. })) => {}
        Some(other) => {
            panic!("verify_tree with corrupted data block {block} of {case:?}: {other:?}")
        }
    }
    flip_byte(&o.data, block * BS + case.seed % BS);

    // A flipped hash byte in each hash block in turn (at most a few): both refuse.
    let geometry = Geometry::new(case.data_blocks()).expect("geometry");
    for hb in [
        0,
        geometry.hash_blocks / 2,
        geometry.hash_blocks.saturating_sub(1),
    ] {
        if hb >= geometry.hash_blocks {
            continue;
        }
        // Flip inside the digests or inside the zero padding, depending on the block.
        let within = if hb % 2 == 0 { 5 } else { BS - 1 };
        let at = tree_offset(case) + hb * BS + within;
        flip_byte(&o.hash, at);
        assert!(
            !their_verify(case, &o),
            "veritysetup accepts corrupted hash block {hb} of {case:?}"
        );
        match (hb, our_verify(case, &o)) {
            (0, Err(Error::RootHashMismatch { .. })) => {}
            (
                b,
                Err(Error::Corrupted {
                    what: Corruption::Hash,
                    block,
                    ..
                }),
            ) if b == block => {}
            (_, other) => panic!("corrupted hash block {hb} of {case:?}: got {other:?}"),
        }
        // Without the data: the same finding from the tree alone.
        match (hb, our_verify_tree(case, &o, 1)) {
            (_, None) | (0, Some(Err(Error::RootHashMismatch { .. }))) => {}
            (
                b,
                Some(Err(Error::Corrupted {
                    what: Corruption::Hash,
                    block,
                    ..
                })),
            ) if b == block => {}
            (_, other) => panic!("verify_tree, corrupted hash block {hb} of {case:?}: {other:?}"),
        }
        flip_byte(&o.hash, at);
    }
    // A flipped superblock byte (the salt's or the block count's): both refuse.
    if case.superblock {
        let at = case.hash_offset() + 72; // data_blocks, low byte
        flip_byte(&o.hash, at);
        assert!(
            !their_verify(case, &o),
            "veritysetup accepts a damaged superblock"
        );
        assert!(
            our_verify(case, &o).is_err(),
            "we accept a damaged superblock"
        );
        flip_byte(&o.hash, at);
        // A damaged signature: the superblock no longer parses.
        let at = case.hash_offset() + 1;
        flip_byte(&o.hash, at);
        assert!(
            !their_verify(case, &o),
            "veritysetup accepts a superblock without signature"
        );
        assert!(matches!(
            our_verify(case, &o),
            Err(Error::Corrupted {
                what: Corruption::Superblock,
                block: 0,
                ..
            })
        ));
        flip_byte(&o.hash, at);
    }
    our_verify(case, &o).expect("restored tree verifies again");
}

fn salt_for(kind: u64, seed: u64) -> Vec<u8> {
    let len = match kind % 4 {
        0 => 32,
        1 => 0,
        2 => 7,
        _ => 256,
    };
    let mut s = vec![0u8; len];
    fill_random(seed.wrapping_add(0x5a17), &mut s);
    s
}

#[test]
fn separate_hash_files_match_veritysetup() {
    // 1 block (no tree), 2, odd counts, exactly one full hash block (128), two levels (129,
    // 1000, 16384), three levels (16385), and a partial trailing block that both ignore.
    let sizes = [1, 2, 3, 127, 128, 129, 1000, 16384, 16385];
    let mut n = 0u64;
    for (i, blocks) in sizes.iter().enumerate() {
        for superblock in [true, false] {
            n += 1;
            let case = Case {
                data_len: blocks * BS + if i % 3 == 0 { 100 } else { 0 },
                salt: salt_for(n, n),
                superblock,
                appended: None,
                seed: n * 7919 + 13,
            };
            check_case(&case, true);
        }
    }
}

#[test]
fn appended_hash_areas_match_veritysetup() {
    for (n, (blocks, gap, superblock)) in [
        (1u64, 0u64, true),
        (5, 0, false),
        (129, 8192, true),
        (300, 4096, false),
        (2000, 512, true), // a 512-aligned offset: the tree starts at the next 4 KiB
    ]
    .into_iter()
    .enumerate()
    {
        let n = n as u64;
        let case = Case {
            data_len: blocks * BS,
            salt: salt_for(n, n + 100),
            superblock,
            appended: Some(blocks * BS + gap),
            seed: n * 104_729 + 1,
        };
        check_case(&case, true);
    }
}

#[test]
fn a_64_mib_image_matches_veritysetup() {
    // 64 MiB + 8 KiB: three levels, many 2 MiB work chunks on every thread.
    let case = Case {
        data_len: 64 * 1024 * 1024 + 2 * BS,
        salt: salt_for(0, 64),
        superblock: true,
        appended: None,
        seed: 64,
    };
    check_case(&case, true);
    let case = Case {
        appended: Some(case.data_len),
        superblock: false,
        salt: Vec::new(),
        seed: 65,
        ..case
    };
    check_case(&case, false);
}

#[test]
fn four_level_tree_of_a_sparse_8_gib_file_matches_veritysetup() {
    // 4 levels need more than 128^3 data blocks (8 GiB). A sparse file keeps it cheap on
    // disk; a few real blocks make the tree non-trivial.
    let dir = tempfile::tempdir().expect("tempdir");
    let blocks = 128u64 * 128 * 128 + 3;
    for name in ["our-data", "their-data"] {
        let path = dir.path().join(name);
        let f = File::create(&path).expect("create");
        f.set_len(blocks * BS).expect("sparse");
        for b in [0, 12_345, 2_000_000, blocks - 1] {
            let mut buf = vec![0u8; BS as usize];
            fill_random(b, &mut buf);
            f.write_all_at(&buf, b * BS).expect("write block");
        }
    }
    let case = Case {
        data_len: blocks * BS,
        salt: salt_for(0, 4),
        superblock: true,
        appended: None,
        seed: 4,
    };
    assert_eq!(Geometry::new(blocks).expect("geometry").levels.len(), 4);
    // theirs()/ours() would rewrite the data with random bytes: run the steps by hand.
    let t_hash = dir.path().join("their-hash");
    let mut args = vec![
        "format".to_string(),
        dir.path().join("their-data").display().to_string(),
        t_hash.display().to_string(),
        format!("--salt={}", case.salt_arg()),
        format!("--uuid={UUID}"),
    ];
    args.extend(case.layout_args());
    let out = veritysetup(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let their_root = stdout
        .lines()
        .find_map(|l| l.strip_prefix("Root hash:"))
        .expect("root hash line")
        .trim()
        .to_string();

    let data_path = dir.path().join("our-data");
    // Many threads on few cores: exercises the work queue with more workers than chunks in flight.
    let o_hash = dir.path().join("our-hash");
    let info = basalt_verity::format_path(
        &data_path,
        &o_hash,
        None,
        &FormatOptions {
            salt: case.salt.clone(),
            uuid: Some(UUID_BYTES),
            threads: 5,
            ..Default::default()
        },
    )
    .expect("our format");
    assert_eq!(hex::encode(info.root_hash), their_root);
    assert!(fs::read(&o_hash).expect("read") == fs::read(&t_hash).expect("read"));
    // (Verifying 8 GiB once more would double the test's time for a code path the 3-level
    // cases already cover.)
}

#[test]
fn a_slot_inside_a_disk_image_matches_veritysetup() {
    // A "disk image": 1 MiB of something else, the slot's data, then (same file) the slot's
    // hash area. Our tree over the range must equal veritysetup's over the extracted data.
    let dir = tempfile::tempdir().expect("tempdir");
    let blocks = 700u64;
    let data_offset = 1 << 20;
    let hash_offset = data_offset + blocks * BS + 3 * BS;
    let disk = dir.path().join("disk.img");
    write_random_file(&disk, data_offset + blocks * BS + 5 * BS, 77);
    let original = fs::read(&disk).expect("read image");
    let plain = dir.path().join("slot-data");
    let mut slot = vec![0u8; (blocks * BS) as usize];
    File::open(&disk)
        .expect("open disk")
        .read_exact_at(&mut slot, data_offset)
        .expect("read slot");
    fs::write(&plain, &slot).expect("write slot");
    let their_hash = dir.path().join("their-hash");
    let salt = salt_for(0, 77);
    let out = veritysetup(&[
        "format".into(),
        plain.display().to_string(),
        their_hash.display().to_string(),
        format!("--salt={}", hex::encode(&salt)),
        format!("--uuid={UUID}"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs = fs::read(&their_hash).expect("read");

    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&disk)
        .expect("open");
    let dev = Device::new(&file, &disk);
    let opts = FormatOptions {
        salt: salt.clone(),
        uuid: Some(UUID_BYTES),
        hash_offset,
        ..Default::default()
    };
    let info = format(dev, data_offset, blocks * BS, dev, &opts).expect("format in place");
    assert_eq!(info.hash_start_block(), hash_offset / BS + 1);
    // Expected image: the original bytes, with veritysetup's 512-byte superblock and its tree
    // put at the hash area. Like veritysetup, we leave the rest of the superblock's 4 KiB block
    // (and everything outside the hash area) as it was.
    let mut expect = original;
    let sb_at = hash_offset as usize;
    expect[sb_at..sb_at + 512].copy_from_slice(&theirs[..512]);
    expect.resize(sb_at + theirs.len(), 0);
    expect[sb_at + 4096..].copy_from_slice(&theirs[4096..]);
    let image = fs::read(&disk).expect("read image");
    assert_eq!(image.len(), expect.len());
    if let Some(pos) = image.iter().zip(&expect).position(|(a, b)| a != b) {
        panic!("disk image differs from the expected one at byte {pos}");
    }

    let vopts = VerifyOptions {
        hash_offset,
        ..Default::default()
    };
    let check = || verify(dev, data_offset, blocks * BS, dev, &info.root_hash, &vopts);
    check().expect("intact slot verifies");
    flip_byte(&disk, data_offset + 321 * BS + 1);
    match check() {
        Err(Error::Corrupted {
            what: Corruption::Data,
            block: 321,
            offset,
            ..
        }) => {
            assert_eq!(offset, data_offset + 321 * BS)
        }
        other => panic!("expected data block 321, got {other:?}"),
    }
    // An overlapping hash area is refused before anything is written.
    let bad = FormatOptions {
        hash_offset: data_offset + 10 * BS,
        ..opts
    };
    assert!(matches!(
        format(dev, data_offset, blocks * BS, dev, &bad),
        Err(Error::InvalidParameters { .. })
    ));
}
