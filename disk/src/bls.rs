//! The default boot-control backend: systemd-boot with Boot Loader Specification Type #1
//! entries and its boot counting, on the ESP (any [`Esp`]).
//!
//! ## What is on the ESP
//!
//! ```text
//! EFI/BOOT/BOOTX64.EFI                      systemd-boot
//! loader/loader.conf                        timeout 0, editor no, auto-entries no — no `default`
//! loader/entries/basalt-<file form>[+L[-D]].conf
//! basalt/<file form>/vmlinuz, basalt/<file form>/initrd
//! basalt/<file form>/uki.efi                a release's signed UKI (`stage_uki`), instead
//! ```
//!
//! ## Unified kernel images (`BootControl::stage_uki`)
//!
//! A release that ships a signed UKI is staged as a **type #1 entry whose `efi` line names
//! the UKI** (`efi /basalt/<file form>/uki.efi`, no `initrd`), not as a type #2 file in
//! `EFI/Linux/`. Why: the order of type #2 entries comes from the UKI's signed `.osrel`
//! (fixed at build time), so the stage key that makes the entry staged last boot first
//! (downgrades, pre-releases, rebuilds; and a first UKI over a slot whose loose entry holds a
//! stage key — digits sort before `basalt`, so a type #2 `basalt` entry would never win)
//! could not be written; with a type #1 entry everything below — stage keys, counters in the
//! `.conf` name, bless, rollback, cancel, garbage collection, the crash-safe write order —
//! is the same code for both kinds. The firmware still checks the UKI's Secure Boot signature
//! when systemd-boot loads it, and systemd-stub ignores the entry's `options` under Secure
//! Boot (its signed `.cmdline` wins; `tests/tests/boot_secure.rs` case 5). The `options`
//! line repeats the UKI's own command line plus `basalt.slot=` (slot mapping for this
//! backend; without Secure Boot the stub would take the options instead of its `.cmdline`).
//! `stage_uki` reads the UKI once, checks that its `.cmdline` names the target's `usrhash=`
//! and no `basalt.slot=` (typed [`Error::UkiTarget`], nothing written), and writes the bytes
//! it checked. Nothing is ever written to `EFI/Linux/` (systemd-boot would list the file a
//! second time, as an uncounted type #2 entry).
//!
//! An entry is `title Basalt <version> (slot <A|B>)`, `sort-key <stage key>`, `version
//! <version line>`, `linux`, `initrd` and `options usrhash=<root hash> basalt.slot=<a|b>
//! <extra>`. **`basalt.slot=`** names the A/B slot whose `/usr` the entry boots: the initramfs
//! uses it to pick the USR partition (and the backend to map entries to slots); `usrhash=` is
//! the dm-verity root hash of that `/usr`.
//!
//! ## Versions and boot order (details and examples in [`version`])
//!
//! The release version is semver. **The entry staged last boots first, whatever its
//! version** — an upgrade, a pre-release after its final (`1.2.0-rc.1` while `1.2.0` is
//! good), an operator-approved downgrade, another build of the same version — because order
//! comes from the `sort-key`, not the version: `stage` writes the [`version::StageKey`] one
//! below the smallest stage key of the entries it keeps (`99999999-basalt`,
//! `99999998-basalt`, …), derived from the ESP alone. The `version` line is the
//! systemd-friendly form of the semver (pre-release `-` → `~`, build `+` → `^`); file names
//! and kernel directories carry the build `+` as `_`, so a name never holds a second `+`.
//! Entries written by older code (`sort-key basalt`, raw semver) are read as before, and a
//! new stage sorts before them. `status()` reports the semver, decoded from the entry.
//!
//! `stage` refuses, with a typed error and before any write: a version that is not semver,
//! a version whose file names clash with an entry it keeps (the other slot holding the same
//! version: a rebuilt release needs other build metadata; FAT names ignore case), and — the
//! only order refusal left — a foreign entry that systemd-boot would still boot first (a
//! `sort-key` below Basalt's, or no stage key left below the smallest one).
//!
//! ## Boot counting (systemd-boot 252 semantics, see [`order`] for the selection rule)
//!
//! ```text
//!  stage(slot, tries=3)       boot        boot        boot
//!  basalt-V+3.conf ──────▶ +2-1.conf ──▶ +1-2.conf ──▶ +0-3.conf  (Bad: sorted last, the
//!        │                    │            │                       other slot boots)
//!        └────────────────────┴────────────┴── mark_good: rename to basalt-V.conf (Good)
//! mark_bad:  rename to basalt-V+0-D.conf (D = tries done, 0 for a blessed entry); the files
//!            stay for diagnosis. systemd-boot still boots a Bad entry when *every* entry is
//!            Bad, so `status().next` is `None` only when no entry is loadable at all.
//! cancel:    remove the slot's entries (and kernels no other entry uses) → Absent.
//! rollback(to): `to` must be Good; every entry of the other slot is renamed Bad, so `to`
//!            boots next whatever the two versions and stage keys are.
//! ```
//!
//! Renames never change the `sort-key`, so `mark_good`, `mark_bad`, `boot_attempt` and
//! `cancel` never reorder two live entries: a staged slot stays the next boot while it has
//! tries left, until it is marked bad, cancelled, rolled away from, or the other slot is
//! staged.
//!
//! Status mapping, from the first entry of the slot in systemd-boot's order: no counter →
//! Good, `+N[-M]` with N > 0 → Trying, `+0-M` → Bad, no loadable entry → Absent. An entry
//! systemd-boot would not load (no `linux` line, kernel file missing, foreign architecture)
//! is ignored exactly as the boot loader ignores it; a loadable `basalt-*.conf` that is not a
//! valid Basalt entry (no `basalt.slot=`, malformed counter such as `+x-1`) is a typed error
//! (fix: remove the file; `stage`/`cancel` cannot guess what it is).
//!
//! ## Write order (crash safety on a mounted ESP)
//!
//! `stage` writes kernel, initrd, then the entry (each temp + fsync + rename + fsync dir), and
//! only then removes the slot's older entries and unreferenced kernels: the other slot's entry
//! is never touched, so a bootable entry exists at every instant. The stage key does not
//! depend on the slot's own older entries, so a `stage` retried after a crash writes the same
//! entry. Every other operation is a single rename or removal of the slot's own entry
//! followed by garbage collection, and every operation can simply be retried after a crash.
//!
//! Not modelled: `LoaderEntryDefault`/`LoaderEntryOneShot` EFI variables and a `default` line
//! added to loader.conf by hand override the order (Basalt never sets them); Type #2 entries
//! (`EFI/Linux/*.efi`) are not read (Basalt writes none). Tries are capped at
//! [`entry::MAX_TRIES`] (a sanity bound; multi-digit counters are fine: systemd-boot 252
//! renames `+10` to `+9-1`, checked under OVMF by `tests/bls_systemd_boot.rs`).

