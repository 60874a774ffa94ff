//! Staging a release's system extensions before the slot flip (issue 10).
//!
//! ```text
//! download (after kernel and initrd, before the slot is read back and named):
//!   each `sysext` artifact NAME.raw: zstd frames ─▶ staging/<release>/extensions/NAME.raw
//!     (resumable like the kernel; the whole-artifact sha256 of the signed manifest)
//!   each image: basalt_sysext::check_staged — statement signed by this node's trust root,
//!     name = NAME, layout, EVERY block against the signed root hash, the signed verity
//!     parameters = the manifest's, compatible with the NEW OS (ID/SYSEXT_LEVEL/VERSION_ID
//!     of the release: HostOs::of_release) ── any refusal: Error::Extension, the slot stays
//!     `_installing`, never named, never staged
//!   publish: hard links into extensions/.new-<version>/ ─▶ fsync ─▶ rename over
//!     extensions/<version>/ (the old set of that version moved aside first, then removed)
//!   collect: sets whose OS version is in neither slot (booted, and the one being written)
//! apply: the set of the version is there and every image still checks ─▶ else NotDownloaded
//! pins (basalt_sysext::pins, <store>/pins): a full update must ship each pinned extension at
//!   its pinned version (else Error::ExtensionPinned, before the slot is named; checked
//!   again at apply); node-image-only keeps the booted set with the pinned versions over it
//! ```
//!
//! The store (`/var/lib/basalt/extensions/<os-version>/NAME.raw`, `basalt_sysext::store`)
//! lives on the root partition, so both slots' sets survive an update and a rollback: the
//! boot activation (`basaltctl extensions activate`) picks the set of the booted version.
//! Hard links, not copies: the staging folder keeps its files for a resumed download, and
//! the store never holds a half-written image (it only ever gets whole, verified files).

use std::path::{Path, PathBuf};

use basalt_manifest::semver::Version;
use basalt_manifest::{ArtifactKind, Manifest, TrustRoot};
use basalt_sysext::pins::{self, Pins};
use basalt_sysext::{HostOs, Store};

use super::error::{io as io_err, Error};
use super::journal::Journal;
use super::plan::{fetch, Fetch};
use super::stream::{Meter, Streamed};
use super::NodeEngine;
use crate::engine::{CancelFlag, ExtensionsView, StagedSetView};

/// Where the staged images of a download go, inside its staging folder.
const DOWNLOAD_DIR: &str = "extensions";
/// Prefix of a set being published (`.new-<version>`) and of one being replaced.
const NEW_PREFIX: &str = ".new-";
const OLD_PREFIX: &str = ".old-";

/// The `sysext` artifacts of `m`, each shipped as zstd frames with a frame index, named
/// `NAME.raw` (the manifest's own rules) — refused up front like any unusable artifact.
pub fn plan_extensions(m: &Manifest) -> Result<Vec<(String, Fetch<'_>)>, Error> {
    let mut out = Vec::new();
    for a in m.artifacts_of(ArtifactKind::Sysext) {
        let name = a
            .name
            .strip_suffix(basalt_sysext::image::IMAGE_SUFFIX)
            .ok_or_else(|| Error::Unusable {
                version: m.version.clone(),
                reason: format!("sysext artifact {} is not named NAME.raw", a.name),
            })?;
        out.push((name.to_owned(), fetch(m, a)?));
    }
    Ok(out)
}

/// Uncompressed bytes of `m`'s extension images: what a download streams besides `/usr` and
/// the boot files (counted in its progress total).
pub fn extensions_len(m: &Manifest) -> u64 {
    m.artifacts_of(ArtifactKind::Sysext).map(|a| a.size).sum()
}

/// The refusal of one extension, with what it was for.
fn refused(name: &str, version: &Version, source: basalt_sysext::Error) -> Error {
    Error::Extension {
        name: name.to_owned(),
        version: version.clone(),
        source: Box::new(source),
    }
}

impl NodeEngine {
    /// The node's extension store.
    pub(super) fn extension_store(&self) -> Store {
        Store::new(self.config.extensions_dir())
    }

