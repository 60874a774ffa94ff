//! An extension image file (`NAME.raw`) and checking it without trusting its bytes.
//!
//! ```text
//! NAME.raw: [erofs, hash_offset bytes][verity superblock 4 KiB][hash tree][statement block]
//!           0                         hash_offset                          end - block
//! statement block: the usr-hash block codec (basalt_initramfs::usrsig: magic, length,
//!                  DSSE envelope, zero padding to 4 KiB) holding a sysext statement
//! ```
//!
//! The same layout and block codec as `usr.img`, so the build side seals both with one
//! function; only the payload type differs (see `basalt_manifest::sysext` for why). The
//! statement is found at the end of the file (a 4 KiB-aligned block of at most 20 KiB); where
//! it was found is only a hint — after the signature checks, the file must be exactly
//! `hash_offset + 4 KiB + tree + block` long with the block where the signed parameters put
//! it, or it is refused ([`Error::Layout`]).
//!
//! [`open_verified`] checks the signature, the name and the layout (cheap; enough before a
//! mount, because the dm-verity table is built from the signed parameters only, so every
//! later read is checked by the kernel). [`verify_image`] also recomputes the whole hash tree
//! against the signed root hash (staging, `basalt sysext verify`).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use basalt_initramfs::usrsig;
use basalt_manifest::{verify_sysext, KeyId, SysextStatement, TrustRoot};
use basalt_verity::{hash_tree_size, Device, VerifyOptions, BLOCK_SIZE};

use crate::error::{io, Error, Result};

/// File name suffix of extension images (systemd's convention).
pub const IMAGE_SUFFIX: &str = ".raw";

/// The most blocks a statement block can span (header + 16 KiB envelope, 4 KiB-aligned).
const MAX_STATEMENT_BLOCKS: u64 = (12 + basalt_manifest::MAX_SYSEXT_BYTES as u64).div_ceil(4096);

/// An extension image whose statement verified against the trust root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extension {
    /// The image file.
    pub path: PathBuf,
    /// The signed statement.
    pub statement: SysextStatement,
    /// The keys whose signatures counted.
    pub signed_by: Vec<KeyId>,
    /// Whether the whole hash tree and data were recomputed ([`verify_image`]).
    pub tree_verified: bool,
}

/// The name an image file stands for: `NAME` of `NAME.raw`.
pub fn name_of(path: &Path) -> Option<&str> {
    path.file_name()?.to_str()?.strip_suffix(IMAGE_SUFFIX)
}

/// Byte offset where the statement block starts, from the signed parameters.
pub fn statement_offset(statement: &SysextStatement) -> u64 {
    statement.verity.hash_offset + BLOCK_SIZE + hash_tree_size(statement.verity.data_blocks)
}

/// The envelope at the end of the image (unverified).
pub fn read_envelope(file: &File, path: &Path) -> Result<(Vec<u8>, u64)> {
    let len = file.metadata().map_err(io("stat", path))?.len();
    let missing = |reason: String| Error::NoStatement {
        path: path.to_path_buf(),
        reason,
    };
    if len == 0 || len % BLOCK_SIZE != 0 {
        return Err(missing(format!(
            "the image is {len} bytes, not a non-empty multiple of 4096"
        )));
    }
    for blocks in 1..=MAX_STATEMENT_BLOCKS.min(len / BLOCK_SIZE) {
        let at = len - blocks * BLOCK_SIZE;
        let mut buf = vec![0u8; (blocks * BLOCK_SIZE) as usize];
        file.read_exact_at(&mut buf, at)
            .map_err(io("read the statement block of", path))?;
        if &buf[..usrsig::MAGIC.len()] != usrsig::MAGIC {
            continue;
        }
        let envelope =
            usrsig::decode_block(&buf).map_err(|e| missing(format!("at byte {at}: {e}")))?;
        return Ok((envelope.to_vec(), at));
    }
    Err(missing(format!(
        "no statement magic in the last {MAX_STATEMENT_BLOCKS} blocks"
    )))
}

/// The statement of the image at `path`, parsed but NOT verified (build-side tooling: to
/// list an image it is about to sign into a release; never for a decision on a node).
pub fn read_statement_unverified(path: &Path) -> Result<SysextStatement> {
    let file = File::open(path).map_err(io("open", path))?;
    let (envelope, _) = read_envelope(&file, path)?;
    let bad = |reason: String| Error::NoStatement {
        path: path.to_path_buf(),
        reason,
    };
    let env = basalt_manifest::Envelope::from_json(
        &envelope,
        basalt_manifest::MAX_SYSEXT_BYTES,
        basalt_manifest::Document::Sysext,
    )
    .map_err(|e| bad(e.to_string()))?;
    SysextStatement::from_json(&env.payload).map_err(|e| bad(e.to_string()))
}