pub mod entry;
pub mod order;
pub mod version;

use std::collections::BTreeSet;

use crate::esp::{self, Esp};
use crate::{BootControl, BootState, BootStatus, BootTarget, Error, Slot, SlotBoot, UkiTarget};

use entry::{BasaltEntry, Counter, EntryFile, EntryName, BASALT_PREFIX};
use order::SortItem;
use version::{ReleaseVersion, StageKey};

/// Directory of Type #1 entries.
pub const ENTRIES_DIR: &str = "loader/entries";
/// systemd-boot's configuration file.
pub const LOADER_CONF: &str = "loader/loader.conf";
/// Directory holding one sub-directory of kernel + initrd per version.
pub const KERNELS_DIR: &str = "basalt";
/// Vendor GUID of systemd-boot's EFI variables (`LoaderBootCountPath-<guid>` in efivarfs).
pub const LOADER_GUID: &str = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";
/// The loader.conf Basalt writes when none exists. No `default`: systemd-boot then boots the
/// first entry of its sort order, which is what boot counting needs (a Bad entry sorts last).
pub const LOADER_CONF_TEXT: &str = "\
# Written by Basalt. No `default` on purpose: systemd-boot boots the first entry of its
# order (sort-key, newest version first, entries with no tries left last).
timeout 0
editor no
auto-entries no
";

