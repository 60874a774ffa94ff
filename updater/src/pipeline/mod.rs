//! The production [`Engine`]: from a signed channel head to a re-verified, staged slot.
//!
//! Owns: walking the trust-root chain, checking the channel head, streaming a release into
//! the inactive slot with resume, re-verifying the written bytes, staging the boot entry,
//! and the boot-control verdicts — on one node, through `basalt-disk`. Does not own: when
//! any of this happens (the daemon's state machine), where bytes come from ([`Source`]),
//! the formats (`basalt-manifest`, `basalt-verity`, `basalt-disk`).
//!
//! ```text
//! check:     walk roots/<g+1>… (rotate, persist) → fetch head → signatures, expiry,
//!            os/arch/channel → sequence vs last seen (same bytes: UpToDate; lower: Replay;
//!            same number, other bytes: Equivocation) → version (Downgrade unless allowed)
//!            → installable? (plan)
//! download:  re-verify the candidate → booted slot from usrhash=, target = the other one
//!            (refused: no booted slot, booted slot still on trial, same /usr, too small)
//!            → journal → withdraw the target's boot entry/priority → begin_install
//!            (`_installing`, random UUIDs) → usr.img frames into the slot → kernel and
//!            initrd (or the release's UKI, whose `.cmdline` must name this usrhash=) into
//!            state/staging → fdatasync, drop cache, re-read: verity + usr-hash
//!            statement → finish_install (UUIDs from the root hash, `{os}_{version}`)
//!            → journal complete
//! apply:     the journal and the slot match the download → staged files re-hashed →
//!            BootControl::stage(slot, kernel, initrd, usrhash=, tries), or, for a release
//!            with a signed UKI (BLS backend), its `.cmdline` usrhash= checked against the
//!            usr root hash again → BootControl::stage_uki(slot, UKI, tries)
//! failure:   at any step the target stays `_installing` / withdrawn (never bootable); the
//!            booted slot and its boot state are never written; a later download of the
//!            same release resumes from what re-verifies
//! ```
//!
//! Every write goes through [`NodeIo`] (tests kill or tear each one); time and the random
//! partition UUIDs are injected ([`NodeEngine::with_clock`], [`NodeEngine::with_guids`]).

pub mod adaptive;
pub mod boot;
pub mod config;
pub mod error;
pub mod extensions;
pub mod io;
pub mod journal;
pub mod plan;
pub mod reverify;
pub mod stream;
pub mod trust;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use basalt_disk::gpt::Guid;
use basalt_disk::slots::{begin_install, finish_install, InstallPlan, SlotInstall};
use basalt_disk::{
    BootStatus, BootTarget, Inventory, RootHash, Slot, SlotPart, SlotState, UkiTarget,
};
use basalt_manifest::chrono::{DateTime, Utc};
use basalt_manifest::{
    repo, verify_release, Digest, FrameIndex, Policy, TrustRoot, VerifiedRelease, MAX_RELEASE_BYTES,
};

pub use config::{BackendKind, EngineConfig, EspLocation};
pub use error::{Error, ErrorKind};
pub use io::{NodeIo, RealIo};

use crate::engine::{
    AdaptiveCounts, CancelFlag, Candidate, CheckOutcome, CheckRequest, Downloaded, Engine,
    EngineError, ExtensionsLister, ExtensionsView, NodeView, Phase, Progress, SlotView,
};
use crate::source::Source;
use basalt_manifest::semver::Version;
use error::{disk, io as io_err};
use journal::Journal;
use plan::{plan, Fetch, Plan};
use stream::{sha256, FileSink, Meter, SlotSink, StreamJob};

/// The signed release kept beside the staged kernel and initrd.
const RELEASE_FILE: &str = "release.signed";

type Clock = Box<dyn Fn() -> DateTime<Utc> + Send>;
type Guids = Box<dyn FnMut() -> Result<[Guid; 2], Error> + Send>;

/// The production engine (see the module docs).
pub struct NodeEngine {
    config: EngineConfig,
    source: Box<dyn Source>,
    io: Arc<dyn NodeIo>,
    clock: Clock,
    guids: Guids,
    /// How usr images were installed ([`Engine::adaptive_counts`]); a `Cell`: counted from
    /// `&self` methods, read by the daemon's worker between jobs.
    adaptive: std::cell::Cell<AdaptiveCounts>,
}

impl std::fmt::Debug for NodeEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeEngine")
            .field("config", &self.config)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

fn random_guids() -> Result<[Guid; 2], Error> {
    let g = || basalt_disk::gpt::random_guid().map_err(disk("draw random partition UUIDs"));
    Ok([g()?, g()?])
}

impl NodeEngine {
    /// An engine for the node described by `config`, reading releases from `source`.
    /// Real I/O, the system clock, random UUIDs from the kernel.
    pub fn new(config: EngineConfig, source: Box<dyn Source>) -> Self {
        NodeEngine {
            config,
            source,
            io: Arc::new(RealIo),
            clock: Box::new(Utc::now),
            guids: Box::new(random_guids),
            adaptive: std::cell::Cell::new(AdaptiveCounts::default()),
        }
    }

    fn count_adaptive(&self, f: impl FnOnce(&mut AdaptiveCounts)) {
        let mut c = self.adaptive.get();
        f(&mut c);
        self.adaptive.set(c);
    }

