//! Boot Loader Specification Type #1 entry files as systemd-boot 252 reads them, and the
//! stricter Basalt entry on top.
//!
//! Two readings of the same bytes, on purpose:
//! - the *lenient* one ([`EntryName::parse_lenient`], [`EntryFile::parse`]) mirrors what
//!   systemd-boot does with any file in `loader/entries/` (a suffix that is not a valid
//!   counter is simply part of the name; unknown keys are ignored), so that our prediction of
//!   the next boot agrees with the boot loader even for files we did not write;
//! - the *strict* one ([`EntryName::parse`], [`BasaltEntry::parse`]) is what Basalt accepts as
//!   its own entry and gives a typed error for anything else.

use std::fmt;

use super::version::{release_from_entry_version, ReleaseVersion, StageKey};
use crate::{Error, Slot};

/// File-name suffix of Type #1 entries.
pub const CONF_SUFFIX: &str = ".conf";
/// File-name prefix of Basalt's entries.
pub const BASALT_PREFIX: &str = "basalt-";
/// Kernel command-line option naming the slot an entry boots (`basalt.slot=a` or `b`).
pub const SLOT_OPTION: &str = "basalt.slot=";
/// File name of a release's unified kernel image in its version directory on the ESP.
pub const UKI_FILE: &str = "uki.efi";
/// Kernel command-line option carrying the dm-verity root hash of `/usr`.
pub const USRHASH_OPTION: &str = "usrhash=";
/// The largest try count Basalt writes: a sanity bound (a node that fails 99 boots in a row
/// needs a human). Multi-digit counters parse fine in systemd-boot 252 (`+10` → `+9-1`, seen
/// under OVMF); some older boot.c revisions dropped the carried digit, hence the test.
pub const MAX_TRIES: u32 = 99;

/// A boot counter `+LEFT-DONE` from an entry file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Counter {
    /// Boot attempts left; 0 means the entry is "bad".
    pub left: u64,
    /// Boot attempts made so far (`-DONE` missing means 0).
    pub done: u64,
}

/// An entry file name split into its base and optional boot counter.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EntryName {
    /// The name without counter and `.conf` (`basalt-1.2.0`).
    pub base: String,
    pub counter: Option<Counter>,
}

impl EntryName {
    /// systemd-boot's reading of `file`: `None` when it does not end in `.conf`
    /// (case-insensitive); a suffix that is not a well-formed `+LEFT[-DONE]` counter is part
    /// of the base, exactly as the boot loader treats it (such an entry is not counted).
    pub fn parse_lenient(file: &str) -> Option<EntryName> {
        let stem_len = file.len().checked_sub(CONF_SUFFIX.len())?;
        if !file.is_char_boundary(stem_len) || !file[stem_len..].eq_ignore_ascii_case(CONF_SUFFIX) {
            return None;
        }
        let stem = &file[..stem_len];
        match parse_counter_suffix(stem) {
            Some((base_len, counter)) => Some(EntryName {
                base: stem[..base_len].to_string(),
                counter: Some(counter),
            }),
            None => Some(EntryName {
                base: stem.to_string(),
                counter: None,
            }),
        }
    }

    /// The strict reading for Basalt's own entries: must end in `.conf`, and a `+` may only
    /// start a well-formed counter (Basalt file names carry a build's `+` as `_`). A malformed counter
    /// such as `basalt-1.0+x-1.conf` is [`Error::BlsEntryName`].
    pub fn parse(file: &str) -> Result<EntryName, Error> {
        let bad = |reason| Error::BlsEntryName {
            name: file.to_string(),
            reason,
        };
        let name = Self::parse_lenient(file).ok_or_else(|| bad("does not end in .conf"))?;
        if name.base.contains('+') {
            return Err(bad("malformed boot counter (expected +LEFT or +LEFT-DONE)"));
        }
        if name.base.is_empty() {
            return Err(bad("empty name"));
        }
        Ok(name)
    }

    /// The file name (`base+LEFT-DONE.conf`, `base+LEFT.conf` when DONE is 0, or
    /// `base.conf`).
    pub fn file_name(&self) -> String {
        match self.counter {
            None => format!("{}{CONF_SUFFIX}", self.base),
            Some(Counter { left, done: 0 }) => format!("{}+{left}{CONF_SUFFIX}", self.base),
            Some(Counter { left, done }) => format!("{}+{left}-{done}{CONF_SUFFIX}", self.base),
        }
    }

