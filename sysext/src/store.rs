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

use std::path::{Path, PathBuf};

use basalt_manifest::semver::Version;
use basalt_manifest::valid_extension_name;

use crate::error::{io, Error, Result};
use crate::image::IMAGE_SUFFIX;

/// The store on a node.
pub const DEFAULT_STORE: &str = "/var/lib/basalt/extensions";

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
