//! An in-memory [`Engine`]: two slots, a boot-control model with the same rules as
//! `basalt_disk::boot` (stage → trying, tries count down per boot, cancel restores, mark
//! good/bad, rollback), a "repository" of releases, and fault injection. It is the engine of the
//! daemon's logic tests and of the D-Bus integration tests until the lead wires the real
//! pipeline (`pipeline`, branch `engine`) in; it is never used by the node.
//!
//! The world lives behind an `Arc<Mutex<_>>` ([`MemoryWorld`]) so a test can inspect and change
//! it while the daemon's worker thread owns the engine, and can [`MemoryWorld::reboot`] the
//! simulated machine the way systemd-boot would.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use basalt_disk::{BootStatus, Slot, SlotState};
use basalt_manifest::chrono::{TimeZone, Utc};
use basalt_manifest::semver::Version;
use basalt_manifest::{Digest, Manifest, VerifiedRelease, VersionChange};

use crate::engine::{
    AdaptiveCounts, CancelFlag, Candidate, CheckOutcome, CheckRequest, Downloaded, Engine,
    EngineError, ErrorClass, ExtensionsLister, ExtensionsView, NodeView, Phase, Progress, SlotView,
};

/// The in-memory engine's error: a class, a stable name, a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct MemoryError {
    pub class: ErrorClass,
    pub name: &'static str,
    pub message: String,
}

impl MemoryError {
    pub fn new(class: ErrorClass, name: &'static str, message: impl Into<String>) -> Self {
        Self {
            class,
            name,
            message: message.into(),
        }
    }
}

impl EngineError for MemoryError {
    fn class(&self) -> ErrorClass {
        self.class
    }
    fn name(&self) -> &'static str {
        self.name
    }
}

/// A published release in the fake repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeRelease {
    pub version: Version,
    pub sequence: u64,
    pub usr_hash: Digest,
    pub envelope: Vec<u8>,
}

impl FakeRelease {
    /// A release whose hash and envelope follow from version and sequence.
    pub fn new(version: &str, sequence: u64) -> Self {
        let envelope =
            format!("{{\"fake-release\":\"{version}\",\"sequence\":{sequence}}}").into_bytes();
        Self {
            version: Version::parse(version).unwrap_or_else(|_| Version::new(0, 0, 0)),
            sequence,
            usr_hash: sha256(format!("usr {version}").as_bytes()),
            envelope,
        }
    }

    pub fn envelope_sha256(&self) -> Digest {
        sha256(&self.envelope)
    }
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> Digest {
    crate::machine::envelope_digest(bytes)
}

/// One simulated slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeSlot {
    pub state: SlotState,
    pub version: Option<Version>,
    pub usr_hash: Option<Digest>,
    pub boot: BootStatus,
    /// Simulate a slot that never comes up (kernel panic, basalt-init refusal): every boot
    /// attempt of it fails and consumes a try.
    pub fails_to_boot: bool,
}

/// Which engine call a fault or a log entry is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Node,
    Check,
    VerifyCandidate,
    Download,
    Apply,
    Cancel,
    Rollback,
    MarkGood,
    MarkBad(Slot),
    Extensions,
}

/// The simulated machine and repository.
#[derive(Debug)]
pub struct World {
    pub slots: [FakeSlot; 2],
    pub booted: Slot,
    /// The repository's channel head.
    pub head: Option<FakeRelease>,
    /// Every release ever published (for `verify_candidate`).
    pub published: Vec<FakeRelease>,
    /// Errors to return, per call, in order.
    pub faults: VecDeque<(Call, MemoryError)>,
    /// Every call, in order.
    pub calls: Vec<Call>,
    /// Download in this many chunks (progress reports).
    pub chunks: u32,
    /// Sleep per chunk (wall clock), so a test can cancel mid-download.
    pub chunk_delay: Duration,
    /// Hold downloads before their first chunk until [`MemoryWorld::release_downloads`].
    pub hold_downloads: bool,
    /// The number of reboots simulated.
    pub boots: u32,
    /// The extension store as listed (sets, active, pins); pins change it.
    pub extensions: ExtensionsView,
    /// Count every download as an adaptive install that fell back to the full stream.
    pub adaptive_fallback: bool,
    /// What [`Engine::adaptive_counts`] reports.
    pub adaptive: AdaptiveCounts,
}

