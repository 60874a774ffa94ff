//! Versions and boot order: how a release's semver becomes a boot entry, and how the entry
//! staged last is made the one systemd-boot boots first, whatever its version.
//!
//! ## The problem
//!
//! systemd-boot orders entries by `sort-key`, then by `version` *descending* with systemd's
//! `strverscmp_improved`, which is not semver: `1.2.0-rc.1` sorts *after* `1.2.0`
//! (a `-` suffix is newer there), and build metadata (`+build.5`) has no meaning. Ordering
//! by version also makes an operator-approved downgrade (`1.0.0` staged while `2.0.0` is
//! good) impossible to boot without touching the other slot's entry, which the boot-control
//! contract forbids (Bottlerocket #949, `crate::boot`).
//!
//! ## The mapping
//!
//! | what                      | rule                                                         | `1.2.0-rc.1+build.5`                      |
//! |---------------------------|--------------------------------------------------------------|-------------------------------------------|
//! | release version           | semver 2.0, at most [`MAX_VERSION_LEN`] characters           | `1.2.0-rc.1+build.5`                      |
//! | `sort-key`                | a [`StageKey`]: one below the smallest key on the ESP        | `99999998-basalt`                         |
//! | `version` line            | [`ReleaseVersion::entry_version`]: pre-release `-` → `~`, build `+` → `^` | `1.2.0~rc.1^build.5`         |
//! | entry file name           | `basalt-` + [`ReleaseVersion::file_form`] (`+` → `_`) + counter | `basalt-1.2.0-rc.1_build.5+3.conf`     |
//! | kernel directory          | `basalt/` + the same file form                               | `basalt/1.2.0-rc.1_build.5/`              |
//! | `title`                   | `Basalt <release version> (slot <A/B>)`                      | `Basalt 1.2.0-rc.1+build.5 (slot B)`      |
//!
//! **Order comes from the `sort-key`, never from the version.** Each `stage` gives its entry
//! the key one below the smallest stage key of every entry it keeps (the other slot's and
//! foreign ones), so the entry staged last sorts first. The key is derived from what is on
//! the ESP, so no other state is needed, and re-staging the same slot over an unchanged
//! other slot yields the same key (a retried `stage` ends in the same state). Keys are eight
//! digits counting down from [`StageKey::FIRST`], then `-basalt`: fixed width, so code-unit
//! order is numeric order; digit-first, so every Basalt key sorts before `basalt` (the
//! [`LEGACY_SORT_KEY`] older code wrote — those entries are still read, and a new stage
//! still boots before them) and before the usual os-release IDs of other systems. 10⁸
//! stages fit; after that `stage` refuses with a typed error.
//!
//! The `version` line is for people and tools (`bootctl list`, the menu when titles clash):
//! the `~`/`^` form keeps systemd's version order close to semver's (a pre-release older
//! than its release), but it never decides which Basalt entry boots. Build metadata is not
//! dropped: two builds of one version are two images. `~` and `^` never occur in semver, so
//! the `version` line maps back to the release version exactly
//! ([`release_from_entry_version`]); entries written by older code carry the raw semver and
//! read back unchanged.
//!
//! File names and kernel directories use `_` for the build `+` (a `+` starts the boot
//! counter in a file name, and `_` never occurs in semver), are lower-cased (FAT names are
//! case-insensitive) and keep everything else, so they stay inside the Boot Loader
//! Specification's file-name characters (`A-Z a-z 0-9 + - _ .`). Two versions that differ
//! only in case therefore share names, and `stage` refuses that like any other name clash
//! with an entry it keeps; the title and the `version` line keep the case.
//! (GPT partition labels — `crate::slots::image_labels` — carry the semver verbatim and
//! are limited to 36 characters, i.e. 22 for the version with the OS name `basalt`.)

use std::cmp::Ordering;
use std::fmt;

/// The `sort-key` Basalt wrote before stage keys existed. Entries with it are read as usual;
/// any [`StageKey`] sorts before it.
pub const LEGACY_SORT_KEY: &str = "basalt";
/// Longest release version accepted (file names stay far below FAT's 255 characters).
pub const MAX_VERSION_LEN: usize = 64;
/// What follows the digits of a stage key.
pub const STAGE_KEY_SUFFIX: &str = "-basalt";
/// Digits in a stage key.
pub const STAGE_KEY_DIGITS: usize = 8;

/// The per-stage `sort-key` of a Basalt entry: `NNNNNNNN-basalt`, smaller = staged later =
/// sorts earlier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StageKey(u32);