    /// Download, verify and publish the extension set of `manifest` (see the module docs).
    /// `keep` are the OS versions whose sets must survive (the booted slot's); the new
    /// version is always kept.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn stage_extensions(
        &self,
        manifest: &Manifest,
        node_image_only: bool,
        root: &TrustRoot,
        staging: &Path,
        keep: &[Version],
        journal: &mut Journal,
        meter: &mut Meter<'_>,
        cancel: &CancelFlag,
    ) -> Result<Streamed, Error> {
        let pins = self.extension_pins()?;
        journal.node_image_only = node_image_only;
        if node_image_only {
            self.keep_booted_set(manifest, root, keep, &pins)?;
            return Ok(Streamed::default());
        }
        let exts = plan_extensions(manifest)?;
        let host = HostOs::of_release(manifest);
        let dl = staging.join(DOWNLOAD_DIR);
        std::fs::create_dir_all(&dl).map_err(io_err("create", &dl))?;
        let mut streamed = Streamed::default();
        for (_, f) in &exts {
            let s = self.stream_to_file(&dl, f, journal, meter, cancel)?;
            streamed.fetched += s.fetched;
            streamed.reused += s.reused;
        }
        let mut shipped = Vec::new();
        for (name, f) in &exts {
            let path = dl.join(&f.artifact.name);
            let verity = f.artifact.verity.as_ref().ok_or_else(|| Error::Unusable {
                version: manifest.version.clone(),
                reason: format!(
                    "sysext artifact {} has no verity parameters",
                    f.artifact.name
                ),
            })?;
            let ext = basalt_sysext::check_staged(&path, root, name, verity, &host)
                .map_err(|e| refused(name, &manifest.version, e))?;
            tracing::info!(
                extension = %name,
                extension_version = %ext.statement.version,
                os_version = %manifest.version,
                "extension verified"
            );
            shipped.push((name.clone(), ext.statement.version));
        }
        // A full update moves OS and extensions together: a pinned extension must come in
        // its pinned version, or the update is refused (never replaced behind the pin).
        pins_honored(&pins, &shipped, &manifest.version)?;
        let files: Vec<(PathBuf, String)> = exts
            .iter()
            .map(|(_, f)| (dl.join(&f.artifact.name), f.artifact.name.clone()))
            .collect();
        self.publish_set(&manifest.version, &files)?;
        // Without the booted slot's version nothing is collected: not knowing it must never
        // mean deleting the set the node runs with.
        if !keep.is_empty() {
            let mut keep = keep.to_vec();
            keep.push(manifest.version.clone());
            self.collect_sets(&keep);
        }
        Ok(streamed)
    }

    /// The operator's pins (`<store>/pins`); an unreadable or malformed file fails the
    /// update (never read as "no pins").
    fn extension_pins(&self) -> Result<Pins, Error> {
        pins_of(&self.extension_store())
    }

    /// Node-image-only: the booted version's set (`keep[0]`), with each pinned extension at
    /// its pinned version (from whichever set holds it), every image verified again and
    /// checked against the NEW OS, becomes the new version's set; one that does not fit
    /// refuses the update naming it (never dropped silently). The release's own `sysext`
    /// artifacts are not taken.
    fn keep_booted_set(
        &self,
        manifest: &Manifest,
        root: &TrustRoot,
        keep: &[Version],
        pins: &Pins,
    ) -> Result<Vec<PathBuf>, Error> {
        let store = self.extension_store();
        let Some(from) = keep.first() else {
            return Err(Error::State {
                path: store.root().to_path_buf(),
                reason: "node-image-only: the booted slot's version is unknown, so is the \
                         extension set to keep"
                    .into(),
            });
        };
        let host = HostOs::of_release(manifest);
        let not_kept = |name: &str, source| Error::ExtensionNotKept {
            name: name.to_owned(),
            from: from.clone(),
            to: manifest.version.clone(),
            source: Box::new(source),
        };
        // name → image: the booted set, then the pins over it.
        let mut chosen: std::collections::BTreeMap<String, PathBuf> = store
            .images(from)
            .map_err(|e| not_kept("(set)", e))?
            .into_iter()
            .map(|i| (i.name, i.path))
            .collect();
        let booted_set = chosen.clone();
        for (name, version) in pins {
            let image = store
                .find_staged(name, version, Some(from))
                .map_err(|e| not_kept(name, e))?;
            chosen.insert(name.clone(), image.path);
        }
        let mut files = Vec::new();
        let mut kept = Vec::new();
        for (name, path) in &chosen {
            let ext = basalt_sysext::verify_image(path, root, Some(name))
                .map_err(|e| not_kept(name, e))?;
            basalt_sysext::activate::check_extension(&ext.statement, &host)
                .map_err(|e| not_kept(name, e))?;
            files.push((
                path.clone(),
                format!("{name}{}", basalt_sysext::image::IMAGE_SUFFIX),
            ));
            kept.push((name.clone(), ext.statement.version));
        }
        pins_honored(pins, &kept, &manifest.version)?;
        let set = if *from == manifest.version && chosen == booted_set {
            chosen.into_values().collect()
        } else {
            self.publish_set(&manifest.version, &files)?
        };
        tracing::info!(from = %from, to = %manifest.version, extensions = set.len(), pinned = pins.len(), "node-image-only: extension set kept");
        let mut keep = keep.to_vec();
        keep.push(manifest.version.clone());
        self.collect_sets(&keep);
        Ok(set)
    }

    /// Hard-link the verified images `files` (source, file name) into `.new-<version>` and
    /// swap it in as `<version>`.
    fn publish_set(
        &self,
        version: &Version,
        files: &[(PathBuf, String)],
    ) -> Result<Vec<PathBuf>, Error> {
        let store = self.extension_store();
        let root = store.root().to_path_buf();
        std::fs::create_dir_all(&root).map_err(io_err("create", &root))?;
        let new = root.join(format!("{NEW_PREFIX}{version}"));
        remove_dir(&new)?;
        std::fs::create_dir(&new).map_err(io_err("create", &new))?;
        let mut out = Vec::new();
        for (from, name) in files {
            let to = new.join(name);
            std::fs::hard_link(from, &to).map_err(io_err("link into the store", &to))?;
            out.push(store.set_dir(version).join(name));
        }
        sync_dir(&new)?;
        let dest = store.set_dir(version);
        let old = root.join(format!("{OLD_PREFIX}{version}"));
        if dest.exists() {
            remove_dir(&old)?;
            self.io
                .rename(&dest, &old)
                .map_err(io_err("move aside the old set", &dest))?;
        }
        self.io
            .rename(&new, &dest)
            .map_err(io_err("publish the extension set", &dest))?;
        sync_dir(&root)?;
        remove_dir(&old)?;
        tracing::info!(os_version = %version, extensions = out.len(), set = %dest.display(), "extension set staged");
        Ok(out)
    }

    /// Remove the sets of versions not in `keep`, and leftovers of interrupted publishes
    /// (best effort: they only take space; a failure is logged).
    fn collect_sets(&self, keep: &[Version]) {
        let store = self.extension_store();
        match store.collect_garbage(keep) {
            Ok(removed) => {
                for r in removed {
                    tracing::info!(set = %r.display(), "extension set collected (its OS version is in neither slot)");
                }
            }
            Err(e) => tracing::warn!(error = %e, "extension sets not collected"),
        }
        let Ok(entries) = store.entries() else { return };
        for e in entries {
            let stale = [NEW_PREFIX, OLD_PREFIX].iter().any(|p| {
                e.strip_prefix(p)
                    .and_then(|v| Version::parse(v).ok())
                    .is_some_and(|v| !keep.contains(&v))
            });
            if stale {
                let _ = std::fs::remove_dir_all(store.root().join(e));
            }
        }
    }

    /// At apply: the set of `manifest`'s version holds exactly its extensions, and each
    /// still passes every check of staging (a file changed on the root partition since the
    /// download is caught here, before the flip).
    pub(super) fn check_extension_set(
        &self,
        manifest: &Manifest,
        node_image_only: bool,
        root: &TrustRoot,
    ) -> Result<(), Error> {
        let pins = self.extension_pins()?;
        if node_image_only {
            // The kept set was verified and checked against this OS when it was linked (its
            // images are checked again at every boot); the pins must still be what it holds.
            let store = self.extension_store();
            let mut kept = Vec::new();
            for image in store
                .images(&manifest.version)
                .map_err(|e| refused("(set)", &manifest.version, e))?
            {
                let ext = basalt_sysext::verify_image(&image.path, root, Some(&image.name))
                    .map_err(|e| refused(&image.name, &manifest.version, e))?;
                kept.push((image.name, ext.statement.version));
            }
            return pins_honored(&pins, &kept, &manifest.version);
        }
        let exts = plan_extensions(manifest)?;
        let store = self.extension_store();
        let host = HostOs::of_release(manifest);
        let mut shipped = Vec::new();
        let stored = store
            .images(&manifest.version)
            .map_err(|e| refused("(set)", &manifest.version, e))?;
        let mut names: Vec<&str> = exts.iter().map(|(n, _)| n.as_str()).collect();
        names.sort_unstable();
        let have: Vec<&str> = stored.iter().map(|i| i.name.as_str()).collect();
        if names != have {
            return Err(Error::State {
                path: store.set_dir(&manifest.version),
                reason: format!(
                    "the staged extension set is {have:?}, release {} lists {names:?}",
                    manifest.version
                ),
            });
        }
        for (name, f) in &exts {
            let path = store.image_path(&manifest.version, name);
            let verity = f.artifact.verity.as_ref().ok_or_else(|| Error::Unusable {
                version: manifest.version.clone(),
                reason: format!(
                    "sysext artifact {} has no verity parameters",
                    f.artifact.name
                ),
            })?;
            let ext = basalt_sysext::check_staged(&path, root, name, verity, &host)
                .map_err(|e| refused(name, &manifest.version, e))?;
            shipped.push((name.clone(), ext.statement.version));
        }
        // A pin set after the download (or a download made before it) is caught here,
        // before the flip.
        pins_honored(&pins, &shipped, &manifest.version)
    }

    /// Pin extension `name` at `version` (see `basalt_sysext::pins` for the checks: staged,
    /// signed, intact, compatible with the booted OS); the pins file is replaced atomically.
    pub(super) fn pin_extension_inner(&self, name: &str, version: &Version) -> Result<(), Error> {
        let store = self.extension_store();
        let root = self.trust()?;
        let pin_err = |source| Error::ExtensionPin {
            name: name.to_owned(),
            version: version.clone(),
            source: Box::new(source),
        };
        let host = HostOs::read(
            &self.config.os_release,
            basalt_sysext::compat::native_architecture(),
        )
        .map_err(pin_err)?;
        pins::check_pin(&store, &root, &host, name, version).map_err(pin_err)?;
        let mut all = self.extension_pins()?;
        all.insert(name.to_owned(), version.clone());
        self.write_pins(&all)?;
        tracing::info!(extension = name, version = %version, "extension pinned");
        Ok(())
    }

    /// Remove the pin of `name`; unpinning an extension that is not pinned succeeds (as
    /// `Unpin` of the node does).
    pub(super) fn unpin_extension_inner(&self, name: &str) -> Result<(), Error> {
        let mut all = self.extension_pins()?;
        if all.remove(name).is_none() {
            tracing::info!(extension = name, "extension was not pinned");
            return Ok(());
        }
        self.write_pins(&all)?;
        tracing::info!(extension = name, "extension unpinned");
        Ok(())
    }

    fn write_pins(&self, all: &Pins) -> Result<(), Error> {
        let store = self.extension_store();
        std::fs::create_dir_all(store.root()).map_err(io_err("create", store.root()))?;
        // A torn earlier write's temporary (`.pins.tmp-PID-SEQ`; the agent is the store's
        // only writer): best effort, it only takes space.
        match basalt_fsutil::remove_stale_temporaries(store.root()) {
            Ok(removed) => {
                for path in removed {
                    tracing::info!(path = %path.display(), "removed a torn write's temporary");
                }
            }
            Err(e) => tracing::warn!("{e}"),
        }
        self.io
            .write_atomic(&store.pins_path(), pins::render(all).as_bytes())
            .map_err(|e| Error::Io {
                op: "write the extension pins",
                path: e.path,
                source: e.source,
            })
    }
}