/// Why systemd-boot does not load an entry file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unloadable {
    /// No `linux` or `efi` line.
    NoLoader,
    /// The `linux`/`efi` file does not exist on the ESP.
    LoaderMissing(String),
    /// An `architecture` other than x64.
    ForeignArchitecture,
}

/// One entry file as seen by the backend.
#[derive(Debug, Clone)]
pub struct EntryInfo {
    /// File name in `loader/entries`.
    pub file: String,
    /// systemd-boot's reading of the name (base and counter).
    pub name: EntryName,
    /// systemd-boot's reading of the content.
    pub content: EntryFile,
    /// `None` when systemd-boot loads the entry.
    pub unloadable: Option<Unloadable>,
    /// The Basalt entry, for valid `basalt-*.conf` files.
    pub basalt: Option<BasaltEntry>,
}

impl EntryInfo {
    fn sort_item(&self) -> SortItem {
        SortItem::new(
            &self.file,
            self.content.sort_key.as_deref(),
            self.content.machine_id.as_deref(),
            self.content.version.as_deref(),
            self.name.counter,
        )
    }

    fn slot(&self) -> Option<Slot> {
        self.basalt.as_ref().map(|b| b.slot)
    }

    fn status(&self) -> BootStatus {
        match self.name.counter {
            None => BootStatus::Good,
            Some(Counter { left: 0, .. }) => BootStatus::Bad,
            Some(Counter { left, done }) => BootStatus::Trying {
                tries_left: u32::try_from(left).unwrap_or(u32::MAX),
                tries_done: u32::try_from(done).unwrap_or(u32::MAX),
            },
        }
    }
}

fn is_basalt_file(file: &str) -> bool {
    file.len() >= BASALT_PREFIX.len()
        && file.is_char_boundary(BASALT_PREFIX.len())
        && file[..BASALT_PREFIX.len()].eq_ignore_ascii_case(BASALT_PREFIX)
}

/// Normalise an ESP path from an entry (`/basalt//1.0/vmlinuz` → `basalt/1.0/vmlinuz`,
/// lower-cased since FAT names are case-insensitive).
fn norm(path: &str) -> String {
    path.split(['/', '\\'])
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("/")
        .to_ascii_lowercase()
}

/// The systemd-boot BLS backend over an ESP.
#[derive(Debug)]
pub struct BlsBackend<E: Esp> {
    esp: E,
}

impl<E: Esp> BlsBackend<E> {
    /// The backend on `esp`. Touches nothing.
    pub fn new(esp: E) -> Self {
        BlsBackend { esp }
    }

    /// The ESP.
    pub fn esp(&self) -> &E {
        &self.esp
    }

    /// The ESP, mutably (tests use it to damage things).
    pub fn esp_mut(&mut self) -> &mut E {
        &mut self.esp
    }

    /// Give the ESP back.
    pub fn into_inner(self) -> E {
        self.esp
    }

