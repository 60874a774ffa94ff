//! `basalt sysext …` subcommands: glue over `basalt_image::sysext` (build) and
//! `basalt_sysext` (verify, inspect).

use std::path::{Path, PathBuf};

use basalt_image::sysext::{build, default_deb_cache, Source, SysextSpec};
use basalt_manifest::semver::Version;
use basalt_manifest::{SigningKey, TrustRoot};
use basalt_sysext::compat::{native_architecture, HostOs};
use clap::Subcommand;

use crate::Refused;

// One command per run: the size of the parsed arguments does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build a signed, verity-sealed extension image OUT/NAME.raw from a tree or packages.
    Build {
        /// Extension name.
        #[arg(long)]
        name: String,
        /// Extension version (semver).
        #[arg(long)]
        version: Version,
        /// The OS ID= it extends.
        #[arg(long, default_value = "basalt")]
        os: String,
        /// SYSEXT_LEVEL= the OS must have.
        #[arg(long)]
        sysext_level: Option<String>,
        /// VERSION_ID= the OS must have.
        #[arg(long)]
        version_id: Option<String>,
        /// ARCHITECTURE= (systemd naming, e.g. x86-64).
        #[arg(long)]
        arch: Option<String>,
        /// A directory holding usr/ (and/or opt/).
        #[arg(long, conflicts_with = "package", required_unless_present = "package")]
        tree: Option<PathBuf>,
        /// A Debian package to include (repeat; taken as listed, not dependency-resolved).
        #[arg(long)]
        package: Vec<String>,
        /// Private key file (NAME.key) to sign with; repeat for each signer.
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
        /// A trust root to verify the result against before finishing.
        #[arg(long)]
        trust: Option<PathBuf>,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// Cache of downloaded .deb files (default: <workspace>/build/cache/debs).
        #[arg(long)]
        deb_cache: Option<PathBuf>,
    },
    /// Verify an extension image against a trust root (signature, name, layout, every
    /// block), and optionally its compatibility with an os-release.
    Verify {
        /// The image (NAME.raw).
        image: PathBuf,
        /// The trust root (initial envelope).
        #[arg(long)]
        trust: PathBuf,
        /// Check compatibility against this os-release file.
        #[arg(long)]
        os_release: Option<PathBuf>,
        /// The node's architecture for that check (default: this machine's).
        #[arg(long)]
        arch: Option<String>,
    },
    /// Print an image's statement (unverified unless --trust is given).
    Inspect {
        /// The image.
        image: PathBuf,
        /// Verify the signature against this trust root too.
        #[arg(long)]
        trust: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

fn load_trust(path: &Path) -> anyhow::Result<TrustRoot> {
    let bytes = std::fs::read(path).map_err(|e| anyhow::anyhow!("read {}: {e}", path.display()))?;
    TrustRoot::from_initial_envelope(&bytes)
        .map_err(|e| Refused(format!("trust root {}: {e}", path.display())).into())
}

fn refused(err: basalt_sysext::Error) -> anyhow::Error {
    match err {
        basalt_sysext::Error::Io { .. } => err.into(),
        other => Refused(other.to_string()).into(),
    }
}

pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Build {
            name,
            version,
            os,
            sysext_level,
            version_id,
            arch,
            tree,
            package,
            keys,
            trust,
            out,
            deb_cache,
        } => {
            let keys = keys
                .iter()
                .map(|p| {
                    let text = std::fs::read_to_string(p)
                        .map_err(|e| anyhow::anyhow!("read {}: {e}", p.display()))?;
                    SigningKey::from_pem(&text)
                        .map_err(|e| anyhow::anyhow!("key {}: {e}", p.display()))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let refs: Vec<&SigningKey> = keys.iter().collect();
            let trust = trust.as_deref().map(load_trust).transpose()?;
            let spec = SysextSpec {
                name,
                version,
                os,
                sysext_level,
                version_id,
                architecture: arch,
                source: match tree {
                    Some(t) => Source::Tree(t),
                    None => Source::Debian(package),
                },
            };
            let built = build(
                &spec,
                &refs,
                &out,
                &deb_cache.unwrap_or_else(default_deb_cache),
                trust.as_ref(),
            )?;
            println!(
                "built {} {} into {} ({} bytes)",
                built.statement.name,
                built.statement.version,
                built.path.display(),
                built.bytes
            );
            println!("root hash {}", built.statement.verity.root_hash.to_hex());
            for (p, v) in &built.packages {
                println!("package {p} {v}");
            }
            Ok(())
        }
        Command::Verify {
            image,
            trust,
            os_release,
            arch,
        } => {
            let root = load_trust(&trust)?;
            let ext = basalt_sysext::verify_image(&image, &root, None).map_err(refused)?;
            if let Some(path) = os_release {
                let arch = arch.unwrap_or_else(|| native_architecture().to_owned());
                let host = HostOs::read(&path, &arch).map_err(refused)?;
                basalt_sysext::activate::check_extension(&ext.statement, &host).map_err(refused)?;
                println!("compatible with {}", path.display());
            }
            println!(
                "{}: extension {} {} for {} verified (signed by {} key(s), every block checked)",
                image.display(),
                ext.statement.name,
                ext.statement.version,
                ext.statement.os,
                ext.signed_by.len()
            );
            Ok(())
        }
        Command::Inspect { image, trust, json } => {
            let statement = match trust {
                Some(t) => {
                    let root = load_trust(&t)?;
                    basalt_sysext::open_verified(&image, &root, None)
                        .map_err(refused)?
                        .1
                        .statement
                }
                None => {
                    let file = std::fs::File::open(&image)
                        .map_err(|e| anyhow::anyhow!("open {}: {e}", image.display()))?;
                    let (envelope, _) =
                        basalt_sysext::image::read_envelope(&file, &image).map_err(refused)?;
                    let env = basalt_manifest::Envelope::from_json(
                        &envelope,
                        basalt_manifest::MAX_SYSEXT_BYTES,
                        basalt_manifest::Document::Sysext,
                    )
                    .map_err(|e| Refused(format!("{}: {e}", image.display())))?;
                    basalt_manifest::SysextStatement::from_json(&env.payload)
                        .map_err(|e| Refused(format!("{}: {e}", image.display())))?
                }
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&statement)?);
            } else {
                println!("name {}", statement.name);
                println!("version {}", statement.version);
                println!("os {}", statement.os);
                println!("root hash {}", statement.verity.root_hash.to_hex());
                println!(
                    "data blocks {} hash offset {}",
                    statement.verity.data_blocks, statement.verity.hash_offset
                );
                print!("extension-release:\n{}", statement.extension_release);
            }
            Ok(())
        }
    }
}
