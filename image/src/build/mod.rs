//! Image builds: definition → release directory ([`image::build`]).

pub mod config;
pub mod erofs;
mod error;
pub mod image;
pub mod rootfs;
pub mod sbkeys;
pub mod uki;

pub use error::BuildError;
pub use image::{build, install_release, BuildFacts, BuildReport, BuildRequest};