/// Shared handle on the world.
#[derive(Debug, Clone)]
pub struct MemoryWorld(Arc<(Mutex<World>, Condvar)>);

impl MemoryWorld {
    /// Slot A holds and booted `version` (good); slot B is empty.
    pub fn new(version: &str) -> Self {
        let r = FakeRelease::new(version, 1);
        let world = World {
            slots: [
                FakeSlot {
                    state: SlotState::Active,
                    version: Some(r.version.clone()),
                    usr_hash: Some(r.usr_hash),
                    boot: BootStatus::Good,
                    fails_to_boot: false,
                },
                FakeSlot {
                    state: SlotState::Empty,
                    version: None,
                    usr_hash: None,
                    boot: BootStatus::Absent,
                    fails_to_boot: false,
                },
            ],
            booted: Slot::A,
            head: Some(r.clone()),
            published: vec![r],
            faults: VecDeque::new(),
            calls: Vec::new(),
            chunks: 4,
            chunk_delay: Duration::ZERO,
            hold_downloads: false,
            boots: 0,
            extensions: ExtensionsView::default(),
            adaptive_fallback: false,
            adaptive: AdaptiveCounts::default(),
        };
        Self(Arc::new((Mutex::new(world), Condvar::new())))
    }

    /// Lock the world (tests inspect and change it).
    pub fn lock(&self) -> MutexGuard<'_, World> {
        match self.0 .0.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Publish `release` as the new channel head.
    pub fn publish(&self, release: FakeRelease) {
        let mut w = self.lock();
        w.published.push(release.clone());
        w.head = Some(release);
    }

    /// Make the next `call` fail with `error`.
    pub fn fail_next(&self, call: Call, error: MemoryError) {
        self.lock().faults.push_back((call, error));
    }

    /// Let held downloads go on.
    pub fn release_downloads(&self) {
        self.lock().hold_downloads = false;
        self.0 .1.notify_all();
    }

    /// An engine on this world.
    pub fn engine(&self) -> MemoryEngine {
        MemoryEngine {
            world: self.clone(),
        }
    }

    /// The usr hash `basalt-init` would report for the booted slot.
    pub fn booted_hash(&self) -> Option<Digest> {
        let w = self.lock();
        w.slots[idx(w.booted)].usr_hash
    }

    /// Simulate a reboot with systemd-boot's rules: the next slot is the one staged with tries
    /// left (each attempt consumes one; a slot that fails to boot is attempted until its tries
    /// run out, then marked bad), else the good one. Returns the slot that came up.
    pub fn reboot(&self) -> Slot {
        let mut w = self.lock();
        w.boots += 1;
        for _ in 0..32 {
            let next = next_boot(&w.slots).unwrap_or(w.booted);
            let s = &mut w.slots[idx(next)];
            if let BootStatus::Trying {
                tries_left,
                tries_done,
            } = s.boot
            {
                s.boot = if tries_left <= 1 && s.fails_to_boot {
                    BootStatus::Bad
                } else {
                    BootStatus::Trying {
                        tries_left: tries_left.saturating_sub(1),
                        tries_done: tries_done + 1,
                    }
                };
            }
            if s.fails_to_boot {
                continue;
            }
            let old = w.booted;
            if old != next && w.slots[idx(old)].state == SlotState::Active {
                w.slots[idx(old)].state = SlotState::Valid;
            }
            w.slots[idx(next)].state = SlotState::Active;
            w.booted = next;
            return next;
        }
        w.booted
    }