    /// Every entry file systemd-boot would look at (`*.conf` in `loader/entries`, not hidden,
    /// not `auto-*`), in directory order. A missing `loader/entries` is no entry at all (as
    /// for systemd-boot). Errors: unreadable files, and loadable `basalt-*.conf` files that
    /// are not valid Basalt entries.
    pub fn entries(&self) -> Result<Vec<EntryInfo>, Error> {
        let Some(list) = self.esp.list(ENTRIES_DIR)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for f in list {
            if f.is_dir || f.name.starts_with('.') || f.name.starts_with("auto-") {
                continue;
            }
            let Some(name) = EntryName::parse_lenient(&f.name) else {
                continue;
            };
            let path = esp::join(ENTRIES_DIR, &f.name);
            let bytes = self.esp.read(&path)?;
            let content = EntryFile::parse(&bytes);
            let unloadable = if content.foreign_architecture {
                Some(Unloadable::ForeignArchitecture)
            } else {
                match &content.loader {
                    None => Some(Unloadable::NoLoader),
                    Some((_, p)) => {
                        let exists = !norm(p).is_empty() && self.esp.exists(&norm(p))?;
                        (!exists).then(|| Unloadable::LoaderMissing(p.clone()))
                    }
                }
            };
            let basalt = if is_basalt_file(&f.name) {
                let parsed =
                    EntryName::parse(&f.name).and_then(|_| BasaltEntry::parse(&f.name, &bytes));
                match parsed {
                    Ok(b) => Some(b),
                    // systemd-boot would boot it, but we cannot tell which slot it is.
                    Err(e) if unloadable.is_none() => return Err(e),
                    Err(_) => None,
                }
            } else {
                None
            };
            out.push(EntryInfo {
                file: f.name,
                name,
                content,
                unloadable,
                basalt,
            });
        }
        Ok(out)
    }

    /// The loadable entries in systemd-boot's order; the first is what boots next.
    pub fn boot_order(&self) -> Result<Vec<EntryInfo>, Error> {
        let mut v: Vec<(SortItem, EntryInfo)> = self
            .entries()?
            .into_iter()
            .filter(|e| e.unloadable.is_none())
            .map(|e| (e.sort_item(), e))
            .collect();
        v.sort_by(|a, b| order::compare(&a.0, &b.0));
        Ok(v.into_iter().map(|(_, e)| e).collect())
    }

    /// The slot whose entry file is `file` (a name from [`booted_entry_file`]); matches on the
    /// name without counter, so the name before or after systemd-boot's rename both work.
    pub fn slot_of_entry(&self, file: &str) -> Result<Option<Slot>, Error> {
        let want = EntryName::parse(file)?;
        Ok(self
            .entries()?
            .into_iter()
            .find(|e| e.name.base.eq_ignore_ascii_case(&want.base) && e.basalt.is_some())
            .and_then(|e| e.slot()))
    }

    fn top(&self, slot: Slot) -> Result<Option<EntryInfo>, Error> {
        Ok(self
            .boot_order()?
            .into_iter()
            .find(|e| e.slot() == Some(slot)))
    }

    fn rename_entry(&mut self, from: &str, to: &str) -> Result<(), Error> {
        if from == to {
            return Ok(());
        }
        self.esp
            .rename(&esp::join(ENTRIES_DIR, from), &esp::join(ENTRIES_DIR, to))
    }

    fn ensure_loader_conf(&mut self) -> Result<(), Error> {
        if !self.esp.exists(LOADER_CONF)? {
            self.esp
                .write_atomic(LOADER_CONF, LOADER_CONF_TEXT.as_bytes())?;
        }
        Ok(())
    }

    /// Remove temp files left by interrupted writes, kernel directories no entry refers to,
    /// and files in a referenced directory that no entry names (a slot's kernel and initrd
    /// once its entry boots a UKI from the same directory). Only touches
    /// `loader/entries/.*.tmp` and `basalt/`.
    pub fn collect_garbage(&mut self) -> Result<(), Error> {
        if let Some(list) = self.esp.list(ENTRIES_DIR)? {
            for f in list
                .iter()
                .filter(|f| !f.is_dir && esp::is_temp_name(&f.name))
            {
                self.esp.remove(&esp::join(ENTRIES_DIR, &f.name))?;
            }
        }
        let mut used = BTreeSet::new();
        let mut used_files = BTreeSet::new();
        for e in self.entries()? {
            let paths = e
                .content
                .loader
                .iter()
                .map(|(_, p)| p)
                .chain(&e.content.initrd);
            for p in paths {
                let p = norm(p);
                let mut parts = p.split('/');
                if let (Some(KERNELS_DIR), Some(dir)) = (parts.next(), parts.next()) {
                    used.insert(dir.to_string());
                }
                used_files.insert(p);
            }
        }
        let Some(dirs) = self.esp.list(KERNELS_DIR)? else {
            return Ok(());
        };
        for d in dirs {
            let path = esp::join(KERNELS_DIR, &d.name);
            let keep = used.contains(&d.name.to_ascii_lowercase());
            if !d.is_dir {
                if !keep {
                    self.esp.remove(&path)?;
                }
                continue;
            }
            for f in self.esp.list(&path)?.unwrap_or_default() {
                let file = esp::join(&path, &f.name);
                let named = used_files.contains(&file.to_ascii_lowercase());
                if !keep || esp::is_temp_name(&f.name) || (!f.is_dir && !named) {
                    self.esp.remove(&file)?;
                }
            }
            if !keep {
                self.esp.remove(&path)?;
            }
        }
        Ok(())
    }

