//! `basalt verity …` subcommands: thin glue over `basalt-verity`.
//!
//! `format` prints the same facts as `veritysetup format` (or one JSON object with `--json`);
//! `verify` exits 0 when the data is intact and 3 naming the first corrupted block.

use std::path::PathBuf;

use anyhow::{bail, Context};
use basalt_verity::superblock::{format_uuid, parse_uuid};
use basalt_verity::{FormatOptions, VerifyOptions, VerityInfo, BLOCK_SIZE, DIGEST_SIZE};
use clap::{Args, Subcommand};

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build the hash tree of DATA into HASH, like `veritysetup format` (byte-identical).
    Format(FormatArgs),
    /// Check DATA and its tree in HASH against ROOTHASH, like `veritysetup verify`.
    /// Exit 3 names the first corrupted block.
    Verify(VerifyArgs),
}

#[derive(Debug, Args)]
pub struct FormatArgs {
    /// The data file or block device.
    data: PathBuf,
    /// Where the hash tree goes (created if missing, never truncated); may be DATA itself
    /// with --hash-offset past the data.
    hash: PathBuf,
    /// Salt as hex (`-` = empty). Default: 32 random bytes, like veritysetup.
    #[arg(long, conflicts_with = "no_salt")]
    salt: Option<String>,
    /// Use an empty salt.
    #[arg(long)]
    no_salt: bool,
    /// Do not write the 4 KiB veritysetup superblock.
    #[arg(long)]
    no_superblock: bool,
    /// Byte offset of the hash area in HASH (a multiple of 512).
    #[arg(long, default_value_t = 0)]
    hash_offset: u64,
    /// Superblock UUID (default: random), like veritysetup's --uuid.
    #[arg(long)]
    uuid: Option<String>,
    /// Number of 4 KiB data blocks (default: the whole of DATA).
    #[arg(long)]
    data_blocks: Option<u64>,
    /// Hashing threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Print one JSON object instead of veritysetup-style lines.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The data file or block device.
    data: PathBuf,
    /// The file holding the hash tree (may be DATA itself).
    hash: PathBuf,
    /// The expected root hash (hex).
    root_hash: String,
    /// Byte offset of the hash area in HASH.
    #[arg(long, default_value_t = 0)]
    hash_offset: u64,
    /// The hash area has no superblock: --salt is then required.
    #[arg(long, requires = "salt")]
    no_superblock: bool,
    /// Salt as hex (`-` = empty); with a superblock it must match it.
    #[arg(long)]
    salt: Option<String>,
    /// Number of 4 KiB data blocks (default: from the superblock, else all of DATA).
    #[arg(long)]
    data_blocks: Option<u64>,
    /// Hashing threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

fn parse_salt(s: &str) -> anyhow::Result<Vec<u8>> {
    if s == "-" || s.is_empty() {
        return Ok(Vec::new());
    }
    hex::decode(s).with_context(|| format!("salt {s:?} is not hex"))
}

fn salt_text(salt: &[u8]) -> String {
    if salt.is_empty() {
        "-".to_string()
    } else {
        hex::encode(salt)
    }
}

pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Format(args) => format(args),
        Command::Verify(args) => verify(args),
    }
}

fn format(args: FormatArgs) -> anyhow::Result<()> {
    let salt = match (&args.salt, args.no_salt) {
        (Some(s), _) => parse_salt(s)?,
        (None, true) => Vec::new(),
        (None, false) => basalt_verity::random_salt()?,
    };
    let uuid = args.uuid.as_deref().map(parse_uuid).transpose()?;
    let opts = FormatOptions {
        salt,
        superblock: !args.no_superblock,
        uuid,
        hash_offset: args.hash_offset,
        threads: args.threads,
    };
    let info = basalt_verity::format_path(&args.data, &args.hash, args.data_blocks, &opts)
        .with_context(|| format!("formatting {}", args.data.display()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&json(&info))?);
    } else {
        print_like_veritysetup(&args.hash, &info);
    }
    Ok(())
}

fn json(info: &VerityInfo) -> serde_json::Value {
    serde_json::json!({
        "uuid": info.uuid.as_ref().map(format_uuid),
        "hash_type": basalt_verity::HASH_TYPE,
        "hash_algorithm": basalt_verity::ALGORITHM,
        "data_blocks": info.data_blocks,
        "data_block_size": BLOCK_SIZE,
        "hash_blocks": info.hash_blocks,
        "hash_block_size": BLOCK_SIZE,
        "salt": hex::encode(&info.salt),
        "root_hash": hex::encode(info.root_hash),
        "hash_offset": info.hash_offset,
        "hash_start_block": info.hash_start_block(),
        "hash_end": info.hash_end(),
    })
}

fn print_like_veritysetup(hash: &std::path::Path, info: &VerityInfo) {
    println!("VERITY header information for {}", hash.display());
    let uuid = info.uuid.as_ref().map(format_uuid).unwrap_or_default();
    println!("UUID:            \t{uuid}");
    println!("Hash type:       \t{}", basalt_verity::HASH_TYPE);
    println!("Data blocks:     \t{}", info.data_blocks);
    println!("Data block size: \t{BLOCK_SIZE}");
    println!("Hash blocks:     \t{}", info.hash_blocks);
    println!("Hash block size: \t{BLOCK_SIZE}");
    println!("Hash algorithm:  \t{}", basalt_verity::ALGORITHM);
    println!("Salt:            \t{}", salt_text(&info.salt));
    println!("Root hash:      \t{}", hex::encode(info.root_hash));
}

fn verify(args: VerifyArgs) -> anyhow::Result<()> {
    let root = hex::decode(&args.root_hash)
        .ok()
        .and_then(|v| <[u8; DIGEST_SIZE]>::try_from(v).ok());
    let Some(root) = root else {
        bail!(
            "root hash {:?} is not {} hex digits",
            args.root_hash,
            2 * DIGEST_SIZE
        );
    };
    let opts = VerifyOptions {
        hash_offset: args.hash_offset,
        superblock: !args.no_superblock,
        salt: args.salt.as_deref().map(parse_salt).transpose()?,
        data_blocks: args.data_blocks,
        threads: args.threads,
    };
    match basalt_verity::verify_path(&args.data, &args.hash, &root, &opts) {
        Ok(info) => {
            println!(
                "verity: {} data blocks of {} verified against root hash {}",
                info.data_blocks,
                args.data.display(),
                hex::encode(info.root_hash)
            );
            Ok(())
        }
        Err(e) if e.is_corruption() => Err(crate::Refused(e.to_string()).into()),
        Err(e) => Err(anyhow::Error::new(e).context(format!("verifying {}", args.data.display()))),
    }
}