    /// A copy of one slot.
    pub fn slot(&self, slot: Slot) -> FakeSlot {
        self.lock().slots[idx(slot)].clone()
    }
}

fn idx(slot: Slot) -> usize {
    match slot {
        Slot::A => 0,
        Slot::B => 1,
    }
}

/// The boot loader's pick: a slot on trial with tries left first, else a good one.
fn next_boot(slots: &[FakeSlot; 2]) -> Option<Slot> {
    let trying = Slot::ALL.into_iter().find(
        |s| matches!(slots[idx(*s)].boot, BootStatus::Trying { tries_left, .. } if tries_left > 0),
    );
    trying.or_else(|| {
        Slot::ALL
            .into_iter()
            .find(|s| slots[idx(*s)].boot == BootStatus::Good)
    })
}

/// The engine on a [`MemoryWorld`].
#[derive(Debug)]
pub struct MemoryEngine {
    world: MemoryWorld,
}

impl MemoryEngine {
    fn enter(&self, call: Call) -> Result<MutexGuard<'_, World>, MemoryError> {
        let mut w = self.world.lock();
        w.calls.push(call);
        let pos = w.faults.iter().position(|(c, _)| *c == call);
        match pos.and_then(|p| w.faults.remove(p)) {
            Some((_, e)) => Err(e),
            None => Ok(w),
        }
    }
}

fn candidate(r: &FakeRelease, installed: Option<&Version>, downgrade_override: bool) -> Candidate {
    let epoch = Utc.timestamp_opt(0, 0).single().unwrap_or_default();
    Candidate {
        release: VerifiedRelease {
            manifest: Manifest {
                schema_version: basalt_manifest::SCHEMA_VERSION,
                os: "basalt".into(),
                version: r.version.clone(),
                channel: "stable".into(),
                arch: "x86_64".into(),
                sequence: r.sequence,
                issued_at: epoch,
                expires_at: epoch,
                artifacts: Vec::new(),
                sysext_level: None,
            },
            signed_by: Vec::new(),
            trust_generation: 1,
            version_change: match installed {
                None => VersionChange::Unknown,
                Some(v) if r.version > *v => VersionChange::Upgrade,
                Some(v) if r.version == *v => VersionChange::Same,
                Some(_) => VersionChange::Downgrade,
            },
            downgrade_override,
        },
        envelope: r.envelope.clone(),
        node_image_only: None,
    }
}

impl Engine for MemoryEngine {
    type Error = MemoryError;

    fn node(&mut self) -> Result<NodeView, MemoryError> {
        let w = self.enter(Call::Node)?;
        let view = |s: Slot| {
            let f = &w.slots[idx(s)];
            SlotView {
                slot: s,
                state: f.state,
                version: f.version.clone(),
                usr_hash: f.usr_hash,
                boot: f.boot,
            }
        };
        Ok(NodeView {
            booted: Some(w.booted),
            slots: [view(Slot::A), view(Slot::B)],
            next_boot: next_boot(&w.slots),
        })
    }

    fn check(&mut self, req: &CheckRequest) -> Result<CheckOutcome, MemoryError> {
        let w = self.enter(Call::Check)?;
        let head = w.head.clone().ok_or_else(|| {
            MemoryError::new(ErrorClass::Network, "NotFound", "channel head not found")
        })?;
        if let Some((seq, digest)) = req.last_seen {
            if head.sequence < seq {
                return Err(MemoryError::new(
                    ErrorClass::Policy,
                    "SequenceReplayed",
                    format!("head sequence {} is below {seq}", head.sequence),
                ));
            }
            if head.sequence == seq {
                return if head.envelope_sha256() == digest {
                    Ok(CheckOutcome::UpToDate {
                        sequence: seq,
                        version: head.version,
                    })
                } else {
                    Err(MemoryError::new(
                        ErrorClass::Policy,
                        "Equivocation",
                        format!("sequence {seq} seen with other bytes"),
                    ))
                };
            }
        }
        let installed = req.installed_version.as_ref();
        let older = installed.is_some_and(|v| head.version < *v);
        if older && !req.allow_downgrade {
            return Err(MemoryError::new(
                ErrorClass::Policy,
                "DowngradeRefused",
                format!("{} is older than the installed version", head.version),
            ));
        }
        if installed == Some(&head.version) {
            return Ok(CheckOutcome::UpToDate {
                sequence: head.sequence,
                version: head.version,
            });
        }
        Ok(CheckOutcome::Available(candidate(&head, installed, older)))
    }

