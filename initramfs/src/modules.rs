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
    /// Normalised module name → the normalised names of the modules that provide its
    /// `modules.softdep` `pre:` entries (a module name, or an alias from `modules.alias`:
    /// `libcrc32c pre: crc32c` → crc32c_generic, crc32c_intel). Soft dependencies never add
    /// a module; they only order the ones resolved (see [`ResolvedModule::wave`]).
    soft_pre: BTreeMap<String, BTreeSet<String>>,
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
    /// 0 for a module without dependencies, else one more than its highest dependency's:
    /// the modules of one wave depend only on earlier waves, so they can load together.
    pub wave: usize,
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
            soft_pre: BTreeMap::new(),
            source: source.to_owned(),
        })
    }

    /// Add the `pre:` soft dependencies of `modules.softdep` text (`softdep MOD pre: A B
    /// post: C`; other lines ignored, as modprobe does), each name resolved to the modules
    /// providing it: the module of that name, else every module `modules.alias` text names
    /// for it (`alias A MOD`).
    pub fn with_softdeps(mut self, softdep: &str, alias: &str) -> Self {
        let mut wanted: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for line in softdep.lines() {
            let mut words = line.split_whitespace();
            if words.next() != Some("softdep") {
                continue;
            }
            let Some(module) = words.next() else { continue };
            let mut pre = false;
            for w in words {
                match w {
                    "pre:" => pre = true,
                    "post:" => pre = false,
                    name if pre => wanted
                        .entry(name.to_owned())
                        .or_default()
                        .push(normalize(module)),
                    _ => {}
                }
            }
        }
        let mut providers: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for line in alias.lines() {
            let mut words = line.split_whitespace();
            if let (Some("alias"), Some(name), Some(module)) =
                (words.next(), words.next(), words.next())
            {
                if wanted.contains_key(name) {
                    providers
                        .entry(name.to_owned())
                        .or_default()
                        .insert(normalize(module));
                }
            }
        }
        for (name, modules) in &wanted {
            let by = if self.by_name.contains_key(&normalize(name)) {
                BTreeSet::from([normalize(name)])
            } else {
                providers.get(name).cloned().unwrap_or_default()
            };
            for m in modules {
                self.soft_pre
                    .entry(m.clone())
                    .or_default()
                    .extend(by.iter().filter(|p| *p != m).cloned());
            }
        }
        self
    }

    /// Read `modules.dep`, and `modules.builtin`, `modules.softdep`, `modules.alias` where
    /// present, from a `lib/modules/<kver>` dir.
    pub fn load(modules_dir: &Path) -> Result<Self> {
        let dep_path = modules_dir.join("modules.dep");
        let text = std::fs::read_to_string(&dep_path).map_err(|source| Error::ReadKernelTree {
            path: dep_path.clone(),
            source,
        })?;
        let optional = |name: &str| -> Result<String> {
            let path = modules_dir.join(name);
            match std::fs::read_to_string(&path) {
                Ok(t) => Ok(t),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
                Err(source) => Err(Error::ReadKernelTree { path, source }),
            }
        };
        let builtin = optional("modules.builtin")?;
        let softdep = optional("modules.softdep")?;
        let alias = if softdep.is_empty() {
            String::new()
        } else {
            optional("modules.alias")?
        };
        Ok(Self::parse(&text, &builtin, &dep_path)?.with_softdeps(&softdep, &alias))
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
        self.assign_waves(&mut res.modules)?;
        Ok(res)
    }

    /// Each module's wave: one more than the highest wave among its dependencies in
    /// `modules` — the hard ones (modules.dep) and the soft `pre:` ones (modules.softdep) —
    /// or 0. The longest path in that graph, found by relaxing at most `n` times; a soft
    /// dependency that closes a cycle is an error naming a module on it.
    fn assign_waves(&self, modules: &mut [ResolvedModule]) -> Result<()> {
        let by_path: BTreeMap<&str, usize> = modules
            .iter()
            .enumerate()
            .map(|(i, m)| (m.path.as_str(), i))
            .collect();
        let by_name: BTreeMap<String, usize> = modules
            .iter()
            .enumerate()
            .map(|(i, m)| (normalize(&m.name), i))
            .collect();
        let before: Vec<Vec<usize>> = modules
            .iter()
            .map(|m| {
                let hard = self
                    .deps
                    .get(&m.path)
                    .into_iter()
                    .flatten()
                    .filter_map(|d| by_path.get(d.as_str()).copied());
                let soft = self
                    .soft_pre
                    .get(&normalize(&m.name))
                    .into_iter()
                    .flatten()
                    .filter_map(|p| by_name.get(p).copied());
                hard.chain(soft).collect()
            })
            .collect();
        let mut waves = vec![0usize; modules.len()];
        for _ in 0..=modules.len() {
            let mut changed = false;
            for (i, deps) in before.iter().enumerate() {
                let w = deps.iter().map(|&d| waves[d] + 1).max().unwrap_or(0);
                if w > waves[i] {
                    waves[i] = w;
                    changed = true;
                }
            }
            if !changed {
                for (m, w) in modules.iter_mut().zip(waves) {
                    m.wave = w;
                }
                return Ok(());
            }
        }
        let stuck = waves
            .iter()
            .enumerate()
            .max_by_key(|(_, w)| **w)
            .map_or(0, |(i, _)| i);
        Err(Error::ModuleDependencyCycle {
            module: modules[stuck].path.clone(),
        })
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
            wave: 0,
        });
        Ok(())
    }
}

