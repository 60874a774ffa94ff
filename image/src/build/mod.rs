//! Image builds: definition → release directory.

pub mod config;
pub mod erofs;
pub mod rootfs;