    fn verify_candidate(
        &mut self,
        envelope: &[u8],
        req: &CheckRequest,
    ) -> Result<Candidate, MemoryError> {
        let w = self.enter(Call::VerifyCandidate)?;
        let r = w
            .published
            .iter()
            .find(|r| r.envelope == envelope)
            .cloned()
            .ok_or_else(|| {
                MemoryError::new(
                    ErrorClass::Integrity,
                    "BadSignature",
                    "persisted envelope is not a published release",
                )
            })?;
        let older = req
            .installed_version
            .as_ref()
            .is_some_and(|v| r.version < *v);
        Ok(candidate(&r, req.installed_version.as_ref(), older))
    }

    fn download(
        &mut self,
        c: &Candidate,
        progress: &mut dyn FnMut(&Progress),
        cancel: &CancelFlag,
    ) -> Result<Downloaded, MemoryError> {
        let (target, chunks, delay, release) = {
            let mut w = self.enter(Call::Download)?;
            let target = !w.booted;
            let release = w
                .published
                .iter()
                .find(|r| r.envelope == c.envelope)
                .cloned()
                .ok_or_else(|| {
                    MemoryError::new(ErrorClass::Integrity, "BadSignature", "unknown release")
                })?;
            // Withdraw the inactive slot before the first byte (the engine contract).
            let s = &mut w.slots[idx(target)];
            s.state = SlotState::Installing;
            s.boot = BootStatus::Absent;
            s.version = None;
            s.usr_hash = None;
            (target, w.chunks.max(1), w.chunk_delay, release)
        };
        {
            let (lock, cv) = &*self.world.0;
            let mut w = match lock.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            while w.hold_downloads && !cancel.is_cancelled() {
                w = match cv.wait_timeout(w, Duration::from_millis(20)) {
                    Ok((g, _)) => g,
                    Err(p) => p.into_inner().0,
                };
            }
        }
        let total = u64::from(chunks) * 1024 * 1024;
        for i in 1..=chunks {
            if cancel.is_cancelled() {
                return Err(MemoryError::new(
                    ErrorClass::Cancelled,
                    "Cancelled",
                    "download cancelled",
                ));
            }
            std::thread::sleep(delay);
            let done = u64::from(i) * 1024 * 1024;
            progress(&Progress {
                phase: Phase::Downloading,
                done,
                total,
                fetched: done,
                reused: 0,
            });
        }
        progress(&Progress {
            phase: Phase::Verifying,
            done: total,
            total,
            fetched: total,
            reused: 0,
        });
        if cancel.is_cancelled() {
            return Err(MemoryError::new(
                ErrorClass::Cancelled,
                "Cancelled",
                "download cancelled",
            ));
        }
        let mut w = self.world.lock();
        let s = &mut w.slots[idx(target)];
        s.state = SlotState::Valid;
        s.version = Some(release.version.clone());
        s.usr_hash = Some(release.usr_hash);
        if w.adaptive_fallback {
            w.adaptive.fell_back += 1;
        }
        Ok(Downloaded {
            slot: target,
            version: release.version,
            sequence: release.sequence,
            usr_hash: release.usr_hash,
            fetched: total,
            reused: 0,
        })
    }

