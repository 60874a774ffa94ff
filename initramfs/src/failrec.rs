//! Failure records: why `basalt-init` refused a boot, left in an EFI variable for the next
//! boot's updater (after a fallback it would otherwise only see "tries ran out").
//!
//! Owns the variable's name and format, the pure encoder/decoder (used by the writer here
//! and by the reader in the updater) and the writer's I/O. Does not own: what the updater
//! does with the records (report them, clear the variable) — see docs/ARCHITECTURE.md.
//!
//! Why an EFI variable: it depends on no disk. The failures to explain include
//! `no-boot-disk`, `usr-partition-not-found`, `mount-root` and `root-unrecognised`, where the
//! disk is missing or must not be written; the ESP is the boot loader's file system, which a
//! failing initramfs should not write either. Without EFI (direct kernel boot) nothing is
//! recorded.
//!
//! The variable `BasaltInitFailure-<VENDOR_GUID>` (non-volatile, boot-service and runtime
//! access) holds at most [`MAX_RECORDS`] ASCII lines, newest last:
//!
//! ```text
//! v1 reason=usrhash-not-signed slot=b usrhash=<64 hex> uptime=2.31 detail=<error, one line>
//! ```
//!
//! A line is at most 322 bytes as written ([`MAX_LINE`] accepts 400), so the variable stays
//! under 1.3 KiB.
//!
//! `slot` and `usrhash` are `-` when the command line does not give them, `uptime` when
//! `/proc/uptime` is unreadable; `detail` is the error chain reduced to printable ASCII and
//! at most [`MAX_DETAIL`] bytes. Whoever can write firmware variables (root on the node) can
//! forge a record: it is diagnostic input, never a reason for a boot decision, and the
//! decoder accepts only well-formed lines of bounded size.

use std::path::Path;

use crate::reason::Reason;

/// Basalt's EFI vendor GUID (`basalt_identity::efivar`, the one place it is written).
pub const VENDOR_GUID: basalt_identity::Guid = basalt_identity::efivar::BASALT_VENDOR;
/// The variable's name (without the GUID).
pub const VAR_NAME: &str = "BasaltInitFailure";
/// Where efivarfs is mounted.
pub use basalt_identity::efivar::EFIVARS_DIR;
/// `EFI_VARIABLE_NON_VOLATILE | BOOTSERVICE_ACCESS | RUNTIME_ACCESS`.
pub const ATTRIBUTES: u32 = 0x7;
/// Records kept: the newest ones (three tries of a slot and one more).
pub const MAX_RECORDS: usize = 4;
/// Longest record line accepted: the longest line the writer produces (tag, a 40-character
/// reason, slot, 64-digit usrhash, 16-character uptime, [`MAX_DETAIL`]) is 322 bytes.
pub const MAX_LINE: usize = 400;
/// Longest `detail` written.
pub const MAX_DETAIL: usize = 160;
/// Bytes of an existing variable read at most (a forged huge one is cut here).
pub const MAX_VARIABLE: usize = 4096;
const TAG: &str = "v1";

/// The efivarfs file name: `BasaltInitFailure-<GUID>`.
pub fn var_file_name() -> String {
    format!("{VAR_NAME}-{VENDOR_GUID}")
}

/// One failed boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The stable reason token (see [`Reason`]; kept as text so a reader also takes tokens
    /// of a newer `basalt-init`).
    pub reason: String,
    /// `a` or `b`, from `basalt.slot=`.
    pub slot: Option<char>,
    /// The `usrhash=` of the refused boot (64 lower-case hex digits).
    pub usrhash: Option<String>,
    /// Seconds since kernel start when it failed (as `/proc/uptime` wrote them).
    pub uptime: Option<String>,
    /// The error chain, printable ASCII, at most [`MAX_DETAIL`] bytes.
    pub detail: String,
}

impl Record {
    /// The record of a failure with `reason` and `detail`, on a boot with kernel command
    /// line `cmdline` (read leniently: a malformed line still gives a record).
    pub fn new(reason: Reason, cmdline: &str, uptime: Option<f64>, detail: &str) -> Record {
        let (usrhash, slot) = lenient_cmdline(cmdline);
        Record {
            reason: reason.as_str().to_string(),
            slot,
            usrhash,
            uptime: uptime.map(|u| format!("{u:.2}")),
            detail: sanitise(detail),
        }
    }

