//! The layout of a static release repository: the paths `basalt release publish` writes and a
//! node fetches, relative to the repository's base URL or folder. One place for these names,
//! so the publisher and the updater cannot disagree.
//!
//! ```text
//! REPO/
//!   roots/<N>.root.json                       trust root generation N (DSSE envelope), N = 1, 2, …
//!                                             a node holding generation G fetches G+1, G+2, …
//!                                             until one is missing (TUF's root chain)
//!   channels/<channel>/<arch>/head.signed     the channel head: the newest signed release
//!                                             manifest (DSSE envelope), replaced atomically;
//!                                             the only file a polling node reads every time
//!   channels/<channel>/<arch>/releases/<sequence>.signed
//!                                             every manifest ever published there (history;
//!                                             `basalt release list`), never rewritten
//!   blobs/sha256/<hex>                        content-addressed, immutable: compressed
//!                                             artifacts, frame indexes; shared by releases
//! ```
//!
//! Every name comes from a signed or validated value (`valid_label` channel/arch, a digest, a
//! number), so no path built here can escape the repository. Nothing in a repository is
//! trusted: everything a node reads is checked against the trust root and the signed manifest.

use crate::error::{Document, Error, Result};
use crate::keys::Digest;
use crate::manifest::valid_label;

/// Folder of the trust-root chain.
pub const ROOTS_DIR: &str = "roots";
/// Folder of the channel heads and their history.
pub const CHANNELS_DIR: &str = "channels";
/// Folder of the content-addressed blobs.
pub const BLOBS_DIR: &str = "blobs/sha256";
/// File name of a channel head.
pub const HEAD_FILE: &str = "head.signed";

/// `roots/<generation>.root.json`.
pub fn root_path(generation: u64) -> String {
    format!("{ROOTS_DIR}/{generation}.root.json")
}

/// `blobs/sha256/<hex>`.
pub fn blob_path(digest: &Digest) -> String {
    format!("{BLOBS_DIR}/{}", digest.to_hex())
}

fn check_labels(channel: &str, arch: &str) -> Result<()> {
    for (field, value) in [("channel", channel), ("arch", arch)] {
        if !valid_label(value) {
            return Err(Error::InvalidContent {
                document: Document::Release,
                reason: format!(
                    "{field} {value:?} must be 1-64 characters of [a-z0-9._-], starting with [a-z0-9]"
                ),
            });
        }
    }
    Ok(())
}

/// `channels/<channel>/<arch>`: refuses names that are not valid manifest labels.
pub fn channel_dir(channel: &str, arch: &str) -> Result<String> {
    check_labels(channel, arch)?;
    Ok(format!("{CHANNELS_DIR}/{channel}/{arch}"))
}

/// `channels/<channel>/<arch>/head.signed`.
pub fn head_path(channel: &str, arch: &str) -> Result<String> {
    Ok(format!("{}/{HEAD_FILE}", channel_dir(channel, arch)?))
}

/// `channels/<channel>/<arch>/releases/<sequence>.signed` (sequence zero-padded to 20 digits,
/// so a directory listing sorts by sequence).
pub fn release_path(channel: &str, arch: &str, sequence: u64) -> Result<String> {
    Ok(format!(
        "{}/releases/{sequence:020}.signed",
        channel_dir(channel, arch)?
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(root_path(3), "roots/3.root.json");
        assert_eq!(
            blob_path(&Digest([0xab; 32])),
            format!("blobs/sha256/{}", "ab".repeat(32))
        );
        assert_eq!(
            head_path("stable", "x86_64").unwrap(),
            "channels/stable/x86_64/head.signed"
        );
        assert_eq!(
            release_path("stable", "x86_64", 7).unwrap(),
            "channels/stable/x86_64/releases/00000000000000000007.signed"
        );
    }

    #[test]
    fn names_that_could_escape_are_refused() {
        for (c, a) in [
            ("../x", "x86_64"),
            ("stable", "x/../y"),
            ("", "x86_64"),
            ("Stable", "x86_64"),
            ("..", "x86_64"),
            ("stable", "."),
        ] {
            assert!(head_path(c, a).is_err(), "{c:?} {a:?}");
        }
    }
}
