//! The node side of system extensions outside the update pipeline: activating the booted
//! OS version's set at boot (issue 10). Listing the store and pinning go over D-Bus
//! (`ListExtensions`, `PinExtension`, `UnpinExtension`: the engine, `pipeline::extensions`).
//!
//! ```text
//! boot: local-fs.target ─▶ basalt-extensions.service (`basaltctl extensions activate`,
//!   no D-Bus, before basalt-updated) ─▶ adopt the install-time set, if the node image
//!   carried one (/.basalt-extensions/<version>/ renamed into the store) ─▶ trust root: repository.trust_root (or the one in
//!   /usr) + the generations learnt under /var/lib/basalt/trust ─▶ the booted version
//!   (os-release VERSION_ID) names the set /var/lib/basalt/extensions/<version>/ ─▶
//!   basalt_sysext::activate (verify every image, dm-verity from the signed parameters,
//!   erofs read-only under /run/extensions/NAME) ─▶ systemd-sysext refresh
//! ```
//!
//! A rollback boots the other slot, whose OS version names the other set: the extensions
//! roll back with the OS. A set that fails to activate activates nothing (the unit fails,
//! the node still boots its `/usr`; the health gate can require the extensions).
//! Does not own: the checks and the node operations (`basalt_sysext`), staging sets (the
//! pipeline, `pipeline::extensions`).

use std::path::{Path, PathBuf};

use basalt_sysext::activate::{Activated, NodeOps};
use basalt_sysext::store::Adoption;
use basalt_sysext::Store;

use crate::agent::HostPaths;
use crate::config::Settings;

/// Why activation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ExtensionsError {
    /// The trust root could not be loaded.
    #[error("trust root: {0}")]
    Trust(#[source] Box<crate::pipeline::Error>),
    /// The set was refused or could not be set up.
    #[error(transparent)]
    Sysext(#[from] basalt_sysext::Error),
}

/// The trust root the agent would use: `repository.trust_root` (or the one shipped in
/// `/usr`), advanced by the generations under `state_dir/trust`.
pub fn trust_root(
    settings: &Settings,
    state_dir: &Path,
) -> Result<basalt_manifest::TrustRoot, ExtensionsError> {
    let anchor = settings.repository.as_ref().map_or_else(
        || PathBuf::from(crate::config::DEFAULT_TRUST_ROOT),
        |r| r.trust_root.clone(),
    );
    crate::pipeline::trust::load(&anchor, &state_dir.join("trust"))
        .map_err(|e| ExtensionsError::Trust(Box::new(e)))
}

/// The store under `state_dir` (`/var/lib/basalt/extensions`).
pub fn store(state_dir: &Path) -> Store {
    Store::new(state_dir.join("extensions"))
}

/// What [`activate`] did.
#[derive(Debug)]
pub struct Activation {
    /// The install-time sets moved into the store first (normally only at the first boot).
    pub adoption: Adoption,
    /// The booted version's extensions, now active.
    pub activated: Vec<Activated>,
}

/// Adopts an install-time set, then activates the booted version's set (see the module
/// docs).
pub fn activate<O: NodeOps>(
    ops: &mut O,
    settings: &Settings,
    paths: &HostPaths,
    run_dir: &Path,
) -> Result<Activation, ExtensionsError> {
    let store = store(&paths.state_dir);
    let adoption = store.adopt(&paths.extension_seed)?;
    let root = trust_root(settings, &paths.state_dir)?;
    let activated =
        basalt_sysext::activate::activate_booted(ops, &store, &root, &paths.os_release, run_dir)?;
    Ok(Activation {
        adoption,
        activated,
    })
}
