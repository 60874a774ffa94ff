//! The initramfs builder: `basalt-init` as `/init`, the directory skeleton, `/dev/console`,
//! the trust root, the boot policy, the module list and exactly the kernel modules needed (with their
//! dependencies from `modules.dep`), as a reproducible cpio, compressed.
//!
//! Same inputs, same bytes: the cpio is reproducible (see [`crate::cpio`]), zstd runs
//! single-threaded at a fixed level, gzip writes mtime 0 and OS "unknown" in its header.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::cpio::Archive;
use crate::elf::{closure, ClosureFile, Role};
use crate::error::{Error, Result};
use crate::modules::{render_module_list, ModuleListEntry, ModulesDep, Resolution};

pub use crate::policy::{BootPolicy, POLICY_PATH};
pub use crate::usrsig::TRUST_PATH;
/// zstd level: 19 is what Debian's initramfs-tools uses; the kernel decompresses it fine.
const ZSTD_LEVEL: i32 = 19;

/// How the cpio is compressed. The Debian kernel has `CONFIG_RD_ZSTD` and `CONFIG_RD_GZIP`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// zstd, level 19.
    #[default]
    Zstd,
    /// gzip (deflate, best compression).
    Gzip,
    /// Plain cpio.
    None,
}

impl Compression {
    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Zstd => "zstd",
            Self::Gzip => "gzip",
            Self::None => "none",
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Compression {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "zstd" => Ok(Self::Zstd),
            "gzip" => Ok(Self::Gzip),
            "none" => Ok(Self::None),
            _ => Err(format!("unknown compression {s:?} (zstd, gzip or none)")),
        }
    }
}

/// Everything an initramfs is built from.
#[derive(Debug, Clone)]
pub struct BuildSpec {
    /// The `basalt-init` binary (statically linked).
    pub init: PathBuf,
    /// Root of the kernel tree (holds `lib/modules/<kver>` or `usr/lib/modules/<kver>`).
    pub kernel_dir: PathBuf,
    /// Kernel version (`uname -r` of the guest kernel).
    pub kver: String,
    /// Modules that must load.
    pub modules: Vec<String>,
    /// Modules whose absence or load failure is tolerated.
    pub optional_modules: Vec<String>,
    /// The trust root (JSON) to install as [`TRUST_PATH`], if any.
    pub trust: Option<PathBuf>,
    /// Output compression.
    pub compression: Compression,
}

/// What goes into the initramfs beyond a [`BuildSpec`] (a separate struct so that existing
/// `BuildSpec` literals stay valid).
#[derive(Debug, Clone, Default)]
pub struct Extras {
    /// Host executables (absolute paths, e.g. `/sbin/mke2fs`), installed at the same paths
    /// together with their ELF interpreter and shared libraries ([`crate::elf::closure`]).
    pub binaries: Vec<PathBuf>,
    /// The tree the binaries and libraries are read from; `None` = the host (`/`).
    pub binary_root: Option<PathBuf>,
    /// The boot policy to install as [`POLICY_PATH`] (OS name, version floor, whether
    /// options that weaken verification are honoured); `None` = no file, which `basalt-init`
    /// treats as "nothing checked, test options refused".
    pub policy: Option<BootPolicy>,
}

/// A built initramfs.
#[derive(Debug, Clone)]
pub struct Built {
    /// The compressed archive.
    pub bytes: Vec<u8>,
    /// Size of the uncompressed cpio.
    pub cpio_len: usize,
    /// The module resolution (load order, built-ins, skipped optional ones).
    pub resolution: Resolution,
    /// Total bytes of module files included.
    pub module_bytes: usize,
    /// The extra executables, interpreters and libraries included, with their sizes.
    pub binaries: Vec<(ClosureFile, usize)>,
}

/// Find `lib/modules/<kver>` (or the merged-/usr location) under a kernel tree.
pub fn modules_dir(kernel_dir: &Path, kver: &str) -> Result<PathBuf> {
    for base in ["lib/modules", "usr/lib/modules"] {
        let d = kernel_dir.join(base).join(kver);
        if d.join("modules.dep").is_file() {
            return Ok(d);
        }
    }
    Err(Error::KernelModulesDirMissing {
        kernel_dir: kernel_dir.to_owned(),
        kver: kver.to_owned(),
    })
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::ReadInput {
        path: path.to_owned(),
        source,
    })
}