    fn stage_inner(
        &mut self,
        slot: Slot,
        version: &str,
        usr_hash: &str,
        payload: Payload<'_>,
        tries: u32,
    ) -> Result<(), Error> {
        let bad = |reason: String| Error::BlsTarget {
            version: version.to_owned(),
            reason,
        };
        if !(1..=entry::MAX_TRIES).contains(&tries) {
            return Err(bad(format!(
                "tries must be 1 to {}, got {tries}",
                entry::MAX_TRIES
            )));
        }
        let release = ReleaseVersion::parse(version).map_err(bad)?;
        let hash = usr_hash;
        if hash.len() != 64
            || !hash
                .bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
        {
            return Err(bad(format!(
                "usr_hash must be 64 lower-case hex digits, got {hash:?}"
            )));
        }
        if let Payload::Loose { options, .. } = &payload {
            if options.contains(['\n', '\r', '\0']) {
                return Err(bad("options must be one line".into()));
            }
        }

        // What stays on the ESP: everything but this slot's entries and Basalt-named files
        // nobody can attribute to a slot (both are removed below).
        let entries = self.entries()?;
        let kept: Vec<&EntryInfo> = entries.iter().filter(|e| !replaced_by(e, slot)).collect();
        let base = entry::entry_base(&release);
        let dir = entry::kernel_dir(&release);
        if let Some(clash) = kept
            .iter()
            .find(|e| e.name.base.eq_ignore_ascii_case(&base) || uses_dir(e, &dir))
        {
            let owner = match clash.slot() {
                Some(s) => format!("slot {s}'s entry"),
                None => "the entry".into(),
            };
            return Err(bad(format!(
                "{owner} {} already uses the names of this version ({base}.conf, {dir}/); \
                 the two slots must hold different versions (a rebuild needs other build \
                 metadata; FAT names ignore case)",
                clash.file
            )));
        }
        let key = StageKey::below_all(kept.iter().filter_map(|e| e.content.sort_key.as_deref()))
            .map_err(|min| {
                bad(format!(
                    "no stage key is left below {min}: re-install the boot entries"
                ))
            })?;
        let name = EntryName {
            base,
            counter: Some(Counter {
                left: u64::from(tries),
                done: 0,
            }),
        };
        let file = name.file_name();
        let e = match &payload {
            Payload::Loose { options, .. } => BasaltEntry::new(&release, slot, key, hash, options),
            Payload::Uki { cmdline, .. } => BasaltEntry::new_uki(&release, slot, key, cmdline),
        };

        // The staged entry must be the first systemd-boot loads. Against Basalt entries the
        // key guarantees it; a foreign entry with a smaller `sort-key` would still win.
        let new_item = SortItem::new(
            &file,
            e.sort_key.as_deref(),
            None,
            Some(&e.entry_version),
            name.counter,
        );
        if let Some(first) = kept.iter().find(|o| {
            o.unloadable.is_none()
                && order::compare(&new_item, &o.sort_item()) != std::cmp::Ordering::Less
        }) {
            return Err(bad(format!(
                "systemd-boot would boot {} (sort-key {:?}) before it: remove that entry",
                first.file,
                first.content.sort_key.as_deref().unwrap_or("")
            )));
        }

        // Space first: leftovers of earlier interrupted runs.
        self.collect_garbage()?;
        self.ensure_loader_conf()?;
        match &payload {
            Payload::Loose { kernel, initrd, .. } => {
                esp::copy_in(&mut self.esp, &esp::join(&dir, "vmlinuz"), kernel)?;
                esp::copy_in(&mut self.esp, &esp::join(&dir, "initrd"), initrd)?;
            }
            // The bytes whose command line was checked are the bytes written.
            Payload::Uki { bytes, .. } => self
                .esp
                .write_atomic(&esp::join(&dir, entry::UKI_FILE), bytes)?,
        }
        self.esp
            .write_atomic(&esp::join(ENTRIES_DIR, &file), e.render().as_bytes())?;

        // The new entry is durable: now drop this slot's older entries (and Basalt-named
        // files nobody can attribute to a slot). The other slot's entries stay untouched.
        for old in self.entries()? {
            if replaced_by(&old, slot) && !old.file.eq_ignore_ascii_case(&file) {
                self.esp.remove(&esp::join(ENTRIES_DIR, &old.file))?;
            }
        }
        self.collect_garbage()
    }

