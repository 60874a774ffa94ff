//! What of a verified manifest the pipeline installs, checked before anything is fetched:
//! exactly one `usr` image with verity parameters this node can re-verify (sha256, 4 KiB
//! blocks), one kernel and one initrd, each shipped as zstd frames with a frame index (what
//! `basalt release publish` always writes). Anything else is `InvalidRelease`, up front.

use basalt_manifest::{
    repo, Artifact, ArtifactKind, CompressionAlgorithm, Digest, FrameIndexRef, HashAlgorithm,
    Manifest, Verity,
};

use super::error::Error;

/// One artifact to fetch.
#[derive(Debug, Clone)]
pub struct Fetch<'a> {
    pub artifact: &'a Artifact,
    /// `blobs/sha256/<compressed sha256>`.
    pub blob: String,
    pub compressed_size: u64,
    pub compressed_sha256: Digest,
    pub index: &'a FrameIndexRef,
}

/// The installable parts of a release.
#[derive(Debug, Clone)]
pub struct Plan<'a> {
    pub manifest: &'a Manifest,
    pub usr: Fetch<'a>,
    pub verity: &'a Verity,
    /// The verity salt, decoded.
    pub salt: Vec<u8>,
    pub kernel: Fetch<'a>,
    pub initrd: Fetch<'a>,
}

impl Plan<'_> {
    /// Bytes of the usr image that go to the data partition.
    pub fn data_len(&self) -> u64 {
        self.verity.hash_offset
    }

    /// Bytes of the usr image that go to the verity partition.
    pub fn verity_len(&self) -> u64 {
        self.usr.artifact.size - self.verity.hash_offset
    }

    /// Uncompressed bytes of everything.
    pub fn total_len(&self) -> u64 {
        self.usr.artifact.size + self.kernel.artifact.size + self.initrd.artifact.size
    }
}

fn one<'a>(m: &'a Manifest, kind: ArtifactKind, what: &str) -> Result<&'a Artifact, Error> {
    let mut it = m.artifacts_of(kind);
    match (it.next(), it.next()) {
        (Some(a), None) => Ok(a),
        (None, _) => Err(unusable(m, format!("it has no {what} artifact"))),
        (Some(_), Some(_)) => Err(unusable(m, format!("it has more than one {what} artifact"))),
    }
}

fn unusable(m: &Manifest, reason: String) -> Error {
    Error::Unusable {
        version: m.version.clone(),
        reason,
    }
}

pub(crate) fn fetch<'a>(m: &'a Manifest, a: &'a Artifact) -> Result<Fetch<'a>, Error> {
    let Some(c) = &a.compression else {
        return Err(unusable(
            m,
            format!("artifact {} is not compressed as zstd frames", a.name),
        ));
    };
    if c.algorithm != CompressionAlgorithm::Zstd {
        return Err(unusable(
            m,
            format!(
                "artifact {} is compressed with {:?}, not zstd",
                a.name, c.algorithm
            ),
        ));
    }
    let Some(index) = &c.frame_index else {
        return Err(unusable(
            m,
            format!(
                "artifact {} has no frame index (publish it with `basalt release publish`)",
                a.name
            ),
        ));
    };
    Ok(Fetch {
        artifact: a,
        blob: repo::blob_path(&c.compressed_sha256),
        compressed_size: c.compressed_size,
        compressed_sha256: c.compressed_sha256,
        index,
    })
}

/// Check `m` is installable and say how.
pub fn plan(m: &Manifest) -> Result<Plan<'_>, Error> {
    let usr = one(m, ArtifactKind::Usr, "usr")?;
    let kernel = one(m, ArtifactKind::Kernel, "kernel")?;
    let initrd = one(m, ArtifactKind::Initrd, "initrd")?;
    let Some(verity) = &usr.verity else {
        return Err(unusable(
            m,
            "the usr artifact has no verity parameters".into(),
        ));
    };
    let bs = basalt_verity::BLOCK_SIZE as u32;
    if verity.hash_algorithm != HashAlgorithm::Sha256
        || verity.data_block_size != bs
        || verity.hash_block_size != bs
    {
        return Err(unusable(
            m,
            format!(
                "verity {:?} with {}/{}-byte blocks; this node verifies sha256 with 4096-byte blocks",
                verity.hash_algorithm, verity.data_block_size, verity.hash_block_size
            ),
        ));
    }
    let salt = hex::decode(&verity.salt)
        .map_err(|e| unusable(m, format!("verity salt {:?}: {e}", verity.salt)))?;
    Ok(Plan {
        manifest: m,
        usr: fetch(m, usr)?,
        verity,
        salt,
        kernel: fetch(m, kernel)?,
        initrd: fetch(m, initrd)?,
    })
}
