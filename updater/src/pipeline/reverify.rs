//! Re-verifying a written slot: the exact bytes that will boot, read back from the disk.
//!
//! 1. `fdatasync` (done by the sink), then `posix_fadvise(DONTNEED)` on the written ranges
//!    so the reads below come from the device, not from the page cache the writes filled;
//! 2. `basalt_verity::verify` of the data partition against the tree in the verity
//!    partition, top down, with the manifest's root hash, salt and block count (streaming:
//!    memory does not grow with the image) — or, when the download already read every data
//!    block back from the device once it was durable and hashed it into level 0
//!    (`stream`'s verify-behind), `basalt_verity::verify_tree`: the tree top down and its
//!    level 0 against that digest;
//! 3. the usr-hash statement after the tree must verify against the node's trust root for
//!    that root hash, and name the manifest's OS and version — what `basalt-init` checks at
//!    boot (`basalt_initramfs::usrsig`).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use basalt_disk::slots::SlotInstall;
use basalt_manifest::{verify_usr_hash, TrustRoot};
use basalt_verity::{Device, VerifyOptions};

use super::error::Error;
use super::plan::Plan;

/// `posix_fadvise(DONTNEED)` on a range: the next reads come from the device.
pub(crate) fn drop_cache(file: &File, offset: u64, len: u64) {
    // Advice only: failing to drop the cache makes the check read cached bytes, which are
    // still the bytes that were written; nothing to report.
    // SAFETY: posix_fadvise on a descriptor we own; no memory is passed.
    unsafe {
        libc::posix_fadvise(
            file.as_raw_fd(),
            offset as libc::off_t,
            len as libc::off_t,
            libc::POSIX_FADV_DONTNEED,
        );
    }
}

/// Verify the slot `install` holds `plan`'s usr image (see the module docs). `level0`: the
/// SHA-256 of the tree's level 0 as computed from every data block read back from the
/// device during the download (`stream`'s verify-behind); with it, step 2 reads the tree
/// only and compares its level 0 with that digest (`basalt_verity::verify_tree`), without
/// it the data is read again (`basalt_verity::verify`).
pub fn reverify(
    install: &SlotInstall,
    plan: &Plan<'_>,
    root: &TrustRoot,
    level0: Option<[u8; 32]>,
) -> Result<(), Error> {
    let disk = &install.path;
    let manifest = plan.manifest;
    let file = File::open(disk).map_err(super::error::io("open for verification", disk))?;
    drop_cache(&file, install.data.offset, plan.data_len());
    drop_cache(&file, install.verity.offset, plan.verity_len());
    let device = Device::new(&file, disk);
    let opts = VerifyOptions {
        hash_offset: install.verity.offset,
        superblock: true,
        salt: Some(plan.salt.clone()),
        data_blocks: Some(plan.verity.data_blocks),
        threads: 0,
    };
    let checked = match level0 {
        Some(digest) if plan.verity.data_blocks > 1 => {
            basalt_verity::verify_tree(device, &plan.verity.root_hash.0, &opts, &digest)
        }
        _ => basalt_verity::verify(
            device,
            install.data.offset,
            plan.data_len(),
            device,
            &plan.verity.root_hash.0,
            &opts,
        ),
    };
    checked.map_err(|source| Error::Reverify {
        slot: install.slot,
        version: manifest.version.clone(),
        source,
    })?;

    let refused = |reason: String| Error::Statement {
        slot: install.slot,
        version: manifest.version.clone(),
        reason,
    };
    let mut head = [0u8; basalt_verity::superblock::SUPERBLOCK_SIZE];
    file.read_exact_at(&mut head, install.verity.offset)
        .map_err(super::error::io("read the verity superblock on", disk))?;
    let sb = basalt_verity::Superblock::parse(&head).map_err(|e| refused(e.to_string()))?;
    let at = basalt_initramfs::usrsig::statement_offset(&sb);
    // Only what this release wrote counts: never read a statement out of stale bytes.
    let written = plan.verity_len();
    if at >= written {
        return Err(refused(format!(
            "the release's verity part ends at {written}, before the statement at {at}"
        )));
    }
    let len = (written - at).min(12 + basalt_initramfs::usrsig::MAX_ENVELOPE as u64) as usize;
    let mut block = vec![0u8; len];
    file.read_exact_at(&mut block, install.verity.offset + at)
        .map_err(super::error::io("read the usr-hash statement on", disk))?;
    let envelope =
        basalt_initramfs::usrsig::decode_block(&block).map_err(|e| refused(e.to_string()))?;
    let statement = verify_usr_hash(envelope, root, &plan.verity.root_hash.to_hex())
        .map_err(|e| refused(e.to_string()))?;
    // v2 statements bind the whole parameter set basalt-init will map: a release whose
    // manifest disagrees with its own statement would be refused at boot, so refuse it now.
    if statement.verity != *plan.verity {
        return Err(refused(format!(
            "its verity parameters {:?} are not the manifest's {:?}",
            statement.verity, plan.verity
        )));
    }
    if statement.os != manifest.os || statement.version != manifest.version {
        return Err(refused(format!(
            "it names {} {}, the release is {} {}",
            statement.os, statement.version, manifest.os, manifest.version
        )));
    }
    Ok(())
}
