//! `basalt manifest …` subcommands: sign and verify release manifests and usr-hash statements.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use basalt_manifest::chrono::{DateTime, Utc};
use basalt_manifest::semver::Version;
use basalt_manifest::{
    sign_release, sign_usr_hash, verify_release, verify_usr_hash, Digest, HashAlgorithm, Manifest,
    Policy, SigningKey, UsrHashStatement, Verity, VersionChange, MAX_RELEASE_BYTES,
    MAX_USR_HASH_BYTES,
};
use clap::Subcommand;

use crate::key::{load_signing_keys, load_trust_chain, read_capped, refused, write_output};

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate a manifest (JSON, schema_version 1) and write it as a signed DSSE envelope.
    /// The signed payload is the manifest re-serialised as compact JSON.
    Sign {
        /// The manifest JSON.
        manifest: PathBuf,
        /// Private key file (NAME.key); repeat for each signer.
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
        /// Where to write the signed envelope.
        #[arg(long)]
        out: PathBuf,
    },
    /// Verify a signed manifest; print the manifest JSON (exit 0) or the reason (exit 3).
    Verify {
        /// The signed envelope.
        signed: PathBuf,
        /// Trust root file; repeat to give a chain (anchor first, then each rotation).
        #[arg(long = "trust", required = true)]
        trust: Vec<PathBuf>,
        /// The installed version: an older release is a refused downgrade.
        #[arg(long)]
        installed_version: Option<Version>,
        /// Refuse a sequence below N (N-1 is taken as the highest already seen).
        #[arg(long, conflicts_with = "last_sequence")]
        min_sequence: Option<u64>,
        /// The highest sequence already seen: refuse a sequence at or below N.
        #[arg(long)]
        last_sequence: Option<u64>,
        /// The time to verify at (RFC 3339); default: now.
        #[arg(long)]
        now: Option<DateTime<Utc>>,
        /// Expected OS name.
        #[arg(long)]
        os: Option<String>,
        /// Expected architecture.
        #[arg(long)]
        arch: Option<String>,
        /// Expected channel.
        #[arg(long)]
        channel: Option<String>,
        /// Allowed clock skew for the issue time, in seconds.
        #[arg(long, default_value_t = basalt_manifest::DEFAULT_MAX_CLOCK_SKEW.as_secs())]
        max_clock_skew: u64,
        /// Accept a version older than --installed-version (reported on stderr).
        #[arg(long)]
        allow_downgrade: bool,
    },
    /// Sign a statement binding a /usr image's dm-verity parameters (root hash, salt, data
    /// blocks, block sizes, algorithm — read from the hash image's superblock) to an OS name
    /// and version.
    SignUsrHash {
        /// OS name.
        #[arg(long)]
        os: String,
        /// OS version (semver).
        #[arg(long)]
        version: Version,
        /// The dm-verity root hash (64 lowercase hex digits).
        #[arg(long)]
        root_hash: String,
        /// The hash image (`veritysetup format` / `basalt verity format` output), or `usr.img`
        /// with --hash-offset.
        #[arg(long)]
        hash_image: PathBuf,
        /// Where the verity superblock starts in --hash-image (the erofs size in a usr.img).
        #[arg(long, default_value_t = 0)]
        hash_offset: u64,
        /// Private key file (NAME.key); repeat for each signer.
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
        /// Where to write the signed statement.
        #[arg(long)]
        out: PathBuf,
    },
    /// Verify a usr-hash statement against a trust root and the expected root hash.
    VerifyUsrHash {
        /// The signed statement.
        signed: PathBuf,
        /// Trust root file; repeat to give a chain.
        #[arg(long = "trust", required = true)]
        trust: Vec<PathBuf>,
        /// The root hash about to be mounted (hex).
        #[arg(long)]
        root_hash: String,
    },
}

pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Sign {
            manifest,
            keys,
            out,
        } => {
            let json = read_capped(&manifest, MAX_RELEASE_BYTES)?;
            if json.len() > MAX_RELEASE_BYTES {
                anyhow::bail!(crate::Refused(format!(
                    "{}: over the {MAX_RELEASE_BYTES}-byte limit",
                    manifest.display()
                )));
            }
            let parsed = Manifest::from_json(&json).map_err(|e| refused(&manifest, e))?;
            let keys = load_signing_keys(&keys)?;
            let refs: Vec<&SigningKey> = keys.iter().collect();
            let bytes = sign_release(&parsed, &refs).map_err(|e| refused(&manifest, e))?;
            write_output(&out, &bytes)?;
            eprintln!(
                "basalt: signed {} {} sequence {} with {} key(s) → {}",
                parsed.os,
                parsed.version,
                parsed.sequence,
                refs.len(),
                out.display()
            );
            Ok(())
        }
        Command::Verify {
            signed,
            trust,
            installed_version,
            min_sequence,
            last_sequence,
            now,
            os,
            arch,
            channel,
            max_clock_skew,
            allow_downgrade,
        } => {
            let root = load_trust_chain(&trust)?;
            let policy = Policy {
                now: now.unwrap_or_else(Utc::now),
                installed_version,
                highest_sequence_seen: last_sequence
                    .or_else(|| min_sequence.and_then(|n| n.checked_sub(1))),
                os,
                arch,
                channel,
                max_clock_skew: Duration::from_secs(max_clock_skew),
                allow_downgrade,
            };
            let bytes = read_capped(&signed, MAX_RELEASE_BYTES)?;
            let verified =
                verify_release(&bytes, &root, &policy).map_err(|e| refused(&signed, e))?;
            if verified.version_change == VersionChange::Downgrade {
                eprintln!(
                    "basalt: WARNING: downgrade accepted because of --allow-downgrade ({} is older than the installed version)",
                    verified.manifest.version
                );
            }
            eprintln!(
                "basalt: verified {} {} sequence {}: signed by {} of trust root generation {} (threshold {})",
                verified.manifest.os,
                verified.manifest.version,
                verified.manifest.sequence,
                verified.signed_by.len(),
                verified.trust_generation,
                root.threshold()
            );
            println!("{}", serde_json::to_string_pretty(&verified.manifest)?);
            Ok(())
        }
        Command::SignUsrHash {
            os,
            version,
            root_hash,
            hash_image,
            hash_offset,
            keys,
            out,
        } => {
            let root_hash = Digest::from_hex(&root_hash).with_context(|| {
                format!("--root-hash {root_hash:?} is not 64 lowercase hex digits")
            })?;
            let statement = UsrHashStatement {
                os,
                version,
                verity: usr_verity(&hash_image, hash_offset, root_hash)?,
            };
            let keys = load_signing_keys(&keys)?;
            let refs: Vec<&SigningKey> = keys.iter().collect();
            let bytes = sign_usr_hash(&statement, &refs).map_err(|e| refused(&out, e))?;
            write_output(&out, &bytes)
        }
        Command::VerifyUsrHash {
            signed,
            trust,
            root_hash,
        } => {
            let root = load_trust_chain(&trust)?;
            let bytes = read_capped(&signed, MAX_USR_HASH_BYTES)?;
            let statement =
                verify_usr_hash(&bytes, &root, &root_hash).map_err(|e| refused(&signed, e))?;
            println!("{}", serde_json::to_string_pretty(&statement)?);
            Ok(())
        }
    }
}

/// The verity parameters of a `/usr` image from the superblock at `offset` of `hash_image`,
/// in Basalt's layout: the hash area starts right after the data (`hash_offset` = data
/// blocks × block size), which is what basalt-init maps.
fn usr_verity(
    hash_image: &std::path::Path,
    offset: u64,
    root_hash: Digest,
) -> anyhow::Result<Verity> {
    use std::io::{Read, Seek, SeekFrom};
    let mut head = [0u8; 512];
    std::fs::File::open(hash_image)
        .and_then(|mut f| {
            f.seek(SeekFrom::Start(offset))?;
            f.read_exact(&mut head)
        })
        .with_context(|| format!("reading the verity superblock of {}", hash_image.display()))?;
    let sb = basalt_verity::Superblock::parse(&head).with_context(|| {
        format!(
            "{} at byte {offset}: no verity superblock",
            hash_image.display()
        )
    })?;
    let hash_algorithm = match sb.algorithm.as_str() {
        "sha256" => HashAlgorithm::Sha256,
        other => anyhow::bail!(
            "{}: hash algorithm {other:?} (Basalt uses sha256)",
            hash_image.display()
        ),
    };
    Ok(Verity {
        root_hash,
        salt: hex::encode(&sb.salt),
        data_blocks: sb.data_blocks,
        hash_offset: sb
            .data_blocks
            .checked_mul(u64::from(sb.data_block_size))
            .with_context(|| format!("{}: data size overflows", hash_image.display()))?,
        hash_algorithm,
        data_block_size: sb.data_block_size,
        hash_block_size: sb.hash_block_size,
    })
}