    /// The reason, when it is one this `basalt-init` knows.
    pub fn known_reason(&self) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == self.reason)
    }

    /// The record line (no newline).
    pub fn line(&self) -> String {
        let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        format!(
            "{TAG} reason={} slot={} usrhash={} uptime={} detail={}",
            self.reason,
            self.slot.map_or_else(|| "-".into(), String::from),
            dash(&self.usrhash),
            dash(&self.uptime),
            self.detail
        )
    }

    /// Parse one record line; the error says what is wrong with it.
    pub fn parse(line: &str) -> Result<Record, String> {
        if line.len() > MAX_LINE {
            return Err(format!("longer than {MAX_LINE} bytes"));
        }
        if !line.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return Err("not printable ASCII".into());
        }
        let (head, detail) = line.split_once(" detail=").ok_or("no `detail=` field")?;
        if detail.len() > MAX_DETAIL {
            return Err(format!("detail longer than {MAX_DETAIL} bytes"));
        }
        let mut fields = head.split(' ');
        if fields.next() != Some(TAG) {
            return Err(format!("does not start with {TAG}"));
        }
        let (mut reason, mut slot, mut usrhash, mut uptime) = (None, None, None, None);
        for f in fields {
            let (key, value) = f.split_once('=').ok_or_else(|| format!("field {f:?}"))?;
            let value = (value != "-").then(|| value.to_string());
            match key {
                "reason" => reason = value,
                "slot" => slot = value,
                "usrhash" => usrhash = value,
                "uptime" => uptime = value,
                // Fields a newer writer may add.
                _ => {}
            }
        }
        let reason = reason
            .filter(|r| {
                (1..=40).contains(&r.len())
                    && r.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            })
            .ok_or("missing or malformed reason")?;
        let slot = match slot.as_deref() {
            None => None,
            Some("a") => Some('a'),
            Some("b") => Some('b'),
            Some(s) => return Err(format!("slot {s:?}")),
        };
        if let Some(h) = &usrhash {
            if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("usrhash {h:?}"));
            }
        }
        if let Some(u) = &uptime {
            if u.is_empty() || u.len() > 16 || !u.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
                return Err(format!("uptime {u:?}"));
            }
        }
        Ok(Record {
            reason,
            slot,
            usrhash: usrhash.map(|h| h.to_ascii_lowercase()),
            uptime,
            detail: detail.to_string(),
        })
    }
}

/// `usrhash=` (or `verity.usrhash=`) and `basalt.slot=` of a command line, the last valid
/// occurrence of each; never fails.
fn lenient_cmdline(cmdline: &str) -> (Option<String>, Option<char>) {
    let (mut hash, mut slot) = (None, None);
    for opt in cmdline.split_ascii_whitespace() {
        let opt = opt.trim_matches('"');
        if opt == "--" {
            break;
        }
        let h = opt
            .strip_prefix("usrhash=")
            .or_else(|| opt.strip_prefix("verity.usrhash="));
        if let Some(h) = h.filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit())) {
            hash = Some(h.to_ascii_lowercase());
        }
        match opt.strip_prefix("basalt.slot=") {
            Some("a") => slot = Some('a'),
            Some("b") => slot = Some('b'),
            _ => {}
        }
    }
    (hash, slot)
}

/// Printable ASCII only (anything else becomes `?`), one line, at most [`MAX_DETAIL`] bytes.
fn sanitise(text: &str) -> String {
    text.chars()
        .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
        .take(MAX_DETAIL)
        .collect()
}

/// The records in a variable's data (efivarfs content after its 4 attribute bytes), oldest
/// first, and the lines that are not records (with why).
pub fn decode(data: &[u8]) -> (Vec<Record>, Vec<String>) {
    let data = &data[..data.len().min(MAX_VARIABLE)];
    let text = String::from_utf8_lossy(data);
    let (mut good, mut bad) = (Vec::new(), Vec::new());
    for line in text.split('\n').filter(|l| !l.is_empty()) {
        match Record::parse(line) {
            Ok(r) => good.push(r),
            Err(why) => bad.push(format!(
                "{:?}: {why}",
                line.chars().take(80).collect::<String>()
            )),
        }
    }
    (good, bad)
}

