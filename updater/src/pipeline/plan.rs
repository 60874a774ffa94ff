//! What of a verified manifest the pipeline installs, checked before anything is fetched:
//! exactly one `usr` image with verity parameters this node can re-verify (sha256, 4 KiB
//! blocks), one kernel and one initrd, each shipped as zstd frames with a frame index (what
//! `basalt release publish` always writes), and at most one signed unified kernel image.
//! Anything else is `InvalidRelease`, up front.
//!
//! Which boot files a node fetches and stages ([`Plan::boot_fetches`]): with the BLS backend,
//! the UKI when the release has one (kernel and initrd are then not fetched: the UKI holds
//! both under its Secure Boot signature), else kernel + initrd. The GPT-priority backend
//! refuses a release with a UKI: its boot path is the UKI, and GPT priority bits choose a
//! `/usr` partition, not a boot program — staging the `/usr` alone would run it under boot
//! code the release did not sign.

use basalt_manifest::{
    repo, Artifact, ArtifactKind, CompressionAlgorithm, Digest, FrameIndexRef, HashAlgorithm,
    Manifest, Verity,
};

use super::config::BackendKind;
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
    /// The signed unified kernel image, when the release ships one.
    pub uki: Option<Fetch<'a>>,
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

    /// The boot files a node with `backend` fetches into its staging folder and stages (see
    /// the module docs): `[uki]` or `[kernel, initrd]`.
    pub fn boot_fetches(&self, backend: BackendKind) -> Result<Vec<&Fetch<'_>>, Error> {
        match (&self.uki, backend) {
            (Some(uki), BackendKind::Bls) => Ok(vec![uki]),
            (Some(uki), BackendKind::GptPrio) => Err(unusable(
                self.manifest,
                format!(
                    "its boot path is the unified kernel image {}, and the gptprio backend \
                     boots no UKI (GPT priority bits choose a /usr partition, not a boot \
                     program): use the bls backend with systemd-boot",
                    uki.artifact.name
                ),
            )),
            (None, _) => Ok(vec![&self.kernel, &self.initrd]),
        }
    }

    /// Uncompressed bytes a node with `backend` fetches: the usr image and its boot files.
    pub fn fetch_len(&self, backend: BackendKind) -> Result<u64, Error> {
        Ok(self.usr.artifact.size
            + self
                .boot_fetches(backend)?
                .iter()
                .map(|f| f.artifact.size)
                .sum::<u64>())
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
        uki: m
            .artifacts_of(ArtifactKind::Uki)
            .next()
            .map(|a| fetch(m, a))
            .transpose()?,
    })
}