    /// Route every write through `io` (tests: fault injection).
    pub fn with_io(mut self, io: Arc<dyn NodeIo>) -> Self {
        self.io = io;
        self
    }

    /// Use `clock` for "now" (expiry checks at download and apply).
    pub fn with_clock(mut self, clock: impl Fn() -> DateTime<Utc> + Send + 'static) -> Self {
        self.clock = Box::new(clock);
        self
    }

    /// Use `guids` for the scratch partition UUIDs of a slot being installed.
    pub fn with_guids(
        mut self,
        guids: impl FnMut() -> Result<[Guid; 2], Error> + Send + 'static,
    ) -> Self {
        self.guids = Box::new(guids);
        self
    }

    /// The configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// The kernel command line, with `usrhash=` from `boot.env` when the line has none.
    fn cmdline(&self) -> Result<String, Error> {
        let path = &self.config.cmdline;
        let mut line = std::fs::read_to_string(path).map_err(io_err("read", path))?;
        if basalt_disk::slots::cmdline_usrhash(&line).is_none() {
            let env = crate::envfile::read(&self.config.boot_env).unwrap_or_default();
            if let Some(hash) = crate::envfile::get(&env, crate::envfile::BASALT_USRHASH) {
                line.push_str(&format!(" usrhash={hash}"));
            }
        }
        Ok(line)
    }

    fn inventory(&self, cmdline: &str) -> Result<Inventory, Error> {
        Inventory::read_path(&self.config.disk, Some(cmdline)).map_err(disk("read the disk"))
    }

    fn booted(&self, inv: &Inventory) -> Result<Slot, Error> {
        inv.booted.ok_or_else(|| Error::NoBootedSlot {
            disk: self.config.disk.clone(),
            usrhash: inv
                .cmdline_usrhash
                .map_or_else(|| "(none)".to_owned(), |h| h.to_hex()),
        })
    }

    /// Uncompressed bytes a download of `plan` streams: `/usr`, the boot files of this
    /// node's backend and, unless node-image-only (which keeps the node's set), the
    /// release's extension images — the total of its download progress.
    fn download_len(&self, plan: &Plan<'_>, node_image_only: bool) -> Result<u64, Error> {
        let exts = if node_image_only {
            0
        } else {
            extensions::extensions_len(plan.manifest)
        };
        Ok(plan.fetch_len(self.config.backend)? + exts)
    }

    /// Whether `candidate`'s download keeps the node's extension set: the fleet server's word
    /// when it gave one, else `update.node_image_only`.
    fn node_image_only(&self, candidate: &Candidate) -> bool {
        candidate
            .node_image_only
            .unwrap_or(self.config.node_image_only)
    }

    fn trust(&self) -> Result<TrustRoot, Error> {
        trust::load(&self.config.trust_root, &self.config.trust_dir())
    }

    fn policy(&self, now: DateTime<Utc>) -> Policy {
        Policy {
            os: Some(self.config.os.clone()),
            arch: Some(self.config.arch.clone()),
            channel: Some(self.config.channel.clone()),
            max_clock_skew: self.config.max_clock_skew,
            ..Policy::new(now)
        }
    }

    fn head_location(&self) -> Result<(String, String), Error> {
        let rel =
            repo::head_path(&self.config.channel, &self.config.arch).map_err(|e| Error::State {
                path: PathBuf::from("channel"),
                reason: e.to_string(),
            })?;
        let location = self.source.location(&rel);
        Ok((rel, location))
    }

    /// Verify `envelope` again (signatures, expiry at `now`, os/arch/channel).
    fn reverify_candidate(&self, envelope: &[u8]) -> Result<(TrustRoot, VerifiedRelease), Error> {
        let root = self.trust()?;
        let (_, location) = self.head_location()?;
        let verified =
            verify_release(envelope, &root, &self.policy((self.clock)())).map_err(|e| {
                Error::Head {
                    location,
                    source: Box::new(e),
                }
            })?;
        Ok((root, verified))
    }

    fn fetch_index(&self, f: &Fetch<'_>) -> Result<FrameIndex, Error> {
        let rel = repo::blob_path(&f.index.sha256);
        let location = self.source.location(&rel);
        let bytes = self
            .source
            .read_small(&rel, f.index.size)
            .map_err(|source| Error::Fetch {
                what: format!("frame index of {}", f.artifact.name),
                source,
            })?;
        if bytes.len() as u64 != f.index.size {
            return Err(Error::Length {
                artifact: f.artifact.name.clone(),
                location,
                detail: format!(
                    "frame index of {} bytes, the manifest says {}",
                    bytes.len(),
                    f.index.size
                ),
            });
        }
        let found = sha256(&bytes);
        if found != f.index.sha256 {
            return Err(Error::Digest {
                artifact: f.artifact.name.clone(),
                location,
                what: error::Checked::FrameIndex,
                expected: f.index.sha256.to_hex(),
                found: found.to_hex(),
            });
        }
        FrameIndex::parse(&bytes, f.artifact).map_err(|e| Error::FrameIndex {
            artifact: f.artifact.name.clone(),
            location,
            source: Box::new(e),
        })
    }

