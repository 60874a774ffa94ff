//! First boot on a blank root partition, against the real e2fsprogs (package `e2fsprogs`)
//! and GNU cpio (package `cpio`): the mke2fs closure packed by the builder runs from the
//! extracted archive, and `ensure_filesystem` — what basalt-init runs on the root partition —
//! formats a zeroed image only, as `dumpe2fs`/`e2fsck` confirm.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use basalt_initramfs::builder::{build_with, BuildSpec, Compression, Extras};
use basalt_initramfs::reason::Reason;
use basalt_initramfs::rootfs::{self, RootFs, MKFS_TIMEOUT};
use basalt_initramfs::Error;
use common::{peer, peer_ok};

const E2FS: &str = "e2fsprogs";

/// The host's mke2fs (the peer under test); fails with the package name if absent.
fn host_mke2fs() -> PathBuf {
    let p = PathBuf::from("/sbin/mke2fs");
    assert!(
        p.is_file(),
        "no /sbin/mke2fs: install the Debian package {E2FS}"
    );
    p
}

fn zeroed(dir: &Path, mib: u64) -> PathBuf {
    let p = dir.join("root.img");
    let f = std::fs::File::create(&p).expect("creating the image file");
    f.set_len(mib << 20).expect("sizing the image file");
    p
}

fn dumpe2fs(img: &Path) -> String {
    let img = img.to_str().expect("temp paths are UTF-8");
    peer_ok("dumpe2fs", E2FS, &["-h", img], None)
}

fn field<'a>(dump: &'a str, name: &str) -> &'a str {
    dump.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("dumpe2fs has no {name:?}:\n{dump}"))
        .trim()
}

#[test]
fn blank_image_gets_ext4_and_a_formatted_one_is_never_formatted_again() {
    let t = tempfile::tempdir().unwrap();
    let img = zeroed(t.path(), 64);
    let mut logged = false;
    let r = rootfs::ensure_filesystem(&img, &host_mke2fs(), MKFS_TIMEOUT, || logged = true);
    assert_eq!(r.unwrap(), RootFs::Created);
    assert!(logged);

    let dump = dumpe2fs(&img);
    assert_eq!(field(&dump, "Filesystem volume name"), rootfs::ROOT_LABEL);
    let features = field(&dump, "Filesystem features");
    for f in ["has_journal", "extent", "64bit", "metadata_csum"] {
        assert!(
            features.split_whitespace().any(|x| x == f),
            "{f} not in {features}"
        );
    }
    let fsck = peer("e2fsck", E2FS, &["-n", "-f", img.to_str().unwrap()], None);
    assert!(fsck.status.success(), "e2fsck: {fsck:?}");

    // Second boot: present, same UUID (not reformatted), before_mkfs not called.
    let uuid = field(&dump, "Filesystem UUID").to_owned();
    let r = rootfs::ensure_filesystem(&img, Path::new("/nonexistent/mke2fs"), MKFS_TIMEOUT, || {
        panic!("must not format")
    });
    assert_eq!(r.unwrap(), RootFs::Present);
    assert_eq!(field(&dumpe2fs(&img), "Filesystem UUID"), uuid);
}

#[test]
fn corrupted_ext4_is_left_alone_and_garbage_is_refused_untouched() {
    let t = tempfile::tempdir().unwrap();
    let img = zeroed(t.path(), 16);
    peer_ok(
        "mke2fs",
        E2FS,
        &["-q", "-F", "-t", "ext4", img.to_str().unwrap()],
        None,
    );
    // Corrupt the superblock except its magic: e2fsck must object, we must not reformat.
    let mut bytes = std::fs::read(&img).unwrap();
    for b in &mut bytes[1024..1024 + 0x38] {
        *b ^= 0x5a;
    }
    std::fs::write(&img, &bytes).unwrap();
    let fsck = peer("e2fsck", E2FS, &["-n", img.to_str().unwrap()], None);
    assert!(
        !fsck.status.success(),
        "the corruption went unnoticed by e2fsck"
    );
    let r = rootfs::ensure_filesystem(&img, &host_mke2fs(), MKFS_TIMEOUT, || {
        panic!("must not format")
    });
    assert_eq!(r.unwrap(), RootFs::Present);
    assert_eq!(std::fs::read(&img).unwrap(), bytes);

    // An xfs-looking and a wipefs'd-looking partition: refused, not a byte changed.
    for (what, off, magic) in [
        ("xfs", 0usize, &b"XFSB"[..]),
        ("stray", 700_000, &[1u8][..]),
    ] {
        let img = zeroed(t.path(), 2);
        let mut b = std::fs::read(&img).unwrap();
        b[off..off + magic.len()].copy_from_slice(magic);
        std::fs::write(&img, &b).unwrap();
        let err = rootfs::ensure_filesystem(&img, &host_mke2fs(), MKFS_TIMEOUT, || {
            panic!("must not format")
        })
        .unwrap_err();
        assert!(
            matches!(err, Error::RootUnrecognised { .. }),
            "{what}: {err}"
        );
        assert_eq!(
            Reason::of(&err, Reason::MountRoot),
            Reason::RootUnrecognised
        );
        assert_eq!(std::fs::read(&img).unwrap(), b, "{what}");
    }
}

