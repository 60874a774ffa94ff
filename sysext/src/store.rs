//! The versioned extension store on the root partition, and which sets to collect.
//!
//! ```text
//! /var/lib/basalt/extensions/<os-version>/<NAME>.raw    one set per OS version
//! ```
//!
//! The set of an OS version holds the extensions its release manifest lists (artifacts of kind
//! `sysext`), written by the agent *before* the slot flip; at boot the set whose directory
//! equals the booted OS version is activated, so a rollback to the other slot brings that
//! slot's set back with it. A set is garbage once its OS version is in neither slot
//! ([`garbage`], pure); entries that are not a version are never touched (an operator's file,
//! another tool's folder).
//!
//! **Install-time sets.** A node image (`disk.img`) carries its release's set from the start,
//! but not inside `/var`: basalt-init fills `/var` from `/usr/share/factory/var` only while
//! `/var` is empty, so anything pre-written there would stop the first boot's copy. The image
//! builder puts the set in the *seed* folder ([`DEFAULT_SEED`], `<seed>/<os-version>/NAME.raw`)
//! on the root partition instead, and activation adopts it ([`Store::adopt`]) before it looks
//! for the booted version's set: one `rename(2)` per set into the store (the same
//! filesystem), so an interrupted first boot leaves each set either still in the seed or
//! already in the store, never half of it.

use std::path::{Path, PathBuf};

use basalt_manifest::semver::Version;
use basalt_manifest::valid_extension_name;

use crate::error::{io, Error, Result};
use crate::image::IMAGE_SUFFIX;

/// The store on a node.
pub const DEFAULT_STORE: &str = "/var/lib/basalt/extensions";

/// Where a node image carries its release's extension set for the node to adopt (see the
/// module docs): a folder on the root partition, outside `/var`.
pub const DEFAULT_SEED: &str = "/.basalt-extensions";

/// What [`Store::adopt`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Adoption {
    /// Sets moved from the seed into the store.
    pub adopted: Vec<Version>,
    /// Sets the store already had (an earlier, interrupted adoption had moved them, or the
    /// agent had staged that version): the seed's copy was removed, the store's kept.
    pub already: Vec<Version>,
    /// Seed entries that are not a set (not a folder named by a version): left alone.
    pub ignored: Vec<PathBuf>,
}

/// The store folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Store {
    root: PathBuf,
}

/// One image of a set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredImage {
    /// The extension name (`NAME` of `NAME.raw`).
    pub name: String,
    /// The image file.
    pub path: PathBuf,
}

impl Store {
    /// The store rooted at `root` (on a node: [`DEFAULT_STORE`]).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The store folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The folder of `os_version`'s set. Touches no disk.
    pub fn set_dir(&self, os_version: &Version) -> PathBuf {
        self.root.join(os_version.to_string())
    }

    /// Where extension `name` of `os_version`'s set lives. Touches no disk.
    pub fn image_path(&self, os_version: &Version, name: &str) -> PathBuf {
        self.set_dir(os_version)
            .join(format!("{name}{IMAGE_SUFFIX}"))
    }

