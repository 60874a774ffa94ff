//! Extension pins: the operator's "keep extension NAME at version V" (issue 10, point 4),
//! stored beside the sets as `<store>/pins`, and what the store holds of each extension.
//!
//! ```text
//! /var/lib/basalt/extensions/pins     # one line per pin: NAME VERSION (written atomically
//!                                     # by the agent; '#' comments and blank lines ignored)
//! ```
//!
//! What a pin means (the agent enforces it, `updater/src/pipeline/extensions.rs`):
//! - a **node-image-only** update keeps the booted set, with each pinned extension at its
//!   pinned version (taken from whichever set holds it), provided every image is still
//!   compatible with the new OS — else the update is refused naming the extension;
//! - a **full** update must ship the pinned version of every pinned extension, else it is
//!   refused naming the pin (the release's version never silently replaces a pinned one;
//!   unpin, or update node-image-only);
//! - a pin names a version that is **staged** (in some set of the store), verifies against
//!   the trust root and fits the booted OS ([`check_pin`]); it takes effect at the next
//!   update (the booted set stays what it is until then).
//!
//! The pinned image cannot disappear from the store: garbage collection removes only sets
//! whose OS version is in neither slot, and every update that replaces the other slot
//! carries the pinned version into the new set (full: shipped; node-image-only: linked).
//!
//! Parsing is strict (a hand-edited or torn file is refused naming the line, never read as
//! "no pins"); writing is the caller's (the agent's atomic write, through its I/O seam).

use std::collections::BTreeMap;
use std::path::PathBuf;

use basalt_manifest::semver::Version;
use basalt_manifest::{valid_extension_name, TrustRoot};

use crate::compat::HostOs;
use crate::error::{io, Error, Result};
use crate::image::{read_statement_unverified, verify_image, Extension};
use crate::store::{Store, StoredImage};

/// The pins file's name in the store folder (not a version: never collected).
pub const PINS_FILE: &str = "pins";

/// Pinned extension versions, by name.
pub type Pins = BTreeMap<String, Version>;

/// One image of the store with its (unverified) signed version, for listings and lookups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedImage {
    /// `NAME`.
    pub name: String,
    /// The statement's version; `None` when the image has no readable statement (listed,
    /// never pinnable).
    pub version: Option<Version>,
    /// The file.
    pub path: PathBuf,
}

/// One staged set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedSet {
    /// The OS version the set belongs to.
    pub os_version: Version,
    /// Its images, sorted by name.
    pub images: Vec<ListedImage>,
}

/// Parses the pins file's text (`path` names it in errors).
pub fn parse(text: &str, path: &std::path::Path) -> Result<Pins> {
    let mut pins = Pins::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |reason: String| Error::Store {
            path: path.to_path_buf(),
            reason: format!("line {}: {reason}", i + 1),
        };
        let mut words = line.split_whitespace();
        let (Some(name), Some(version), None) = (words.next(), words.next(), words.next()) else {
            return Err(bad(format!("{line:?} is not NAME VERSION")));
        };
        if !valid_extension_name(name) {
            return Err(bad(format!("{name:?} is not an extension name")));
        }
        let version =
            Version::parse(version).map_err(|e| bad(format!("version {version:?}: {e}")))?;
        if pins.insert(name.to_owned(), version).is_some() {
            return Err(bad(format!("{name} is pinned twice")));
        }
    }
    Ok(pins)
}

/// The text [`parse`] reads back.
pub fn render(pins: &Pins) -> String {
    let mut out = String::from("# Extension pins (NAME VERSION), written by basalt-updated.\n");
    for (name, version) in pins {
        out.push_str(&format!("{name} {version}\n"));
    }
    out
}

impl Store {
    /// `<store>/pins`. Touches no disk.
    pub fn pins_path(&self) -> PathBuf {
        self.root().join(PINS_FILE)
    }

    /// The pins; a missing file is no pins, an unreadable or malformed one an error.
    pub fn pins(&self) -> Result<Pins> {
        let path = self.pins_path();
        match std::fs::read_to_string(&path) {
            Ok(text) => parse(&text, &path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Pins::new()),
            Err(e) => Err(io("read", &path)(e)),
        }
    }