/// The pins of `store`, as a pipeline error when unreadable or malformed.
fn pins_of(store: &Store) -> Result<Pins, Error> {
    store.pins().map_err(|e| Error::State {
        path: store.pins_path(),
        reason: e.to_string(),
    })
}

/// What `store` holds and what is mounted under `run` (`basaltctl extensions list`, D-Bus
/// `ListExtensions`): no verification, a listing. Needs no engine, so the daemon can answer
/// it while the engine works (see `Engine::extensions_lister`).
pub fn listing(store: &Store, run: &Path) -> Result<ExtensionsView, Error> {
    let state = |e: basalt_sysext::Error| Error::State {
        path: store.root().to_path_buf(),
        reason: e.to_string(),
    };
    let staged = store
        .listing()
        .map_err(state)?
        .into_iter()
        .map(|set| StagedSetView {
            os_version: set.os_version,
            extensions: set
                .images
                .into_iter()
                .map(|i| (i.name, i.version))
                .collect(),
        })
        .collect();
    let pins = pins_of(store)?.into_iter().collect();
    let mut active: Vec<String> = match std::fs::read_dir(run) {
        Ok(entries) => entries
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(io_err("list", run)(e)),
    };
    active.sort();
    Ok(ExtensionsView {
        staged,
        active,
        pins,
    })
}

/// Every pin is honoured by `set` (name, signed version) of `release`, else the refusal
/// naming the first pin that is not.
fn pins_honored(pins: &Pins, set: &[(String, Version)], release: &Version) -> Result<(), Error> {
    for (name, pinned) in pins {
        let shipped = set.iter().find(|(n, _)| n == name).map(|(_, v)| v);
        if shipped != Some(pinned) {
            return Err(Error::ExtensionPinned {
                name: name.clone(),
                pinned: Box::new(pinned.clone()),
                release: release.clone(),
                shipped: shipped.cloned().map(Box::new),
            });
        }
    }
    Ok(())
}

fn remove_dir(path: &Path) -> Result<(), Error> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err("remove", path)(e)),
        _ => Ok(()),
    }
}

fn sync_dir(path: &Path) -> Result<(), Error> {
    basalt_fsutil::sync_dir(path).map_err(|e| Error::Io {
        op: "sync",
        path: e.path,
        source: e.source,
    })
}
