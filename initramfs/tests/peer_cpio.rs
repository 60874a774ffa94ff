//! Our cpio newc archives, read by GNU cpio (package `cpio`) and checked by `zstd`/`gzip`.

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use basalt_initramfs::builder::{compress, Compression};
use basalt_initramfs::cpio::{Archive, Kind};
use common::{peer, peer_ok};

fn sample() -> Archive {
    sample_entries().expect("valid sample paths")
}

fn sample_entries() -> basalt_initramfs::Result<Archive> {
    let mut a = Archive::new();
    a.add_file("init", 0o755, b"\x7fELF not really".to_vec())?;
    a.add_file("etc/basalt/modules", 0o644, b"/lib/a.ko\n".to_vec())?;
    // Sizes around the 4-byte padding boundaries, and an empty file.
    for n in 0..9usize {
        a.add_file(&format!("data/pad{n}"), 0o600, vec![n as u8; n * 1021 % 17])?;
    }
    a.add_file(
        "data/big",
        0o644,
        (0..200_000u32).map(|i| (i * 7 % 256) as u8).collect(),
    )?;
    a.add_symlink("bin", "usr/bin")?;
    a.add_symlink("sbin/init", "/init")?;
    a.add_char_dev("dev/console", 0o600, 5, 1)?;
    a.add_dir("run", 0o755)?;
    a.add_dir("tmp", 0o1777)?;
    a.add_dir("a-b", 0o755)?;
    a.add_file("a/b", 0o644, vec![])?;
    Ok(a)
}

#[test]
fn cpio_lists_our_entries_in_our_order() {
    let a = sample();
    let t = tempfile::tempdir().unwrap();
    let f = t.path().join("a.cpio");
    std::fs::write(&f, a.to_bytes()).unwrap();
    let out = peer_ok("cpio", "cpio", &["-t", "-F", f.to_str().unwrap()], None);
    let listed: Vec<&str> = out.lines().collect();
    let ours: Vec<&str> = a.entries().map(|(p, _)| p).collect();
    assert_eq!(listed, ours);
}

#[test]
fn cpio_extracts_the_same_bytes_modes_links_and_nodes() {
    let a = sample();
    let t = tempfile::tempdir().unwrap();
    let f = t.path().join("a.cpio");
    std::fs::write(&f, a.to_bytes()).unwrap();
    let root = t.path().join("x");
    std::fs::create_dir(&root).unwrap();
    peer_ok(
        "cpio",
        "cpio",
        &[
            "-idmu",
            "--no-absolute-filenames",
            "-F",
            f.to_str().unwrap(),
        ],
        Some(&root),
    );
    for (path, e) in a.entries() {
        let p = root.join(path);
        let m = std::fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("{path}: {e}"));
        match &e.kind {
            Kind::Dir => assert!(m.is_dir(), "{path}"),
            Kind::File(d) => assert_eq!(&std::fs::read(&p).unwrap(), d, "{path}"),
            Kind::Symlink(target) => {
                assert_eq!(std::fs::read_link(&p).unwrap(), Path::new(target), "{path}")
            }
            Kind::CharDev { major, minor } => {
                assert!(m.file_type().is_char_device(), "{path}");
                let rdev = m.rdev();
                assert_eq!(
                    (libc::major(rdev), libc::minor(rdev)),
                    (*major, *minor),
                    "{path}"
                );
            }
        }
        if !matches!(e.kind, Kind::Symlink(_)) {
            assert_eq!(m.permissions().mode() & 0o7777, e.perm, "{path} mode");
        }
        if matches!(e.kind, Kind::File(_)) {
            assert_eq!(m.mtime(), 0, "{path} mtime");
        }
    }
}

#[test]
fn zstd_and_gzip_accept_the_compressed_forms() {
    let cpio = sample().to_bytes();
    let t = tempfile::tempdir().unwrap();
    let z = t.path().join("a.cpio.zst");
    std::fs::write(&z, compress(&cpio, Compression::Zstd).unwrap()).unwrap();
    peer_ok("zstd", "zstd", &["-q", "-t", z.to_str().unwrap()], None);
    let o = peer("zstd", "zstd", &["-q", "-dc", z.to_str().unwrap()], None);
    assert_eq!(o.stdout, cpio);
    let g = t.path().join("a.cpio.gz");
    std::fs::write(&g, compress(&cpio, Compression::Gzip).unwrap()).unwrap();
    peer_ok("gzip", "gzip", &["-t", g.to_str().unwrap()], None);
    let o = peer("gzip", "gzip", &["-dc", g.to_str().unwrap()], None);
    assert_eq!(o.stdout, cpio);
}

#[test]
fn gnu_cpio_archive_parses_with_our_reader() {
    // The other direction: an archive GNU cpio wrote (newc) reads back with our parser.
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::write(src.join("d/f"), b"hello").unwrap();
    std::fs::set_permissions(src.join("d/f"), std::fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::symlink("d/f", src.join("l")).unwrap();
    let script = "printf 'd\\nd/f\\nl\\n' | cpio -o -H newc --quiet > ../out.cpio";
    peer_ok("sh", "dash", &["-c", script], Some(&src));
    let a =
        basalt_initramfs::cpio::parse(&std::fs::read(t.path().join("out.cpio")).unwrap()).unwrap();
    assert_eq!(a.get("d/f").unwrap().kind, Kind::File(b"hello".to_vec()));
    assert_eq!(a.get("d/f").unwrap().perm, 0o640);
    assert_eq!(a.get("l").unwrap().kind, Kind::Symlink("d/f".into()));
    assert_eq!(a.get("d").unwrap().kind, Kind::Dir);
}