    /// The images of `os_version`'s set, sorted by name; a missing set folder is an empty
    /// set. Anything else in the folder (not `NAME.raw` with a valid name, not a regular
    /// file) is refused: the set is exactly what was staged.
    pub fn images(&self, os_version: &Version) -> Result<Vec<StoredImage>> {
        let dir = self.set_dir(os_version);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io("list", &dir)(e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io("list", &dir))?;
            let path = entry.path();
            let file_name = entry.file_name();
            let name = file_name
                .to_str()
                .and_then(|n| n.strip_suffix(IMAGE_SUFFIX))
                .filter(|n| valid_extension_name(n));
            let is_file = entry.file_type().map_err(io("stat", &path))?.is_file();
            match name {
                Some(name) if is_file => out.push(StoredImage {
                    name: name.to_owned(),
                    path,
                }),
                _ => {
                    return Err(Error::Store {
                        path,
                        reason: "not an extension image (NAME.raw, a regular file)".into(),
                    })
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The names of the store's entries (sets and anything else), sorted; a missing store
    /// is empty.
    pub fn entries(&self) -> Result<Vec<String>> {
        let entries = match std::fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io("list", &self.root)(e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io("list", &self.root))?;
            if let Some(n) = entry.file_name().to_str() {
                names.push(n.to_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    /// Moves the sets found in `seed` (`<seed>/<os-version>/`, see the module docs) into the
    /// store, each with one rename, and removes `seed` once it is empty. A set the store
    /// already has wins over the seed's. Safe to repeat after an interruption at any point;
    /// a missing seed adopts nothing. The images are not checked here: activation checks
    /// every image of the booted set against the trust root, as for a staged set.
    pub fn adopt(&self, seed: &Path) -> Result<Adoption> {
        let mut out = Adoption::default();
        let entries = match std::fs::read_dir(seed) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io("list", seed)(e)),
        };
        let mut sets = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io("list", seed))?;
            let path = entry.path();
            let is_dir = entry.file_type().map_err(io("stat", &path))?.is_dir();
            let version = entry
                .file_name()
                .to_str()
                .and_then(|n| Version::parse(n).ok().filter(|v| v.to_string() == n));
            match version {
                Some(v) if is_dir => sets.push((v, path)),
                _ => out.ignored.push(path),
            }
        }
        sets.sort();
        if sets.is_empty() {
            remove_if_empty(seed)?;
            return Ok(out);
        }
        std::fs::create_dir_all(&self.root).map_err(io("create", &self.root))?;
        for (version, from) in sets {
            let to = self.set_dir(&version);
            if std::fs::symlink_metadata(&to).is_ok() {
                std::fs::remove_dir_all(&from).map_err(io("remove", &from))?;
                out.already.push(version);
                continue;
            }
            match std::fs::rename(&from, &to) {
                Ok(()) => {}
                // /var on a filesystem of its own: copy into a hidden folder of the store,
                // then rename that into place (a crash leaves the hidden copy, redone).
                Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                    let tmp = self.root.join(format!(".{version}.adopting"));
                    copy_set(&from, &tmp)?;
                    std::fs::rename(&tmp, &to).map_err(io("rename into the store", &tmp))?;
                    sync_dir(&self.root)?;
                    std::fs::remove_dir_all(&from).map_err(io("remove", &from))?;
                }
                Err(e) => return Err(io("move into the store", &from)(e)),
            }
            sync_dir(&self.root)?;
            sync_dir(seed)?;
            out.adopted.push(version);
        }
        remove_if_empty(seed)?;
        Ok(out)
    }

    /// Removes the sets [`garbage`] names for `keep` (the OS versions in the two slots, and
    /// one being staged); returns what was removed. Refuses an empty `keep`: not knowing
    /// either slot's version must never mean "delete everything".
    pub fn collect_garbage(&self, keep: &[Version]) -> Result<Vec<PathBuf>> {
        if keep.is_empty() {
            return Err(Error::Store {
                path: self.root.clone(),
                reason: "garbage collection needs the slots' OS versions; none given".into(),
            });
        }
        let mut removed = Vec::new();
        for name in garbage(&self.entries()?, keep) {
            let path = self.root.join(&name);
            std::fs::remove_dir_all(&path).map_err(io("remove", &path))?;
            removed.push(path);
        }
        Ok(removed)
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    basalt_fsutil::sync_dir(dir).map_err(|e| Error::Io {
        operation: e.op,
        path: e.path,
        source: e.source,
    })
}

/// Removes `dir` if it is empty (and syncs its parent); keeps it otherwise.
fn remove_if_empty(dir: &Path) -> Result<()> {
    match std::fs::remove_dir(dir) {
        Ok(()) => match dir.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent),
            _ => Ok(()),
        },
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOTEMPTY) | Some(libc::EEXIST) | Some(libc::ENOENT)
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(io("remove", dir)(e)),
    }
}

/// Copies the regular files of set folder `from` into a new folder `to` (replacing an
/// earlier partial copy), each synced, and the folder synced.
fn copy_set(from: &Path, to: &Path) -> Result<()> {
    if std::fs::symlink_metadata(to).is_ok() {
        std::fs::remove_dir_all(to).map_err(io("remove", to))?;
    }
    std::fs::create_dir(to).map_err(io("create", to))?;
    for entry in std::fs::read_dir(from).map_err(io("list", from))? {
        let entry = entry.map_err(io("list", from))?;
        let src = entry.path();
        if !entry.file_type().map_err(io("stat", &src))?.is_file() {
            return Err(Error::Store {
                path: src,
                reason: "not a regular file in an extension set".into(),
            });
        }
        let dst = to.join(entry.file_name());
        std::fs::copy(&src, &dst).map_err(io("copy", &src))?;
        std::fs::File::open(&dst)
            .and_then(|f| f.sync_all())
            .map_err(io("sync", &dst))?;
    }
    sync_dir(to)
}