/// Build the cpio archive (uncompressed) and the module resolution.
pub fn build_archive(spec: &BuildSpec) -> Result<(Archive, Resolution, usize)> {
    let mut a = Archive::new();
    a.add_file("init", 0o755, read(&spec.init)?)?;
    for d in ["dev", "proc", "sys", "run", "sysroot", "tmp", "etc/basalt"] {
        a.add_dir(d, 0o755)?;
    }
    // The kernel opens /dev/console for init's stdio before init can mount devtmpfs.
    a.add_char_dev("dev/console", 0o600, 5, 1)?;

    let mdir = modules_dir(&spec.kernel_dir, &spec.kver)?;
    let dep = ModulesDep::load(&mdir)?;
    let resolution = dep.resolve(&spec.modules, &spec.optional_modules)?;
    let mut list = Vec::new();
    let mut module_bytes = 0;
    for m in &resolution.modules {
        let data = std::fs::read(mdir.join(&m.path)).map_err(|source| Error::ReadKernelTree {
            path: mdir.join(&m.path),
            source,
        })?;
        module_bytes += data.len();
        let inside = format!("/lib/modules/{}/{}", spec.kver, m.path);
        a.add_file(&inside, 0o644, data)?;
        list.push(ModuleListEntry {
            path: inside,
            optional: m.optional,
            wave: m.wave,
        });
    }
    a.add_file(
        crate::modules::MODULE_LIST_PATH,
        0o644,
        render_module_list(&list).into_bytes(),
    )?;
    if let Some(trust) = &spec.trust {
        a.add_file(TRUST_PATH, 0o644, read(trust)?)?;
    }
    Ok((a, resolution, module_bytes))
}

/// Add executables with their shared-library closure to `archive`, each at its absolute
/// path (read from under `root`, symlinks followed). Executables and the interpreter get mode
/// 0755, libraries 0644. Returns what was added, with sizes.
pub fn add_binaries(
    archive: &mut Archive,
    root: &Path,
    binaries: &[PathBuf],
) -> Result<Vec<(ClosureFile, usize)>> {
    let mut added = Vec::new();
    for f in closure(root, binaries)? {
        let host = root.join(f.path.strip_prefix("/").unwrap_or(&f.path));
        let data = read(&host)?;
        let perm = match f.role {
            Role::Binary | Role::Interpreter => 0o755,
            Role::Library => 0o644,
        };
        let len = data.len();
        archive.add_file(&f.path.to_string_lossy(), perm, data)?;
        added.push((f, len));
    }
    Ok(added)
}

/// Compress a cpio archive.
pub fn compress(cpio: &[u8], compression: Compression) -> Result<Vec<u8>> {
    let err = |source| Error::Compress {
        compression: compression.name(),
        source,
    };
    match compression {
        Compression::None => Ok(cpio.to_vec()),
        Compression::Zstd => {
            let mut enc = zstd::stream::Encoder::new(Vec::new(), ZSTD_LEVEL).map_err(err)?;
            // Record the size and a checksum: `zstd -t` then verifies the content.
            enc.include_contentsize(true).map_err(err)?;
            enc.set_pledged_src_size(Some(cpio.len() as u64))
                .map_err(err)?;
            enc.include_checksum(true).map_err(err)?;
            enc.write_all(cpio).map_err(err)?;
            enc.finish().map_err(err)
        }
        Compression::Gzip => {
            let mut enc = flate2::GzBuilder::new()
                .mtime(0)
                .operating_system(255)
                .write(Vec::new(), flate2::Compression::best());
            enc.write_all(cpio).map_err(err)?;
            enc.finish().map_err(err)
        }
    }
}

/// Build the compressed initramfs.
pub fn build(spec: &BuildSpec) -> Result<Built> {
    build_with(spec, &Extras::default())
}