    fn set_bad(&mut self, slot: Slot) -> Result<(), Error> {
        for e in self.boot_order()? {
            if e.slot() != Some(slot) || e.status() == BootStatus::Bad {
                continue;
            }
            let done = e.name.counter.map_or(0, |c| c.done);
            let bad = EntryName {
                base: e.name.base.clone(),
                counter: Some(Counter { left: 0, done }),
            };
            self.rename_entry(&e.file, &bad.file_name())?;
        }
        Ok(())
    }
}

/// What a staged entry boots.
enum Payload<'a> {
    /// A kernel and an initrd from the host, with extra options after `usrhash=`.
    Loose {
        kernel: &'a std::path::Path,
        initrd: &'a std::path::Path,
        options: &'a str,
    },
    /// A unified kernel image (its bytes) and the command line signed into it.
    Uki { bytes: Vec<u8>, cmdline: String },
}

/// Read the UKI of `target` and check it boots `target.usr_hash`: its `.cmdline` must name
/// exactly that `usrhash=` and no `basalt.slot=` (a release's UKI serves either slot).
fn uki_payload(target: &UkiTarget) -> Result<Payload<'static>, Error> {
    let bad = |reason: String| Error::UkiTarget {
        path: target.uki.clone(),
        version: target.version.clone(),
        reason,
    };
    let bytes = std::fs::read(&target.uki).map_err(|source| Error::Io {
        op: "read the UKI",
        path: target.uki.clone(),
        source,
    })?;
    let what = format!("UKI {}", target.uki.display());
    let (hash, cmdline) =
        basalt_identity::pe::uki_usrhash(&mut std::io::Cursor::new(&bytes), &what)
            .map_err(|e| bad(e.reason))?;
    if hash.to_hex() != target.usr_hash {
        return Err(bad(format!(
            "its signed command line boots usrhash={}, not the slot's {}",
            hash.to_hex(),
            target.usr_hash
        )));
    }
    if basalt_identity::cmdline::split_args(&cmdline)
        .iter()
        .any(|(k, _)| format!("{k}=") == entry::SLOT_OPTION)
    {
        return Err(bad(format!(
            "its signed command line names a slot ({}…): a release's UKI must serve either slot",
            entry::SLOT_OPTION
        )));
    }
    Ok(Payload::Uki { bytes, cmdline })
}

/// `stage(slot)` replaces this entry: it is the slot's own, or a Basalt-named file nobody can
/// attribute to a slot.
fn replaced_by(e: &EntryInfo, slot: Slot) -> bool {
    match e.slot() {
        Some(s) => s == slot,
        None => is_basalt_file(&e.file),
    }
}

/// `e` refers to a file under ESP directory `dir` (lower case, no leading `/`; the entry's
/// paths are compared lower-cased, as FAT does).
fn uses_dir(e: &EntryInfo, dir: &str) -> bool {
    let paths = e
        .content
        .loader
        .iter()
        .map(|(_, p)| p)
        .chain(&e.content.initrd);
    paths.map(|p| norm(p)).any(|p| {
        p.strip_prefix(dir)
            .is_some_and(|rest| rest.starts_with('/'))
    })
}