    fn staging_dir(&self, envelope_sha: &Digest) -> PathBuf {
        self.config.staging_dir().join(&envelope_sha.to_hex()[..32])
    }

    /// Remove staging folders of other releases (best effort: they only take space).
    fn prune_staging(&self, keep: &Path) {
        let Ok(entries) = std::fs::read_dir(self.config.staging_dir()) else {
            return;
        };
        for e in entries.flatten() {
            if e.path() != keep {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }

    fn save_journal(&self, j: &Journal) -> Result<(), Error> {
        journal::save(self.io.as_ref(), &self.config.journal_path(), j)
    }

    fn slot_sink(&self, install: &SlotInstall, plan: &Plan<'_>) -> Result<SlotSink, Error> {
        let disk_path = &self.config.disk;
        let open = || {
            self.io
                .open_rw(disk_path, false)
                .map_err(io_err("open the disk", disk_path))
        };
        let reader = std::fs::File::open(disk_path).map_err(io_err("open the disk", disk_path))?;
        Ok(SlotSink {
            data: install.writer(open()?, SlotPart::Data),
            verity: install.writer(open()?, SlotPart::Verity),
            reader,
            disk: disk_path.clone(),
            data_offset: install.data.offset,
            verity_offset: install.verity.offset,
            hash_offset: plan.data_len(),
        })
    }

    /// Stream one artifact into `dir/<its name>` (a new file unless the journal says frames
    /// of it are there already, which the stream then resumes from).
    fn stream_to_file(
        &self,
        dir: &Path,
        f: &Fetch<'_>,
        journal: &mut Journal,
        meter: &mut Meter<'_>,
        cancel: &CancelFlag,
    ) -> Result<stream::Streamed, Error> {
        let path = dir.join(&f.artifact.name);
        if journal.done(&f.artifact.name) == 0 {
            self.io
                .remove_file(&path)
                .map_err(io_err("remove", &path))?;
        }
        let file = self
            .io
            .open_rw(&path, true)
            .map_err(io_err("create", &path))?;
        let mut sink = FileSink { file, path };
        self.stream(f, &mut sink, journal, meter, cancel, None)
    }

    /// Stream one artifact with the journal as checkpoint record.
    #[allow(clippy::too_many_arguments)]
    fn stream(
        &self,
        f: &Fetch<'_>,
        sink: &mut dyn stream::Sink,
        journal: &mut Journal,
        meter: &mut Meter<'_>,
        cancel: &CancelFlag,
        behind: Option<stream::VerifyBehind<'_>>,
    ) -> Result<stream::Streamed, Error> {
        let index = self.fetch_index(f)?;
        let job = StreamJob {
            source: self.source.as_ref(),
            fetch: f,
            index: &index,
            claimed: journal.done(&f.artifact.name),
            checkpoint_bytes: self.config.checkpoint_bytes,
            cancel,
            behind,
        };
        let name = f.artifact.name.clone();
        let mut checkpoint = |n: usize| {
            if journal.done(&name) == n {
                return Ok(());
            }
            journal.frames_done.insert(name.clone(), n);
            self.save_journal(journal)
        };
        stream::stream_artifact(&job, sink, meter, &mut checkpoint)
    }

    /// The usr image into the slot: adaptively (blocks of the booted slot + missing frames)
    /// when the release offers it and no full-stream download is under way, falling back to
    /// the full stream on any integrity or format problem (see [`adaptive`]).
    fn install_usr(
        &self,
        plan: &Plan<'_>,
        local: Option<adaptive::Local<'_>>,
        sink: &mut SlotSink,
        journal: &mut Journal,
        meter: &mut Meter<'_>,
        cancel: &CancelFlag,
    ) -> Result<stream::Streamed, Error> {
        let artifact = plan.usr.artifact;
        let behind = Some(stream::VerifyBehind {
            salt: &plan.salt,
            data_blocks: plan.verity.data_blocks,
        });
        let refs = artifact
            .compression
            .as_ref()
            .and_then(|c| c.adaptive.as_ref());
        if let (Some(refs), Some(local), 0) = (refs, local, journal.done(&artifact.name)) {
            let key = adaptive::journal_key(&artifact.name);
            let job = adaptive::AdaptiveJob {
                source: self.source.as_ref(),
                artifact,
                refs,
                verity: plan.verity,
                salt: &plan.salt,
                local,
                claimed: journal.done(&key),
                checkpoint_bytes: self.config.checkpoint_bytes,
                cancel,
            };
            let (done_before, fetched_at_start) = (meter.done, meter.fetched);
            let result = {
                let mut checkpoint = |n: usize| {
                    if journal.done(&key) == n {
                        return Ok(());
                    }
                    journal.frames_done.insert(key.clone(), n);
                    self.save_journal(journal)
                };
                adaptive::install(&job, sink, meter, &mut checkpoint)
            };
            match result {
                Ok(adaptive::Outcome::Installed(s)) => {
                    tracing::info!(artifact = %artifact.name, fetched = s.fetched, reused = s.reused, "installed adaptively: blocks of the booted slot reused");
                    self.count_adaptive(|c| c.installed += 1);
                    return Ok(s);
                }
                Ok(adaptive::Outcome::NotWorthIt { fetched }) => {
                    self.count_adaptive(|c| c.not_worth_it += 1);
                    let mut s = self.stream(&plan.usr, sink, journal, meter, cancel, behind)?;
                    s.fetched += fetched;
                    return Ok(s);
                }
                Err(e) if adaptive::falls_back(&e) => {
                    tracing::warn!(artifact = %artifact.name, error = %e, "adaptive install failed; installing from the full stream");
                    self.count_adaptive(|c| c.fell_back += 1);
                    journal.frames_done.remove(&key);
                    self.save_journal(journal)?;
                    meter.done = done_before;
                    meter.emit();
                    let fetched_before = meter.fetched;
                    let mut s = self.stream(&plan.usr, sink, journal, meter, cancel, behind)?;
                    // What the failed attempt fetched was fetched too.
                    s.fetched += fetched_before.saturating_sub(fetched_at_start);
                    return Ok(s);
                }
                Err(e) => return Err(e),
            }
        }
        self.stream(&plan.usr, sink, journal, meter, cancel, behind)
    }

    /// The signed release kept in the staging folder at download, checked against the
    /// journal's digest and verified again (signatures, expiry now, os/arch/channel).
    fn staged_manifest(
        &self,
        staging: &Path,
        envelope_sha: &Digest,
    ) -> Result<basalt_manifest::Manifest, Error> {
        use std::io::Read;
        let path = staging.join(RELEASE_FILE);
        let file = std::fs::File::open(&path).map_err(io_err("open", &path))?;
        let mut bytes = Vec::new();
        file.take(MAX_RELEASE_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(io_err("read", &path))?;
        if sha256(&bytes) != *envelope_sha {
            return Err(Error::State {
                path,
                reason: "the staged release is not the one the journal names".into(),
            });
        }
        Ok(self.reverify_candidate(&bytes)?.1.manifest)
    }

    /// The staged kernel or initrd of `f`, re-hashed.
    fn check_staged(&self, dir: &Path, f: &Fetch<'_>) -> Result<PathBuf, Error> {
        let path = dir.join(&f.artifact.name);
        let file = std::fs::File::open(&path).map_err(io_err("open the staged", &path))?;
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
        let mut len = 0u64;
        loop {
            use std::io::BufRead;
            let buf = reader
                .fill_buf()
                .map_err(io_err("read the staged", &path))?;
            if buf.is_empty() {
                break;
            }
            ctx.update(buf);
            len += buf.len() as u64;
            let n = buf.len();
            reader.consume(n);
        }
        let found = stream::finish(ctx);
        if found != f.artifact.sha256 || len != f.artifact.size {
            return Err(Error::Digest {
                artifact: f.artifact.name.clone(),
                location: path.display().to_string(),
                what: error::Checked::Artifact,
                expected: f.artifact.sha256.to_hex(),
                found: found.to_hex(),
            });
        }
        Ok(path)
    }

    /// The staged boot files of `plan` re-hashed, and a staged UKI's command line checked
    /// ([`NodeEngine::check_uki`]).
    fn check_boot_files(
        &self,
        dir: &Path,
        plan: &Plan<'_>,
        files: &[&Fetch<'_>],
    ) -> Result<(), Error> {
        for f in files {
            let path = self.check_staged(dir, f)?;
            if f.artifact.kind == basalt_manifest::ArtifactKind::Uki {
                self.check_uki(&path, plan)?;
            }
        }
        Ok(())
    }

    /// The UKI at `path` boots the release's own `/usr`: the `usrhash=` of its signed
    /// `.cmdline` is the usr artifact's verity root hash. Its sha256 was checked against the
    /// signed manifest already; this catches a release that signed the wrong UKI (another
    /// build's, or one made for another `/usr`), which would boot a `/usr` the slot does not
    /// hold — found by basalt-init only after the flip, as a failed boot.
    fn check_uki(&self, path: &Path, plan: &Plan<'_>) -> Result<(), Error> {
        let Some(uki) = &plan.uki else {
            return Ok(());
        };
        let bad = |reason: String| Error::Uki {
            version: plan.manifest.version.clone(),
            artifact: uki.artifact.name.clone(),
            path: path.to_path_buf(),
            reason,
        };
        let mut file = std::fs::File::open(path).map_err(io_err("open the staged", path))?;
        let what = format!("UKI {}", path.display());
        let (hash, _) =
            basalt_identity::pe::uki_usrhash(&mut file, &what).map_err(|e| bad(e.reason))?;
        if hash.as_bytes() != &plan.verity.root_hash.0 {
            return Err(bad(format!(
                "its signed command line boots usrhash={}, but the release's usr image has \
                 root hash {}",
                hash.to_hex(),
                plan.verity.root_hash.to_hex()
            )));
        }
        Ok(())
    }

    fn download_inner(
        &mut self,
        candidate: &Candidate,
        meter: &mut Meter<'_>,
        cancel: &CancelFlag,
    ) -> Result<Downloaded, Error> {
        let (root, verified) = self.reverify_candidate(&candidate.envelope)?;
        let manifest = &verified.manifest;
        let plan = plan(manifest)?;
        extensions::plan_extensions(manifest)?;
        let boot_files = plan.boot_fetches(self.config.backend)?;
        let node_image_only = self.node_image_only(candidate);
        let fetch_len = self.download_len(&plan, node_image_only)?;
        let env_sha = sha256(&candidate.envelope);
        let version = manifest.version.to_string();
        let install_plan = InstallPlan {
            data_len: plan.data_len(),
            verity_len: plan.verity_len(),
            root_hash: RootHash(plan.verity.root_hash.0),
            os: &manifest.os,
            version: &version,
        };
        let root_hash = RootHash(plan.verity.root_hash.0);

        // 1. Which slot, and may it be written?
        let cmdline = self.cmdline()?;
        let inv = self.inventory(&cmdline)?;
        let booted = self.booted(&inv)?;
        let target = !booted;
        if inv.slot(booted).root_hash == Some(root_hash) {
            return Err(Error::AlreadyInstalled {
                slot: booted,
                version: manifest.version.clone(),
                root_hash: root_hash.to_hex(),
            });
        }
        let mut backend = boot::open(&self.config, self.io.as_ref(), true)?;
        let status =
            backend
                .status()
                .map_err(boot::err(&self.config, "read the boot state of", booted))?;
        if matches!(status.slot(booted).status, BootStatus::Trying { .. }) {
            return Err(Error::BootedSlotPending { slot: booted });
        }
        let info = inv.slot(target);
        for (part, capacity, needed) in [
            ("data", info.data.size, plan.data_len()),
            ("verity", info.verity.size, plan.verity_len()),
        ] {
            if needed > capacity {
                return Err(Error::SlotTooSmall {
                    version: manifest.version.clone(),
                    slot: target,
                    part,
                    capacity,
                    needed,
                });
            }
        }
        basalt_disk::slots::image_labels(&manifest.os, &version).map_err(disk("label the slot"))?;

        // 2. The journal: resume the same release into the same slot, else start over.
        let mut journal = match journal::load(&self.config.journal_path()) {
            Some(j) if j.is_for(&env_sha, target) => j,
            _ => Journal::new(
                env_sha,
                target,
                manifest.version.clone(),
                plan.verity.root_hash,
            ),
        };
        let staging = self.staging_dir(&env_sha);
        if journal.is_for(&env_sha, target)
            && info.state == SlotState::Valid
            && info.root_hash == Some(root_hash)
            && info.version.as_deref() == Some(version.as_str())
        {
            // Already written and named (the journal may not say so yet: a crash right after
            // naming). Check it still is what was verified; anything else: start over.
            meter.phase(Phase::Verifying, plan.usr.artifact.size);
            let install = SlotInstall {
                slot: target,
                path: self.config.disk.clone(),
                data: inv.slot_range(target, SlotPart::Data),
                verity: inv.slot_range(target, SlotPart::Verity),
            };
            let checked = reverify::reverify(&install, &plan, &root, None)
                .and_then(|()| self.check_boot_files(&staging, &plan, &boot_files))
                .and_then(|_| {
                    // Idempotent: resumes from what the staging folder holds.
                    self.stage_extensions(
                        manifest,
                        node_image_only,
                        &root,
                        &staging,
                        &booted_version(&inv, booted),
                        &mut journal,
                        meter,
                        cancel,
                    )
                });
            match checked {
                Ok(_) => {
                    if !inv.health.is_clean() {
                        // A crash while the slot was being named left one GPT copy behind.
                        let mut dev = self
                            .io
                            .open_rw(&self.config.disk, false)
                            .map_err(io_err("open the disk", &self.config.disk))?;
                        basalt_disk::gpt::write_table(
                            &mut dev,
                            &self.config.disk,
                            &inv.table,
                            &inv.health,
                        )
                        .map_err(disk("repair the partition table"))?;
                    }
                    // Complete now, and with this download's extension mode.
                    journal.complete = true;
                    self.save_journal(&journal)?;
                    return Ok(Downloaded {
                        slot: target,
                        version: manifest.version.clone(),
                        sequence: manifest.sequence,
                        usr_hash: plan.verity.root_hash,
                        fetched: 0,
                        reused: fetch_len,
                    });
                }
                Err(e) => {
                    tracing::warn!(slot = %target, error = %e, "the downloaded slot no longer verifies; downloading again");
                    meter.phase(Phase::Downloading, fetch_len);
                }
            }
        }
        if !journal.is_for(&env_sha, target) || info.state != SlotState::Installing {
            // The slot was named or changed since: nothing in it is ours to keep.
            journal = Journal::new(
                env_sha,
                target,
                manifest.version.clone(),
                plan.verity.root_hash,
            );
        }
        journal.complete = false;
        std::fs::create_dir_all(&staging).map_err(io_err("create", &staging))?;
        self.prune_staging(&staging);
        self.save_journal(&journal)?;
        let release_file = staging.join(RELEASE_FILE);
        if std::fs::read(&release_file).ok().as_deref() != Some(&candidate.envelope[..]) {
            self.io
                .write_atomic(&release_file, &candidate.envelope)
                .map_err(|e| Error::Io {
                    op: "keep the signed release",
                    path: e.path,
                    source: e.source,
                })?;
        }

        // 3. Unbootable before the first byte: withdraw, then `_installing` + random UUIDs.
        boot::withdraw(&self.config, &mut backend, target)?;
        drop(backend);
        let scratch = (self.guids)()?;
        let install = {
            let mut dev = self
                .io
                .open_rw(&self.config.disk, false)
                .map_err(io_err("open the disk", &self.config.disk))?;
            begin_install(
                &mut dev,
                &self.config.disk,
                target,
                Some(&cmdline),
                &install_plan,
                scratch,
            )
            .map_err(disk("mark the slot installing"))?
        };
        tracing::info!(slot = %target, version = %manifest.version, "installing");

        // 4. The usr image into the slot, the boot files (kernel and initrd, or the UKI) into
        //    the staging folder.
        let (mut fetched, mut reused) = (0u64, 0u64);
        // The level-0 digest of the slot's data read back during the download, if it covers
        // every block (see `stream`): the final check then reads only the tree.
        let level0;
        {
            let mut sink = self.slot_sink(&install, &plan)?;
            let local = inv.cmdline_usrhash.map(|h| adaptive::Local {
                disk: &self.config.disk,
                slot: booted,
                data_offset: inv.slot_range(booted, SlotPart::Data).offset,
                verity_offset: inv.slot_range(booted, SlotPart::Verity).offset,
                root_hash: h.0,
            });
            let s = self.install_usr(&plan, local, &mut sink, &mut journal, meter, cancel)?;
            fetched += s.fetched;
            reused += s.reused;
            level0 = s.level0;
        }
        for f in boot_files.iter().copied() {
            let s = self.stream_to_file(&staging, f, &mut journal, meter, cancel)?;
            fetched += s.fetched;
            reused += s.reused;
        }

        // 4b. The release's system extensions, verified against the new OS, into the store
        // (before the slot is named: a refused extension leaves it `_installing`).
        let s = self.stage_extensions(
            manifest,
            node_image_only,
            &root,
            &staging,
            &booted_version(&inv, booted),
            &mut journal,
            meter,
            cancel,
        )?;
        fetched += s.fetched;
        reused += s.reused;

        // 5. Read back and verify, then name the slot. A UKI must boot this very /usr.
        if let Some(uki) = &plan.uki {
            if self.config.backend == BackendKind::Bls {
                self.check_uki(&staging.join(&uki.artifact.name), &plan)?;
            }
        }
        meter.phase(Phase::Verifying, plan.usr.artifact.size);
        reverify::reverify(&install, &plan, &root, level0)?;
        meter.done = plan.usr.artifact.size;
        meter.emit();
        {
            let mut dev = self
                .io
                .open_rw(&self.config.disk, false)
                .map_err(io_err("open the disk", &self.config.disk))?;
            finish_install(
                &mut dev,
                &self.config.disk,
                target,
                Some(&cmdline),
                &install_plan,
            )
            .map_err(disk("name the slot"))?;
        }
        journal.complete = true;
        self.save_journal(&journal)?;
        tracing::info!(slot = %target, version = %manifest.version, fetched, reused, "downloaded and verified");
        Ok(Downloaded {
            slot: target,
            version: manifest.version.clone(),
            sequence: manifest.sequence,
            usr_hash: plan.verity.root_hash,
            fetched,
            reused,
        })
    }
}

/// The OS version of the booted slot, as its GPT label names it (none when unreadable).
fn booted_version(inv: &Inventory, booted: Slot) -> Vec<basalt_manifest::semver::Version> {
    inv.slot(booted)
        .version
        .as_deref()
        .and_then(|v| basalt_manifest::semver::Version::parse(v).ok())
        .into_iter()
        .collect()
}

/// How a verified head relates to the last one this node accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// The same sequence and the same bytes.
    Same,
    /// A higher sequence (or nothing seen yet).
    Newer,
}

/// The anti-replay rule: below the last seen sequence is a replay; the same sequence with
/// other bytes is equivocation.
fn sequence_verdict(
    location: &str,
    m: &basalt_manifest::Manifest,
    sha: &Digest,
    last_seen: Option<&(u64, Digest)>,
) -> Result<Seen, Error> {
    let Some((seen, seen_sha)) = last_seen else {
        return Ok(Seen::Newer);
    };
    if m.sequence < *seen {
        return Err(Error::Replay {
            location: location.to_owned(),
            sequence: m.sequence,
            version: m.version.clone(),
            highest_seen: *seen,
        });
    }
    if m.sequence == *seen {
        if sha == seen_sha {
            return Ok(Seen::Same);
        }
        return Err(Error::Equivocation {
            location: location.to_owned(),
            sequence: m.sequence,
            accepted: seen_sha.to_hex(),
            found: sha.to_hex(),
        });
    }
    Ok(Seen::Newer)
}

impl Engine for NodeEngine {
    type Error = Error;

    fn node(&mut self) -> Result<NodeView, Error> {
        let cmdline = self.cmdline()?;
        let inv = self.inventory(&cmdline)?;
        let backend = boot::open(&self.config, self.io.as_ref(), false)?;
        let st =
            backend
                .status()
                .map_err(boot::err(&self.config, "read the boot state of", Slot::A))?;
        let view = |slot: Slot| {
            let info = inv.slot(slot);
            SlotView {
                slot,
                state: info.state,
                version: info
                    .version
                    .as_deref()
                    .and_then(|v| basalt_manifest::semver::Version::parse(v).ok()),
                usr_hash: info.root_hash.map(|h| Digest(h.0)),
                boot: st.slot(slot).status,
            }
        };
        Ok(NodeView {
            booted: inv.booted,
            slots: [view(Slot::A), view(Slot::B)],
            next_boot: st.next,
        })
    }

    fn check(&mut self, request: &CheckRequest) -> Result<CheckOutcome, Error> {
        let anchor = self.trust()?;
        let root = trust::walk(
            anchor,
            self.source.as_ref(),
            self.io.as_ref(),
            &self.config.trust_dir(),
            self.config.max_trust_steps,
        )?;
        let (rel, location) = self.head_location()?;
        let bytes = self
            .source
            .read_small(&rel, MAX_RELEASE_BYTES as u64)
            .map_err(|source| Error::Fetch {
                what: "the channel head".into(),
                source,
            })?;
        let head_err = |e| Error::Head {
            location: location.clone(),
            source: Box::new(e),
        };
        // Signatures, expiry, target first; then the sequence; then the version.
        let verified =
            verify_release(&bytes, &root, &self.policy(request.now)).map_err(head_err)?;
        let sha = sha256(&bytes);
        let m = &verified.manifest;
        if sequence_verdict(&location, m, &sha, request.last_seen.as_ref())? == Seen::Same {
            return Ok(CheckOutcome::UpToDate {
                sequence: m.sequence,
                version: m.version.clone(),
            });
        }
        let policy = Policy {
            installed_version: request.installed_version.clone(),
            allow_downgrade: request.allow_downgrade,
            ..self.policy(request.now)
        };
        let verified = verify_release(&bytes, &root, &policy).map_err(head_err)?;
        plan(&verified.manifest)?.boot_fetches(self.config.backend)?;
        extensions::plan_extensions(&verified.manifest)?;
        tracing::info!(
            version = %verified.manifest.version,
            sequence = verified.manifest.sequence,
            downgrade = verified.downgrade_override,
            "update available"
        );
        Ok(CheckOutcome::Available(Candidate {
            release: verified,
            envelope: bytes,
            node_image_only: None,
        }))
    }

    fn verify_candidate(
        &mut self,
        envelope: &[u8],
        request: &CheckRequest,
    ) -> Result<Candidate, Error> {
        let root = self.trust()?;
        let (_, location) = self.head_location()?;
        let head_err = |e| Error::Head {
            location: location.clone(),
            source: Box::new(e),
        };
        let verified =
            verify_release(envelope, &root, &self.policy(request.now)).map_err(head_err)?;
        // The persisted envelope itself is the one last seen: equal is fine (these bytes
        // only); a lower sequence or other bytes under the same one are refused.
        sequence_verdict(
            &location,
            &verified.manifest,
            &sha256(envelope),
            request.last_seen.as_ref(),
        )?;
        let policy = Policy {
            installed_version: request.installed_version.clone(),
            allow_downgrade: request.allow_downgrade,
            ..self.policy(request.now)
        };
        let verified = verify_release(envelope, &root, &policy).map_err(head_err)?;
        plan(&verified.manifest)?.boot_fetches(self.config.backend)?;
        Ok(Candidate {
            release: verified,
            envelope: envelope.to_vec(),
            node_image_only: None,
        })
    }

    fn download(
        &mut self,
        candidate: &Candidate,
        progress: &mut dyn FnMut(&Progress),
        cancel: &CancelFlag,
    ) -> Result<Downloaded, Error> {
        let total = plan(&candidate.release.manifest)
            .and_then(|p| self.download_len(&p, self.node_image_only(candidate)))
            .unwrap_or(0);
        let mut meter = Meter::new(progress, total);
        meter.emit();
        let result = self.download_inner(candidate, &mut meter, cancel);
        if let Err(e) = &result {
            tracing::warn!(error = %e, kind = %e.kind(), "download failed; the inactive slot stays unbootable");
        }
        result
    }

    fn apply(&mut self, downloaded: &Downloaded, tries: u32) -> Result<(), Error> {
        let not = |reason: String| Error::NotDownloaded {
            slot: downloaded.slot,
            version: downloaded.version.clone(),
            reason,
        };
        let journal = journal::load(&self.config.journal_path())
            .ok_or_else(|| not("no download journal".into()))?;
        if !journal.complete
            || journal.slot != downloaded.slot.to_string()
            || journal.usr_hash != downloaded.usr_hash
            || journal.version != downloaded.version
        {
            return Err(not(format!(
                "the last download is {} into slot {} (complete: {})",
                journal.version, journal.slot, journal.complete
            )));
        }
        let cmdline = self.cmdline()?;
        let inv = self.inventory(&cmdline)?;
        let booted = self.booted(&inv)?;
        if booted == downloaded.slot {
            return Err(Error::Disk {
                op: "stage the slot",
                source: basalt_disk::Error::BootedSlot { slot: booted },
            });
        }
        let info = inv.slot(downloaded.slot);
        let version = downloaded.version.to_string();
        if info.state != SlotState::Valid
            || info.root_hash.map(|h| h.0) != Some(downloaded.usr_hash.0)
            || info.version.as_deref() != Some(version.as_str())
        {
            return Err(not(format!(
                "the slot is {} with version {:?}",
                info.state.as_str(),
                info.version
            )));
        }
        let staging = self.staging_dir(&journal.envelope_sha256);
        let manifest = self.staged_manifest(&staging, &journal.envelope_sha256)?;
        let plan = plan(&manifest)?;
        if plan.verity.root_hash != downloaded.usr_hash {
            return Err(not("the staged release is another one".into()));
        }
        self.check_extension_set(&manifest, journal.node_image_only, &self.trust()?)?;
        if let Some(uki) = plan
            .boot_fetches(self.config.backend)?
            .into_iter()
            .find(|f| f.artifact.kind == basalt_manifest::ArtifactKind::Uki)
        {
            let path = self.check_staged(&staging, uki)?;
            self.check_uki(&path, &plan)?;
            if !self.config.kernel_options.trim().is_empty() {
                tracing::warn!(options = %self.config.kernel_options, "kernel options are not added to a unified kernel image: its signed command line is the release's");
            }
            let mut backend = boot::open(&self.config, self.io.as_ref(), true)?;
            let target = UkiTarget {
                version,
                usr_hash: downloaded.usr_hash.to_hex(),
                uki: path,
            };
            backend
                .stage_uki(downloaded.slot, &target, tries)
                .map_err(boot::err(&self.config, "stage", downloaded.slot))?;
            tracing::info!(slot = %downloaded.slot, version = %downloaded.version, tries, uki = %uki.artifact.name, "staged the unified kernel image for the next boot");
            return Ok(());
        }
        let kernel = self.check_staged(&staging, &plan.kernel)?;
        let initrd = self.check_staged(&staging, &plan.initrd)?;
        let mut backend = boot::open(&self.config, self.io.as_ref(), true)?;
        let target = BootTarget {
            version,
            usr_hash: downloaded.usr_hash.to_hex(),
            kernel: Some(kernel),
            initrd: Some(initrd),
            options: self.config.kernel_options.clone(),
        };
        backend
            .stage(downloaded.slot, &target, tries)
            .map_err(boot::err(&self.config, "stage", downloaded.slot))?;
        tracing::info!(slot = %downloaded.slot, version = %downloaded.version, tries, "staged for the next boot");
        Ok(())
    }

    fn cancel(&mut self) -> Result<(), Error> {
        let cmdline = self.cmdline()?;
        let inv = self.inventory(&cmdline)?;
        let target = !self.booted(&inv)?;
        let mut backend = boot::open(&self.config, self.io.as_ref(), true)?;
        let st =
            backend
                .status()
                .map_err(boot::err(&self.config, "read the boot state of", target))?;
        if matches!(st.slot(target).status, BootStatus::Trying { .. }) {
            backend
                .cancel(target)
                .map_err(boot::err(&self.config, "cancel", target))?;
            tracing::info!(slot = %target, "staged slot withdrawn");
        }
        Ok(())
    }

    fn rollback(&mut self) -> Result<Slot, Error> {
        let cmdline = self.cmdline()?;
        let inv = self.inventory(&cmdline)?;
        let booted = self.booted(&inv)?;
        let to = !booted;
        if inv.slot(to).state != SlotState::Valid {
            return Err(Error::Boot {
                backend: self.config.backend.as_str(),
                op: "roll back to",
                slot: to,
                source: basalt_disk::Error::IllegalTransition {
                    op: "roll back to",
                    slot: to,
                    reason: format!("it holds no valid image ({})", inv.slot(to).state.as_str()),
                },
            });
        }
        let mut backend = boot::open(&self.config, self.io.as_ref(), true)?;
        backend
            .rollback(to)
            .map_err(boot::err(&self.config, "roll back to", to))?;
        tracing::warn!(from = %booted, to = %to, "rollback staged");
        Ok(to)
    }

    fn adaptive_counts(&self) -> AdaptiveCounts {
        self.adaptive.get()
    }

    fn mark_good(&mut self) -> Result<(), Error> {
        let cmdline = self.cmdline()?;
        let inv = self.inventory(&cmdline)?;
        let booted = self.booted(&inv)?;
        let mut backend = boot::open(&self.config, self.io.as_ref(), true)?;
        backend
            .mark_good(booted)
            .map_err(boot::err(&self.config, "mark good", booted))
    }

    fn mark_bad(&mut self, slot: Slot) -> Result<(), Error> {
        let mut backend = boot::open(&self.config, self.io.as_ref(), true)?;
        backend
            .mark_bad(slot)
            .map_err(boot::err(&self.config, "mark bad", slot))
    }

    fn extensions(&mut self) -> Result<ExtensionsView, Error> {
        extensions::listing(&self.extension_store(), &self.config.run_extensions)
    }

    fn extensions_lister(&self) -> ExtensionsLister {
        let store = self.extension_store();
        let run = self.config.run_extensions.clone();
        Arc::new(move || {
            extensions::listing(&store, &run).map_err(|e| Box::new(e) as Box<dyn EngineError>)
        })
    }

    fn pin_extension(&mut self, name: &str, version: &Version) -> Result<(), Error> {
        self.pin_extension_inner(name, version)
    }

    fn unpin_extension(&mut self, name: &str) -> Result<(), Error> {
        self.unpin_extension_inner(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The daemon runs the engine on a worker thread.
    #[test]
    fn the_engine_can_move_to_a_worker_thread() {
        fn send<T: Send>() {}
        send::<NodeEngine>();
        send::<Error>();
    }
}
