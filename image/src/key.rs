//! `basalt key …` subcommands, and the key/trust file helpers the other modules share.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use basalt_manifest::{PublicKey, SigningKey};
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate an Ed25519 key pair: NAME.key (mode 0600, PKCS#8 as PEM "PRIVATE KEY") and
    /// NAME.pub (PEM "PUBLIC KEY"). Refuses to overwrite either file. Prints the key id.
    Generate {
        /// Path prefix of the two files (NAME → NAME.key, NAME.pub).
        name: PathBuf,
    },
}

pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Generate { name } => generate(&name),
    }
}

fn with_ext(name: &Path, ext: &str) -> PathBuf {
    let mut s = name.as_os_str().to_owned();
    s.push(ext);
    PathBuf::from(s)
}

fn generate(name: &Path) -> anyhow::Result<()> {
    let key_path = with_ext(name, ".key");
    let pub_path = with_ext(name, ".pub");
    for path in [&key_path, &pub_path] {
        if path.exists() {
            bail!(
                "{} already exists; refusing to overwrite a key",
                path.display()
            );
        }
    }
    let key = SigningKey::generate()?;
    write_new(&key_path, key.to_pem().as_bytes(), 0o600)?;
    write_new(&pub_path, key.public_key().to_pem().as_bytes(), 0o644)?;
    println!("{}", key.key_id());
    eprintln!(
        "basalt: wrote {} (private, 0600) and {}",
        key_path.display(),
        pub_path.display()
    );
    Ok(())
}

/// Creates `path` (never overwriting) with `mode`, writes and fsyncs it.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

/// Reads at most `limit + 1` bytes, so an oversized file reaches the library's size check
/// (and is refused there) without being read whole.
pub(crate) fn read_capped(path: &Path, limit: usize) -> anyhow::Result<Vec<u8>> {
    let file = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut out = Vec::new();
    file.take(limit as u64 + 1)
        .read_to_end(&mut out)
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(out)
}

/// A library refusal, mapped to exit code 3 with the file named.
pub(crate) fn refused(path: &Path, err: basalt_manifest::Error) -> anyhow::Error {
    crate::Refused(format!("{}: {err}", path.display())).into()
}

/// Loads a NAME.key file.
pub(crate) fn load_signing_key(path: &Path) -> anyhow::Result<SigningKey> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    SigningKey::from_pem(&text).with_context(|| format!("loading signing key {}", path.display()))
}

/// Loads NAME.key files.
pub(crate) fn load_signing_keys(paths: &[PathBuf]) -> anyhow::Result<Vec<SigningKey>> {
    paths.iter().map(|p| load_signing_key(p)).collect()
}

/// Loads a NAME.pub file.
pub(crate) fn load_public_key(path: &Path) -> anyhow::Result<PublicKey> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    PublicKey::from_pem(&text).with_context(|| format!("loading public key {}", path.display()))
}

/// Loads a trust root chain: the first file is the anchor (trusted on first use, must be
/// self-signed to its threshold), each further file a rotation from the previous root.
pub(crate) fn load_trust_chain(paths: &[PathBuf]) -> anyhow::Result<basalt_manifest::TrustRoot> {
    let Some((first, rest)) = paths.split_first() else {
        bail!("no trust root given");
    };
    let limit = basalt_manifest::MAX_TRUST_ROOT_BYTES;
    let mut root = basalt_manifest::TrustRoot::from_initial_envelope(&read_capped(first, limit)?)
        .map_err(|e| refused(first, e))?;
    for path in rest {
        root = root
            .rotate(&read_capped(path, limit)?)
            .map_err(|e| refused(path, e))?;
    }
    Ok(root)
}

/// Writes `bytes` to `path` atomically (`basalt_fsutil::write_atomic`: temporary file in the
/// same directory, fsync, rename, fsync dir).
pub(crate) fn write_output(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    basalt_fsutil::write_atomic(path, bytes, 0o644)
        .with_context(|| format!("writing {}", path.display()))
}