/// Build the compressed initramfs with [`Extras`] (e.g. `mke2fs` for first boot on a blank
/// root partition).
pub fn build_with(spec: &BuildSpec, extras: &Extras) -> Result<Built> {
    let (mut archive, resolution, module_bytes) = build_archive(spec)?;
    let root = extras.binary_root.as_deref().unwrap_or(Path::new("/"));
    let binaries = add_binaries(&mut archive, root, &extras.binaries)?;
    if let Some(policy) = &extras.policy {
        archive.add_file(POLICY_PATH, 0o644, policy.render().into_bytes())?;
    }
    let cpio = archive.to_bytes();
    let bytes = compress(&cpio, spec.compression)?;
    Ok(Built {
        bytes,
        cpio_len: cpio.len(),
        resolution,
        module_bytes,
        binaries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kernel tree with a tiny modules.dep and fake module files.
    fn fake_tree(dir: &Path) -> PathBuf {
        let m = dir.join("lib/modules/9.9.9-test");
        std::fs::create_dir_all(m.join("kernel/a")).unwrap();
        std::fs::write(
            m.join("modules.dep"),
            "kernel/a/base.ko:\nkernel/a/top-mod.ko: kernel/a/base.ko\nkernel/a/extra.ko:\n",
        )
        .unwrap();
        std::fs::write(m.join("modules.builtin"), "kernel/fs/ext4/ext4.ko\n").unwrap();
        for f in ["base.ko", "top-mod.ko", "extra.ko"] {
            std::fs::write(m.join("kernel/a").join(f), format!("module {f}")).unwrap();
        }
        std::fs::write(dir.join("init"), b"\x7fELF fake init").unwrap();
        std::fs::write(dir.join("trust.json"), b"{}").unwrap();
        dir.to_owned()
    }

    fn spec(dir: &Path, compression: Compression) -> BuildSpec {
        BuildSpec {
            init: dir.join("init"),
            kernel_dir: dir.to_owned(),
            kver: "9.9.9-test".into(),
            modules: vec!["top_mod".into(), "ext4".into()],
            optional_modules: vec!["extra".into(), "absent".into()],
            trust: Some(dir.join("trust.json")),
            compression,
        }
    }

    #[test]
    fn archive_has_init_skeleton_modules_and_list() {
        let t = tempfile::tempdir().unwrap();
        let dir = fake_tree(t.path());
        let (a, res, bytes) = build_archive(&spec(&dir, Compression::None)).unwrap();
        let expected: usize = ["base.ko", "top-mod.ko", "extra.ko"]
            .iter()
            .map(|f| format!("module {f}").len())
            .sum();
        assert_eq!(bytes, expected);
        assert_eq!(res.builtin, ["ext4"]);
        assert_eq!(res.missing_optional, ["absent"]);
        let init = a.get("init").unwrap();
        assert_eq!(init.perm, 0o755);
        assert!(matches!(
            a.get("dev/console").unwrap().kind,
            crate::cpio::Kind::CharDev { major: 5, minor: 1 }
        ));
        for d in ["proc", "sys", "run", "sysroot", "dev", "tmp"] {
            assert_eq!(a.get(d).unwrap().kind, crate::cpio::Kind::Dir, "{d}");
        }
        let list = match &a.get(crate::modules::MODULE_LIST_PATH).unwrap().kind {
            crate::cpio::Kind::File(d) => String::from_utf8(d.clone()).unwrap(),
            _ => panic!("module list is not a file"),
        };
        let parsed = crate::modules::parse_module_list(&list).unwrap();
        let paths: Vec<(&str, bool)> = parsed
            .iter()
            .map(|e| (e.path.as_str(), e.optional))
            .collect();
        assert_eq!(
            paths,
            [
                ("/lib/modules/9.9.9-test/kernel/a/base.ko", false),
                ("/lib/modules/9.9.9-test/kernel/a/top-mod.ko", false),
                ("/lib/modules/9.9.9-test/kernel/a/extra.ko", true),
            ]
        );
        for (p, _) in paths {
            assert!(a.get(p).is_some(), "{p} missing from the archive");
        }
        assert!(a.get(TRUST_PATH).is_some());
    }

    #[test]
    fn policy_file_is_packed_only_when_given() {
        let t = tempfile::tempdir().unwrap();
        let dir = fake_tree(t.path());
        let s = spec(&dir, Compression::None);
        let without = build_with(&s, &Extras::default()).unwrap();
        let a = crate::cpio::parse(&without.bytes).unwrap();
        assert!(a.get(POLICY_PATH).is_none());
        let policy = BootPolicy {
            os: Some("basalt".into()),
            min_usr_version: Some("2.0.0".parse().unwrap()),
            test_options: false,
        };
        let extras = Extras {
            policy: Some(policy.clone()),
            ..Extras::default()
        };
        let a = crate::cpio::parse(&build_with(&s, &extras).unwrap().bytes).unwrap();
        let entry = a.get(POLICY_PATH).unwrap();
        assert_eq!(entry.perm, 0o644);
        let crate::cpio::Kind::File(text) = &entry.kind else {
            panic!("policy is not a file");
        };
        assert_eq!(
            BootPolicy::parse(std::str::from_utf8(text).unwrap()).unwrap(),
            policy
        );
    }

    #[test]
    fn missing_kernel_tree_and_module() {
        let t = tempfile::tempdir().unwrap();
        let dir = fake_tree(t.path());
        let mut s = spec(&dir, Compression::None);
        s.kver = "1.0".into();
        assert!(matches!(
            build(&s),
            Err(Error::KernelModulesDirMissing { .. })
        ));
        let mut s = spec(&dir, Compression::None);
        s.modules.push("nvme".into());
        assert!(matches!(build(&s), Err(Error::ModuleNotFound { name, .. }) if name == "nvme"));
    }

    #[test]
    fn same_inputs_same_bytes() {
        let t = tempfile::tempdir().unwrap();
        let dir = fake_tree(t.path());
        for c in [Compression::None, Compression::Zstd, Compression::Gzip] {
            let a = build(&spec(&dir, c)).unwrap();
            let b = build(&spec(&dir, c)).unwrap();
            assert_eq!(a.bytes, b.bytes, "{c}");
        }
    }

    #[test]
    fn extra_binaries_come_with_their_closure_reproducibly() {
        use crate::elf::tests::tiny_elf;
        let t = tempfile::tempdir().unwrap();
        let dir = fake_tree(t.path());
        let host = t.path().join("host");
        let w = |p: &str, b: Vec<u8>| {
            let p = host.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b).unwrap();
        };
        w(
            "sbin/mkfs",
            tiny_elf(Some("/lib64/ld.so"), &["libx.so.1"], None),
        );
        w("lib64/ld.so", tiny_elf(None, &[], None));
        w("lib/x86_64-linux-gnu/libx.so.1", tiny_elf(None, &[], None));
        let extras = Extras {
            binaries: vec!["/sbin/mkfs".into()],
            binary_root: Some(host.clone()),
            policy: None,
        };
        let s = spec(&dir, Compression::None);
        let built = build_with(&s, &extras).unwrap();
        let a = crate::cpio::parse(&built.bytes).unwrap();
        for (p, perm) in [
            ("sbin/mkfs", 0o755),
            ("lib64/ld.so", 0o755),
            ("lib/x86_64-linux-gnu/libx.so.1", 0o644),
        ] {
            assert_eq!(a.get(p).map(|e| e.perm), Some(perm), "{p}");
        }
        assert!(a.get("init").is_some());
        assert_eq!(built.binaries.len(), 3);
        assert_eq!(build_with(&s, &extras).unwrap().bytes, built.bytes);
        // Without extras: exactly the old archive.
        assert_eq!(
            build(&s).unwrap().bytes,
            build_archive(&s).unwrap().0.to_bytes()
        );
    }

    #[test]
    fn compression_round_trips() {
        let data: Vec<u8> = (0..100_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let z = compress(&data, Compression::Zstd).unwrap();
        assert_eq!(zstd::decode_all(&z[..]).unwrap(), data);
        let g = compress(&data, Compression::Gzip).unwrap();
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&g[..]), &mut out).unwrap();
        assert_eq!(out, data);
        assert_eq!("gzip".parse::<Compression>().unwrap(), Compression::Gzip);
        assert!("xz".parse::<Compression>().is_err());
    }
}