impl StageKey {
    /// The key of the first stage on an ESP without stage keys.
    pub const FIRST: StageKey = StageKey(99_999_999);
    /// The smallest key; nothing can be staged before it.
    pub const LAST: StageKey = StageKey(0);

    /// The key with this number, if it fits in [`STAGE_KEY_DIGITS`] digits.
    pub fn new(n: u32) -> Option<StageKey> {
        (n <= Self::FIRST.0).then_some(StageKey(n))
    }

    /// The number (for display).
    pub fn value(self) -> u32 {
        self.0
    }

    /// Read a `sort-key` value: exactly eight ASCII digits then `-basalt`. Anything else
    /// (the legacy `basalt`, another system's key) is not a stage key.
    pub fn parse(sort_key: &str) -> Option<StageKey> {
        let digits = sort_key.strip_suffix(STAGE_KEY_SUFFIX)?;
        if digits.len() != STAGE_KEY_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok().map(StageKey)
    }

    /// The `sort-key` value.
    pub fn sort_key(self) -> String {
        format!(
            "{:0width$}{STAGE_KEY_SUFFIX}",
            self.0,
            width = STAGE_KEY_DIGITS
        )
    }

    /// The key for a new stage given the `sort-key`s of the entries that stay on the ESP:
    /// one below the smallest stage key among them, or [`StageKey::FIRST`] when there is
    /// none. `Err` carries the smallest key when nothing is left below it.
    pub fn below_all<'a>(
        existing: impl IntoIterator<Item = &'a str>,
    ) -> Result<StageKey, StageKey> {
        match existing.into_iter().filter_map(StageKey::parse).min() {
            None => Ok(StageKey::FIRST),
            Some(min) => min.0.checked_sub(1).map(StageKey).ok_or(min),
        }
    }
}

impl fmt::Display for StageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.sort_key())
    }
}

/// A release version that can be staged: semver 2.0 in its canonical text, at most
/// [`MAX_VERSION_LEN`] characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseVersion(semver::Version);

impl ReleaseVersion {
    /// Parse `text`; the error says why it is not a version Basalt can stage.
    pub fn parse(text: &str) -> Result<ReleaseVersion, String> {
        if text.is_empty() || text.len() > MAX_VERSION_LEN {
            return Err(format!(
                "a version must be 1 to {MAX_VERSION_LEN} characters, got {}",
                text.len()
            ));
        }
        let v = semver::Version::parse(text).map_err(|e| {
            format!("not a semver 2.0 version (MAJOR.MINOR.PATCH[-PRE][+BUILD]): {e}")
        })?;
        // The semver crate accepts only canonical text today; make sure the names we derive
        // from the parsed value are the names of `text`.
        if v.to_string() != text {
            return Err(format!("not in canonical semver form (would be {v})"));
        }
        Ok(ReleaseVersion(v))
    }

    /// The parsed semver.
    pub fn semver(&self) -> &semver::Version {
        &self.0
    }

    /// The `version` line: `MAJOR.MINOR.PATCH[~PRE][^BUILD]`.
    pub fn entry_version(&self) -> String {
        self.with_separators('~', '^')
    }

    /// The form used in file and directory names: `MAJOR.MINOR.PATCH[-PRE][_BUILD]`,
    /// lower-cased (FAT names ignore case; lower case everywhere keeps a directory ESP on a
    /// case-sensitive file system and the FAT one alike).
    pub fn file_form(&self) -> String {
        self.with_separators('-', '_').to_ascii_lowercase()
    }

    fn with_separators(&self, pre: char, build: char) -> String {
        let v = &self.0;
        let mut s = format!("{}.{}.{}", v.major, v.minor, v.patch);
        if !v.pre.is_empty() {
            s.push(pre);
            s.push_str(v.pre.as_str());
        }
        if !v.build.is_empty() {
            s.push(build);
            s.push_str(v.build.as_str());
        }
        s
    }

    /// semver precedence (build metadata ignored), for logs and tests.
    pub fn cmp_precedence(&self, other: &ReleaseVersion) -> Ordering {
        self.0.cmp_precedence(&other.0)
    }
}

