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
use basalt_sysext::{HostOs, Store};

use super::error::{io as io_err, Error};
use super::journal::Journal;
use super::plan::{fetch, Fetch};
use super::stream::Meter;
use super::NodeEngine;
use crate::engine::CancelFlag;

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
        root: &TrustRoot,
        staging: &Path,
        keep: &[Version],
        journal: &mut Journal,
        meter: &mut Meter<'_>,
        cancel: &CancelFlag,
    ) -> Result<Vec<PathBuf>, Error> {
        if self.config.node_image_only {
            return self.keep_booted_set(manifest, root, keep);
        }
        let exts = plan_extensions(manifest)?;
        let host = HostOs::of_release(manifest);
        let dl = staging.join(DOWNLOAD_DIR);
        std::fs::create_dir_all(&dl).map_err(io_err("create", &dl))?;
        for (_, f) in &exts {
            self.stream_to_file(&dl, f, journal, meter, cancel)?;
        }
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
        }
        let files: Vec<(PathBuf, String)> = exts
            .iter()
            .map(|(_, f)| (dl.join(&f.artifact.name), f.artifact.name.clone()))
            .collect();
        let set = self.publish_set(&manifest.version, &files)?;
        // Without the booted slot's version nothing is collected: not knowing it must never
        // mean deleting the set the node runs with.
        if !keep.is_empty() {
            let mut keep = keep.to_vec();
            keep.push(manifest.version.clone());
            self.collect_sets(&keep);
        }
        Ok(set)
    }

    /// Node-image-only: the booted version's set (`keep[0]`), every image verified again and
    /// checked against the NEW OS, becomes the new version's set; one that does not fit
    /// refuses the update naming it (never dropped silently). The release's own `sysext`
    /// artifacts are not taken.
    fn keep_booted_set(
        &self,
        manifest: &Manifest,
        root: &TrustRoot,
        keep: &[Version],
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
        let images = store.images(from).map_err(|e| not_kept("(set)", e))?;
        let mut files = Vec::new();
        for image in &images {
            let ext = basalt_sysext::verify_image(&image.path, root, Some(&image.name))
                .map_err(|e| not_kept(&image.name, e))?;
            basalt_sysext::activate::check_extension(&ext.statement, &host)
                .map_err(|e| not_kept(&image.name, e))?;
            let file = image
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            files.push((image.path.clone(), file));
        }
        let set = if *from == manifest.version {
            images.into_iter().map(|i| i.path).collect()
        } else {
            self.publish_set(&manifest.version, &files)?
        };
        tracing::info!(from = %from, to = %manifest.version, extensions = set.len(), "node-image-only: extension set kept");
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
        root: &TrustRoot,
    ) -> Result<(), Error> {
        if self.config.node_image_only {
            // The kept set was checked against this OS when it was linked; its images are
            // checked again at every boot.
            return Ok(());
        }
        let exts = plan_extensions(manifest)?;
        let store = self.extension_store();
        let host = HostOs::of_release(manifest);
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
            basalt_sysext::check_staged(&path, root, name, verity, &host)
                .map_err(|e| refused(name, &manifest.version, e))?;
        }
        Ok(())
    }
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
