//! The builder against the real Debian kernel tree (modules.dep from `depmod`), with
//! `modprobe --show-depends` (package `kmod`) as the peer for the dependency closure.
//!
//! The kernel is cached in the layout of the `basalt-tests` fetcher
//! (`$BASALT_KERNEL_CACHE` or `<workspace>/build/cache/kernel/<package>/`, holding
//! `lib/modules/<ver>/`); if absent this test prepares the modules part itself (apt-get
//! download, dpkg-deb -x, depmod). Once that fetcher is in the workspace, use it instead.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use basalt_initramfs::builder::{build, BuildSpec, Compression};
use basalt_initramfs::cpio::{self, Kind};
use basalt_initramfs::modules::{module_name, parse_module_list, ModulesDep};
use common::{peer_ok, workspace};

struct Tree {
    root: PathBuf,
    kver: String,
}

/// One fetch per test process, whichever test asks first.
fn kernel_tree() -> &'static Tree {
    static TREE: std::sync::OnceLock<Tree> = std::sync::OnceLock::new();
    TREE.get_or_init(fetch_kernel_tree)
}

fn fetch_kernel_tree() -> Tree {
    let cache = std::env::var_os("BASALT_KERNEL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("build/cache/kernel"));
    let deps = peer_ok("apt-cache", "apt", &["depends", "linux-image-amd64"], None);
    let package = deps
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(str::trim)
        .find(|p| p.starts_with("linux-image-"))
        .expect("apt-cache names the kernel package")
        .to_owned();
    let root = cache.join(&package);
    if find_kver(&root).is_none() {
        std::fs::create_dir_all(&cache).expect("create the kernel cache dir");
        let work = tempfile::Builder::new()
            .prefix(".fetch-initramfs-")
            .tempdir_in(&cache)
            .expect("create a staging dir in the cache");
        peer_ok("apt-get", "apt", &["download", &package], Some(work.path()));
        let deb = std::fs::read_dir(work.path())
            .expect("list the staging dir")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .expect("apt-get downloaded a .deb");
        let unpacked = work.path().join("root");
        peer_ok(
            "dpkg-deb",
            "dpkg",
            &[
                "-x",
                deb.to_str().expect("UTF-8 path"),
                unpacked.to_str().expect("UTF-8 path"),
            ],
            None,
        );
        // Before depmod there is no modules.dep: the release is the one folder.
        let kver = std::fs::read_dir(unpacked.join("lib/modules"))
            .expect("the package has lib/modules")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .next()
            .expect("the package has lib/modules/<ver>");
        let map = unpacked.join(format!("boot/System.map-{kver}"));
        peer_ok(
            "depmod",
            "kmod",
            &[
                "-b",
                unpacked.to_str().expect("UTF-8 path"),
                "-F",
                map.to_str().expect("UTF-8 path"),
                &kver,
            ],
            None,
        );
        // Another process may have won the race; keep whichever is complete.
        let _ = std::fs::rename(&unpacked, &root);
    }
    let kver = find_kver(&root).expect("cached kernel tree has modules.dep");
    Tree { root, kver }
}

fn find_kver(root: &Path) -> Option<String> {
    std::fs::read_dir(root.join("lib/modules"))
        .ok()?
        .flatten()
        .find(|e| e.path().join("modules.dep").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
}

/// What Basalt's initramfs needs on a virtio QEMU guest (docs/ and the environment notes).
const REQUIRED: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "dm-verity",
    "crc32c_generic",
    "erofs",
    "ext4",
];

#[test]
fn closure_matches_modprobe_and_loads_in_dependency_order() {
    let tree = kernel_tree();
    let mdir = tree.root.join("lib/modules").join(&tree.kver);
    let dep = ModulesDep::load(&mdir).unwrap();
    for &name in REQUIRED {
        let ours = dep.resolve(&[name.to_owned()], &[]).unwrap();
        let out = peer_ok(
            "modprobe",
            "kmod",
            &[
                "--show-depends",
                "-d",
                tree.root.to_str().unwrap(),
                "-S",
                &tree.kver,
                name,
            ],
            None,
        );
        let theirs: Vec<String> = out
            .lines()
            .filter_map(|l| l.strip_prefix("insmod "))
            .map(|p| module_name(p.trim()))
            .collect();
        let ours_names: Vec<&str> = ours.modules.iter().map(|m| m.name.as_str()).collect();
        // Every module we load, modprobe loads too (modprobe adds soft dependencies such as
        // crc32c for ext4, which the caller lists explicitly) and both end with the module.
        let theirs_set: BTreeSet<&str> = theirs.iter().map(String::as_str).collect();
        for m in &ours_names {
            assert!(
                theirs_set.contains(m),
                "{name}: we load {m}, modprobe does not: {theirs:?}"
            );
        }
        assert_eq!(
            ours_names.last(),
            theirs.last().map(String::as_str).as_ref(),
            "{name}"
        );
        // The hard closure (modules.dep line) is complete in ours.
        let line = dep.path_of(name).unwrap();
        assert_eq!(ours.modules.last().unwrap().path, line);
    }
    // And for the whole set: each module after its dependencies, each once.
    let all = dep
        .resolve(
            &REQUIRED.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            &[],
        )
        .unwrap();
    let names: Vec<&str> = all.modules.iter().map(|m| m.name.as_str()).collect();
    let unique: BTreeSet<&str> = names.iter().copied().collect();
    assert_eq!(unique.len(), names.len(), "{names:?}");
    for (i, m) in all.modules.iter().enumerate() {
        let own = dep.resolve(std::slice::from_ref(&m.name), &[]).unwrap();
        for d in own.modules.iter().filter(|d| d.name != m.name) {
            let j = names.iter().position(|n| *n == d.name).unwrap();
            assert!(j < i, "{} must load before {}", d.name, m.name);
            assert!(
                all.modules[j].wave < m.wave,
                "{} must load in an earlier wave than {}",
                d.name,
                m.name
            );
        }
    }
    // Debian's modules.softdep, through modules.alias: the crc32c algorithm is loaded a wave
    // before libcrc32c (whose init needs it) and ext4.
    let wave = |n: &str| all.modules.iter().find(|m| m.name == n).map(|m| m.wave);
    let crc = wave("crc32c_generic").expect("crc32c_generic resolved");
    for needs in ["libcrc32c", "ext4", "jbd2"] {
        if let Some(w) = wave(needs) {
            assert!(
                crc < w,
                "crc32c_generic (wave {crc}) before {needs} (wave {w})"
            );
        }
    }
    assert!(
        wave("libcrc32c").is_some(),
        "erofs pulls in libcrc32c: {names:?}"
    );
}

#[test]
fn real_initramfs_is_reproducible_and_complete() {
    let tree = kernel_tree();
    let t = tempfile::tempdir().unwrap();
    let init = t.path().join("basalt-init");
    std::fs::write(&init, b"\x7fELF stand-in for basalt-init").unwrap();
    let spec = BuildSpec {
        init,
        kernel_dir: tree.root.clone(),
        kver: tree.kver.clone(),
        modules: REQUIRED.iter().map(|s| s.to_string()).collect(),
        optional_modules: vec!["sha256-ssse3".into()],
        trust: None,
        compression: Compression::Zstd,
    };
    let a = build(&spec).unwrap();
    let b = build(&spec).unwrap();
    assert_eq!(a.bytes, b.bytes, "two builds differ");
    let f = t.path().join("initrd.img");
    std::fs::write(&f, &a.bytes).unwrap();
    peer_ok("zstd", "zstd", &["-q", "-t", f.to_str().unwrap()], None);
    let cpio_bytes = zstd::decode_all(&a.bytes[..]).unwrap();
    let archive = cpio::parse(&cpio_bytes).unwrap();
    let list = match &archive.get("etc/basalt/modules").unwrap().kind {
        Kind::File(d) => parse_module_list(std::str::from_utf8(d).unwrap()).unwrap(),
        other => panic!("module list is {other:?}"),
    };
    assert_eq!(list.len(), a.resolution.modules.len());
    let mdir = tree.root.join("lib/modules").join(&tree.kver);
    for e in &list {
        let rel = e
            .path
            .strip_prefix(&format!("/lib/modules/{}/", tree.kver))
            .unwrap();
        let inside = match &archive.get(&e.path).unwrap().kind {
            Kind::File(d) => d.clone(),
            other => panic!("{} is {other:?}", e.path),
        };
        assert_eq!(inside, std::fs::read(mdir.join(rel)).unwrap(), "{}", e.path);
    }
    // Exactly the modules of the list, nothing else under lib/modules.
    let files: BTreeSet<&str> = archive
        .entries()
        .filter(|(p, e)| p.starts_with("lib/modules/") && matches!(e.kind, Kind::File(_)))
        .map(|(p, _)| p)
        .collect();
    let listed: BTreeSet<&str> = list
        .iter()
        .map(|e| e.path.trim_start_matches('/'))
        .collect();
    assert_eq!(files, listed);
    let opt: Vec<&str> = list
        .iter()
        .filter(|e| e.optional)
        .map(|e| e.path.as_str())
        .collect();
    assert!(
        opt.len() == 1 && opt[0].ends_with("sha256-ssse3.ko"),
        "{opt:?}"
    );
}