    /// The name systemd-boot renames a counting entry to before it starts the kernel:
    /// `LEFT - 1` (not below 0) and `DONE + 1`, always written as `+LEFT-DONE`. `None` when
    /// the entry does not count.
    pub fn bumped_file_name(&self) -> Option<String> {
        let c = self.counter?;
        Some(format!(
            "{}+{}-{}{CONF_SUFFIX}",
            self.base,
            c.left.saturating_sub(1),
            c.done.saturating_add(1).min(u64::MAX - 1)
        ))
    }
}

/// Parse a `+LEFT[-DONE]` suffix at the end of `stem`, scanning backwards as systemd-boot
/// does. Returns the length of the base before `+`. Values that do not fit, or that equal
/// the "unset" marker `u64::MAX`, make the suffix not a counter (as in systemd-boot).
fn parse_counter_suffix(stem: &str) -> Option<(usize, Counter)> {
    let bytes = stem.as_bytes();
    let mut left: Option<u64> = None;
    let mut done: Option<u64> = None;
    let mut factor: u64 = 1;
    let mut i = bytes.len();
    loop {
        if i == 0 {
            return None;
        }
        i -= 1;
        match bytes[i] {
            b'+' => {
                let left = left?;
                return Some((
                    i,
                    Counter {
                        left,
                        done: done.unwrap_or(0),
                    },
                ));
            }
            b'-' => {
                // A dash must follow at least one digit, and appear once.
                if left.is_none() || done.is_some() {
                    return None;
                }
                done = left.take();
                factor = 1;
            }
            d @ b'0'..=b'9' => {
                let digit = u64::from(d - b'0');
                let v = digit.checked_mul(factor)?;
                let new = left.unwrap_or(0).checked_add(v)?;
                if new == u64::MAX {
                    return None;
                }
                left = Some(new);
                // Past u64 range, only leading zeros could still follow: stop there, as
                // systemd-boot's overflow check does.
                factor = factor.checked_mul(10)?;
            }
            _ => return None,
        }
    }
}

/// systemd-boot's loader type of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoaderType {
    /// `linux` key: a kernel booted with `initrd` and `options`.
    Linux,
    /// `efi` key: an EFI program.
    Efi,
}

/// An entry file as systemd-boot 252 reads it (lenient: never fails).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntryFile {
    pub title: Option<String>,
    pub sort_key: Option<String>,
    pub version: Option<String>,
    pub machine_id: Option<String>,
    /// Loader type and path (`linux` or `efi`; the last such key wins).
    pub loader: Option<(LoaderType, String)>,
    pub initrd: Vec<String>,
    /// All `options` lines joined with a space.
    pub options: Option<String>,
    /// An `architecture` key that is not `x64` makes systemd-boot (x86-64) skip the entry.
    pub foreign_architecture: bool,
}

impl EntryFile {
    /// Read `content` as systemd-boot does: content ends at the first NUL, lines split at
    /// `\n`/`\r`, blanks trimmed, `#` comments and key-only lines skipped, key and value split
    /// at the first blank, a value in double quotes unquoted. Non-UTF-8 bytes are replaced.
    pub fn parse(content: &[u8]) -> EntryFile {
        let end = content
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(content.len());
        let text = String::from_utf8_lossy(&content[..end]);
        let mut e = EntryFile::default();
        for (key, value) in key_values(&text) {
            let value = value.to_string();
            match key {
                "title" => e.title = Some(value),
                "sort-key" => e.sort_key = Some(value),
                "version" => e.version = Some(value),
                "machine-id" => e.machine_id = Some(value),
                "linux" => e.loader = Some((LoaderType::Linux, value)),
                "efi" => e.loader = Some((LoaderType::Efi, value)),
                "initrd" => e.initrd.push(value),
                "options" => {
                    e.options = Some(match e.options.take() {
                        Some(o) => format!("{o} {value}"),
                        None => value,
                    })
                }
                "architecture" if value != "x64" => {
                    // systemd-boot stops reading and drops the entry.
                    e.foreign_architecture = true;
                    break;
                }
                _ => {}
            }
        }
        e
    }
}

/// Key/value pairs of a systemd-boot config text (entry or loader.conf).
pub(crate) fn key_values(text: &str) -> impl Iterator<Item = (&str, &str)> {
    text.split(['\n', '\r']).filter_map(|line| {
        let line = line.trim_matches([' ', '\t']);
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        let sep = line.find([' ', '\t'])?;
        let (key, rest) = line.split_at(sep);
        let mut value = rest.trim_start_matches([' ', '\t']);
        if value.starts_with('"') && value.ends_with('"') {
            value = if value.len() >= 2 {
                &value[1..value.len() - 1]
            } else {
                ""
            };
        }
        Some((key, value))
    })
}

