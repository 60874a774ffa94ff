//! Kernel modules: resolving the modules an initramfs needs from `modules.dep` (build side)
//! and the module list file `basalt-init` loads them from (both sides).
//!
//! The list file, `/etc/basalt/modules` in the initramfs, has one module per line in load
//! order, `#` comments allowed:
//!
//! ```text
//! /lib/modules/6.1.0-57-amd64/kernel/drivers/virtio/virtio_ring.ko
//! optional /lib/modules/6.1.0-57-amd64/kernel/arch/x86/crypto/sha256-ssse3.ko
//! ```
//!
//! Compressed modules (`.ko.xz`, `.ko.zst`, `.ko.gz`) are stored as they are; `basalt-init`
//! asks the kernel to decompress them (`MODULE_INIT_COMPRESSED_FILE`, which needs
//! `CONFIG_MODULE_DECOMPRESS`). Debian 12 ships plain `.ko`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Path of the module list inside the initramfs.
pub const MODULE_LIST_PATH: &str = "/etc/basalt/modules";

/// File name suffixes of kernel modules, longest first.
const MODULE_SUFFIXES: &[&str] = &[".ko.zst", ".ko.xz", ".ko.gz", ".ko"];

/// The kernel's name of a module file: base name without the `.ko*` suffix, `-` read as `_`
/// (the kernel treats both as the same character in module names).
pub fn module_name(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    let stem = MODULE_SUFFIXES
        .iter()
        .find_map(|s| base.strip_suffix(s))
        .unwrap_or(base);
    normalize(stem)
}

fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// Whether the module file is compressed (the kernel must decompress it).
pub fn is_compressed(path: &str) -> bool {
    !path.ends_with(".ko")
}

/// The parsed `modules.dep` (and `modules.builtin`) of one kernel.
#[derive(Debug, Clone, Default)]
pub struct ModulesDep {
    /// Module path (relative to `lib/modules/<kver>`) → its dependencies (paths).
    deps: BTreeMap<String, Vec<String>>,
    /// Normalised module name → path.
    by_name: BTreeMap<String, String>,
    /// Normalised names of built-in modules.
    builtin: BTreeSet<String>,
    /// Where modules.dep came from (for error messages).
    source: PathBuf,
}

/// One module to put in the initramfs, in load order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedModule {
    /// The kernel's module name.
    pub name: String,
    /// Path relative to `lib/modules/<kver>` (as in modules.dep).
    pub path: String,
    /// Whether a load failure is tolerated (true only if nothing required needs it).
    pub optional: bool,
}

/// What [`ModulesDep::resolve`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolution {
    /// Modules in load order: every module after its dependencies, each once.
    pub modules: Vec<ResolvedModule>,
    /// Requested modules that are built into the kernel (nothing to load).
    pub builtin: Vec<String>,
    /// Optional modules the kernel tree does not have (skipped).
    pub missing_optional: Vec<String>,
}