#[test]
fn mkfs_failures_are_mkfs_root() {
    let t = tempfile::tempdir().unwrap();
    let img = zeroed(t.path(), 8);
    // No mke2fs in the initramfs.
    let err = rootfs::ensure_filesystem(&img, &t.path().join("no-mke2fs"), MKFS_TIMEOUT, || ())
        .unwrap_err();
    assert_eq!(
        Reason::of(&err, Reason::MountRoot),
        Reason::MkfsRoot,
        "{err}"
    );
    // mke2fs refuses (a size it cannot use) → its message is carried.
    let tiny = t.path().join("tiny.img");
    std::fs::write(&tiny, [0u8; 4096]).unwrap();
    let err = rootfs::make_ext4(&host_mke2fs(), &tiny, MKFS_TIMEOUT).unwrap_err();
    assert!(err.to_string().contains("exited with"), "{err}");
    // A hung mke2fs is killed at the timeout.
    let hang = t.path().join("hang.sh");
    std::fs::write(&hang, "#!/bin/sh\nexec sleep 600\n").unwrap();
    std::fs::set_permissions(&hang, std::fs::Permissions::from_mode(0o755)).unwrap();
    let err = rootfs::make_ext4(&hang, &img, Duration::from_secs(1)).unwrap_err();
    assert!(err.to_string().contains("killed"), "{err}");
}

/// The builder's `--with-binary /sbin/mke2fs` closure is complete: extracted with cpio, its
/// mke2fs runs with only the archive's loader and libraries, and formats an image.
#[test]
fn packed_mke2fs_runs_from_the_extracted_archive() {
    let t = tempfile::tempdir().unwrap();
    let kdir = t.path().join("k");
    std::fs::create_dir_all(kdir.join("lib/modules/1.0")).unwrap();
    std::fs::write(kdir.join("lib/modules/1.0/modules.dep"), "").unwrap();
    std::fs::write(t.path().join("init"), b"\x7fELF fake").unwrap();
    let spec = BuildSpec {
        init: t.path().join("init"),
        kernel_dir: kdir,
        kver: "1.0".into(),
        modules: vec![],
        optional_modules: vec![],
        trust: None,
        compression: Compression::None,
    };
    let extras = Extras {
        binaries: vec![host_mke2fs()],
        binary_root: None,
        policy: None,
    };
    let built = build_with(&spec, &extras).unwrap();
    assert!(built
        .binaries
        .iter()
        .any(|(f, _)| f.path == Path::new("/lib64/ld-linux-x86-64.so.2")));
    let cpio_file = t.path().join("initrd.cpio");
    std::fs::write(&cpio_file, &built.bytes).unwrap();
    let root = t.path().join("x");
    std::fs::create_dir(&root).unwrap();
    peer_ok(
        "cpio",
        "cpio",
        &[
            "-idm",
            "--no-absolute-filenames",
            "-F",
            cpio_file.to_str().unwrap(),
        ],
        Some(&root),
    );

    // 1. The archive's own loader, searching only the archive's library directory.
    let r = root.to_str().unwrap();
    let out = peer(
        &format!("{r}/lib64/ld-linux-x86-64.so.2"),
        "libc6 (host loader copied into the archive)",
        &[
            "--inhibit-cache",
            "--library-path",
            &format!("{r}/lib/x86_64-linux-gnu"),
            &format!("{r}/sbin/mke2fs"),
            "-V",
        ],
        None,
    );
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && text.contains("mke2fs"), "{out:?}");

    // 2. chroot: nothing of the host is visible; the loader must find every library at the
    //    archive's paths by its built-in search path. Format an image inside the chroot.
    let img = zeroed(&root, 32);
    peer_ok(
        "chroot",
        "coreutils",
        &[
            r,
            "/sbin/mke2fs",
            "-t",
            "ext4",
            "-L",
            rootfs::ROOT_LABEL,
            "-q",
            "-F",
            "/root.img",
        ],
        None,
    );
    assert_eq!(
        field(&dumpe2fs(&img), "Filesystem volume name"),
        rootfs::ROOT_LABEL
    );
    let fsck = peer("e2fsck", E2FS, &["-n", "-f", img.to_str().unwrap()], None);
    assert!(fsck.status.success(), "e2fsck: {fsck:?}");
}