/// A valid Basalt boot entry: what `stage` writes and what the backend requires of every
/// `basalt-*.conf` file systemd-boot would load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BasaltEntry {
    /// The release version the entry boots (semver text), read from the `version` line
    /// ([`release_from_entry_version`]).
    pub version: String,
    /// The `version` line as written (`1.2.0~rc.1` for `1.2.0-rc.1`).
    pub entry_version: String,
    /// The `sort-key` line: a [`StageKey`] for entries written by `stage`, `basalt` for older
    /// ones, absent or anything for hand-written ones.
    pub sort_key: Option<String>,
    pub slot: Slot,
    /// What `linux` names: a kernel (`linux` line) or, for a release's unified kernel image,
    /// an EFI program (`efi` line, no `initrd`).
    pub loader: LoaderType,
    /// The loader path on the ESP: the kernel (`/basalt/<file form>/vmlinuz`) or the UKI
    /// (`/basalt/<file form>/uki.efi`).
    pub linux: String,
    /// Initrd path on the ESP (`/basalt/<file form>/initrd`).
    pub initrd: Vec<String>,
    /// The whole kernel command line (`usrhash=… basalt.slot=… <extra>`).
    pub options: String,
}

impl BasaltEntry {
    /// The entry Basalt writes for `version` in `slot`, ordered by `key`.
    pub fn new(
        version: &ReleaseVersion,
        slot: Slot,
        key: StageKey,
        usr_hash: &str,
        extra_options: &str,
    ) -> BasaltEntry {
        let dir = kernel_dir(version);
        let mut options = format!("{USRHASH_OPTION}{usr_hash} {SLOT_OPTION}{}", slot.letter());
        if !extra_options.trim().is_empty() {
            options.push(' ');
            options.push_str(extra_options.trim());
        }
        BasaltEntry {
            version: version.to_string(),
            entry_version: version.entry_version(),
            sort_key: Some(key.sort_key()),
            slot,
            loader: LoaderType::Linux,
            linux: format!("/{dir}/vmlinuz"),
            initrd: vec![format!("/{dir}/initrd")],
            options,
        }
    }

    /// The entry Basalt writes for the unified kernel image of `version` in `slot`: a type #1
    /// entry whose `efi` line names the UKI at `/basalt/<file form>/`[`UKI_FILE`] (the
    /// firmware checks its Secure Boot signature when systemd-boot loads it), no `initrd`,
    /// and `options` = the UKI's own signed command line `uki_cmdline` plus
    /// `basalt.slot=<a|b>`. Under Secure Boot systemd-stub ignores the `options` (its signed
    /// `.cmdline` wins); without it, the stub takes them instead, so they repeat the signed
    /// line. `basalt.slot=` maps the entry to its slot for this backend.
    pub fn new_uki(
        version: &ReleaseVersion,
        slot: Slot,
        key: StageKey,
        uki_cmdline: &str,
    ) -> BasaltEntry {
        let dir = kernel_dir(version);
        BasaltEntry {
            version: version.to_string(),
            entry_version: version.entry_version(),
            sort_key: Some(key.sort_key()),
            slot,
            loader: LoaderType::Efi,
            linux: format!("/{dir}/{UKI_FILE}"),
            initrd: Vec::new(),
            options: format!("{} {SLOT_OPTION}{}", uki_cmdline.trim(), slot.letter()),
        }
    }

    /// The stage key, when the `sort-key` line is one.
    pub fn stage_key(&self) -> Option<StageKey> {
        self.sort_key.as_deref().and_then(StageKey::parse)
    }

    /// The file content.
    pub fn render(&self) -> String {
        let mut s = format!(
            "title Basalt {v} (slot {slot})\n",
            v = self.version,
            slot = self.slot
        );
        if let Some(k) = &self.sort_key {
            s.push_str(&format!("sort-key {k}\n"));
        }
        let key = match self.loader {
            LoaderType::Linux => "linux",
            LoaderType::Efi => "efi",
        };
        s.push_str(&format!(
            "version {}\n{key} {}\n",
            self.entry_version, self.linux
        ));
        for i in &self.initrd {
            s.push_str(&format!("initrd {i}\n"));
        }
        s.push_str(&format!("options {}\n", self.options));
        s
    }