/// Opens `path`, verifies its statement against `root`, and checks the name and layout:
/// the signed name must equal `expected_name` when given, else the file's `NAME.raw` (a file
/// not named `*.raw` is checked by signature only).
pub fn open_verified(
    path: &Path,
    root: &TrustRoot,
    expected_name: Option<&str>,
) -> Result<(File, Extension)> {
    let file = File::open(path).map_err(io("open", path))?;
    let (envelope, found_at) = read_envelope(&file, path)?;
    let verified = verify_sysext(&envelope, root).map_err(|source| Error::BadSignature {
        path: path.to_path_buf(),
        source: Box::new(source),
    })?;
    let statement = verified.statement;
    if let Some(expected) = expected_name.or_else(|| name_of(path)) {
        if expected != statement.name {
            return Err(Error::WrongName {
                path: path.to_path_buf(),
                expected: expected.to_owned(),
                signed: statement.name,
            });
        }
    }
    let layout = |reason: String| Error::Layout {
        path: path.to_path_buf(),
        reason,
    };
    let v = &statement.verity;
    if (v.data_block_size, v.hash_block_size) != (4096, 4096) {
        return Err(layout(format!(
            "verity block sizes {}/{}, Basalt uses 4096/4096",
            v.data_block_size, v.hash_block_size
        )));
    }
    if v.hash_offset != v.data_blocks * BLOCK_SIZE {
        return Err(layout(format!(
            "hash area at {}, the data ends at {}",
            v.hash_offset,
            v.data_blocks * BLOCK_SIZE
        )));
    }
    let expected_at = statement_offset(&statement);
    if found_at != expected_at {
        return Err(layout(format!(
            "statement block at byte {found_at}, the signed parameters put it at {expected_at}"
        )));
    }
    let block_len = usrsig::encode_block(&envelope)
        .map_err(|e| layout(e.to_string()))?
        .len() as u64;
    let len = file.metadata().map_err(io("stat", path))?.len();
    if len != expected_at + block_len {
        return Err(layout(format!(
            "{len} bytes, the signed parameters make it {}",
            expected_at + block_len
        )));
    }
    Ok((
        file,
        Extension {
            path: path.to_path_buf(),
            statement,
            signed_by: verified.signed_by,
            tree_verified: false,
        },
    ))
}

/// [`open_verified`], then every data and hash block recomputed against the signed root
/// hash (the superblock must carry the signed salt and block count).
pub fn verify_image(
    path: &Path,
    root: &TrustRoot,
    expected_name: Option<&str>,
) -> Result<Extension> {
    let (file, mut ext) = open_verified(path, root, expected_name)?;
    let v = &ext.statement.verity;
    let mut salt = vec![0u8; v.salt.len() / 2];
    basalt_identity::hex::decode_into(&v.salt, &mut salt).map_err(|e| Error::Layout {
        path: path.to_path_buf(),
        reason: format!("signed salt: {e}"),
    })?;
    let opts = VerifyOptions {
        hash_offset: v.hash_offset,
        superblock: true,
        salt: Some(salt),
        data_blocks: Some(v.data_blocks),
        threads: 0,
    };
    let dev = Device::new(&file, path);
    basalt_verity::verify(dev, 0, v.hash_offset, dev, &v.root_hash.0, &opts).map_err(|source| {
        Error::Altered {
            path: path.to_path_buf(),
            source: Box::new(source),
        }
    })?;
    ext.tree_verified = true;
    Ok(ext)
}

/// What the agent checks for each `sysext` artifact of a release before the slot flip:
/// [`verify_image`] (signature, name = the artifact's `NAME.raw`, layout, every block), the
/// signed verity parameters equal to the manifest artifact's, the statement for the
/// release's OS, and its extension-release compatible with `target` (the OS being installed,
/// not the booted one).
pub fn check_staged(
    path: &Path,
    root: &TrustRoot,
    name: &str,
    artifact_verity: &basalt_manifest::Verity,
    target: &crate::compat::HostOs,
) -> Result<Extension> {
    let ext = verify_image(path, root, Some(name))?;
    if ext.statement.verity != *artifact_verity {
        return Err(Error::ManifestMismatch {
            path: path.to_path_buf(),
            name: name.to_owned(),
            manifest: artifact_verity.root_hash.to_hex(),
            image: ext.statement.verity.root_hash.to_hex(),
        });
    }
    crate::activate::check_extension(&ext.statement, target)?;
    Ok(ext)
}