    fn apply(&mut self, d: &Downloaded, tries: u32) -> Result<(), MemoryError> {
        let mut w = self.enter(Call::Apply)?;
        if d.slot == w.booted {
            return Err(MemoryError::new(
                ErrorClass::Disk,
                "BootedSlot",
                "refusing to stage the booted slot",
            ));
        }
        let s = &mut w.slots[idx(d.slot)];
        if s.state != SlotState::Valid || s.usr_hash != Some(d.usr_hash) {
            return Err(MemoryError::new(
                ErrorClass::Integrity,
                "SlotMismatch",
                format!("slot {} does not hold the downloaded release", d.slot),
            ));
        }
        s.boot = BootStatus::Trying {
            tries_left: tries,
            tries_done: 0,
        };
        Ok(())
    }

    fn cancel(&mut self) -> Result<(), MemoryError> {
        let mut w = self.enter(Call::Cancel)?;
        let inactive = !w.booted;
        let s = &mut w.slots[idx(inactive)];
        // Unbootable; the booted slot is not looked at.
        if matches!(s.boot, BootStatus::Trying { .. }) {
            s.boot = BootStatus::Absent;
        }
        Ok(())
    }

    fn rollback(&mut self) -> Result<Slot, MemoryError> {
        let mut w = self.enter(Call::Rollback)?;
        let booted = w.booted;
        let other = !booted;
        let o = &w.slots[idx(other)];
        // Only to a slot that booted and was blessed before (boot state good).
        if !o.state.has_image() || o.state == SlotState::Bad || o.boot != BootStatus::Good {
            return Err(MemoryError::new(
                ErrorClass::BootControl,
                "NothingToRollBackTo",
                format!("slot {other} holds no good image"),
            ));
        }
        w.slots[idx(other)].boot = BootStatus::Good;
        w.slots[idx(booted)].boot = BootStatus::Bad;
        Ok(other)
    }

    fn adaptive_counts(&self) -> AdaptiveCounts {
        self.world.lock().adaptive
    }

    fn mark_good(&mut self) -> Result<(), MemoryError> {
        let mut w = self.enter(Call::MarkGood)?;
        let b = w.booted;
        w.slots[idx(b)].boot = BootStatus::Good;
        Ok(())
    }

    fn mark_bad(&mut self, slot: Slot) -> Result<(), MemoryError> {
        let mut w = self.enter(Call::MarkBad(slot))?;
        w.slots[idx(slot)].boot = BootStatus::Bad;
        Ok(())
    }

    fn extensions(&mut self) -> Result<ExtensionsView, MemoryError> {
        Ok(self.enter(Call::Extensions)?.extensions.clone())
    }

    fn extensions_lister(&self) -> ExtensionsLister {
        let world = self.world.clone();
        Arc::new(move || Ok(world.lock().extensions.clone()))
    }

    /// The same refusals as the node's, by name: an extension no set holds, a version no
    /// set holds.
    fn pin_extension(&mut self, name: &str, version: &Version) -> Result<(), MemoryError> {
        let mut w = self.enter(Call::Extensions)?;
        let versions: Vec<&Version> = w
            .extensions
            .staged
            .iter()
            .flat_map(|s| s.extensions.iter())
            .filter(|(n, _)| n == name)
            .filter_map(|(_, v)| v.as_ref())
            .collect();
        if versions.is_empty() {
            return Err(MemoryError::new(
                ErrorClass::Policy,
                "UnknownExtension",
                format!("no staged extension set holds an extension named {name}"),
            ));
        }
        if !versions.contains(&version) {
            return Err(MemoryError::new(
                ErrorClass::Policy,
                "ExtensionNotStaged",
                format!("extension {name} {version} is not staged"),
            ));
        }
        let pins = &mut w.extensions.pins;
        pins.retain(|(n, _)| n != name);
        pins.push((name.to_owned(), version.clone()));
        pins.sort();
        Ok(())
    }

    fn unpin_extension(&mut self, name: &str) -> Result<(), MemoryError> {
        let mut w = self.enter(Call::Extensions)?;
        w.extensions.pins.retain(|(n, _)| n != name);
        Ok(())
    }
}