    /// Strictly parse entry file `name` with `content`: UTF-8, a `linux` kernel (or an `efi`
    /// program without `initrd` lines: a UKI entry), a `version`
    /// and exactly one `basalt.slot=a|b` option are required.
    pub fn parse(name: &str, content: &[u8]) -> Result<BasaltEntry, Error> {
        let bad = |reason: String| Error::BlsEntryParse {
            name: name.to_string(),
            reason,
        };
        let text =
            std::str::from_utf8(content).map_err(|e| bad(format!("not UTF-8 text ({e})")))?;
        if text.contains('\0') {
            return Err(bad("contains a NUL byte".into()));
        }
        let e = EntryFile::parse(content);
        let (loader, linux) = match e.loader {
            Some((LoaderType::Efi, _)) if !e.initrd.is_empty() => {
                return Err(bad(
                    "an `efi` entry with `initrd` lines (Basalt's UKI entries have none)".into(),
                ))
            }
            Some(l) => l,
            None => return Err(bad("no `linux` or `efi` line".into())),
        };
        let entry_version = e.version.ok_or_else(|| bad("no `version` line".into()))?;
        let options = e.options.unwrap_or_default();
        let slots: Vec<&str> = options
            .split_ascii_whitespace()
            .filter_map(|o| o.strip_prefix(SLOT_OPTION))
            .collect();
        let slot = match slots.as_slice() {
            ["a"] => Slot::A,
            ["b"] => Slot::B,
            [] => return Err(bad(format!("no `{SLOT_OPTION}` option"))),
            _ => {
                return Err(bad(format!(
                    "`{SLOT_OPTION}` must be given once, as a or b"
                )))
            }
        };
        Ok(BasaltEntry {
            version: release_from_entry_version(&entry_version),
            entry_version,
            sort_key: e.sort_key,
            slot,
            loader,
            linux,
            initrd: e.initrd,
            options,
        })
    }
}

/// The file name of `version`'s entry without counter and `.conf`: `basalt-<file form>`.
pub fn entry_base(version: &ReleaseVersion) -> String {
    format!("{BASALT_PREFIX}{}", version.file_form())
}

/// Where the kernel and initrd of `version` live on the ESP (no leading `/`):
/// `basalt/<file form>`.
pub fn kernel_dir(version: &ReleaseVersion) -> String {
    format!("basalt/{}", version.file_form())
}