impl ModulesDep {
    /// Parse `modules.dep` text; `source` is only used in messages. `builtin` is the text of
    /// `modules.builtin` (may be empty).
    pub fn parse(text: &str, builtin: &str, source: &Path) -> Result<Self> {
        let mut deps = BTreeMap::new();
        let mut by_name = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim_end();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = || Error::ModulesDepParse {
                path: source.to_owned(),
                line: i + 1,
                content: line.to_owned(),
            };
            let (module, rest) = line.split_once(':').ok_or_else(bad)?;
            if module.is_empty() || module.contains(char::is_whitespace) {
                return Err(bad());
            }
            let list: Vec<String> = rest.split_whitespace().map(str::to_owned).collect();
            by_name.insert(module_name(module), module.to_owned());
            deps.insert(module.to_owned(), list);
        }
        let builtin = builtin
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(module_name)
            .collect();
        Ok(Self {
            deps,
            by_name,
            builtin,
            source: source.to_owned(),
        })
    }

    /// Read `modules.dep` and `modules.builtin` (if present) from a `lib/modules/<kver>` dir.
    pub fn load(modules_dir: &Path) -> Result<Self> {
        let dep_path = modules_dir.join("modules.dep");
        let text = std::fs::read_to_string(&dep_path).map_err(|source| Error::ReadKernelTree {
            path: dep_path.clone(),
            source,
        })?;
        let builtin_path = modules_dir.join("modules.builtin");
        let builtin = match std::fs::read_to_string(&builtin_path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => {
                return Err(Error::ReadKernelTree {
                    path: builtin_path,
                    source,
                })
            }
        };
        Self::parse(&text, &builtin, &dep_path)
    }

    /// The modules.dep path of a module by name (`-`/`_` equivalent), if present.
    pub fn path_of(&self, name: &str) -> Option<&str> {
        self.by_name.get(&normalize(name)).map(String::as_str)
    }

    /// Resolve requested modules to a load order: a depth-first walk over modules.dep in
    /// request order (required ones first, then optional), each module after its
    /// dependencies, each once. A missing required module is an error naming it; a missing
    /// optional one is reported in [`Resolution::missing_optional`]; built-in ones in
    /// [`Resolution::builtin`].
    pub fn resolve(&self, required: &[String], optional: &[String]) -> Result<Resolution> {
        let mut res = Resolution::default();
        let mut placed = BTreeSet::new();
        let requests = required
            .iter()
            .map(|n| (n, false))
            .chain(optional.iter().map(|n| (n, true)));
        for (name, is_optional) in requests {
            let Some(path) = self.path_of(name) else {
                if self.builtin.contains(&normalize(name)) {
                    res.builtin.push(name.clone());
                } else if is_optional {
                    res.missing_optional.push(name.clone());
                } else {
                    return Err(Error::ModuleNotFound {
                        name: name.clone(),
                        modules_dep: self.source.clone(),
                    });
                }
                continue;
            };
            let mut visiting = BTreeSet::new();
            self.visit(
                path,
                is_optional,
                &mut visiting,
                &mut placed,
                &mut res.modules,
            )?;
        }
        Ok(res)
    }

    fn visit(
        &self,
        path: &str,
        optional: bool,
        visiting: &mut BTreeSet<String>,
        placed: &mut BTreeSet<String>,
        out: &mut Vec<ResolvedModule>,
    ) -> Result<()> {
        // Required requests are walked before optional ones, so a module already placed keeps
        // the strongest requirement it can have.
        if placed.contains(path) {
            return Ok(());
        }
        if !visiting.insert(path.to_owned()) {
            return Err(Error::ModuleDependencyCycle {
                module: path.to_owned(),
            });
        }
        let deps = self
            .deps
            .get(path)
            .ok_or_else(|| Error::ModuleDependencyCycle {
                module: path.to_owned(),
            })?;
        for dep in deps {
            if !self.deps.contains_key(dep) {
                return Err(Error::ModuleDependencyMissing {
                    module: path.to_owned(),
                    dependency: dep.clone(),
                });
            }
            self.visit(dep, optional, visiting, placed, out)?;
        }
        visiting.remove(path);
        placed.insert(path.to_owned());
        out.push(ResolvedModule {
            name: module_name(path),
            path: path.to_owned(),
            optional,
        });
        Ok(())
    }
}

/// One line of the module list: an absolute path inside the initramfs, and whether a failure
/// to load it is tolerated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleListEntry {
    /// Absolute path of the module file inside the initramfs.
    pub path: String,
    /// Load failures are logged, not fatal.
    pub optional: bool,
}

/// Render the module list file.
pub fn render_module_list(entries: &[ModuleListEntry]) -> String {
    let mut s = String::from("# basalt-init loads these kernel modules in this order\n");
    for e in entries {
        if e.optional {
            s.push_str("optional ");
        }
        s.push_str(&e.path);
        s.push('\n');
    }
    s
}

