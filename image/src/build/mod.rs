//! Image builds: definition → release directory ([`image::build`]).
//!
//! - [`config`]: the definition (`IMAGE.toml`); [`variant`]: product or test image of it.
//! - [`inputs`]: everything a build depends on, and the cache key over it.
//! - [`apt`] + [`debian`]: Debian packages resolved against the signed archive, staged once
//!   per resolved set with mmdebstrap (cached, shared by every version and variant).
//! - [`rootfs`], [`modules`]: the `/usr` tree of each profile; [`erofs`]: packing it.
//! - [`workspace`]: `basalt-init` and the definition's Basalt binaries, found or built.
//! - [`assemble`] (cached: `usr.img`, kernel, initramfs, `disk.img`), [`sign`] (per
//!   request: SBOM, manifest, signatures), [`sbom`] (the SPDX document).

pub mod apt;
mod assemble;
pub mod config;
pub mod debian;
pub mod erofs;
mod error;
pub mod extensions;
pub mod image;
pub mod inputs;
pub mod inspect;
pub mod modules;
pub mod rootfs;
mod rootpart;
pub mod sbkeys;
pub mod sbom;
mod sign;
pub mod uki;
pub mod variant;
pub mod workspace;

pub use error::BuildError;
pub use image::{
    build, build_with_progress, install_release, BuildFacts, BuildReport, BuildRequest,
};
pub use variant::Variant;