impl fmt::Display for ReleaseVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The release version an entry's `version` line stands for: the inverse of
/// [`ReleaseVersion::entry_version`] when the line is one (`1.2.0~rc.1^b5` →
/// `1.2.0-rc.1+b5`); any other line — older entries carry the raw semver, hand-written ones
/// anything — is returned unchanged, so nothing is invented.
pub fn release_from_entry_version(line: &str) -> String {
    if !line.contains(['~', '^']) {
        return line.to_string();
    }
    let decoded = line.replacen('~', "-", 1).replacen('^', "+", 1);
    match ReleaseVersion::parse(&decoded) {
        Ok(v) if v.entry_version() == line => decoded,
        _ => line.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_keys_count_down_and_sort_before_the_legacy_key() {
        assert_eq!(StageKey::FIRST.sort_key(), "99999999-basalt");
        assert_eq!(StageKey::new(42).unwrap().sort_key(), "00000042-basalt");
        assert_eq!(StageKey::new(100_000_000), None);
        for k in [StageKey::FIRST, StageKey::LAST, StageKey(12_345)] {
            assert_eq!(StageKey::parse(&k.sort_key()), Some(k));
            assert!(k.sort_key().as_str() < LEGACY_SORT_KEY);
        }
        // Code-unit order is numeric order.
        assert!(StageKey(9).sort_key() < StageKey(10).sort_key());
        for not in [
            "basalt",
            "9-basalt",
            "099999999-basalt",
            "0000000a-basalt",
            "00000001-basalt ",
            "+0000001-basalt",
            "00000001",
            "",
        ] {
            assert_eq!(StageKey::parse(not), None, "{not:?}");
        }
    }

    #[test]
    fn the_next_key_is_one_below_the_smallest() {
        assert_eq!(StageKey::below_all([]), Ok(StageKey::FIRST));
        assert_eq!(
            StageKey::below_all(["basalt", "fedora", "0"]),
            Ok(StageKey::FIRST)
        );
        assert_eq!(
            StageKey::below_all(["00000050-basalt", "basalt", "00000007-basalt"]),
            Ok(StageKey(6))
        );
        assert_eq!(
            StageKey::below_all(["00000000-basalt"]),
            Err(StageKey::LAST)
        );
    }

    #[test]
    fn semver_maps_to_entry_version_and_file_form() {
        let cases = [
            ("1.2.0", "1.2.0", "1.2.0"),
            ("1.2.0-rc.1", "1.2.0~rc.1", "1.2.0-rc.1"),
            ("1.2.0+build.5", "1.2.0^build.5", "1.2.0_build.5"),
            (
                "1.2.0-rc-1.x+build-7.001",
                "1.2.0~rc-1.x^build-7.001",
                "1.2.0-rc-1.x_build-7.001",
            ),
            ("10.0.0-RC.1", "10.0.0~RC.1", "10.0.0-rc.1"),
        ];
        for (semver, line, file) in cases {
            let v = ReleaseVersion::parse(semver).unwrap();
            assert_eq!(v.to_string(), semver);
            assert_eq!(v.entry_version(), line);
            assert_eq!(v.file_form(), file);
            assert_eq!(release_from_entry_version(line), semver);
            assert!(file
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b)));
        }
    }

    #[test]
    fn the_version_line_orders_pre_releases_before_their_release() {
        use super::super::order::strverscmp_improved as cmp;
        let line = |s: &str| ReleaseVersion::parse(s).unwrap().entry_version();
        assert_eq!(cmp(&line("1.2.0-rc.1"), &line("1.2.0")), Ordering::Less);
        assert_eq!(cmp(&line("1.2.0-rc.1"), &line("1.1.9")), Ordering::Greater);
        assert_eq!(
            cmp(&line("1.2.0-rc.2"), &line("1.2.0-rc.10")),
            Ordering::Less
        );
    }

    #[test]
    fn not_stageable_versions() {
        for bad in [
            "",
            "1.0",
            "1",
            "v1.0.0",
            "01.0.0",
            "1.0.0-",
            "1.0.0+",
            "1.0.0-01",
            "1.0.0 ",
            "1.0.0_x",
            "1.0.0~rc.1",
            "1.0.0+a+b",
            "1.0.0/..",
            &format!("1.0.0-{}", "a".repeat(60)),
        ] {
            assert!(ReleaseVersion::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn other_version_lines_read_back_unchanged() {
        for line in [
            "1.0",
            "1.2.0-rc.1",
            "1.0.0+b",
            "weird~",
            "1.0~x^y",
            "1.0.0^a~b",
        ] {
            assert_eq!(release_from_entry_version(line), line);
        }
        // The form older docs recommended for pre-releases reads as the semver it meant.
        assert_eq!(release_from_entry_version("1.2.0~rc.1"), "1.2.0-rc.1");
    }
}