/// Of the store entries `entries`, the sets to remove: every entry whose name is an OS
/// version (semver, as written by [`Store::set_dir`]) not in `keep`. Other names are kept.
pub fn garbage(entries: &[String], keep: &[Version]) -> Vec<String> {
    entries
        .iter()
        .filter(|name| {
            Version::parse(name).is_ok_and(|v| !keep.contains(&v) && v.to_string() == **name)
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v(s: &str) -> Version {
        Version::parse(s).expect("version")
    }

    #[test]
    fn collects_sets_in_neither_slot_only() {
        let entries: Vec<String> = ["1.0.0", "2.0.0", "3.0.0", "notes.txt", "2.0", ".staging"]
            .map(String::from)
            .to_vec();
        assert_eq!(garbage(&entries, &[v("2.0.0"), v("3.0.0")]), ["1.0.0"]);
        assert_eq!(garbage(&entries, &[v("1.0.0")]), ["2.0.0", "3.0.0"]);
        // Build metadata is part of the version a set is filed under.
        assert_eq!(garbage(&["1.0.0+b1".into()], &[v("1.0.0")]), ["1.0.0+b1"]);
    }

    #[test]
    fn store_paths_and_listing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::new(dir.path());
        assert_eq!(store.images(&v("1.0.0")).expect("empty"), []);
        std::fs::create_dir_all(store.set_dir(&v("1.0.0"))).expect("mkdir");
        for n in ["b", "a"] {
            std::fs::write(store.image_path(&v("1.0.0"), n), b"x").expect("write");
        }
        let names: Vec<String> = store
            .images(&v("1.0.0"))
            .expect("list")
            .into_iter()
            .map(|i| i.name)
            .collect();
        assert_eq!(names, ["a", "b"]);
        std::fs::write(store.set_dir(&v("1.0.0")).join("stray"), b"x").expect("write");
        assert!(matches!(
            store.images(&v("1.0.0")),
            Err(Error::Store { .. })
        ));
    }

    #[test]
    fn collect_garbage_removes_and_refuses_an_empty_keep() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::new(dir.path());
        for s in ["1.0.0", "2.0.0", "3.0.0"] {
            std::fs::create_dir_all(store.set_dir(&v(s))).expect("mkdir");
        }
        std::fs::write(dir.path().join("keep-me"), b"x").expect("write");
        assert!(store.collect_garbage(&[]).is_err());
        assert_eq!(store.entries().expect("entries").len(), 4);
        let removed = store
            .collect_garbage(&[v("3.0.0"), v("2.0.0")])
            .expect("gc");
        assert_eq!(removed, [dir.path().join("1.0.0")]);
        assert_eq!(
            store.entries().expect("entries"),
            ["2.0.0", "3.0.0", "keep-me"]
        );
    }

    fn seed_set(seed: &Path, version: &str, names: &[&str]) {
        let dir = seed.join(version);
        std::fs::create_dir_all(&dir).expect("mkdir");
        for n in names {
            std::fs::write(dir.join(format!("{n}.raw")), format!("{n} {version}")).expect("write");
        }
    }

    #[test]
    fn adopt_moves_the_seed_sets_into_the_store_and_removes_the_seed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let seed = dir.path().join(".basalt-extensions");
        let store = Store::new(dir.path().join("var/lib/basalt/extensions"));
        seed_set(&seed, "1.0.0", &["tools", "gpu"]);
        let done = store.adopt(&seed).expect("adopt");
        assert_eq!(done.adopted, [v("1.0.0")]);
        assert!(done.already.is_empty() && done.ignored.is_empty());
        let names: Vec<String> = store
            .images(&v("1.0.0"))
            .expect("images")
            .into_iter()
            .map(|i| i.name)
            .collect();
        assert_eq!(names, ["gpu", "tools"]);
        assert_eq!(
            std::fs::read_to_string(store.image_path(&v("1.0.0"), "tools")).expect("read"),
            "tools 1.0.0"
        );
        assert!(!seed.exists(), "the emptied seed is removed");
        // Again: nothing left to do.
        assert_eq!(store.adopt(&seed).expect("again"), Adoption::default());
    }

    #[test]
    fn adopt_after_an_interruption_keeps_the_stores_set_and_finishes_the_rest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let seed = dir.path().join("seed");
        let store = Store::new(dir.path().join("store"));
        // An earlier run moved 1.0.0 and stopped; the seed still has 2.0.0, and a stale
        // copy of 1.0.0 (as if the installer wrote it twice).
        seed_set(&seed, "1.0.0", &["tools"]);
        seed_set(&seed, "2.0.0", &["tools"]);
        std::fs::create_dir_all(store.set_dir(&v("1.0.0"))).expect("mkdir");
        std::fs::write(store.image_path(&v("1.0.0"), "tools"), "staged").expect("write");
        let done = store.adopt(&seed).expect("adopt");
        assert_eq!(done.adopted, [v("2.0.0")]);
        assert_eq!(done.already, [v("1.0.0")]);
        assert_eq!(
            std::fs::read_to_string(store.image_path(&v("1.0.0"), "tools")).expect("read"),
            "staged",
            "the store's set wins"
        );
        assert!(!seed.exists());
    }

    #[test]
    fn adopt_leaves_what_is_not_a_set_and_a_missing_seed_is_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let seed = dir.path().join("seed");
        let store = Store::new(dir.path().join("store"));
        assert_eq!(store.adopt(&seed).expect("missing"), Adoption::default());
        assert!(!store.root().exists(), "no store created for nothing");
        seed_set(&seed, "1.0.0", &["tools"]);
        std::fs::create_dir_all(seed.join("not-a-version")).expect("mkdir");
        std::fs::write(seed.join("2.0.0"), "a file, not a set").expect("write");
        std::fs::create_dir_all(seed.join("1.0")).expect("mkdir");
        let done = store.adopt(&seed).expect("adopt");
        assert_eq!(done.adopted, [v("1.0.0")]);
        let mut ignored: Vec<String> = done
            .ignored
            .iter()
            .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
            .collect();
        ignored.sort();
        assert_eq!(ignored, ["1.0", "2.0.0", "not-a-version"]);
        assert!(seed.join("not-a-version").is_dir(), "left alone");
        assert_eq!(store.entries().expect("entries"), ["1.0.0"]);
    }

    #[test]
    fn adopt_copies_across_filesystems() {
        // The seed on the disk-backed temporary folder, the store on /dev/shm (tmpfs): rename
        // fails with EXDEV there, as when /var is a filesystem of its own.
        use std::os::unix::fs::MetadataExt;
        let disk = tempfile::tempdir().expect("tempdir");
        let shm = tempfile::tempdir_in("/dev/shm").expect("a folder on /dev/shm");
        let dev = |p: &Path| std::fs::metadata(p).expect("stat").dev();
        assert_ne!(
            dev(disk.path()),
            dev(shm.path()),
            "this test needs the temporary folder and /dev/shm on different filesystems"
        );
        let seed = disk.path().join("seed");
        let store = Store::new(shm.path().join("store"));
        seed_set(&seed, "3.1.0", &["tools"]);
        // A partial copy left by an interrupted run is replaced.
        std::fs::create_dir_all(store.root().join(".3.1.0.adopting")).expect("mkdir");
        std::fs::write(store.root().join(".3.1.0.adopting/junk.raw"), "x").expect("write");
        let done = store.adopt(&seed).expect("adopt");
        assert_eq!(done.adopted, [v("3.1.0")]);
        assert_eq!(
            std::fs::read_to_string(store.image_path(&v("3.1.0"), "tools")).expect("read"),
            "tools 3.1.0"
        );
        assert_eq!(store.entries().expect("entries"), ["3.1.0"]);
        assert!(!seed.exists());
    }

    proptest! {
        /// Against an independent model: never a kept version, never a non-version, every
        /// other version.
        #[test]
        fn garbage_matches_the_model(
            sets in proptest::collection::btree_set((0u64..4, 0u64..3), 0..8),
            keep in proptest::collection::vec((0u64..4, 0u64..3), 0..3),
            others in proptest::collection::vec("[a-z.]{1,6}", 0..3),
        ) {
            let keep: Vec<Version> = keep.iter().map(|&(a, b)| Version::new(a, b, 0)).collect();
            let mut entries: Vec<String> =
                sets.iter().map(|&(a, b)| format!("{a}.{b}.0")).collect();
            entries.extend(others.iter().cloned());
            let got = garbage(&entries, &keep);
            for e in &entries {
                let is_set = Version::parse(e).is_ok();
                let kept = Version::parse(e).is_ok_and(|x| keep.contains(&x));
                prop_assert_eq!(got.contains(e), is_set && !kept, "{}", e);
            }
        }
    }
}