fn slot_boot(slot: Slot, top: Option<&EntryInfo>) -> SlotBoot {
    SlotBoot {
        slot,
        version: top
            .and_then(|e| e.basalt.as_ref())
            .map(|b| b.version.clone()),
        status: top.map_or(BootStatus::Absent, EntryInfo::status),
    }
}

impl<E: Esp> BootControl for BlsBackend<E> {
    fn status(&self) -> Result<BootState, Error> {
        let order = self.boot_order()?;
        let top = |s: Slot| order.iter().find(|e| e.slot() == Some(s));
        Ok(BootState {
            slots: [
                slot_boot(Slot::A, top(Slot::A)),
                slot_boot(Slot::B, top(Slot::B)),
            ],
            next: order.first().and_then(EntryInfo::slot),
        })
    }

    fn stage(&mut self, slot: Slot, target: &BootTarget, tries: u32) -> Result<(), Error> {
        let (Some(kernel), Some(initrd)) = (&target.kernel, &target.initrd) else {
            return Err(Error::BlsTarget {
                version: target.version.clone(),
                reason: "the BLS backend needs a kernel and an initrd".into(),
            });
        };
        let payload = Payload::Loose {
            kernel,
            initrd,
            options: &target.options,
        };
        let res = self.stage_inner(slot, &target.version, &target.usr_hash, payload, tries);
        if res.is_err() {
            // Best effort: free what a failed copy left behind (e.g. on a full ESP). The
            // previous entries were not touched before the new entry was complete.
            let _ = self.collect_garbage();
        }
        res
    }

    fn stage_uki(&mut self, slot: Slot, target: &UkiTarget, tries: u32) -> Result<(), Error> {
        let res = uki_payload(target).and_then(|payload| {
            self.stage_inner(slot, &target.version, &target.usr_hash, payload, tries)
        });
        if res.is_err() {
            let _ = self.collect_garbage();
        }
        res
    }

    fn name(&self) -> &'static str {
        "bls"
    }

    fn mark_good(&mut self, slot: Slot) -> Result<(), Error> {
        let Some(top) = self.top(slot)? else {
            return Err(Error::IllegalTransition {
                op: "mark good",
                slot,
                reason: "no loadable boot entry".into(),
            });
        };
        match top.status() {
            BootStatus::Good => Ok(()),
            BootStatus::Trying { .. } => {
                let good = EntryName {
                    base: top.name.base.clone(),
                    counter: None,
                };
                self.rename_entry(&top.file, &good.file_name())
            }
            _ => Err(Error::IllegalTransition {
                op: "mark good",
                slot,
                reason: format!("entry {} is bad; stage the slot again", top.file),
            }),
        }
    }

    fn mark_bad(&mut self, slot: Slot) -> Result<(), Error> {
        self.set_bad(slot)
    }

    fn cancel(&mut self, slot: Slot) -> Result<(), Error> {
        if let Some(top) = self.top(slot)? {
            if top.status() == BootStatus::Good {
                return Err(Error::IllegalTransition {
                    op: "cancel",
                    slot,
                    reason: "the slot is blessed (Good); use mark_bad or rollback".into(),
                });
            }
        }
        for e in self.entries()? {
            if e.slot() == Some(slot) {
                self.esp.remove(&esp::join(ENTRIES_DIR, &e.file))?;
            }
        }
        self.collect_garbage()
    }

    fn rollback(&mut self, to: Slot) -> Result<(), Error> {
        let status = self.top(to)?.map_or(BootStatus::Absent, |e| e.status());
        if status != BootStatus::Good {
            return Err(Error::IllegalTransition {
                op: "roll back to",
                slot: to,
                reason: format!("it is {status:?}, not Good"),
            });
        }
        self.set_bad(!to)
    }

    fn boot_attempt(&mut self) -> Result<Option<Slot>, Error> {
        let Some(first) = self.boot_order()?.into_iter().next() else {
            return Ok(None);
        };
        if let Some(next) = first.name.bumped_file_name() {
            self.rename_entry(&first.file, &next)?;
        }
        Ok(first.slot())
    }
}

