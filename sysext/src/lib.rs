//! System extensions for Basalt nodes: signed, verity-checked erofs images that
//! `systemd-sysext` overlays onto `/usr`, shipped and rolled back with the OS as one set.
//!
//! Owns:
//! - [`image`]: the extension image format (`NAME.raw` = erofs ‖ verity superblock + tree ‖
//!   signed statement block) and checking an image without trusting its bytes: signature
//!   against the trust root, name, layout, the whole tree recomputed.
//! - [`compat`]: whether an extension's `extension-release.NAME` fits the booted OS (`ID=`,
//!   `SYSEXT_LEVEL=`/`VERSION_ID=`, `ARCHITECTURE=`, `SYSEXT_SCOPE=`), systemd 252's rules
//!   plus Basalt's refusals.
//! - [`store`]: the versioned store `/var/lib/basalt/extensions/<os-version>/` and which
//!   sets are garbage (OS version in neither slot).
//! - [`pins`]: the operator's pinned extension versions (`<store>/pins`), what the store
//!   holds of each extension, and whether a version may be pinned.
//! - [`activate`]: setting the booted version's set up (loop → dm-verity from the signed
//!   parameters → erofs read-only under `/run/extensions/NAME`) and `systemd-sysext refresh`,
//!   behind a small seam ([`activate::NodeOps`]).
//!
//! Does not own: the statement's schema and signature checks (`basalt_manifest::sysext`),
//! the os-release reader (`basalt_identity::osrelease`), the verity format and the
//! device-mapper request bytes (`basalt_verity`), issuing DM ioctls and mount(2)
//! (`basalt_initramfs::dm`/`sys`, the code basalt-init runs), building images (the `basalt`
//! build tool, `basalt sysext build`), downloading and staging sets (the update agent).

pub mod activate;
pub mod compat;
mod error;
pub mod image;
pub mod loopdev;
pub mod pins;
pub mod store;

pub use compat::HostOs;
pub use error::{Error, Result};
pub use image::{check_staged, open_verified, verify_image, Extension};
pub use store::Store;