impl fmt::Display for Counter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "+{}-{}", self.left, self.done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter(name: &str) -> Option<(String, Option<(u64, u64)>)> {
        EntryName::parse_lenient(name).map(|n| (n.base, n.counter.map(|c| (c.left, c.done))))
    }

    #[test]
    fn counters_as_systemd_boot_reads_them() {
        // The series from systemd-boot's own comment (boot.c, config_entry_parse_tries).
        assert_eq!(
            counter("foobar+3.conf"),
            Some(("foobar".into(), Some((3, 0))))
        );
        assert_eq!(
            counter("foobar+2-1.conf"),
            Some(("foobar".into(), Some((2, 1))))
        );
        assert_eq!(
            counter("foobar+0-3.conf"),
            Some(("foobar".into(), Some((0, 3))))
        );
        assert_eq!(
            counter("foobar+4-0.conf"),
            Some(("foobar".into(), Some((4, 0))))
        );
        assert_eq!(
            counter("x+12-345.CONF"),
            Some(("x".into(), Some((12, 345))))
        );
        // Not counters: part of the name, entry not counted.
        assert_eq!(counter("foobar.conf"), Some(("foobar".into(), None)));
        assert_eq!(counter("a+x-1.conf"), Some(("a+x-1".into(), None)));
        assert_eq!(counter("a+-1.conf"), Some(("a+-1".into(), None)));
        assert_eq!(counter("a+1-.conf"), Some(("a+1-".into(), None)));
        assert_eq!(counter("a+1-2-3.conf"), Some(("a+1-2-3".into(), None)));
        assert_eq!(counter("a-3.conf"), Some(("a-3".into(), None)));
        assert_eq!(
            counter("a+99999999999999999999.conf"),
            Some(("a+99999999999999999999".into(), None))
        );
        assert_eq!(counter("a.efi"), None);
        assert_eq!(counter(".conf"), Some(("".into(), None)));
    }

    #[test]
    fn bump_follows_the_documented_series() {
        let mut name = "foobar+3.conf".to_string();
        let mut seen = vec![name.clone()];
        for _ in 0..4 {
            name = EntryName::parse(&name).unwrap().bumped_file_name().unwrap();
            seen.push(name.clone());
        }
        assert_eq!(
            seen,
            [
                "foobar+3.conf",
                "foobar+2-1.conf",
                "foobar+1-2.conf",
                "foobar+0-3.conf",
                "foobar+0-4.conf"
            ]
        );
        assert_eq!(EntryName::parse("x.conf").unwrap().bumped_file_name(), None);
    }

    #[test]
    fn strict_names_reject_malformed_counters() {
        for bad in [
            "basalt-1.0+x-1.conf",
            "basalt-1+.conf",
            "basalt-1.0",
            "+3.conf",
        ] {
            assert!(
                matches!(EntryName::parse(bad), Err(Error::BlsEntryName { .. })),
                "{bad}"
            );
        }
        let n = EntryName::parse("basalt-1.0+1-2.conf").unwrap();
        assert_eq!(n.file_name(), "basalt-1.0+1-2.conf");
        assert_eq!(
            EntryName::parse("basalt-1.0+3-0.conf").unwrap().file_name(),
            "basalt-1.0+3.conf"
        );
    }

    #[test]
    fn entry_round_trip_and_lenient_reading() {
        let v = ReleaseVersion::parse("1.2.0-rc.1+b.5").unwrap();
        let key = StageKey::new(99_999_998).unwrap();
        let e = BasaltEntry::new(&v, Slot::B, key, &"ab".repeat(32), " console=ttyS0 ");
        let text = e.render();
        assert_eq!(BasaltEntry::parse("x.conf", text.as_bytes()).unwrap(), e);
        assert_eq!(e.version, "1.2.0-rc.1+b.5");
        assert_eq!(e.stage_key(), Some(key));
        let f = EntryFile::parse(text.as_bytes());
        assert_eq!(f.title.as_deref(), Some("Basalt 1.2.0-rc.1+b.5 (slot B)"));
        assert_eq!(f.sort_key.as_deref(), Some("99999998-basalt"));
        assert_eq!(f.version.as_deref(), Some("1.2.0~rc.1^b.5"));
        assert_eq!(
            f.loader,
            Some((LoaderType::Linux, "/basalt/1.2.0-rc.1_b.5/vmlinuz".into()))
        );
        assert_eq!(entry_base(&v), "basalt-1.2.0-rc.1_b.5");
        assert!(text.contains("options usrhash=abab"));
        assert!(text.contains("basalt.slot=b console=ttyS0\n"));

        // An entry written by older code: `sort-key basalt`, raw semver in `version`.
        let legacy = b"title Basalt 1.2.0-rc.1 (slot A)\nsort-key basalt\nversion 1.2.0-rc.1\n\
            linux /basalt/1.2.0-rc.1/vmlinuz\noptions usrhash=00 basalt.slot=a\n";
        let old = BasaltEntry::parse("basalt-1.2.0-rc.1.conf", legacy).unwrap();
        assert_eq!(old.version, "1.2.0-rc.1");
        assert_eq!(old.sort_key.as_deref(), Some("basalt"));
        assert_eq!(old.stage_key(), None);
        assert_eq!(old.slot, Slot::A);

        let odd = b"# c\n  title   \"Quoted T\"  \r\nlinux\n options a\noptions b\0linux /x";
        let f = EntryFile::parse(odd);
        assert_eq!(f.title.as_deref(), Some("Quoted T"));
        assert_eq!(
            f.loader, None,
            "key without value and text after NUL are ignored"
        );
        assert_eq!(f.options.as_deref(), Some("a b"));
        let arm = EntryFile::parse(b"architecture aa64\nlinux /k\n");
        assert!(arm.foreign_architecture);
    }

    #[test]
    fn strict_entry_errors_are_typed() {
        let cases: [&[u8]; 6] = [
            b"\xff\xfe garbage",
            b"title x\n",
            b"linux /k\nversion 1\n",
            b"linux /k\nversion 1\noptions basalt.slot=c\n",
            b"linux /k\nversion 1\noptions basalt.slot=a basalt.slot=b\n",
            b"efi /k.efi\ninitrd /i\nversion 1\noptions basalt.slot=a\n",
        ];
        for c in cases {
            assert!(
                matches!(
                    BasaltEntry::parse("e.conf", c),
                    Err(Error::BlsEntryParse { .. })
                ),
                "{:?}",
                String::from_utf8_lossy(c)
            );
        }
    }
}