/// Decode a string EFI variable as read from efivarfs: 4 attribute bytes, then UTF-16LE,
/// optionally NUL-terminated. `name` is only used in errors.
pub fn efivar_string(name: &str, bytes: &[u8]) -> Result<String, Error> {
    let bad = |reason| Error::EfiVar {
        name: name.to_string(),
        reason,
    };
    let data = bytes
        .get(4..)
        .ok_or_else(|| bad("shorter than its 4 attribute bytes"))?;
    if data.len() % 2 != 0 {
        return Err(bad("odd number of UTF-16 bytes"));
    }
    let units: Vec<u16> = data
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    String::from_utf16(&units).map_err(|_| bad("invalid UTF-16"))
}

/// The entry file name the running system was booted from, from the contents of
/// `LoaderBootCountPath` (preferred: systemd-boot sets it to the entry's path *after* its
/// counter rename, e.g. `\loader\entries\basalt-1.2+2-1.conf`) or else `LoaderEntrySelected`
/// (the lower-cased id as selected, before the rename). `None` when neither is given.
pub fn booted_entry_file(
    boot_count_path: Option<&[u8]>,
    entry_selected: Option<&[u8]>,
) -> Result<Option<String>, Error> {
    let (name, bytes) = match (boot_count_path, entry_selected) {
        (Some(b), _) => ("LoaderBootCountPath", b),
        (None, Some(b)) => ("LoaderEntrySelected", b),
        (None, None) => return Ok(None),
    };
    let s = efivar_string(name, bytes)?;
    let file = s.rsplit(['\\', '/']).next().unwrap_or("").to_string();
    if file.is_empty() {
        return Err(Error::EfiVar {
            name: name.to_string(),
            reason: "empty entry name",
        });
    }
    Ok(Some(file))
}

/// Set up a bootable ESP inside a disk image: format FAT at `offset`/`len`, copy systemd-boot
/// (`systemd_boot`, usually [`esp::SYSTEMD_BOOT_EFI`]) to `EFI/BOOT/BOOTX64.EFI`, write
/// loader.conf, then install each `(slot, target)` as a blessed (Good) entry with its kernel
/// and initrd.
pub fn install_boot_esp(
    image: &std::path::Path,
    offset: u64,
    len: u64,
    systemd_boot: &std::path::Path,
    slots: &[(Slot, BootTarget)],
) -> Result<esp::FatImageEsp, Error> {
    let esp = esp::build_esp_image(
        image,
        offset,
        len,
        &[(esp::DEFAULT_LOADER_PATH, systemd_boot)],
    )?;
    let mut bls = BlsBackend::new(esp);
    bls.ensure_loader_conf()?;
    for (slot, target) in slots {
        bls.stage(*slot, target, 1)?;
        bls.mark_good(*slot)?;
    }
    Ok(bls.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn efivars_decode() {
        let mut v = vec![7, 0, 0, 0];
        for u in "\\loader\\entries\\basalt-1.2+2-1.conf\0".encode_utf16() {
            v.extend(u.to_le_bytes());
        }
        assert_eq!(
            booted_entry_file(Some(&v), None).unwrap().as_deref(),
            Some("basalt-1.2+2-1.conf")
        );
        assert_eq!(booted_entry_file(None, None).unwrap(), None);
        for bad in [
            &[1u8, 2][..],
            &[0, 0, 0, 0, 65][..],
            &[0, 0, 0, 0, 0, 0xd8][..],
            &[0; 4][..],
        ] {
            assert!(matches!(
                booted_entry_file(None, Some(bad)),
                Err(Error::EfiVar { .. })
            ));
        }
    }

    #[test]
    fn paths_normalise() {
        assert_eq!(norm("/Basalt//1.0\\vmlinuz"), "basalt/1.0/vmlinuz");
    }
}