/// One line of the module list (`[wave=N ][optional ]/path`): an absolute path inside the
/// initramfs, its load wave, and whether a failure to load it is tolerated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleListEntry {
    /// Absolute path of the module file inside the initramfs.
    pub path: String,
    /// Load failures are logged, not fatal.
    pub optional: bool,
    /// basalt-init loads wave by wave, the modules of one wave at the same time
    /// ([`ResolvedModule::wave`]). A line without `wave=` gets one more than the line
    /// before it: a hand-written list loads one module at a time, in its order.
    pub wave: usize,
}

/// Render the module list file.
pub fn render_module_list(entries: &[ModuleListEntry]) -> String {
    let mut s = String::from(
        "# basalt-init loads these kernel modules wave by wave, a wave's modules together\n",
    );
    for e in entries {
        s.push_str(&format!("wave={} ", e.wave));
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
        let bad = || Error::ModuleListParse {
            line: i + 1,
            content: raw.to_owned(),
        };
        let next = out
            .last()
            .map_or(0, |e: &ModuleListEntry| e.wave.saturating_add(1));
        let (wave, line) = match line.strip_prefix("wave=") {
            Some(rest) => {
                let (n, rest) = rest.split_once(' ').ok_or_else(bad)?;
                if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad());
                }
                (n.parse::<usize>().map_err(|_| bad())?, rest.trim_start())
            }
            None => (next, line),
        };
        let (optional, path) = match line.strip_prefix("optional ") {
            Some(p) => (true, p.trim()),
            None => (false, line),
        };
        if !path.starts_with('/') || path.contains(char::is_whitespace) {
            return Err(bad());
        }
        out.push(ModuleListEntry {
            path: path.to_owned(),
            optional,
            wave,
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

    /// modules.dep says nothing of libcrc32c's need for a crc32c algorithm at init;
    /// modules.softdep does, by alias. Resolved together, the provider loads a wave earlier
    /// (loaded in one wave, the boot failed with ENOENT); soft deps never add modules.
    #[test]
    fn soft_dependencies_order_waves_through_aliases() {
        let text = format!("{FIXTURE}kernel/crypto/crc32c_generic.ko:\nkernel/crypto/other.ko:\n");
        let softdep = "# Soft dependencies\nsoftdep libcrc32c pre: crc32c post: other\n\
                       softdep erofs pre: missing-alias\nsoftdep\nnot a softdep line\n";
        let alias = "alias crc32c crc32c_generic\nalias crc32c crc32c_intel\nalias x other\n";
        let dep = ModulesDep::parse(&text, BUILTIN, Path::new("modules.dep"))
            .unwrap()
            .with_softdeps(softdep, alias);
        let wave = |r: &Resolution, n: &str| r.modules.iter().find(|m| m.name == n).unwrap().wave;
        let r = dep.resolve(&s(&["erofs", "crc32c_generic"]), &[]).unwrap();
        assert_eq!(names(&r), ["libcrc32c", "erofs", "crc32c_generic"]);
        assert_eq!(wave(&r, "crc32c_generic"), 0);
        assert_eq!(wave(&r, "libcrc32c"), 1);
        assert_eq!(wave(&r, "erofs"), 2);
        // Without the provider in the set, nothing is added and nothing waits.
        let r = dep.resolve(&s(&["erofs"]), &[]).unwrap();
        assert_eq!(names(&r), ["libcrc32c", "erofs"]);
        assert_eq!((wave(&r, "libcrc32c"), wave(&r, "erofs")), (0, 1));
        // A module named directly (not an alias) is its own provider; post: is not an order.
        let dep = ModulesDep::parse(&text, "", Path::new("m"))
            .unwrap()
            .with_softdeps(
                "softdep dm-verity pre: reed_solomon\nsoftdep other post: dm_mod\n",
                "",
            );
        let r = dep
            .resolve(&s(&["reed_solomon", "dm-mod", "other"]), &[])
            .unwrap();
        assert_eq!(wave(&r, "other"), 0);
        let r = dep.resolve(&s(&["dm-verity"]), &[]).unwrap();
        assert_eq!(wave(&r, "dm_verity"), 2);
        // A soft dependency closing a cycle is refused, naming a module on it.
        let dep = ModulesDep::parse(&text, "", Path::new("m"))
            .unwrap()
            .with_softdeps("softdep virtio_ring pre: virtio_blk\n", "");
        assert!(matches!(
            dep.resolve(&s(&["virtio_blk"]), &[]),
            Err(Error::ModuleDependencyCycle { .. })
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
            let wave = |i: usize| r.modules[pos(i).unwrap()].wave;
            for &i in &expected {
                let pi = pos(i).unwrap();
                for &d in &closure[i] {
                    proptest::prop_assert!(pos(d).unwrap() < pi);
                    // A module loads in a later wave than everything it needs …
                    proptest::prop_assert!(wave(d) < wave(i));
                }
                // … and as early as that allows.
                let lowest = closure[i].iter().map(|&d| wave(d) + 1).max().unwrap_or(0);
                proptest::prop_assert_eq!(wave(i), lowest);
            }
        }
    }

    #[test]
    fn module_list_round_trip() {
        let entries = vec![
            ModuleListEntry {
                path: "/lib/modules/v/kernel/a.ko".into(),
                optional: false,
                wave: 0,
            },
            ModuleListEntry {
                path: "/lib/modules/v/kernel/d.ko".into(),
                optional: false,
                wave: 0,
            },
            ModuleListEntry {
                path: "/lib/modules/v/kernel/b-c.ko.zst".into(),
                optional: true,
                wave: 1,
            },
        ];
        let text = render_module_list(&entries);
        assert_eq!(parse_module_list(&text).unwrap(), entries);
        // Without wave numbers, one module after the other, in the list's order.
        let serial = parse_module_list("/a.ko\noptional /b.ko\n/c.ko\n").unwrap();
        let waves: Vec<usize> = serial.iter().map(|e| e.wave).collect();
        assert_eq!(waves, [0, 1, 2]);
        assert_eq!(
            parse_module_list("wave=3 /a.ko\n/b.ko\n").unwrap()[1].wave,
            4
        );
        for bad in [
            "wave= /a.ko\n",
            "wave=x /a.ko\n",
            "wave=1\n",
            "wave=-1 /a.ko\n",
        ] {
            assert!(parse_module_list(bad).is_err(), "{bad:?}");
        }
        assert!(parse_module_list("relative/a.ko\n").is_err());
        assert!(parse_module_list("optional\n").is_err());
        assert!(parse_module_list("/a b.ko\n").is_err());
        assert!(parse_module_list("\n# c\n  \n").unwrap().is_empty());
    }
}