/// The variable data after adding `record` to `existing` data: the newest
/// [`MAX_RECORDS`] − 1 valid records kept, the new one last; lines that are not records
/// are dropped.
pub fn append(existing: &[u8], record: &Record) -> Vec<u8> {
    let (old, _) = decode(existing);
    let keep = old.len().saturating_sub(MAX_RECORDS - 1);
    let mut out = String::new();
    for r in old[keep..].iter().chain(std::iter::once(record)) {
        out.push_str(&r.line());
        out.push('\n');
    }
    out.into_bytes()
}

/// The efivarfs file content (attributes, then data) that adds `record` to the variable
/// whose current efivarfs content is `current` (`None`: no variable yet).
pub fn efivarfs_content(current: Option<&[u8]>, record: &Record) -> Vec<u8> {
    let existing = current.and_then(|c| c.get(4..)).unwrap_or_default();
    let mut out = ATTRIBUTES.to_le_bytes().to_vec();
    out.extend(append(existing, record));
    out
}

/// Add `record` to the variable in the efivarfs directory `efivars`: read it, then replace it
/// with one `write(2)` (efivarfs takes a variable in a single write).
pub fn store(efivars: &Path, record: &Record) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let path = efivars.join(var_file_name());
    let current = match std::fs::File::open(&path) {
        Ok(f) => {
            let mut buf = Vec::new();
            f.take(MAX_VARIABLE as u64 + 4).read_to_end(&mut buf)?;
            Some(buf)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let content = efivarfs_content(current.as_deref(), record);
    // efivarfs makes a variable of an unknown vendor immutable as soon as it exists: clear
    // the flag to rewrite it, and set it again afterwards (as systemd does).
    #[cfg(target_os = "linux")]
    let was_immutable = match current {
        Some(_) => crate::sys::set_immutable(&path, false)?,
        None => false,
    };
    // No O_TRUNC: efivarfs replaces the whole variable on each write (the file has no
    // settable size). The content never shrinks below what a plain file held before, so a
    // directory standing in for efivarfs in tests reads the same.
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .and_then(|mut f| f.write(&content));
    #[cfg(target_os = "linux")]
    if was_immutable {
        crate::sys::set_immutable(&path, true)?;
    }
    let n = written?;
    if n != content.len() {
        return Err(std::io::Error::other(format!(
            "short write to {}: {n} of {} bytes",
            path.display(),
            content.len()
        )));
    }
    Ok(())
}

/// `basalt-init`'s failure path: record `reason` and `detail` for the next boot. Best effort
/// and bounded (no loops, no waits): every problem is logged and the reboot goes on.
#[cfg(target_os = "linux")]
pub fn record_failure(log: &mut crate::sys::Log, reason: Reason, detail: &str) {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let record = Record::new(reason, &cmdline, crate::sys::uptime(), detail);
    match mount_efivarfs() {
        Ok(None) => log.info("no EFI: the failure is not recorded for the next boot"),
        Ok(Some(dir)) => match store(&dir, &record) {
            Ok(()) => log.info(&format!(
                "failure recorded in EFI variable {}",
                var_file_name()
            )),
            Err(e) => log.warn(&format!(
                "cannot record the failure in EFI variable {}: {e}",
                var_file_name()
            )),
        },
        Err(e) => log.warn(&format!(
            "cannot mount efivarfs at {EFIVARS_DIR} to record the failure: {e}"
        )),
    }
}

/// Mount efivarfs unless it is mounted; `None` without EFI. Loads `efivarfs.ko` from the
/// initramfs's module list when the file system is not known yet (a failure before the
/// module step).
#[cfg(target_os = "linux")]
pub(crate) fn mount_efivarfs() -> std::io::Result<Option<std::path::PathBuf>> {
    use crate::sys;
    let dir = Path::new(EFIVARS_DIR);
    if !dir.parent().is_some_and(Path::is_dir) {
        return Ok(None);
    }
    let mounted = std::fs::read_to_string("/proc/mounts")?.lines().any(|l| {
        let mut f = l.split(' ').skip(1);
        (f.next(), f.next()) == (Some(EFIVARS_DIR), Some("efivarfs"))
    });
    if mounted {
        return Ok(Some(dir.to_path_buf()));
    }
    let flags = libc::MS_NOSUID | libc::MS_NOEXEC | libc::MS_NODEV;
    let mount = || sys::mount("efivarfs", dir, "efivarfs", flags, "");
    match mount() {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => {
            let list = std::fs::read_to_string(crate::modules::MODULE_LIST_PATH)?;
            let entries = crate::modules::parse_module_list(&list)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            let module = entries
                .iter()
                .find(|m| {
                    m.path
                        .rsplit('/')
                        .next()
                        .is_some_and(|f| f.starts_with("efivarfs.ko"))
                })
                .ok_or_else(|| std::io::Error::other("efivarfs is not in the module list"))?;
            sys::load_module(
                Path::new(&module.path),
                crate::modules::is_compressed(&module.path),
            )?;
            mount()?;
        }
        Err(e) => return Err(e),
    }
    Ok(Some(dir.to_path_buf()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash() -> String {
        "0123456789abcdef".repeat(4)
    }

    #[test]
    fn a_record_round_trips_through_its_line() {
        let cmd = format!(
            "console=ttyS0 usrhash={} basalt.slot=b quiet",
            hash().to_uppercase()
        );
        let r = Record::new(
            Reason::UsrhashNotSigned,
            &cmd,
            Some(2.314),
            "usr-hash statement: no key of the trust root signed\nit \u{e9}",
        );
        assert_eq!(r.usrhash.as_deref(), Some(hash().as_str()));
        assert_eq!(r.slot, Some('b'));
        assert_eq!(r.uptime.as_deref(), Some("2.31"));
        assert_eq!(
            r.detail,
            "usr-hash statement: no key of the trust root signed?it ?"
        );
        let line = r.line();
        assert_eq!(
            line,
            format!(
                "v1 reason=usrhash-not-signed slot=b usrhash={} uptime=2.31 detail={}",
                hash(),
                r.detail
            )
        );
        assert_eq!(Record::parse(&line), Ok(r.clone()));
        assert_eq!(r.known_reason(), Some(Reason::UsrhashNotSigned));
        // Every reason token fits the line format, with every field at its longest.
        let full = format!("usrhash={} basalt.slot=a", hash());
        for reason in Reason::ALL {
            let r = Record::new(reason, &full, Some(9_999_999_999.0), &"x".repeat(500));
            assert_eq!(r.detail.len(), MAX_DETAIL);
            assert!(r.line().len() <= MAX_LINE, "{}", r.line().len());
            assert_eq!(
                Record::parse(&r.line()).unwrap().known_reason(),
                Some(reason)
            );
        }
        let longest = Record {
            reason: "r".repeat(40),
            uptime: Some("9".repeat(16)),
            ..Record::new(Reason::Panic, &full, None, &"x".repeat(500))
        };
        assert_eq!(longest.line().len(), 322);
        assert_eq!(Record::parse(&longest.line()), Ok(longest));
    }

    #[test]
    fn the_command_line_is_read_leniently() {
        let r = Record::new(
            Reason::CmdlineInvalid,
            "usrhash=xyz basalt.slot=c",
            None,
            "e",
        );
        assert_eq!((r.usrhash, r.slot), (None, None));
        let r = Record::new(
            Reason::MountRoot,
            &format!(
                "verity.usrhash={} basalt.slot=a -- usrhash={}",
                hash(),
                "f".repeat(64)
            ),
            None,
            "e",
        );
        assert_eq!(r.usrhash.as_deref(), Some(hash().as_str()));
        assert_eq!(r.slot, Some('a'));
        assert_eq!(
            Record::parse(&r.line()).unwrap().line(),
            format!(
                "v1 reason=mount-root slot=a usrhash={} uptime=- detail=e",
                hash()
            )
        );
    }

    #[test]
    fn the_variable_keeps_the_newest_four() {
        let mut content: Option<Vec<u8>> = None;
        // Full-size records, as a real refused boot writes them.
        let cmd = format!("usrhash={} basalt.slot=b", hash());
        for i in 0..7 {
            let r = Record::new(Reason::ALL[i], &cmd, Some(i as f64), &"d".repeat(400));
            content = Some(efivarfs_content(content.as_deref(), &r));
        }
        let content = content.unwrap();
        assert_eq!(content[..4], ATTRIBUTES.to_le_bytes());
        let (records, bad) = decode(&content[4..]);
        assert!(bad.is_empty(), "{bad:?}");
        let reasons: Vec<&str> = records.iter().map(|r| r.reason.as_str()).collect();
        assert_eq!(
            reasons,
            // Reason::ALL[3..7]: the oldest three were dropped.
            [
                "cmdline-invalid",
                "module-load",
                "no-boot-disk",
                "boot-disk-ambiguous"
            ]
        );
    }

    #[test]
    fn garbage_is_reported_and_dropped_never_kept() {
        let good = Record::new(Reason::Panic, "", None, "boom").line();
        let long = format!("{good}{}", "y".repeat(MAX_LINE));
        let lines = [
            "garbage",
            "v2 reason=x detail=y",
            "v1 reason=UPPER detail=y",
            "v1 reason=x slot=c detail=y",
            "v1 reason=x usrhash=123 detail=y",
            "v1 reason=x uptime=1e9 detail=y",
            "v1 reason=x uptime=1",
            "v1 slot=a detail=y",
            long.as_str(),
            "v1 reason=x detail=\u{7}",
        ];
        let mut data = lines.join("\n").into_bytes();
        data.extend(b"\n\xff\xfe\n");
        data.extend(good.as_bytes());
        let (records, bad) = decode(&data);
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].line(), good);
        assert_eq!(bad.len(), lines.len() + 1, "{bad:?}");
        // Unknown fields of a newer writer are skipped; an unknown reason token is kept.
        let newer = Record::parse("v1 reason=future-thing boot=7 slot=a detail=d").unwrap();
        assert_eq!(
            (newer.reason.as_str(), newer.slot, newer.known_reason()),
            ("future-thing", Some('a'), None)
        );
        // Adding to a garbage variable keeps only real records.
        let mut current = ATTRIBUTES.to_le_bytes().to_vec();
        current.extend(&data);
        let out = efivarfs_content(Some(&current), &records[0]);
        assert_eq!(
            String::from_utf8(out[4..].to_vec()).unwrap(),
            format!("{good}\n{good}\n")
        );
        // A huge variable is cut before parsing.
        let huge = vec![b'a'; 10 * MAX_VARIABLE];
        assert_eq!(decode(&huge).1.len(), 1);
    }

    #[test]
    fn store_reads_and_replaces_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let r = Record::new(Reason::NoBootDisk, "basalt.slot=a", Some(10.0), "no disk");
        store(dir.path(), &r).unwrap();
        store(dir.path(), &r).unwrap();
        let bytes = std::fs::read(dir.path().join(var_file_name())).unwrap();
        assert_eq!(bytes[..4], [7, 0, 0, 0]);
        let (records, bad) = decode(&bytes[4..]);
        assert_eq!((records.len(), bad.len()), (2, 0));
        assert_eq!(
            var_file_name(),
            "BasaltInitFailure-009957d3-23b2-474e-b6a0-3215a257ae44"
        );
    }

    /// efivarfs marks an existing variable immutable; `store` clears the flag to rewrite it
    /// and sets it again (seen under OVMF: without this the second failure got EPERM).
    /// Needs a file system with inode flags and CAP_LINUX_IMMUTABLE, as the tests run here.
    #[cfg(target_os = "linux")]
    #[test]
    fn store_rewrites_an_immutable_variable_and_keeps_it_immutable() {
        use crate::sys::set_immutable;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(var_file_name());
        let r = Record::new(Reason::MountRoot, "", None, "first");
        store(dir.path(), &r).unwrap();
        assert!(!set_immutable(&path, true).unwrap());
        assert!(
            std::fs::OpenOptions::new().write(true).open(&path).is_err(),
            "this file system ignores the immutable flag: the test would prove nothing"
        );
        let r2 = Record::new(Reason::MountUsr, "", None, "second");
        let stored = store(dir.path(), &r2);
        let still = set_immutable(&path, false).unwrap(); // and clear it for the cleanup
        stored.unwrap();
        assert!(still, "the flag was not restored");
        let (records, _) = decode(&std::fs::read(&path).unwrap()[4..]);
        assert_eq!(records, [r, r2]);
    }
}