/// Parse the module list file.
pub fn parse_module_list(text: &str) -> Result<Vec<ModuleListEntry>> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (optional, path) = match line.strip_prefix("optional ") {
            Some(p) => (true, p.trim()),
            None => (false, line),
        };
        if !path.starts_with('/') || path.contains(char::is_whitespace) {
            return Err(Error::ModuleListParse {
                line: i + 1,
                content: raw.to_owned(),
            });
        }
        out.push(ModuleListEntry {
            path: path.to_owned(),
            optional,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small modules.dep in the kernel's format, shaped like Debian 12's for the modules
    /// Basalt boots with (dependency lists are the full transitive closure, as depmod writes).
    const FIXTURE: &str = "\
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/md/dm-mod.ko:
kernel/drivers/md/dm-bufio.ko: kernel/drivers/md/dm-mod.ko
kernel/lib/reed_solomon/reed_solomon.ko:
kernel/drivers/md/dm-verity.ko: kernel/drivers/md/dm-bufio.ko kernel/drivers/md/dm-mod.ko kernel/lib/reed_solomon/reed_solomon.ko
kernel/lib/libcrc32c.ko:
kernel/fs/erofs/erofs.ko.zst: kernel/lib/libcrc32c.ko
kernel/arch/x86/crypto/sha256-ssse3.ko:
";
    const BUILTIN: &str = "kernel/fs/ext4/ext4.ko\nkernel/drivers/block/loop.ko\n";

    fn dep() -> ModulesDep {
        ModulesDep::parse(FIXTURE, BUILTIN, Path::new("modules.dep")).unwrap()
    }

    fn names(r: &Resolution) -> Vec<&str> {
        r.modules.iter().map(|m| m.name.as_str()).collect()
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn names_strip_suffix_and_normalise_dashes() {
        assert_eq!(module_name("kernel/drivers/md/dm-verity.ko"), "dm_verity");
        assert_eq!(module_name("kernel/fs/erofs/erofs.ko.zst"), "erofs");
        assert_eq!(module_name("a/b.ko.xz"), "b");
        assert!(is_compressed("a/b.ko.xz"));
        assert!(!is_compressed("a/b.ko"));
    }

    #[test]
    fn deps_come_first_each_once() {
        let r = dep()
            .resolve(&s(&["virtio_blk", "dm-verity", "erofs", "virtio"]), &[])
            .unwrap();
        assert_eq!(
            names(&r),
            [
                "virtio_ring",
                "virtio",
                "virtio_blk",
                "dm_mod",
                "dm_bufio",
                "reed_solomon",
                "dm_verity",
                "libcrc32c",
                "erofs"
            ]
        );
        // Every module comes after everything it depends on.
        let d = dep();
        for (i, m) in r.modules.iter().enumerate() {
            for dp in &d.deps[&m.path] {
                let j = r.modules.iter().position(|x| &x.path == dp).unwrap();
                assert!(j < i, "{} before {}", dp, m.path);
            }
        }
        assert!(r.modules.iter().all(|m| !m.optional));
    }

    #[test]
    fn dm_bufio_depends_on_dm_mod() {
        // Walking dm_verity's list in modules.dep order must still put dm_mod before dm_bufio.
        let r = dep().resolve(&s(&["dm_verity"]), &[]).unwrap();
        let pos = |n: &str| names(&r).iter().position(|x| *x == n).unwrap();
        assert!(pos("dm_mod") < pos("dm_bufio"));
    }

    #[test]
    fn missing_required_module_is_named() {
        let err = dep().resolve(&s(&["virtio_blk", "nvme"]), &[]).unwrap_err();
        assert!(matches!(&err, Error::ModuleNotFound { name, .. } if name == "nvme"));
        assert!(err.to_string().contains("\"nvme\""), "{err}");
    }

    #[test]
    fn optional_and_builtin() {
        let r = dep()
            .resolve(
                &s(&["ext4", "virtio"]),
                &s(&["sha256_ssse3", "nope", "virtio_blk"]),
            )
            .unwrap();
        assert_eq!(r.builtin, ["ext4"]);
        assert_eq!(r.missing_optional, ["nope"]);
        let opt: Vec<(&str, bool)> = r
            .modules
            .iter()
            .map(|m| (m.name.as_str(), m.optional))
            .collect();
        assert_eq!(
            opt,
            [
                ("virtio_ring", false),
                ("virtio", false),
                ("sha256_ssse3", true),
                ("virtio_blk", true)
            ]
        );
    }

    #[test]
    fn cycles_and_dangling_deps_are_errors() {
        let cyc = "a.ko: b.ko\nb.ko: a.ko\n";
        let d = ModulesDep::parse(cyc, "", Path::new("x")).unwrap();
        assert!(matches!(
            d.resolve(&s(&["a"]), &[]),
            Err(Error::ModuleDependencyCycle { .. })
        ));
        let dangling = "a.ko: gone.ko\n";
        let d = ModulesDep::parse(dangling, "", Path::new("x")).unwrap();
        assert!(matches!(
            d.resolve(&s(&["a"]), &[]),
            Err(Error::ModuleDependencyMissing { dependency, .. }) if dependency == "gone.ko"
        ));
    }

    #[test]
    fn malformed_modules_dep_line() {
        let err =
            ModulesDep::parse("a.ko: b.ko\nno colon here\n", "", Path::new("m.dep")).unwrap_err();
        assert!(
            matches!(err, Error::ModulesDepParse { line: 2, .. }),
            "{err}"
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Random DAGs written as depmod does (each line lists the full transitive closure,
        /// in arbitrary order): every resolved module comes after its dependencies, once.
        #[test]
        fn resolution_is_a_topological_order(
            edges in proptest::collection::vec((0usize..12, 0usize..12), 0..30),
            wanted in proptest::collection::vec(0usize..12, 1..6),
        ) {
            let n = 12;
            let mut direct = vec![BTreeSet::new(); n];
            for (a, b) in edges {
                if a > b {
                    direct[a].insert(b); // only to lower indices: acyclic
                }
            }
            let mut closure: Vec<BTreeSet<usize>> = Vec::new();
            for ds in &direct {
                let mut c = BTreeSet::new();
                for &d in ds {
                    c.insert(d);
                    c.extend(closure[d].iter().copied());
                }
                closure.push(c);
            }
            let mut text = String::new();
            for (i, c) in closure.iter().enumerate().rev() {
                let deps: Vec<String> = c.iter().rev().map(|d| format!("k/m{d}.ko")).collect();
                text.push_str(&format!("k/m{i}.ko: {}\n", deps.join(" ")));
            }
            let dep = ModulesDep::parse(&text, "", Path::new("p")).unwrap();
            let req: Vec<String> = wanted.iter().map(|w| format!("m{w}")).collect();
            let r = dep.resolve(&req, &[]).unwrap();
            let pos = |i: usize| r.modules.iter().position(|m| m.name == format!("m{i}"));
            let mut expected = BTreeSet::new();
            for &w in &wanted {
                expected.insert(w);
                expected.extend(closure[w].iter().copied());
            }
            proptest::prop_assert_eq!(r.modules.len(), expected.len());
            for &i in &expected {
                let pi = pos(i).unwrap();
                for &d in &closure[i] {
                    proptest::prop_assert!(pos(d).unwrap() < pi);
                }
            }
        }
    }

    #[test]
    fn module_list_round_trip() {
        let entries = vec![
            ModuleListEntry {
                path: "/lib/modules/v/kernel/a.ko".into(),
                optional: false,
            },
            ModuleListEntry {
                path: "/lib/modules/v/kernel/b-c.ko.zst".into(),
                optional: true,
            },
        ];
        let text = render_module_list(&entries);
        assert_eq!(parse_module_list(&text).unwrap(), entries);
        assert!(parse_module_list("relative/a.ko\n").is_err());
        assert!(parse_module_list("optional\n").is_err());
        assert!(parse_module_list("/a b.ko\n").is_err());
        assert!(parse_module_list("\n# c\n  \n").unwrap().is_empty());
    }
}
