//! `basalt trust …` subcommands: create, rotate and check trust roots.

use std::path::{Path, PathBuf};

use anyhow::Context;
use basalt_manifest::chrono::{DateTime, Utc};
use basalt_manifest::{sign_trust_root, PublicKey, SigningKey, TrustRoot, TrustRootDocument};
use clap::Subcommand;

use crate::key::{load_public_key, load_signing_keys, load_trust_chain, refused, write_output};

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the initial (generation 1) trust root, self-signed by a threshold of its keys.
    Init {
        /// Public key file (NAME.pub) of a root key; repeat for each key.
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
        /// How many distinct keys must sign releases and rotations.
        #[arg(long)]
        threshold: u64,
        /// Private key file (NAME.key) to sign with; repeat (at least `threshold`).
        #[arg(long = "sign-key", required = true)]
        sign_keys: Vec<PathBuf>,
        /// Optional expiry of the root (RFC 3339).
        #[arg(long)]
        expires: Option<DateTime<Utc>>,
        /// Where to write the signed trust root.
        #[arg(long)]
        out: PathBuf,
    },
    /// Create the next trust root, signed by a threshold of the current keys AND of the new.
    Rotate {
        /// The current root; repeat to give a chain (anchor first, then each rotation).
        #[arg(long = "from", required = true)]
        from: Vec<PathBuf>,
        /// Public key file of a key of the new root; repeat.
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
        /// Threshold of the new root.
        #[arg(long)]
        threshold: u64,
        /// Private key files to sign with: current and new signers; repeat.
        #[arg(long = "sign-key", required = true)]
        sign_keys: Vec<PathBuf>,
        /// Optional expiry of the new root (RFC 3339).
        #[arg(long)]
        expires: Option<DateTime<Utc>>,
        /// Where to write the signed new root.
        #[arg(long)]
        out: PathBuf,
    },
    /// Verify a trust root chain (anchor first, then each rotation) and print the last root.
    Verify {
        /// Trust root files, in order.
        #[arg(required = true)]
        roots: Vec<PathBuf>,
    },
}

pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Init {
            keys,
            threshold,
            sign_keys,
            expires,
            out,
        } => {
            let doc = TrustRootDocument::new(1, threshold, &public_keys(&keys)?, expires);
            let bytes = sign(&doc, &load_signing_keys(&sign_keys)?, &out)?;
            let root = TrustRoot::from_initial_envelope(&bytes).map_err(|e| refused(&out, e))?;
            write_output(&out, &bytes)?;
            print_root(&root)
        }
        Command::Rotate {
            from,
            keys,
            threshold,
            sign_keys,
            expires,
            out,
        } => {
            let current = load_trust_chain(&from)?;
            let generation = current
                .generation()
                .checked_add(1)
                .context("trust root generation overflows")?;
            let doc = TrustRootDocument::new(generation, threshold, &public_keys(&keys)?, expires);
            let bytes = sign(&doc, &load_signing_keys(&sign_keys)?, &out)?;
            // Check the result exactly as a node will before writing it.
            let next = current.rotate(&bytes).map_err(|e| refused(&out, e))?;
            write_output(&out, &bytes)?;
            print_root(&next)
        }
        Command::Verify { roots } => print_root(&load_trust_chain(&roots)?),
    }
}

fn public_keys(paths: &[PathBuf]) -> anyhow::Result<Vec<PublicKey>> {
    paths.iter().map(|p| load_public_key(p)).collect()
}

fn sign(doc: &TrustRootDocument, keys: &[SigningKey], out: &Path) -> anyhow::Result<Vec<u8>> {
    let refs: Vec<&SigningKey> = keys.iter().collect();
    sign_trust_root(doc, &refs).map_err(|e| refused(out, e))
}

fn print_root(root: &TrustRoot) -> anyhow::Result<()> {
    let summary = serde_json::json!({
        "generation": root.generation(),
        "threshold": root.threshold(),
        "key_ids": root.key_ids(),
        "expires_at": root.expires_at(),
    });
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}