    /// Every set (entries that are versions, as [`Store::set_dir`] writes them), oldest OS
    /// version first, with each image's signed version read but not verified.
    pub fn listing(&self) -> Result<Vec<ListedSet>> {
        let mut sets = Vec::new();
        for entry in self.entries()? {
            let Ok(os_version) = Version::parse(&entry) else {
                continue;
            };
            if os_version.to_string() != entry {
                continue;
            }
            let images = self
                .images(&os_version)?
                .into_iter()
                .map(|StoredImage { name, path }| ListedImage {
                    version: read_statement_unverified(&path).ok().map(|s| s.version),
                    name,
                    path,
                })
                .collect();
            sets.push(ListedSet { os_version, images });
        }
        sets.sort_by(|a, b| a.os_version.cmp(&b.os_version));
        Ok(sets)
    }

    /// The staged image of extension `name` at `version`, looked up in `prefer`'s set first,
    /// then in the others (newest OS version first). Refuses a name no set holds
    /// ([`Error::UnknownExtension`]) and a version no set holds ([`Error::NotStaged`], with
    /// the versions that are).
    pub fn find_staged(
        &self,
        name: &str,
        version: &Version,
        prefer: Option<&Version>,
    ) -> Result<ListedImage> {
        let mut sets = self.listing()?;
        sets.reverse();
        if let Some(p) = prefer {
            sets.sort_by_key(|s| s.os_version != *p);
        }
        let mut staged: Vec<Version> = Vec::new();
        for set in sets {
            for image in set.images {
                if image.name != name {
                    continue;
                }
                match &image.version {
                    Some(v) if v == version => return Ok(image),
                    Some(v) if !staged.contains(v) => staged.push(v.clone()),
                    _ => {}
                }
            }
        }
        if staged.is_empty() {
            return Err(Error::UnknownExtension {
                name: name.to_owned(),
                store: self.root().to_path_buf(),
            });
        }
        staged.sort();
        Err(Error::NotStaged {
            name: name.to_owned(),
            version: version.clone(),
            staged: staged.iter().map(ToString::to_string).collect(),
        })
    }
}

/// Whether `name` at `version` may be pinned: staged in some set of `store`
/// ([`Store::find_staged`]), signed by `root` under that name with every block intact, and
/// compatible with `host` (the booted OS). Returns the verified image.
pub fn check_pin(
    store: &Store,
    root: &TrustRoot,
    host: &HostOs,
    name: &str,
    version: &Version,
) -> Result<Extension> {
    let image = store.find_staged(name, version, None)?;
    let ext = verify_image(&image.path, root, Some(name))?;
    if ext.statement.version != *version {
        // The unverified read said otherwise: the statement changed under us.
        return Err(Error::NotStaged {
            name: name.to_owned(),
            version: version.clone(),
            staged: vec![ext.statement.version.to_string()],
        });
    }
    crate::activate::check_extension(&ext.statement, host)?;
    Ok(ext)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn pins_round_trip_and_bad_lines_are_refused_naming_the_line() {
        let mut pins = Pins::new();
        pins.insert("tools".into(), Version::new(1, 0, 0));
        pins.insert(
            "gpu-driver".into(),
            Version::parse("535.1.0+deb12").expect("v"),
        );
        let p = Path::new("/x/pins");
        assert_eq!(parse(&render(&pins), p).expect("parse"), pins);
        assert_eq!(parse("", p).expect("empty"), Pins::new());
        for (text, needle) in [
            ("tools\n", "line 1: \"tools\" is not NAME VERSION"),
            ("# c\ntools 1.0.0 x\n", "line 2"),
            ("../x 1.0.0\n", "not an extension name"),
            ("tools 1.0\n", "version \"1.0\""),
            ("tools 1.0.0\ntools 2.0.0\n", "pinned twice"),
        ] {
            let e = parse(text, p).expect_err(text).to_string();
            assert!(e.contains(needle) && e.contains("/x/pins"), "{text:?}: {e}");
        }
    }

    #[test]
    fn a_missing_pins_file_is_no_pins_and_an_unknown_name_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::new(dir.path().join("store"));
        assert_eq!(store.pins().expect("pins"), Pins::new());
        assert!(matches!(
            store.find_staged("tools", &Version::new(1, 0, 0), None),
            Err(Error::UnknownExtension { .. })
        ));
    }
}
